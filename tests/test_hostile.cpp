// Hostile configuration and input: every public entry point with zero,
// negative, NaN, infinite and extreme values; each case names its outcome.

#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include <tollgate/bucket_registry.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::AcquireResult;
using tollgate::Limit;
using tollgate::Status;
using tollgate::testing::ManualScheduler;
using Bucket = tollgate::TokenBucket<ManualClock>;

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kMax = std::numeric_limits<double>::max();
constexpr double kDenorm = std::numeric_limits<double>::denorm_min();

std::string what_of(const Limit& l) {
  try {
    ManualClock clock;
    Bucket b(l, clock);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "accepted";
}
}  // namespace

TEST_CASE("hostile: every bad capacity and rate is refused by name", "[hostile][config]") {
  struct Row {
    double capacity, rate;
    const char* expect;  // a fragment of the message, or "accepted"
  };
  const Row rows[] = {
      {0, 1, "capacity must be finite and greater than zero, got 0"},
      {-0.0, 1, "capacity must be finite and greater than zero, got -0"},
      {-5, 1, "capacity must be finite and greater than zero, got -5"},
      {kNaN, 1, "capacity must be finite and greater than zero, got nan"},
      {kInf, 1, "capacity must be finite and greater than zero, got inf"},
      {-kInf, 1, "capacity must be finite and greater than zero, got -inf"},
      {1, 0, "rate must be finite and greater than zero, got 0"},
      {1, -1, "rate must be finite and greater than zero, got -1"},
      {1, kNaN, "rate must be finite and greater than zero, got nan"},
      {1, kInf, "rate must be finite and greater than zero, got inf"},
      {kMax, 1, "exceeds the longest refill window"},     // ~1e308 s to refill
      {1, kDenorm, "exceeds the longest refill window"},  // 5e-324 per second
      {kDenorm, 1, "accepted"},                            // a tiny burst is legal
      {1, kMax, "accepted"},                               // refills at once
      {kMax, kMax, "accepted"},                            // capacity/rate = 1 s
      {4.62e9, 1, "exceeds the longest refill window"},    // just over 2^62 ns
      {4.6e9, 1, "accepted"},                              // just under
  };
  for (const Row& r : rows) {
    INFO("capacity " << r.capacity << ", rate " << r.rate);
    const std::string got = what_of(Limit{r.capacity, r.rate});
    if (std::string(r.expect) == "accepted") CHECK(got == "accepted");
    else CHECK(got.find(r.expect) != std::string::npos);
  }
}

TEST_CASE("hostile: costs at, just above and far above capacity", "[hostile]") {
  ManualClock clock;
  Bucket b(Limit{10, 1}, clock);
  CHECK(b.try_acquire(std::nextafter(10.0, kInf)).status() == Status::never);
  CHECK(b.try_acquire(kMax).status() == Status::never);
  CHECK(b.try_acquire(kDenorm).ok());  // the smallest positive cost is a cost
  // 10 minus the tiniest cost: the denormal's refill time rounds up to one
  // 2^-32 ns unit, which is within an admission's rounding allowance (a few
  // units, so that a full bucket always gives its whole capacity).
  CHECK(b.try_acquire(10).ok());
  CHECK(b.try_acquire(1e-6).status() == Status::not_now);
  CHECK(b.refund(kMax) <= 10);  // capped at capacity, no overflow
  CHECK(b.available() == std::nextafter(10.0, 0.0));  // 10 + the denormal taken, 10 given back
  CHECK(b.try_acquire(10).ok());
}

TEST_CASE("hostile: waits with zero, negative and maximal bounds", "[hostile]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Bucket b(Limit{1, 1}, clock, &sched);
  REQUIRE(b.try_acquire(1).ok());
  CHECK(b.acquire_blocking(1, std::chrono::nanoseconds(0)).status() == Status::not_now);
  CHECK(b.acquire_blocking(1, std::chrono::seconds(-5)).status() == Status::not_now);
  AcquireResult r;
  Task t = [](Bucket& bk, AcquireResult& out) -> Task {
    out = co_await bk.acquire_for(1, std::chrono::duration<double>(-kInf));
  }(b, r);
  CHECK(r.status() == Status::not_now);
  Task u = [](Bucket& bk, AcquireResult& out) -> Task {
    out = co_await bk.acquire_for(1, std::chrono::duration<double>(kNaN));
  }(b, r);
  CHECK(r.status() == Status::not_now);  // NaN bounds nothing: refused, not a hang
  CHECK(b.waiters() == 0);
}

TEST_CASE("hostile: clocks at both ends of their range", "[hostile][clock]") {
  for (auto start : {ManualClock::time_point::min() + std::chrono::hours(1), ManualClock::time_point{},
                     ManualClock::time_point::max() - std::chrono::hours(1)}) {
    INFO("start " << ns_of(start));
    ManualClock clock(start);
    ManualScheduler sched(clock);
    Bucket b(Limit{2, 1}, clock, &sched);
    CHECK(b.try_acquire(2).ok());
    CHECK(b.try_acquire(1).retry_after() == std::chrono::seconds(1));
    clock.advance(std::chrono::seconds(2));
    CHECK(b.available() == 2);
    b.pause_for(std::chrono::hours::max());  // absurd pauses: clamped, never overflowing
    b.pause_until(ManualClock::time_point::max());
    CHECK(b.try_acquire(1).status() == Status::not_now);
  }
  ManualClock top(ManualClock::time_point::max() - std::chrono::hours(1));
  CHECK_THROWS_AS(top.advance(std::chrono::hours(2)), std::invalid_argument);
  CHECK_THROWS_AS(top.advance(std::chrono::nanoseconds(-1)), std::invalid_argument);
}

TEST_CASE("hostile: registry keys that are empty, huge or binary", "[hostile][registry]") {
  ManualClock clock;
  tollgate::BucketRegistry<std::string, ManualClock> reg({.default_limit = Limit{1, 1}}, clock);
  CHECK(reg.try_acquire(std::string_view("")).ok());
  const AcquireResult huge = reg.try_acquire(std::string(1 << 20, 'x'));  // over max_key_bytes: refused, not stored
  CHECK(huge.status() == Status::invalid);
  CHECK(huge.reason_code() == tollgate::Reason::key_too_long);
  CHECK(huge.message() == "invalid: key longer than the registry's max_key_bytes (1048576 bytes)");
  CHECK_THROWS_AS(reg.get(std::string(257, 'x')), std::invalid_argument);
  CHECK(reg.try_acquire(std::string(256, 'x')).ok());  // at the bound: a key
  CHECK(reg.try_acquire(std::string_view("\0\xff\0", 3)).ok());
  CHECK(reg.try_acquire(std::string_view("\0\xff\0", 3)).status() == Status::not_now);  // same key
  CHECK(reg.try_acquire(std::string_view("\0\xff", 2)).ok());                        // another key
  CHECK(reg.size() == 4);
}
