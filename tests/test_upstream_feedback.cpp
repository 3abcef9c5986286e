// UpstreamFeedback: a provider's answers feed back into a LimitSet.

#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <vector>

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
  o.adaptive->calm = 0s;        // (growth right after a cut: see the next test)
  Feedback fb(f.set, o);
  fb.on_response(429, headers({{"x-ratelimit-remaining-tokens", "0"}, {"retry-after-ms", "100"}}));
  CHECK(fb.rate(1) == Approx(800));  // only the exhausted dimension shrinks
  CHECK(fb.rate(0) == Approx(10));
  CHECK(f.set.limit(1).rate == Approx(800));
  CHECK(f.set.limit(1).capacity == 60'000);  // the burst stays the provider's
  fb.on_response(429, headers({{"x-ratelimit-remaining-tokens", "0"}}));  // a call sent before the pause: the same episode
  CHECK(fb.rate(1) == Approx(800));
  f.clock.advance(100ms);
  fb.on_response(429, headers({}));  // nothing says which: every dimension shrinks
  CHECK(fb.rate(1) == Approx(640));
  CHECK(fb.rate(0) == Approx(8));
  fb.on_response(503, headers({{"retry-after", "1"}}));
  CHECK(fb.rate(1) == Approx(640));
  f.clock.advance(10s);
  fb.on_response(200, headers({}));  // 10 s of success, 9 of them past the 1 s pause: +9% of the ceiling
  CHECK(fb.rate(1) == Approx(640 + 90));
  f.clock.advance(10s);
  // No headroom left upstream: hold the rate.
  fb.on_response(200, headers({{"x-ratelimit-remaining-tokens", "100"}, {"x-ratelimit-limit-tokens", "60000"}}));
  CHECK(fb.rate(1) == Approx(730));
  f.clock.advance(100s);
  fb.on_response(200, headers({}));
  CHECK(fb.rate(1) == Approx(1000));  // capped at the ceiling
  for (int i = 0; i < 50; ++i) {
    fb.on_response(429, headers({}));  // a new episode each time: after the default pause of 1 s
    f.clock.advance(1s);
  }
  CHECK(fb.rate(1) == Approx(100));  // the floor: 10% of the ceiling
  CHECK(fb.on_response(429, headers({}), "insufficient_quota") == UpstreamVerdict::quota_exhausted);
  CHECK(fb.rate(1) == Approx(100));
  CHECK_THROWS_AS(Feedback(f.set, Feedback::Options{AdaptiveRate{1.5}}), std::invalid_argument);
}

TEST_CASE("feedback: after a cut the rate stays for `calm` past the pause before it grows again", "[feedback]") {
  Fixture f;
  Feedback::Options o;
  o.adaptive = AdaptiveRate{};  // calm: 10 s
  Feedback fb(f.set, o);
  fb.on_response(429, headers({{"x-ratelimit-remaining-tokens", "0"}, {"retry-after-ms", "2000"}}));
  CHECK(fb.rate(1) == Approx(800));
  f.clock.advance(12s);
  fb.on_response(200, headers({}));
  CHECK(fb.rate(1) == Approx(800));  // 2 s of pause + 10 s of calm: not yet
  f.clock.advance(5s);
  fb.on_response(200, headers({}));
  CHECK(fb.rate(1) == Approx(850));  // 5 s past the calm: +5% of the ceiling
  CHECK_THROWS_AS(Feedback(f.set, Feedback::Options{AdaptiveRate{0.8, 0.01, 0.1, 0.05, -1s}}), std::invalid_argument);
}

TEST_CASE("feedback: a 429 that names no exhausted dimension cuts the one nearest to exhaustion only",
          "[feedback][adaptive]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"requests", Limit::per_minute(50)},
           {"input_tokens", Limit::per_minute(40'000)},
           {"output_tokens", Limit::per_minute(8'000)}},
          clock, &sched);
  Feedback::Options o;
  o.adaptive = AdaptiveRate{};
  o.bindings = tollgate::HeaderBindings::anthropic();
  Feedback fb(set, o);
  // Input tokens at 2.5% of their limit, output at 62%, requests at 90%: an input-token 429.
  fb.on_response(429, headers({{"anthropic-ratelimit-input-tokens-remaining", "1000"},
                               {"anthropic-ratelimit-input-tokens-limit", "40000"},
                               {"anthropic-ratelimit-output-tokens-remaining", "5000"},
                               {"anthropic-ratelimit-requests-remaining", "45"},
                               {"retry-after", "1"}}));
  CHECK(fb.rate(1) == Approx(40'000.0 / 60 * 0.8));
  CHECK(fb.rate(0) == Approx(50.0 / 60));
  CHECK(fb.rate(2) == Approx(8'000.0 / 60));
  // Every dimension reported full: nothing says which, every rate is cut.
  clock.advance(2s);
  fb.on_response(429, headers({{"anthropic-ratelimit-output-tokens-remaining", "8000"}, {"retry-after", "1"}}));
  CHECK(fb.rate(0) == Approx(50.0 / 60 * 0.8));
  CHECK(fb.rate(2) == Approx(8'000.0 / 60 * 0.8));
}

TEST_CASE("feedback: header families bind to dimensions by name, checked at construction", "[feedback][binding]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  // Anthropic's three families on a set whose dimensions have other names.
  Set set({{"rpm", Limit::per_minute(50)}, {"itpm", Limit::per_minute(40'000)}, {"otpm", Limit::per_minute(8'000)}},
          clock, &sched);
  Feedback::Options o;
  o.bindings = {{tollgate::HeaderFamily::requests, "rpm"},
                {tollgate::HeaderFamily::input_tokens, "itpm"},
                {tollgate::HeaderFamily::output_tokens, "otpm"}};
  Feedback fb(set, o);
  CHECK(fb.bound(tollgate::HeaderFamily::output_tokens) == 2u);
  CHECK_FALSE(fb.bound(tollgate::HeaderFamily::tokens));
  fb.on_response(200, headers({{"anthropic-ratelimit-output-tokens-remaining", "300"},
                               {"anthropic-ratelimit-input-tokens-remaining", "39000"}}));
  CHECK(set.available(2) == 300);
  CHECK(set.available(1) == 39'000);
  CHECK(set.available(0) == 50);
  // A binding to a missing dimension, a dimension bound twice, a set nothing binds to: errors, not no-ops.
  Feedback::Options missing;
  missing.bindings = {{tollgate::HeaderFamily::tokens, "tokens"}};
  CHECK_THROWS_WITH(Feedback(set, missing),
                    "UpstreamFeedback: a header binding names dimension \"tokens\", which the set does not have");
  Feedback::Options twice;
  twice.bindings = {{tollgate::HeaderFamily::input_tokens, "itpm"}, {tollgate::HeaderFamily::tokens, "itpm"}};
  CHECK_THROWS_WITH(Feedback(set, twice), "UpstreamFeedback: dimension \"itpm\" bound twice");
  Feedback::Options family_twice;
  family_twice.bindings = {{tollgate::HeaderFamily::tokens, "itpm"}, {tollgate::HeaderFamily::tokens, "otpm"}};
  CHECK_THROWS_AS(Feedback(set, family_twice), std::invalid_argument);
  CHECK_THROWS_AS(Feedback(set), std::invalid_argument);  // no dimension is named after a family
  // The provider profiles bind sets named as the providers name their limits.
  Set anthropic({{"requests", Limit::per_minute(50)},
                 {"input_tokens", Limit::per_minute(40'000)},
                 {"output_tokens", Limit::per_minute(8'000)}},
                clock, &sched);
  Feedback::Options profile;
  profile.bindings = tollgate::HeaderBindings::anthropic();
  Feedback by_profile(anthropic, profile);
  CHECK(by_profile.bound(tollgate::HeaderFamily::input_tokens) == 1u);
  Feedback::Options openai;
  openai.bindings = tollgate::HeaderBindings::openai();
  CHECK_THROWS_AS(Feedback(anthropic, openai), std::invalid_argument);  // no "tokens" dimension
}

TEST_CASE("feedback: complete() settles before it applies the headers, so a refund never lifts the level above "
          "the provider's remaining", "[feedback][complete]") {
  Fixture f;
  Feedback fb(f.set);
  const tollgate::Costs estimate{1, 5'000};
  // The provider counted 800 tokens and says 1,000 are left.
  auto answer = headers({{"x-ratelimit-remaining-tokens", "1000"}});
  {
    Set::Permit p = f.set.try_acquire_permit(estimate);
    REQUIRE(p);
    CHECK(fb.complete(p, {1, 800}, 200, answer) == UpstreamVerdict::ok);
    CHECK(p.settled());
    CHECK(f.set.available(1) == 1000);
  }
  // The other order (headers, then settle) is what complete() avoids: the
  // refund of 4,200 lands on top of the corrected level.
  Fixture g;
  Feedback fb2(g.set);
  Set::Permit q = g.set.try_acquire_permit(estimate);
  fb2.on_response(200, answer);
  q.settle({1, 800});
  CHECK(g.set.available(1) == 5'200);
  // A header function and the options' wall clock work the same way.
  Set::Permit r = f.set.try_acquire_permit({1, 500});
  REQUIRE(r);
  std::map<std::string, std::string> h{{"x-ratelimit-remaining-tokens", "100"}};
  const auto header = [&](std::string_view name) -> std::optional<std::string_view> {
    auto it = h.find(std::string(name));
    if (it == h.end()) return std::nullopt;
    return std::string_view(it->second);
  };
  CHECK(fb.complete(r, {1, 100}, 200, header) == UpstreamVerdict::ok);
  // 100 up to the documented rounding allowance (a few units of 2^-32 ns of refill).
  CHECK(std::abs(f.set.available(1) - 100) < 1e-9);
}

TEST_CASE("limit set: costs by dimension name", "[limitset][names]") {
  Fixture f;
  const tollgate::Costs c = f.set.costs({{"tokens", 800}, {"requests", 1}});
  REQUIRE(c.size() == 2);
  CHECK(c[0] == 1);
  CHECK(c[1] == 800);
  CHECK(f.set.costs({{"tokens", 5}})[0] == 0);
  CHECK_THROWS_AS(f.set.costs({{"output_tokens", 1}}), std::out_of_range);
  CHECK_THROWS_AS(f.set.costs({{"tokens", 1}, {"tokens", 2}}), std::invalid_argument);
}

TEST_CASE("manual scheduler: next_due names the earliest armed timer", "[manual][scheduler]") {
  Fixture f;
  CHECK_FALSE(f.sched.next_due());
  REQUIRE(f.set.try_acquire({600, 0}));
  std::optional<tollgate::AcquireResult> got;
  auto waiter = [](Set& s, std::optional<tollgate::AcquireResult>& out) -> Task {
    const tollgate::Costs one{1, 0};  // named: g++ 12 miscompiles a braced list inside co_await
    out = co_await s.acquire(one);
  };
  Task t = waiter(f.set, got);
  REQUIRE(f.sched.next_due());
  CHECK(*f.sched.next_due() == f.clock.now() + 100ms);  // 600 per minute: one request per 100 ms
  f.clock.advance_to(*f.sched.next_due());
  CHECK(got);
  CHECK_FALSE(f.sched.next_due());
}

TEST_CASE("feedback: after a 429 the pause's end releases what refilled during it, not every waiter at once",
          "[feedback][herd]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  // A minute's burst locally (60), 1 per second.
  Set set({{"requests", Limit{60, 1}}, {"tokens", Limit{60'000, 1'000}}}, clock, &sched);
  Feedback fb(set);
  int granted = 0;
  auto waiter = [](Set& s, int& count) -> Task {
    const tollgate::Costs one{1, 1};
    if ((co_await s.acquire(one)).ok()) ++count;
  };
  // The provider refuses (it enforces per second) and says only "retry after 5 s".
  fb.on_response(429, headers({{"retry-after", "5"}}));
  std::vector<Task> tasks;
  for (int i = 0; i < 20; ++i) tasks.push_back(waiter(set, granted));
  clock.advance(5s);
  CHECK(granted == 5);  // 5 s of refill, not the 20 a full local bucket would release
  clock.advance(3s);
  CHECK(granted == 8);  // then at the rate
}
