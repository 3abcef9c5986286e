// Other limiters' published test vectors, replayed through tollgate's public
// API on the manual clock: Go's golang.org/x/time/rate (rate_test.go: the
// AllowN and Reserve tables, d = 100 ms) and the textbook GCRA examples.
// Where tollgate deliberately differs (a clock that jumps back, cancellation,
// a zero burst), the case says so and asserts tollgate's side; the
// differences are listed in docs/coming-from.md.

#include <chrono>
#include <stdexcept>
#include <vector>

#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"

using namespace std::chrono_literals;
using tollgate::Limit;
using tollgate::Status;
using tollgate::testing::ManualClock;
using tollgate::testing::ManualScheduler;

namespace {

using Bucket = tollgate::TokenBucket<ManualClock>;
constexpr auto d = 100ms;

// x/time/rate's NewLimiter(r, b): r tokens per second, a burst of b, full.
struct GoLimiter {
  GoLimiter(double r, double b) : bucket(Limit{b, r}, clock, &sched) {}
  ManualClock clock;
  ManualScheduler sched{clock};
  Bucket bucket;
  ManualClock::time_point t0 = clock.now();
  ManualClock::time_point t(int k) const { return t0 + k * d; }
};

struct Allow {
  int t;  // in multiples of d
  double n;
  bool ok;
};

void run(GoLimiter& lim, const std::vector<Allow>& allows) {
  for (std::size_t i = 0; i < allows.size(); ++i) {
    const Allow& a = allows[i];
    INFO("step " << i << ": AllowN(t" << a.t << ", " << a.n << ")");
    CHECK(lim.bucket.try_acquire_at(lim.t(a.t), a.n).ok() == a.ok);
  }
}

// ReserveN(t, n) with x/time/rate's expectations: ok, and the instant to act
// (in multiples of d). tollgate reserves at the clock's now.
Bucket::Reservation reserve(GoLimiter& lim, int at, double n, int act, bool ok,
                            std::chrono::nanoseconds max_wait = std::chrono::nanoseconds::max()) {
  lim.clock.advance_to(lim.t(at));
  Bucket::Reservation r = lim.bucket.reserve(n, max_wait);
  INFO("ReserveN(t" << at << ", " << n << ")");
  CHECK(static_cast<bool>(r) == ok);
  if (ok && r) CHECK(r.time_to_act() == lim.t(act));
  return r;
}

}  // namespace

TEST_CASE("x/time/rate TestLimiterBurst1: NewLimiter(10, 1)", "[vectors][go]") {
  GoLimiter lim(10, 1);
  run(lim, {{0, 1, true}, {0, 1, false}, {0, 1, false}, {1, 1, true}, {1, 1, false}, {1, 1, false},
            {2, 2, false},  // more than the burst: never
            {2, 1, true}, {2, 1, false}});
  CHECK(lim.bucket.try_acquire_at(lim.t(2), 2).status() == Status::never);
}

TEST_CASE("x/time/rate TestLimiterBurst3: NewLimiter(10, 3)", "[vectors][go]") {
  GoLimiter lim(10, 3);
  run(lim, {{0, 2, true},
            {0, 2, false},
            {0, 1, true},
            {0, 1, false},
            {1, 4, false},
            {2, 1, true},
            {3, 1, true},
            {4, 1, true},
            {4, 1, true},
            {4, 1, false},
            {4, 1, false},
            {9, 3, true},
            {9, 0, true}});  // a zero cost is always admitted
}

TEST_CASE("x/time/rate TestLimiter_noTruncationErrors: NewLimiter(0.7692307692307693, 1).Allow()",
          "[vectors][go]") {
  GoLimiter lim(0.7692307692307693, 1);
  CHECK(lim.bucket.try_acquire_at(lim.t(0), 1).ok());
}

TEST_CASE("x/time/rate TestSimpleReserve, TestMix, TestReserveMax", "[vectors][go]") {
  SECTION("TestSimpleReserve: NewLimiter(10, 2)") {
    GoLimiter lim(10, 2);
    (void)reserve(lim, 0, 2, 0, true);
    (void)reserve(lim, 0, 2, 2, true);
    (void)reserve(lim, 3, 2, 4, true);
  }
  SECTION("TestMix: NewLimiter(10, 2)") {
    GoLimiter lim(10, 2);
    (void)reserve(lim, 0, 3, 1, false);  // more than the burst
    (void)reserve(lim, 0, 2, 0, true);
    run(lim, {{1, 2, false}});
    (void)reserve(lim, 1, 2, 2, true);
    run(lim, {{1, 1, false}});  // a reservation is ahead: a newcomer waits behind it
    run(lim, {{3, 1, true}});
  }
  SECTION("TestReserveMax: NewLimiter(10, 2), maxReserve d") {
    GoLimiter lim(10, 2);
    (void)reserve(lim, 0, 2, 0, true, d);
    (void)reserve(lim, 0, 1, 1, true, d);
    (void)reserve(lim, 0, 1, 2, false, d);  // the instant to act is too far away
  }
}

TEST_CASE("x/time/rate TestCancelLast, TestCancelTooLate, TestCancelInvalid", "[vectors][go]") {
  SECTION("TestCancelLast: cancelled before its instant, the cost comes back") {
    GoLimiter lim(10, 2);
    (void)reserve(lim, 0, 2, 0, true);
    Bucket::Reservation r = reserve(lim, 0, 2, 2, true);
    lim.clock.advance_to(lim.t(1));
    CHECK(r.cancel());
    (void)reserve(lim, 1, 2, 2, true);
  }
  SECTION("TestCancelTooLate: at or after its instant, nothing comes back") {
    GoLimiter lim(10, 2);
    (void)reserve(lim, 0, 2, 0, true);
    Bucket::Reservation r = reserve(lim, 0, 2, 2, true);
    lim.clock.advance_to(lim.t(3));
    CHECK_FALSE(r.cancel());
    (void)reserve(lim, 3, 2, 4, true);
  }
  SECTION("TestCancelInvalid: cancelling a refused reservation gives nothing") {
    GoLimiter lim(10, 2);
    (void)reserve(lim, 0, 2, 0, true);
    Bucket::Reservation r = reserve(lim, 0, 3, 3, false);
    CHECK_FALSE(r.cancel());
    (void)reserve(lim, 0, 2, 2, true);
  }
}

TEST_CASE("x/time/rate TestCancelMulti: tollgate's cancellation is exact where Go's is not", "[vectors][go]") {
  GoLimiter lim(10, 4);
  (void)reserve(lim, 0, 4, 0, true);
  Bucket::Reservation a = reserve(lim, 0, 3, 3, true);
  Bucket::Reservation b = reserve(lim, 0, 1, 4, true);
  Bucket::Reservation c = reserve(lim, 0, 1, 5, true);
  lim.clock.advance_to(lim.t(1));
  CHECK(c.cancel());
  CHECK(a.cancel());
  // Go answers t5 here: its cancellation gives back only what no later
  // reservation has "used". tollgate gives both costs back exactly: with only
  // b's 1 outstanding, 1 token has refilled by t1 and b is due then, so 3 more
  // are due 3 d later.
  (void)reserve(lim, 1, 3, 4, true);
  lim.sched.run_due();
  CHECK(b.done());
}

TEST_CASE("x/time/rate TestLimiterJumpBackwards: tollgate holds a clock that jumps back at the latest instant",
          "[vectors][go]") {
  GoLimiter lim(10, 3);
  // Go: start at t1, jump back to t0 (two tokens remain), then at t1 "got a
  // token": it moved its last update back to t0 and refills t0..t1 again.
  // tollgate treats an instant earlier than one already seen as that one:
  // nothing refills until time passes t1.
  run(lim, {{1, 1, true}, {0, 1, true}, {0, 1, true}, {0, 1, false}, {0, 1, false},
            {1, 1, false},  // Go: true
            {2, 1, true}, {2, 1, false}, {2, 1, false}});
}

TEST_CASE("x/time/rate TestZeroBurst: a zero capacity is a configuration error, not a limiter that refuses",
          "[vectors][go]") {
  ManualClock clock;
  CHECK_THROWS_AS(Bucket(Limit{0, 10}, clock), std::invalid_argument);
}

TEST_CASE("GCRA: emission interval T = 1/rate, tolerance tau = (capacity - 1) * T", "[vectors][gcra]") {
  // The textbook virtual-scheduling example: T = 1 s, tau = 2 s (rate 1/s,
  // capacity 3). Arrivals at 0, 0, 0 conform; a fourth at 0 does not (its
  // theoretical arrival time would be 3 s > 0 + tau); at 1 s one more
  // conforms; at 1.5 s none; by 4.2 s the bucket is full again: 3 do, not 4.
  GoLimiter lim(1, 3);
  auto at = [&](double seconds) {
    return lim.t0 + std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(seconds));
  };
  CHECK(lim.bucket.try_acquire_at(at(0), 1).ok());
  CHECK(lim.bucket.try_acquire_at(at(0), 1).ok());
  CHECK(lim.bucket.try_acquire_at(at(0), 1).ok());
  const tollgate::AcquireResult late = lim.bucket.try_acquire_at(at(0), 1);
  CHECK(late.status() == Status::not_now);
  CHECK(late.retry_after() == 1s);
  CHECK(lim.bucket.try_acquire_at(at(1), 1).ok());
  CHECK_FALSE(lim.bucket.try_acquire_at(at(1.5), 1).ok());
  CHECK(lim.bucket.try_acquire_at(at(4.2), 1).ok());
  CHECK(lim.bucket.try_acquire_at(at(4.2), 1).ok());
  CHECK(lim.bucket.try_acquire_at(at(4.2), 1).ok());
  CHECK_FALSE(lim.bucket.try_acquire_at(at(4.2), 1).ok());
}
