// Regression tests for defects found by testing from outside: every waiter is
// resumed exactly once whatever re-times the queue; a full bucket gives its
// whole capacity at one instant; what a registry hands out keeps its state;
// completions do not nest; one settle cannot turn garbage into years of debt.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <tollgate/bucket_registry.hpp>
#include <tollgate/limit_set.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::AcquireResult;
using tollgate::Costs;
using tollgate::Limit;
using tollgate::Status;
using tollgate::testing::ManualScheduler;

namespace {

using Set = tollgate::LimitSet<ManualClock>;
using Bucket = tollgate::TokenBucket<ManualClock>;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

struct Done {
  int id;
  std::int64_t t_ns;
  Status status;
};

// How many times each id completed: the exactly-once check.
std::map<int, int> counts(const std::vector<Done>& log) {
  std::map<int, int> n;
  for (const Done& d : log) ++n[d.id];
  return n;
}

template <class B, class C>
Task wait_for(B& b, C cost, std::chrono::nanoseconds max_wait, int id, std::vector<Done>& log, const ManualClock& clock) {
  AcquireResult r = co_await b.acquire_for(cost, max_wait);
  log.push_back({id, ns_of(clock.now()), r.status()});
}

// A one-dimension set of capacity 5, rate 1/s, holding a permit for 1 and
// drained of the rest, with a waiter for 4 allowed 5 s (due at 4 s).
struct SetWithOverdueRisk {
  ManualClock clock;
  ManualScheduler sched{clock};
  Set set{{{"tokens", Limit{5, 1}}}, clock, &sched};
  Set::Permit permit = set.try_acquire_permit({1});
  std::vector<Done> log;
  Task waiter;
  SetWithOverdueRisk() {
    REQUIRE(permit);
    REQUIRE(set.try_acquire({4}).ok());
    waiter = wait_for(set, Costs{4}, 5s, 0, log, clock);
    REQUIRE(set.waiters() == 1);
  }
  // The waiter finished timed_out at once, exactly once, and nothing is left.
  void check_timed_out_now() {
    REQUIRE(log.size() == 1);
    CHECK(log[0].status == Status::timed_out);
    CHECK(log[0].t_ns == 0);
    CHECK(set.waiters() == 0);
    (void)set.try_acquire({1});  // a newcomer re-times the queue: nothing more completes
    clock.advance(100s);
    CHECK(log.size() == 1);
    CHECK(waiter.done());
  }
};

}  // namespace

TEST_CASE("defects: a settle overrun pushing a waiter past its deadline resumes it once, timed_out", "[defects]") {
  SetWithOverdueRisk f;
  f.permit.settle({4});  // an overrun of 3: due at 7 s, past the 5 s allowed
  f.check_timed_out_now();
}

TEST_CASE("defects: charge, limit_remaining, set_limit and pause resume an overdue waiter once", "[defects]") {
  SECTION("charge") {
    SetWithOverdueRisk f;
    f.set.charge({3});
    f.check_timed_out_now();
  }
  SECTION("limit_remaining") {  // the waiter is due at 4 s; remaining 0 at 0 s changes nothing ...
    SetWithOverdueRisk f;
    f.clock.advance(2s);  // ... but 2 tokens accrued by 2 s, and the upstream says none is left:
    f.set.limit_remaining(0, 0);  // due at 6 s, past the 5 s allowed
    REQUIRE(f.log.size() == 1);
    CHECK(f.log[0].status == Status::timed_out);
    CHECK(f.log[0].t_ns == 2'000'000'000);
    f.clock.advance(100s);
    CHECK(f.log.size() == 1);
  }
  SECTION("set_limit") {
    SetWithOverdueRisk f;
    f.set.set_limit(0, Limit{5, 0.5});  // due at 8 s
    f.check_timed_out_now();
  }
  SECTION("pause") {
    SetWithOverdueRisk f;
    f.set.pause_for(6s);
    f.check_timed_out_now();
  }
}

TEST_CASE("defects: TokenBucket charge and limit_remaining time out an overdue waiter at once", "[defects]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Bucket b(Limit{5, 1}, clock, &sched);
  REQUIRE(b.try_acquire(5).ok());
  std::vector<Done> log;
  Task early = wait_for(b, 1.0, 10s, 0, log, clock);  // due 1 s
  Task late = wait_for(b, 3.0, 5s, 1, log, clock);    // due 4 s, allowed 5 s
  b.charge(2);                                         // 2 s more: 6 s > 5 s
  REQUIRE(log.size() == 1);
  CHECK(log[0].id == 1);
  CHECK(log[0].status == Status::timed_out);
  clock.advance(100s);
  REQUIRE(log.size() == 2);
  CHECK(log[1].id == 0);
  CHECK(log[1].t_ns == 3'000'000'000);  // 1 s, plus the 2 s charged

  Task again = wait_for(b, 3.0, 5s, 2, log, clock);  // bucket has 5 now: taken at once
  REQUIRE(log.size() == 3);
  Task next = wait_for(b, 3.0, 5s, 3, log, clock);  // due in 1 s (2 accrued... 2 left, needs 3)
  REQUIRE(log.size() == 3);
  b.limit_remaining(0);  // upstream: none left: due in 3 s, still within 5 s
  CHECK(log.size() == 3);
  Task tight = wait_for(b, 2.0, 4s, 4, log, clock);  // due after it, at 5 s: too late for 4 s
  CHECK(log.size() == 4);                             // refused at once (not_now), not queued
  CHECK(log[3].status == Status::not_now);
  clock.advance(100s);
  const auto n = counts(log);
  for (const auto& [id, k] : n) CHECK(k == 1);
  CHECK(n.size() == 5);
}

TEST_CASE("defects: many waiters, random re-timings: every one resumed exactly once", "[defects]") {
  for (std::uint64_t seed = 1; seed <= 40; ++seed) {
    INFO("seed " << seed);
    std::uint64_t x = seed * 0x9e3779b97f4a7c15ULL;
    auto rnd = [&](std::uint64_t n) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      return x % n;
    };
    ManualClock clock;
    ManualScheduler sched(clock);
    Set set{{{"requests", Limit{4, 2}}, {"tokens", Limit{100, 20}}}, clock, &sched};
    std::vector<Done> log;
    std::vector<Task> tasks;
    std::vector<Set::Permit> permits;
    int id = 0;
    for (int step = 0; step < 120; ++step) {
      switch (rnd(8)) {
        case 0:
        case 1:
          tasks.push_back(wait_for(set, Costs{1, double(rnd(60))}, std::chrono::milliseconds(rnd(8000)), id++, log, clock));
          break;
        case 2: permits.push_back(set.try_acquire_permit({1, double(rnd(40))})); break;
        case 3:
          if (!permits.empty() && permits.back()) permits.back().settle({0, double(rnd(200))});
          if (!permits.empty()) permits.pop_back();
          break;
        case 4: set.charge({0, double(rnd(50))}); break;
        case 5: set.limit_remaining(rnd(2), double(rnd(30))); break;
        case 6: set.pause_for(std::chrono::milliseconds(rnd(3000))); break;
        case 7: clock.advance(std::chrono::milliseconds(rnd(2000))); break;
      }
      (void)set.try_acquire({0, 1});
      for (const auto& [i, k] : counts(log)) REQUIRE(k == 1);
    }
    clock.advance(std::chrono::hours(1));
    const auto n = counts(log);
    CHECK(static_cast<int>(n.size()) == id);  // every waiter finished ...
    for (const auto& [i, k] : n) CHECK(k == 1);  // ... exactly once
    for (const Task& t : tasks) CHECK(t.done());
    CHECK(set.waiters() == 0);
  }
}

TEST_CASE("defects: a full bucket, set dimension and registry key give their whole capacity at one instant", "[defects]") {
  const double capacities[] = {1, 2, 3, 7, 10, 60, 500, 1000, 30'000};
  const double rates[] = {3, 10 / 6000.0, 500 / 60.0, 1 / 3.0, 7, 1e-3, 0.1, 1e6 / 7, 3e9, 1e9 / 3};
  for (double cap : capacities) {
    for (double rate : rates) {
      const Limit limit{cap, rate};
      try {
        limit.validate("test");
      } catch (const std::invalid_argument&) {
        continue;  // a refill window beyond the clock's range
      }
      INFO("capacity " << cap << " rate " << rate);
      ManualClock clock;
      const int units = static_cast<int>(cap);
      {  // TokenBucket: in unit costs, then one cost
        Bucket b(limit, clock);
        CHECK(b.available() == cap);
        for (int i = 0; i < units; ++i) REQUIRE(b.try_acquire(1).ok());
        CHECK(b.try_acquire(1).status() == Status::not_now);
        Bucket whole(limit, clock);
        CHECK(whole.try_acquire(cap).ok());
        CHECK(whole.try_acquire(1e-6 * cap).status() == Status::not_now);
      }
      {  // a LimitSet dimension (the other one generous)
        Set s{{{"requests", Limit{1e6, 1e6}}, {"tokens", limit}}, clock};
        CHECK(s.available(1) == cap);
        for (int i = 0; i < units; ++i) REQUIRE(s.try_acquire({1, 1}).ok());
        CHECK(s.try_acquire({1, 1}).status() == Status::not_now);
        Set whole{{{"tokens", limit}}, clock};
        CHECK(whole.try_acquire({cap}).ok());
      }
      {  // a BucketRegistry key, compact and held
        tollgate::BucketRegistry<std::string, ManualClock> reg({.default_limit = limit}, clock);
        for (int i = 0; i < units; ++i) REQUIRE(reg.try_acquire("k", 1).ok());
        CHECK(reg.try_acquire("k", 1).status() == Status::not_now);
        CHECK(reg.try_acquire("whole", cap).ok());
        auto h = reg.get("held");
        CHECK(h->available() == cap);
        CHECK(h->try_acquire(cap).ok());
      }
    }
  }
  ManualClock clock;
  CHECK(Bucket(Limit::per_minute(500), clock).try_acquire(500).ok());
  Bucket m(Limit::per_minute(500), clock);
  for (int i = 0; i < 500; ++i) REQUIRE(m.try_acquire(1).ok());
  CHECK(m.available() == 0);
  Bucket nine(Limit{10, 10 / 6000.0}, clock);
  for (int i = 0; i < 9; ++i) REQUIRE(nine.try_acquire(1).ok());
  CHECK(nine.available() == 1);
  CHECK(nine.try_acquire(1).ok());
}

TEST_CASE("defects: a permit keeps its registry key's bucket through sweeps", "[defects][registry]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  tollgate::BucketRegistry<std::string, ManualClock> reg({.default_limit = Limit{10, 1}}, clock, &sched);
  auto permit = reg.get("k")->try_acquire_permit(4);  // the Handle is gone after this line
  REQUIRE(permit);
  clock.advance(1h);                     // the bucket is full again: fresh but for the permit
  CHECK(reg.sweep(1'000'000) == 0);      // not evicted, not folded away
  CHECK(reg.size() == 1);
  permit.settle(7);                      // touches the bucket: ASan would see a freed one
  CHECK(reg.get("k")->available() == 7);  // 10 - 3 overrun
  clock.advance(1h);
  CHECK(reg.sweep(1'000'000) == 1);  // settled: evictable again
  CHECK(reg.size() == 0);

  SECTION("an unsettled permit dropped releases the key too") {
    { auto p = reg.get("j")->try_acquire_permit(1); }
    clock.advance(1h);
    CHECK(reg.sweep(1'000'000) == 1);
  }
}

TEST_CASE("defects: a waiter and a co_awaited permit keep their registry key across sweeps", "[defects][registry]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  tollgate::BucketRegistry<std::string, ManualClock> reg({.default_limit = Limit{2, 1}}, clock, &sched);
  REQUIRE(reg.try_acquire("k", 2).ok());
  std::vector<Done> log;
  decltype(reg)::bucket_type::Permit kept;
  auto run = [&]() -> Task {
    kept = co_await reg.get("k")->acquire_permit(2.0);  // suspends: due at 2 s
    log.push_back({0, ns_of(clock.now()), kept.result().status()});
  };
  Task t = run();
  CHECK(reg.sweep(1'000'000) == 0);  // a queued waiter holds the bucket
  clock.advance(2s);
  REQUIRE(log.size() == 1);
  CHECK(log[0].status == Status::acquired);
  clock.advance(1h);
  CHECK(reg.sweep(1'000'000) == 0);  // the permit holds it
  kept.release();
  CHECK(reg.get("k")->available() == 2);
  clock.advance(1h);
  CHECK(reg.sweep(1'000'000) == 1);
}

TEST_CASE("defects: completions do not nest however many waiters release on resumption", "[defects]") {
  // Each waiter, once resumed, releases its permit: the next waiter is due at
  // once. Completed one inside the other this overflowed the stack at
  // 10,000-200,000 waiters.
  const int n = kSanitized ? 100'000 : 1'000'000;
  ManualClock clock;
  ManualScheduler sched(clock);
  Bucket b(Limit{1, 1}, clock, &sched);
  REQUIRE(b.try_acquire(1).ok());
  int resumed = 0;
  std::vector<Task> tasks;
  tasks.reserve(n);
  auto one = [&]() -> Task {
    auto p = co_await b.acquire_permit(1.0);
    if (p) ++resumed;
    p.release();
  };
  for (int i = 0; i < n; ++i) tasks.push_back(one());
  CHECK(b.waiters() == static_cast<std::size_t>(n));
  clock.advance(1s);  // the first is due; each release makes the next due
  CHECK(resumed == n);
  CHECK(b.waiters() == 0);
  CHECK(b.available() == 1);
}

TEST_CASE("defects: one settle or charge adds at most max_debt; garbage is refused and changes nothing", "[defects]") {
  ManualClock clock;
  Set set{{{"requests", Limit::per_minute(500)}, {"tokens", Limit::per_minute(30'000)}}, clock};
  CHECK(set.max_debt(1) == 30'000);
  auto p = set.try_acquire_permit({1, 1000});
  REQUIRE(p);
  p.settle({1, 1e11});  // an absurd usage figure
  // At most one capacity of debt: 30,000 tokens below empty, 60 s at 500/s,
  // then 1 more token (2 ms): not years.
  const AcquireResult r = set.try_acquire({1, 1});
  CHECK(r.status() == Status::not_now);
  CHECK(r.retry_after() == std::chrono::milliseconds(60'002));

  const double bad[] = {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(), -1, -1e300};
  Set fresh{{{"requests", Limit::per_minute(500)}, {"tokens", Limit::per_minute(30'000)}}, clock};
  for (double v : bad) {
    INFO("actual " << v);
    auto q = fresh.try_acquire_permit({1, 100});
    REQUIRE(q);
    const double before = fresh.available(1);
    CHECK_THROWS_AS(q.settle({1, v}), std::invalid_argument);
    CHECK_THROWS_AS(fresh.charge({0, v}), std::invalid_argument);
    CHECK_THROWS_AS(fresh.settle({1, 0}, {1, v}), std::invalid_argument);
    CHECK(fresh.available(1) == before);  // nothing changed
    CHECK_FALSE(q.settled());
    q.release();
  }

  Bucket b(Limit{10, 1}, clock);
  b.set_max_debt(2);
  CHECK(b.max_debt() == 2);
  REQUIRE(b.try_acquire(10).ok());
  b.charge(1e300);
  CHECK(b.try_acquire(1).retry_after() == 3s);  // 2 of debt, then 1
  b.set_limit(Limit{20, 1});                     // the bound survives a reconfiguration
  CHECK(b.max_debt() == 2);
  CHECK_THROWS_AS(b.set_max_debt(-1), std::invalid_argument);
  CHECK_THROWS_AS(b.set_max_debt(std::numeric_limits<double>::infinity()), std::invalid_argument);
  Bucket none(Limit{10, 1}, clock);
  none.set_max_debt(0);
  REQUIRE(none.try_acquire(10).ok());
  none.charge(5);  // no debt allowed: nothing taken
  CHECK(none.try_acquire(1).retry_after() == 1s);
}
