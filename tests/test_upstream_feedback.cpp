// UpstreamFeedback: a provider's answers feed back into a LimitSet.

#include <chrono>
#include <map>
#include <optional>
#include <string>

#include <tollgate/limit_set.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/upstream_feedback.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::AdaptiveRate;
using tollgate::Limit;
using tollgate::UpstreamLimits;
using tollgate::UpstreamVerdict;
using tollgate::testing::ManualScheduler;

namespace {

using Set = tollgate::LimitSet<ManualClock>;
using Feedback = tollgate::UpstreamFeedback<ManualClock>;

struct Fixture {
  ManualClock clock;
  ManualScheduler sched{clock};
  // 600 requests and 60,000 tokens per minute.
  Set set{{{"requests", Limit::per_minute(600)}, {"tokens", Limit::per_minute(60'000)}}, clock, &sched};
};

UpstreamLimits headers(std::map<std::string, std::string> h) {
  return tollgate::parse_upstream_limits(
      [&](std::string_view name) -> std::optional<std::string_view> {
        auto it = h.find(std::string(name));
        if (it == h.end()) return std::nullopt;
        return std::string_view(it->second);
      },
      std::chrono::system_clock::time_point(std::chrono::hours(24 * 365 * 56)));
}

}  // namespace

TEST_CASE("feedback: classify_upstream separates rate limits, overload and quota", "[feedback]") {
  using tollgate::classify_upstream;
  CHECK(classify_upstream(200) == UpstreamVerdict::ok);
  CHECK(classify_upstream(429) == UpstreamVerdict::rate_limited);
  CHECK(classify_upstream(429, "rate_limit_exceeded") == UpstreamVerdict::rate_limited);
  CHECK(classify_upstream(429, "insufficient_quota") == UpstreamVerdict::quota_exhausted);
  CHECK(classify_upstream(402) == UpstreamVerdict::quota_exhausted);
  CHECK(classify_upstream(503) == UpstreamVerdict::overloaded);
  CHECK(classify_upstream(529, "overloaded_error") == UpstreamVerdict::overloaded);
  CHECK(classify_upstream(500) == UpstreamVerdict::error);
}

TEST_CASE("feedback: a 429 pauses the whole set for retry-after-ms, waiters included", "[feedback]") {
  Fixture f;
  Feedback fb(f.set);
  CHECK(fb.on_response(429, headers({{"retry-after-ms", "2500"}})) == UpstreamVerdict::rate_limited);
  CHECK(f.set.try_acquire({1, 1}).retry_after() == 2500ms);
  // Without a retry-after: the exhausted dimension's reset, else the default pause.
  f.clock.advance(3s);
  fb.on_response(429, headers({{"x-ratelimit-remaining-tokens", "0"}, {"x-ratelimit-reset-tokens", "6m0s"}}));
  CHECK(f.set.try_acquire({1, 1}).retry_after() == 6min);
}

TEST_CASE("feedback: remaining headers lower a dimension, never raise it; limit headers lower the ceiling",
          "[feedback]") {
  Fixture f;
  Feedback fb(f.set);
  fb.on_response(200, headers({{"x-ratelimit-remaining-tokens", "1200"}, {"x-ratelimit-remaining-requests", "599"}}));
  CHECK(f.set.available(1) == 1200);
  CHECK(f.set.available(0) == 599);
  fb.on_response(200, headers({{"anthropic-ratelimit-tokens-remaining", "50000"}}));
  CHECK(f.set.available(1) == 1200);
  // The provider's real limit is lower than documented: same window, lower rate.
  fb.on_response(200, headers({{"anthropic-ratelimit-tokens-limit", "30000"}}));
  CHECK(fb.ceiling(1) == Limit{30'000, 500});
  CHECK(f.set.limit(1) == Limit{30'000, 500});
  fb.on_response(200, headers({{"anthropic-ratelimit-tokens-limit", "90000"}}));  // never above the configuration
  CHECK(fb.ceiling(1) == Limit{30'000, 500});
}

TEST_CASE("feedback: the adaptive rate shrinks on a 429, ramps back on success, ignores overload", "[feedback]") {
  Fixture f;
  Feedback::Options o;
  o.adaptive = AdaptiveRate{};  // x0.8 on a 429; +1% of the ceiling per second
  Feedback fb(f.set, o);
  fb.on_response(429, headers({{"x-ratelimit-remaining-tokens", "0"}, {"retry-after-ms", "100"}}));
  CHECK(fb.rate(1) == Approx(800));  // only the exhausted dimension shrinks
  CHECK(fb.rate(0) == Approx(10));
  CHECK(f.set.limit(1).rate == Approx(800));
  CHECK(f.set.limit(1).capacity == 60'000);  // the burst stays the provider's
  fb.on_response(429, headers({}));  // nothing says which: every dimension shrinks
  CHECK(fb.rate(1) == Approx(640));
  CHECK(fb.rate(0) == Approx(8));
  fb.on_response(503, headers({{"retry-after", "1"}}));
  CHECK(fb.rate(1) == Approx(640));
  f.clock.advance(10s);
  fb.on_response(200, headers({}));  // 10 s of success: +10% of the ceiling
  CHECK(fb.rate(1) == Approx(640 + 100));
  f.clock.advance(10s);
  // No headroom left upstream: hold the rate.
  fb.on_response(200, headers({{"x-ratelimit-remaining-tokens", "100"}, {"x-ratelimit-limit-tokens", "60000"}}));
  CHECK(fb.rate(1) == Approx(740));
  f.clock.advance(100s);
  fb.on_response(200, headers({}));
  CHECK(fb.rate(1) == Approx(1000));  // capped at the ceiling
  for (int i = 0; i < 50; ++i) fb.on_response(429, headers({}));
  CHECK(fb.rate(1) == Approx(100));  // the floor: 10% of the ceiling
  CHECK(fb.on_response(429, headers({}), "insufficient_quota") == UpstreamVerdict::quota_exhausted);
  CHECK(fb.rate(1) == Approx(100));
  CHECK_THROWS_AS(Feedback(f.set, Feedback::Options{AdaptiveRate{1.5}}), std::invalid_argument);
}
