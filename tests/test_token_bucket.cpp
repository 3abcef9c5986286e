// TokenBucket with a manual clock: try_acquire, configuration errors,
// reconfiguration, refunds and odd clocks; over std::mutex and NullMutex.

#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>

#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::Limit;
using tollgate::NullMutex;
using tollgate::Status;
using tollgate::testing::ManualScheduler;

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

template <class F>
std::string thrown_message(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "<nothing thrown>";
}
}  // namespace

TEMPLATE_TEST_CASE("bucket: burst, then the refill rate", "[bucket]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  ManualClock clock;
  tollgate::TokenBucket<ManualClock, TestType> bucket(Limit{10, 2}, clock);
  for (int i = 0; i < 10; ++i) CHECK(bucket.try_acquire().ok());
  auto r = bucket.try_acquire();
  CHECK(r.status() == Status::not_now);
  CHECK(r.retry_after() == 500ms);
  clock.advance(499ms);
  CHECK_FALSE(bucket.try_acquire().ok());
  clock.advance(1ms);
  CHECK(bucket.try_acquire().ok());
  clock.advance(10s);
  CHECK(bucket.available() == 10);
  CHECK(bucket.try_acquire(10).ok());
  CHECK(bucket.try_acquire(11).status() == Status::never);
}

TEST_CASE("bucket: invalid configuration throws and names the value", "[bucket][config]") {
  using B = tollgate::TokenBucket<ManualClock>;
  CHECK(thrown_message([] { B b(Limit{0, 1}); }) ==
        "TokenBucket::TokenBucket: capacity must be finite and greater than zero, got 0");
  CHECK(thrown_message([] { B b(Limit{-1, 1}); }) ==
        "TokenBucket::TokenBucket: capacity must be finite and greater than zero, got -1");
  CHECK(thrown_message([] { B b(Limit{kNaN, 1}); }) ==
        "TokenBucket::TokenBucket: capacity must be finite and greater than zero, got nan");
  CHECK(thrown_message([] { B b(Limit{kInf, 1}); }) ==
        "TokenBucket::TokenBucket: capacity must be finite and greater than zero, got inf");
  CHECK(thrown_message([] { B b(Limit{1, 0}); }) ==
        "TokenBucket::TokenBucket: rate must be finite and greater than zero, got 0");
  CHECK(thrown_message([] { B b(Limit{1, -kInf}); }) ==
        "TokenBucket::TokenBucket: rate must be finite and greater than zero, got -inf");
  CHECK(thrown_message([] { B b(Limit{1, kNaN}); }) ==
        "TokenBucket::TokenBucket: rate must be finite and greater than zero, got nan");
  // A refill window that would overflow 64-bit nanoseconds.
  CHECK(thrown_message([] { B b(Limit{1e10, 1}); }).find("exceeds the longest refill window") !=
        std::string::npos);
  CHECK(thrown_message([] { B b(Limit{1, 1e-300}); }).find("exceeds the longest refill window") !=
        std::string::npos);

  B b(Limit{5, 1});
  CHECK(thrown_message([&] { b.set_rate(0); }) ==
        "TokenBucket::set_rate: rate must be finite and greater than zero, got 0");
  CHECK(thrown_message([&] { b.set_capacity(kNaN); }) ==
        "TokenBucket::set_capacity: capacity must be finite and greater than zero, got nan");
  CHECK(thrown_message([&] { (void)b.refund(-1); }) == "TokenBucket::refund: cost must be finite and >= 0, got -1");
  CHECK(thrown_message([&] { (void)b.refund(kNaN); }) ==
        "TokenBucket::refund: cost must be finite and >= 0, got nan");
  CHECK(thrown_message([&] { (void)b.refund(kInf); }) ==
        "TokenBucket::refund: cost must be finite and >= 0, got inf");
  CHECK(b.limit() == Limit{5, 1});  // nothing was changed by the failures
}

TEST_CASE("bucket: Limit helpers", "[bucket][config]") {
  CHECK(Limit::per_minute(60) == Limit{60, 1});
  CHECK(Limit::per_minute(600, 20) == Limit{20, 10});
  CHECK(Limit::per_second(5) == Limit{5, 5});
  CHECK(Limit::per_hour(3600, 1) == Limit{1, 1});
}

TEMPLATE_TEST_CASE("bucket: a clock near the top of its range", "[bucket][clock]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  // Same script at two origins; every observable must be identical.
  for (auto origin : {ManualClock::time_point{}, ManualClock::max() - 3600s}) {
    INFO("origin " << ns_of(origin));
    ManualClock clock(origin);
    tollgate::TokenBucket<ManualClock, TestType> bucket(Limit{10, 2}, clock);
    CHECK(bucket.try_acquire(10).ok());
    CHECK(bucket.try_acquire(4).retry_after() == 2s);
    clock.advance(1500ms);
    CHECK(bucket.available() == 3);
    CHECK(bucket.try_acquire(3).ok());
    clock.advance(1h - 10s);
    CHECK(bucket.available() == 10);
  }
}

TEMPLATE_TEST_CASE("bucket: a clock that steps backwards is clamped", "[bucket][clock]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  ManualClock clock(ManualClock::time_point(100s));
  tollgate::TokenBucket<ManualClock, TestType> bucket(Limit{10, 1}, clock);
  CHECK(bucket.try_acquire(10).ok());
  clock.advance(5s);
  CHECK(bucket.available() == 5);
  clock.set(ManualClock::time_point(50s));  // 55 s backwards
  CHECK(bucket.available() == 5);             // no tokens taken back ...
  CHECK(bucket.try_acquire(5).ok());
  clock.advance(2s);  // ... and no interval re-credited: still 5 s behind
  CHECK(bucket.available() == 0);
  CHECK(bucket.try_acquire(1).retry_after() == 1s);
}

TEMPLATE_TEST_CASE("bucket: refund never fills above capacity", "[bucket]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  ManualClock clock;
  tollgate::TokenBucket<ManualClock, TestType> bucket(Limit{10, 1}, clock);
  CHECK(bucket.try_acquire(8).ok());
  CHECK(bucket.refund(3) == 3);
  CHECK(bucket.available() == 5);
  CHECK(bucket.refund(20) == 5);
  CHECK(bucket.available() == 10);
}

TEMPLATE_TEST_CASE("bucket: set_rate settles the tokens accrued so far", "[bucket][reconfigure]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  ManualClock clock;
  tollgate::TokenBucket<ManualClock, TestType> bucket(Limit{100, 1}, clock);
  CHECK(bucket.try_acquire(100).ok());
  clock.advance(10s);  // 10 tokens accrued at the old rate
  bucket.set_rate(10);
  CHECK(bucket.available() == 10);  // not 100: no retroactive credit
  clock.advance(1s);
  CHECK(bucket.available() == 20);
  bucket.set_rate(0.5);
  clock.advance(2s);
  CHECK(bucket.available() == 21);
}

TEMPLATE_TEST_CASE("bucket: set_capacity drops what no longer fits", "[bucket][reconfigure]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  ManualClock clock;
  tollgate::TokenBucket<ManualClock, TestType> bucket(Limit{10, 1}, clock);
  bucket.set_capacity(4);
  CHECK(bucket.available() == 4);
  CHECK(bucket.try_acquire(5).status() == Status::never);
  bucket.set_capacity(8);
  CHECK(bucket.available() == 4);  // raising capacity creates no tokens
  clock.advance(10s);
  CHECK(bucket.available() == 8);
}

TEST_CASE("bucket: a clock-less bucket cannot wait, and says so", "[bucket]") {
  ManualClock clock;
  tollgate::TokenBucket<ManualClock> bucket(Limit{1, 1}, clock);  // no scheduler
  CHECK(bucket.acquire_blocking(1).ok());
  auto r = bucket.acquire_blocking(1);
  CHECK(r.status() == Status::invalid);
  CHECK(r.reason() == "bucket has no scheduler to wait with");
  CHECK(bucket.available() == 0);
}

TEMPLATE_TEST_CASE("bucket: the upstream's remaining count corrects downwards only", "[bucket][headers]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  ManualClock clock;
  tollgate::TokenBucket<ManualClock, TestType> bucket(Limit{100, 10}, clock);
  bucket.limit_remaining(30);  // another client of the same quota used 70
  CHECK(bucket.available() == 30);
  bucket.limit_remaining(50);  // never upwards
  CHECK(bucket.available() == 30);
  bucket.limit_remaining(1e9);
  CHECK(bucket.available() == 30);
  clock.advance(1s);
  CHECK(bucket.available() == 40);  // refills from there as usual
  bucket.limit_remaining(0);
  CHECK(bucket.try_acquire(1).retry_after() == 100ms);
  CHECK_THROWS_AS(bucket.limit_remaining(-1), std::invalid_argument);
  CHECK_THROWS_AS(bucket.limit_remaining(std::numeric_limits<double>::quiet_NaN()), std::invalid_argument);
}
