// reserve(): a cost taken now for an instant that may lie in the future
// (x/time/rate's Reserve), FIFO with waiters, cancelled exactly before its
// instant, spent at or after it.

#include <chrono>
#include <optional>
#include <utility>

#include <tollgate/limit_set.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using namespace std::chrono_literals;
using tollgate::AcquireResult;
using tollgate::Limit;
using tollgate::Status;
using tollgate::testing::ManualScheduler;

namespace {
using Bucket = tollgate::TokenBucket<ManualClock>;
using Set = tollgate::LimitSet<ManualClock>;

// A bucket on a manual clock and its scheduler; `t0` is the start.
struct Rig {
  explicit Rig(Limit limit) : b(limit, clock, &sched) {}
  ManualClock clock;
  ManualScheduler sched{clock};
  Bucket b;
  ManualClock::time_point t0 = clock.now();
};

Task acquire_into(Bucket& b, double cost, std::optional<AcquireResult>& out, ManualClock& clock,
                  std::optional<ManualClock::time_point>& at) {
  out = co_await b.acquire(cost);
  at = clock.now();
}
}  // namespace

TEST_CASE("reserve: granted at once while the tokens are there, then for the instant they will be",
          "[reserve]") {
  Rig rig(Limit{2, 1});
  auto& [clock, sched, b, t0] = rig;
  Bucket::Reservation a = b.reserve(1);
  Bucket::Reservation c = b.reserve(1);
  REQUIRE(a);
  REQUIRE(c);
  CHECK(a.time_to_act() == t0);
  CHECK(a.done());
  Bucket::Reservation d = b.reserve(1);
  REQUIRE(d);
  CHECK(d.time_to_act() == t0 + 1s);
  CHECK_FALSE(d.done());
  // A newcomer is served after the reservation: 2 s away, not 1 s.
  CHECK(b.try_acquire(1).retry_after() == 2s);
  clock.advance(1s);
  CHECK(d.done());
  CHECK(d.result().status() == Status::acquired);
  CHECK_FALSE(d.cancel());  // its instant has come: the tokens are spent
  CHECK(b.available() == 0);
}

TEST_CASE("reserve: cancel before the instant gives the cost back exactly; waiters behind move up",
          "[reserve]") {
  Rig rig(Limit{1, 1});
  auto& [clock, sched, b, t0] = rig;
  REQUIRE(b.try_acquire(1));
  Bucket::Reservation r = b.reserve(1);  // due at t0 + 1 s
  REQUIRE(r.time_to_act() == t0 + 1s);
  std::optional<AcquireResult> got;
  std::optional<ManualClock::time_point> at;
  Task t = acquire_into(b, 1, got, clock, at);  // queued behind: due at t0 + 2 s
  clock.advance(500ms);
  REQUIRE(r.cancel());
  CHECK(r.done());
  CHECK(r.result().status() == Status::cancelled);
  CHECK_FALSE(r.cancel());  // once only
  clock.advance(499ms);
  CHECK_FALSE(got);
  clock.advance(1ms);
  REQUIRE(got);
  CHECK(got->ok());
  CHECK(*at == t0 + 1s);  // moved up by exactly the reservation's cost
  CHECK(b.try_acquire(1).retry_after() == 1s);
}

TEST_CASE("reserve: a wait beyond max_wait is refused and takes nothing; bad costs fail as try_acquire",
          "[reserve]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Bucket b(Limit{1, 1}, clock, &sched);
  REQUIRE(b.try_acquire(1));
  Bucket::Reservation r = b.reserve(1, 500ms);
  CHECK_FALSE(r);
  CHECK(r.result().status() == Status::not_now);
  CHECK(r.result().retry_after() == 1s);
  CHECK_FALSE(r.cancel());
  CHECK(b.waiters() == 0);
  CHECK(b.try_acquire(1).retry_after() == 1s);  // nothing was taken
  CHECK(b.reserve(2).result().status() == Status::never);
  CHECK(b.reserve(-1).result().status() == Status::invalid);
}

TEST_CASE("reserve: a dropped reservation stays taken; one outliving its bucket is safe", "[reserve]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  std::optional<Bucket> b(std::in_place, Limit{1, 1}, clock, &sched);
  REQUIRE(b->try_acquire(1));
  { (void)b->reserve(1); }  // due in 1 s; dropped, not cancelled
  CHECK(b->try_acquire(1).retry_after() == 2s);
  clock.advance(1s);  // its instant: the node is freed by the completion
  CHECK(b->try_acquire(1).retry_after() == 1s);
  Bucket::Reservation kept = b->reserve(1);
  REQUIRE_FALSE(kept.done());
  b.reset();  // the bucket ends first: the reservation finishes cancelled
  CHECK(kept.done());
  CHECK(kept.result().status() == Status::cancelled);
}

TEST_CASE("reserve: a limit set reserves every dimension for the instant the latest one allows",
          "[reserve][limitset]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set set({{"requests", Limit{10, 10}}, {"tokens", Limit{1000, 100}}}, clock, &sched);
  const auto t0 = clock.now();
  REQUIRE(set.try_acquire({1, 900}));
  Set::Reservation r = set.reserve({1, 300});  // tokens: 200 short at 100/s
  REQUIRE(r);
  CHECK(r.time_to_act() == t0 + 2s);
  CHECK(set.try_acquire({1, 1}).status() == Status::not_now);  // FIFO: behind the reservation
  REQUIRE(r.cancel());
  CHECK(set.available(1) == 100);
  clock.advance(2s);
  CHECK(set.try_acquire({1, 300}));
}
