// Holds: a provider's remaining count, authoritative until its reset.

#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <tollgate/limit_set.hpp>
#include <tollgate/shared_limit_set.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/upstream_feedback.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::Costs;
using tollgate::Limit;
using tollgate::testing::ManualScheduler;

namespace {

using Set = tollgate::LimitSet<ManualClock>;
using Shared = tollgate::SharedLimitSet<std::string, ManualClock>;

tollgate::UpstreamLimits headers(std::map<std::string, std::string> h) {
  return tollgate::parse_upstream_limits(
      [&](std::string_view name) -> std::optional<std::string_view> {
        auto it = h.find(std::string(name));
        if (it == h.end()) return std::nullopt;
        return std::string_view(it->second);
      },
      std::chrono::sys_days(std::chrono::year(2026) / 1 / 1));
}

}  // namespace

TEST_CASE("hold: no refill above the remaining count before the reset, then the refill counts", "[hold]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"tokens", Limit{100, 10}}}, clock, &sched);  // 100 burst, 10 per second
  set.limit_remaining(0, 30, 5s);
  CHECK(set.available(0) == 30);
  REQUIRE(set.held_until(0) == clock.now() + 5s);
  CHECK(set.try_acquire({30}).ok());
  clock.advance(2s);  // 20 tokens refilled locally, but the provider said 30 until the reset
  CHECK(set.available(0) == 0);
  const tollgate::AcquireResult r = set.try_acquire({1});
  REQUIRE(r.status() == tollgate::Status::not_now);
  CHECK(r.retry_after() == 3s);  // the reset, not the 100 ms the refill would need
  clock.advance(3s);
  CHECK(!set.held_until(0));
  CHECK(set.available(0) == 50);  // the refill since the lowering counts from the reset on
  CHECK(set.try_acquire({50}).ok());
}

TEST_CASE("hold: a queued waiter is granted at the reset, in order; a hold never raises the level", "[hold]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"tokens", Limit{100, 10}}}, clock, &sched);
  CHECK(set.try_acquire({90}).ok());
  set.limit_remaining(0, 50, 4s);  // the provider says more than there is: nothing is added
  CHECK(set.available(0) == 10);
  std::vector<std::chrono::nanoseconds> granted;
  const auto start = clock.now();
  auto waiter = [&](double cost) -> Task {
    const Costs c{cost};
    if ((co_await set.acquire(c)).ok()) granted.push_back(clock.now() - start);
  };
  std::vector<Task> tasks;
  tasks.push_back(waiter(30));  // refill: due at 2 s; within the 50 held
  tasks.push_back(waiter(30));  // would be due at 5 s by refill alone, but 60 > 50 before the reset
  tasks.push_back(waiter(5));   // FIFO: behind it
  clock.advance(2s);
  REQUIRE(granted.size() == 1);
  CHECK(granted[0] == 2s);
  clock.advance(2s);  // the reset: refill alone gives the second one at 5 s
  CHECK(granted.size() == 1);
  clock.advance(1s);
  REQUIRE(granted.size() == 2);
  CHECK(granted[1] == 5s);
  clock.advance(500ms);
  REQUIRE(granted.size() == 3);
  CHECK(granted[2] == 5500ms);
}

TEST_CASE("hold: the same window keeps the lower count, a new window replaces it", "[hold]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"tokens", Limit{1000, 1000}}}, clock, &sched);  // a 1 s window's worth
  set.limit_remaining(0, 400, 800ms);
  clock.advance(100ms);
  set.limit_remaining(0, 600, 700ms);  // the same reset instant: a stale answer, not more tokens
  CHECK(set.available(0) == 400);
  CHECK(set.try_acquire({400}).ok());
  CHECK(set.available(0) == 0);
  clock.advance(700ms);  // the window ended; the next one reports 900 left until 1 s later
  set.limit_remaining(0, 900, 1s);
  CHECK(set.available(0) == 800);  // the local refill since the last take: never raised
  clock.advance(200ms);
  CHECK(set.available(0) == 900);  // held at the provider's count though 1000 refilled
}

TEST_CASE("hold: a debt settled during the hold is taken from its count too", "[hold]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"tokens", Limit{1000, 10}}}, clock, &sched);
  set.limit_remaining(0, 500, 10s);
  auto p = set.try_acquire_permit({100});
  REQUIRE(p);
  p.settle({300});  // 200 more than estimated
  CHECK(set.available(0) == 200);
  clock.advance(5s);
  CHECK(set.available(0) == 200);  // 50 refilled locally; the hold caps at 500 - 300
}

TEST_CASE("hold: a shared set's dimension, across keys", "[hold][shared]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Shared set({{"tokens", Limit{100, 10}}}, {}, clock, &sched);
  set.limit_remaining(0, 20, 3s);
  CHECK(set.available(0) == 20);
  CHECK(set.try_acquire("a", {15}).ok());
  clock.advance(1s);
  CHECK(set.available(0) == 5);
  CHECK(!set.try_acquire("b", {6}).ok());
  CHECK(set.try_acquire("b", {6}).retry_after() == 2s);
  std::optional<std::chrono::nanoseconds> at;
  const auto start = clock.now();
  auto waiter = [&]() -> Task {
    const Costs c{6};
    if ((co_await set.acquire("b", c)).ok()) at = clock.now() - start;
  };
  Task t = waiter();
  clock.advance(1s);
  CHECK(!at);
  clock.advance(1s);
  REQUIRE(at);
  CHECK(*at == 2s);
}

TEST_CASE("feedback: a remaining count holds until its reset; in flight output is taken off", "[hold][feedback]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"requests", Limit::per_minute(1000)}, {"input_tokens", Limit::per_minute(60'000)},
           {"output_tokens", Limit::per_minute(12'000)}},
          clock, &sched);
  tollgate::UpstreamFeedback<ManualClock>::Options o;
  o.bindings = tollgate::HeaderBindings::anthropic();
  tollgate::UpstreamFeedback<ManualClock> fb(set, o);
  auto first = set.try_acquire_permit({1, 1000, 1500});
  auto second = set.try_acquire_permit({1, 1000, 2500});
  REQUIRE((first && second));
  CHECK(set.in_flight(2) == 4000);
  // The provider answers the first: it has charged the input of both (at
  // admission) and only the first's 600 output tokens (as produced).
  fb.complete(first, {1, 1000, 600}, 200,
              headers({{"anthropic-ratelimit-input-tokens-remaining", "58000"},
                       {"anthropic-ratelimit-input-tokens-reset", "2026-01-01T00:00:07Z"},
                       {"anthropic-ratelimit-output-tokens-remaining", "11400"},
                       {"anthropic-ratelimit-output-tokens-reset", "2026-01-01T00:00:07Z"}}));
  CHECK(set.in_flight(2) == 2500);
  CHECK(set.available(2) == 11400 - 2500);  // the second's estimate is still to be produced
  CHECK(set.available(1) == 58000);
  CHECK(set.held_until(1).has_value());
  second.release();
  CHECK(set.in_flight(2) == 0);
}

TEST_CASE("feedback: a limit header counts per minute; growth is judged against the window the headers describe",
          "[hold][feedback]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  // 60,000 tokens per minute enforced per second: one second's burst.
  Set set({{"tokens", Limit{1000, 1000}}}, clock, &sched);
  tollgate::UpstreamFeedback<ManualClock>::Options o;
  o.adaptive = tollgate::AdaptiveRate{};
  o.adaptive->calm = 0s;
  tollgate::UpstreamFeedback<ManualClock> fb(set, o);
  fb.on_response(429, headers({{"x-ratelimit-limit-tokens", "60000"}, {"x-ratelimit-remaining-tokens", "0"},
                               {"x-ratelimit-reset-tokens", "300ms"}}));
  CHECK(fb.rate(0) == 800);
  CHECK(fb.ceiling(0) == Limit{1000, 1000});  // 60,000 per minute is the configured rate: no change
  clock.advance(10s);
  // The second's window has half left: 500 of 1,000 (though under 1% of the per-minute 60,000).
  fb.on_response(200, headers({{"x-ratelimit-limit-tokens", "60000"}, {"x-ratelimit-remaining-tokens", "500"},
                               {"x-ratelimit-reset-tokens", "400ms"}}));
  CHECK(fb.rate(0) == Approx(897));  // 800 + 0.01 * 1000 per second for the 9.7 s past the 300 ms pause
  // The provider's limit is lower than configured: 42,000 per minute.
  fb.on_response(200, headers({{"x-ratelimit-limit-tokens", "42000"}, {"x-ratelimit-remaining-tokens", "500"}}));
  CHECK(fb.ceiling(0) == Limit{700, 700});  // the same one-second burst window at the provider's rate
  CHECK(set.limit(0) == Limit{700, 700});
}

TEST_CASE("feedback: answers that fit a continuous bucket stop holding; one that does not holds again",
          "[hold][feedback]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"tokens", Limit::per_minute(60'000)}}, clock, &sched);
  tollgate::UpstreamFeedback<ManualClock> fb(set);
  auto answer = [&](int remaining, const char* reset) {
    fb.on_response(200, headers({{"x-ratelimit-limit-tokens", "60000"},
                                 {"x-ratelimit-remaining-tokens", std::to_string(remaining)},
                                 {"x-ratelimit-reset-tokens", reset}}));
  };
  CHECK(fb.refill(0) == tollgate::Refill::unknown);
  answer(30'000, "30s");  // full at its reset at 1,000 per second: fits a bucket, but not shown yet
  CHECK(set.held_until(0) == clock.now() + 30s);
  clock.advance(3s);
  answer(33'000, "27s");
  CHECK(fb.refill(0) == tollgate::Refill::unknown);
  clock.advance(3s);
  answer(36'000, "24s");  // a tenth of the minute of answers that fit: a continuous bucket
  CHECK(fb.refill(0) == tollgate::Refill::continuous);
  CHECK(!set.held_until(0));
  clock.advance(2s);
  CHECK(set.available(0) == 38'000);  // lowered to 36,000, then refilled: not held
  answer(1'000, "10s");  // 11,000 at its reset: a window ending, not a bucket
  CHECK(fb.refill(0) == tollgate::Refill::windowed);
  CHECK(set.held_until(0) == clock.now() + 10s);
  clock.advance(5s);
  CHECK(set.available(0) == 1'000);
}

TEST_CASE("hold: a windowed provider's next window releases at most what a window allowed", "[hold]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"tokens", Limit{1000, 1000}}}, clock, &sched);  // a 1 s window's worth, configured
  // The provider's window holds 400 for us (another client takes the rest):
  // 400 left at first, then 100 after 300 granted, until the reset in 1 s;
  // its windows are 1 s long.
  set.limit_remaining(0, 400, 1s, 1s);
  CHECK(set.try_acquire({300}).ok());
  set.limit_remaining(0, 100, 1s, 1s);  // 100 + the 300 granted: a window holds 400
  int granted = 0;
  auto waiter = [&]() -> Task {
    const Costs c{100};
    if ((co_await set.acquire(c)).ok()) ++granted;
  };
  std::vector<Task> tasks;
  for (int i = 0; i < 10; ++i) tasks.push_back(waiter());
  CHECK(granted == 1);
  clock.advance(1s);  // the reset: 1,000 refilled locally, but the window allowed 400
  CHECK(granted == 5);
  CHECK(set.held_until(0) == clock.now() + 1s);
  clock.advance(1s);  // the hold is over: the refill alone
  CHECK(granted == 10);
}

TEST_CASE("feedback: a continuous bucket in debt is held at 0 until the debt is repaid", "[hold][feedback]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"tokens", Limit::per_minute(6'000)}}, clock, &sched);  // 100 per second
  tollgate::UpstreamFeedback<ManualClock> fb(set);
  auto answer = [&](int remaining, const char* reset) {
    fb.on_response(200, headers({{"x-ratelimit-limit-tokens", "6000"},
                                 {"x-ratelimit-remaining-tokens", std::to_string(remaining)},
                                 {"x-ratelimit-reset-tokens", reset}}));
  };
  // Fitting a bucket for 6 s: continuous.
  for (int i = 0; i <= 6; ++i) {
    answer(3'000 + 100 * i, (std::to_string(30 - i) + "s").c_str());  // full at 100 per second
    clock.advance(1s);
  }
  REQUIRE(fb.refill(0) == tollgate::Refill::continuous);
  // Output produced past the limit: 0 left, full only in 65 s: a debt of 500.
  answer(0, "65s");
  CHECK(fb.refill(0) == tollgate::Refill::continuous);  // a debt is still a bucket
  CHECK(set.available(0) == 0);
  REQUIRE(set.held_until(0) == clock.now() + 4s);  // the debt's 5 s less the second a reset may be rounded up by
  clock.advance(4s);
  CHECK(set.available(0) == 400);  // from then on the refill counts
}

TEST_CASE("provider limits: each per-minute limit with the burst of its enforcement window", "[hold][feedback]") {
  using tollgate::ProviderLimits;
  CHECK(ProviderLimits::per_minute(60'000) == Limit{60'000, 1'000});
  CHECK(ProviderLimits::per_minute(60'000, 1s) == Limit{1'000, 1'000});
  const auto a = ProviderLimits::anthropic(1'000, 100'000, 20'000, 10s);
  REQUIRE(a.size() == 3);
  CHECK(a[2].name == "output_tokens");
  CHECK(a[2].limit.capacity == Approx(20'000.0 / 6));
  CHECK(a[2].limit.rate == Approx(20'000.0 / 60));
  CHECK_THROWS_AS(ProviderLimits::per_minute(100, 2min), std::invalid_argument);
  CHECK_THROWS_AS(ProviderLimits::per_minute(100, 0s), std::invalid_argument);
  CHECK_THROWS_AS(ProviderLimits::per_minute(-1), std::invalid_argument);
}

TEST_CASE("in flight: permits made, moved and settled on two threads leave nothing counted", "[hold][threads]") {
  tollgate::LimitSet<> set({{"tokens", Limit{1e12, 1e12}}});
  set.count_in_flight();
  std::atomic<int> refused{0};  // (Catch's assertions are for the test's own thread)
  auto work = [&set, &refused] {
    for (int i = 0; i < 2000; ++i) {
      auto p = set.try_acquire_permit({10});
      if (!p) ++refused;
      auto moved = std::move(p);
      if (i % 3 == 0) moved.settle({4});
      else if (i % 3 == 1) moved.release();
      // else: destroyed unsettled (its estimate is the cost; no longer in flight)
    }
  };
  std::thread a(work), b(work);
  a.join();
  b.join();
  CHECK(refused == 0);
  CHECK(set.in_flight(0) == 0);
  auto held = set.try_acquire_permit({25});
  CHECK(set.in_flight(0) == 25);
  CHECK(set.in_flight(7) == 0);  // a dimension the set does not have
}

TEST_CASE("hold: a count for an earlier window than the one in effect is a late answer and changes nothing",
          "[hold]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"tokens", Limit{1000, 1000}}}, clock, &sched);
  set.limit_remaining(0, 400, 2s);  // the window in effect ends in 2 s
  REQUIRE(set.available(0) == 400);
  set.limit_remaining(0, 100, 1s);  // a window ending a second earlier: answered late
  CHECK(set.available(0) == 400);   // neither lowered nor held there
  CHECK(set.held_until(0) == clock.now() + 2s);
  set.limit_remaining(0, 300, 3s);  // a later window replaces it
  CHECK(set.available(0) == 300);
  CHECK(set.held_until(0) == clock.now() + 3s);
}

TEST_CASE("feedback: an answer whose window is already over neither lowers nor ends the hold in effect",
          "[hold][feedback]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"requests", Limit::per_minute(1000)}, {"input_tokens", Limit::per_minute(60'000)},
           {"output_tokens", Limit::per_minute(12'000)}},
          clock, &sched);
  tollgate::UpstreamFeedback<ManualClock>::Options o;
  o.bindings = tollgate::HeaderBindings::anthropic();
  tollgate::UpstreamFeedback<ManualClock> fb(set, o);
  // The window in effect: 50,000 input tokens left until 00:00:07.
  fb.on_response(200, headers({{"anthropic-ratelimit-input-tokens-remaining", "50000"},
                               {"anthropic-ratelimit-input-tokens-reset", "2026-01-01T00:00:07Z"}}));
  REQUIRE(set.available(1) == 50000);
  REQUIRE(set.held_until(1) == clock.now() + 7s);
  // A call admitted in the window before, answered now: its count (1,000
  // left) is of a window that ended at 23:59:59.
  fb.on_response(200, headers({{"anthropic-ratelimit-input-tokens-remaining", "1000"},
                               {"anthropic-ratelimit-input-tokens-reset", "2025-12-31T23:59:59Z"}}));
  CHECK(set.available(1) == 50000);
  CHECK(set.held_until(1) == clock.now() + 7s);
}
