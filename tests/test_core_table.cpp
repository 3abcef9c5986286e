// Table-driven tests of the core arithmetic (detail::BucketCore): explicit
// instants, no clock, no lock.

#include <cmath>
#include <limits>

#include <tollgate/detail/bucket_core.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using tollgate::AcquireResult;
using tollgate::Limit;
using tollgate::Status;
using tollgate::detail::BucketCore;
using tollgate::detail::fine_from_ns;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Row {
  std::int64_t t_ms;
  double cost;
  Status expect;
  std::int64_t retry_ns;  // for not_now
};

}  // namespace

TEST_CASE("core: try_acquire table, capacity 10, rate 2/s", "[core]") {
  BucketCore core(Limit{10, 2});
  const Row rows[] = {
      {0, 10, Status::acquired, 0},          // starts full
      {0, 1, Status::not_now, 500'000'000},  // empty: one token takes 0.5 s
      {250, 1, Status::not_now, 250'000'000},
      {500, 1, Status::acquired, 0},
      {500, 0, Status::acquired, 0},  // a zero cost always conforms
      {1000, 2, Status::not_now, 500'000'000},
      {1500, 2, Status::acquired, 0},
      {100'000, 10, Status::acquired, 0},  // long idle: capped at capacity, not 197 tokens
      {100'000, 0.5, Status::not_now, 250'000'000},
      {100'000, 11, Status::never, 0},
      {100'000, -1, Status::invalid, 0},
      {100'000, kNaN, Status::invalid, 0},
      {100'000, kInf, Status::invalid, 0},
      {99'000, 1, Status::not_now, 500'000'000},  // backwards: clamped to 100 s
      {100'500, 1, Status::acquired, 0},
  };
  for (std::size_t i = 0; i < std::size(rows); ++i) {
    const Row& r = rows[i];
    INFO("step " << i << " t=" << r.t_ms << "ms cost=" << r.cost);
    const AcquireResult got = core.try_acquire(fine_from_ns(r.t_ms * 1'000'000), r.cost);
    CHECK(got.status() == r.expect);
    if (r.expect == Status::not_now) CHECK(got.retry_after().count() == r.retry_ns);
  }
}

TEST_CASE("core: failures name what was wrong", "[core]") {
  BucketCore core(Limit{10, 2});
  CHECK(core.try_acquire(0, 11).reason() == "cost exceeds capacity");
  CHECK(core.try_acquire(0, 11).message() == "never: cost exceeds capacity (cost 11)");
  CHECK(core.try_acquire(0, -1).reason() == "cost is negative");
  CHECK(core.try_acquire(0, kNaN).reason() == "cost is NaN");
  CHECK(core.try_acquire(0, kInf).reason() == "cost is infinite");
  CHECK(core.try_acquire(0, -kInf).reason() == "cost is negative");
  CHECK(core.available(0) == 10);  // no failure took anything
}

TEST_CASE("core: retry-after is rounded up, never down", "[core]") {
  // rate 3/s: one token takes 333 333 333.33 ns; the retry must be ...334.
  BucketCore core(Limit{1, 3});
  REQUIRE(core.try_acquire(0, 1).ok());
  const AcquireResult r = core.try_acquire(0, 1);
  REQUIRE(r.status() == Status::not_now);
  CHECK(r.retry_after().count() == 333'333'334);
  CHECK_FALSE(core.try_acquire(fine_from_ns(333'333'333), 1).ok());
  CHECK(core.try_acquire(fine_from_ns(333'333'334), 1).ok());
}

TEST_CASE("core: fractional costs and rates are exact", "[core]") {
  BucketCore core(Limit{1.5, 0.25});  // 0.25 units/s: one unit per 4 s
  CHECK(core.try_acquire(0, 1.5).ok());
  const AcquireResult r = core.try_acquire(0, 0.75);
  CHECK(r.retry_after().count() == 3'000'000'000);
  CHECK(core.try_acquire(fine_from_ns(3'000'000'000), 0.75).ok());
  CHECK(core.available(fine_from_ns(3'000'000'000)) == 0);
  CHECK(core.available(fine_from_ns(5'000'000'000)) == 0.5);
}

TEST_CASE("core: refund is capped at capacity and exact", "[core]") {
  BucketCore core(Limit{10, 1});
  REQUIRE(core.try_acquire(0, 7).ok());
  CHECK(core.available(0) == 3);
  CHECK(core.refund(0, 4) == 4);
  CHECK(core.available(0) == 7);
  CHECK(core.refund(0, 100) == 3);  // only up to capacity
  CHECK(core.available(0) == 10);
  CHECK(core.refund(0, 1) == 0);
}

TEST_CASE("core: a clock near the top of its range behaves like one at zero", "[core]") {
  // The bucket works on offsets from its origin, so only differences matter;
  // this checks the offsets themselves stay exact near the 64-bit limit.
  const std::int64_t top = std::numeric_limits<std::int64_t>::max() - 1'000'000'000'000;
  for (std::int64_t origin : {std::int64_t{0}, top}) {
    INFO("origin " << origin);
    BucketCore core(Limit{10, 2});
    auto at = [&](std::int64_t ms) { return fine_from_ns(origin + ms * 1'000'000) - fine_from_ns(origin); };
    CHECK(core.try_acquire(at(0), 10).ok());
    CHECK(core.try_acquire(at(499), 1).retry_after().count() == 1'000'000);
    CHECK(core.try_acquire(at(500), 1).ok());
    CHECK(core.available(at(1'000'000)) == 10);
  }
}

TEST_CASE("core: no drift over 10^9 operations", "[core]") {
  // rate 3/s is the hard case: 1/3 s is not a whole number of nanoseconds.
  // Each interval is rounded up to 2^-32 ns once and then only added, so after
  // N admissions the bucket is behind exact time by at most N * 2^-32 ns:
  // 0.23 ns after 10^9 operations, and never ahead (never admits early).
  BucketCore core(Limit{1, 3});
  const auto iv = core.interval(1);
  const tollgate::detail::fine_t exact_times_3 = tollgate::detail::fine_from_ns(1'000'000'000);  // 3 intervals = 1 s
  CHECK(3 * iv >= exact_times_3);
  CHECK(3 * iv - exact_times_3 <= 3);  // at most one fine unit per interval
  using tollgate::detail::fine_t;
  const fine_t drift_1e9 = (fine_t(1'000'000'000) * iv * 3 - fine_t(1'000'000'000) * exact_times_3) / 3;
  CHECK(drift_1e9 >= 0);
  CHECK(drift_1e9 < tollgate::detail::fine_per_ns);  // < 1 ns after 10^9 admissions

  // And run 3 * 10^6 admissions of cost 1 (capacity 2, so the bucket is never
  // full and no accrual is capped away), each at the first whole nanosecond it
  // conforms: the k-th at ceil(k * interval - allowance), never 1 ns before
  // (the allowance, a few 2^-32 ns, is what lets a full bucket give its
  // whole capacity at one instant).
  BucketCore run(Limit{2, 3});
  REQUIRE(run.try_acquire(0, 2).ok());
  REQUIRE(run.tat() == 0);
  const fine_t slack = tollgate::detail::admission_slack(1, 2, run.tau());
  REQUIRE(slack > 0);
  REQUIRE(slack <= 8);
  for (int k = 1; k <= 3'000'000; ++k) {
    const auto due_ns = static_cast<std::int64_t>(tollgate::detail::ceil_ns(fine_t(k) * iv - slack));
    if (run.try_acquire(fine_from_ns(due_ns - 1), 1).ok()) FAIL("admitted 1 ns early at k=" << k);
    if (!run.try_acquire(fine_from_ns(due_ns), 1).ok()) FAIL("refused at its due instant, k=" << k);
  }
  CHECK(run.tat() == fine_t(3'000'000) * iv);
  // k = 3: exactly 1 s, where exact arithmetic puts it (3 * iv is 3 units past it).
  BucketCore three(Limit{2, 3});
  REQUIRE(three.try_acquire(0, 2).ok());
  for (int k = 1; k <= 2; ++k) REQUIRE(three.try_acquire(fine_t(k) * iv + 1, 1).ok());
  CHECK(three.try_acquire(fine_from_ns(1'000'000'000), 1).ok());
  // 3e6 tokens at 3/s is exactly 10^6 s: the last admission is at most 1 ns late.
  CHECK(tollgate::detail::ceil_ns(run.tat()) - 1'000'000'000'000'000 <= 1);
}

TEST_CASE("core: tiny and huge rates keep their precision", "[core]") {
  {  // one request per 65 536 s (~18 h), burst 2
    BucketCore core(Limit{2, 1.0 / 65536});
    CHECK(core.try_acquire(0, 2).ok());
    CHECK(core.try_acquire(0, 1).retry_after().count() == 65'536'000'000'000);
  }
  {  // 3e9 units/s: governor would round 1/3 ns to 0 or 1 ns (0% or 200% error)
    BucketCore core(Limit{3000, 3e9});
    CHECK(core.try_acquire(0, 3000).ok());
    CHECK(core.try_acquire(fine_from_ns(999), 3000).status() == Status::not_now);
    CHECK(core.try_acquire(fine_from_ns(1000), 3000).ok());  // exactly 1 us
  }
}

TEST_CASE("core: available() is what try_acquire takes (regression, found by fuzz_registry)", "[core]") {
  // At rate 3/s the level a few 2^-32 ns short of full converted to double
  // gave exactly 6.0 while try_acquire(6) failed. available() reports what
  // an admission takes, its rounding allowance included, and never the full
  // capacity unless the bucket is full.
  BucketCore core(Limit{6, 3});
  REQUIRE(core.try_acquire(0, 6).ok());
  const auto slack = tollgate::detail::admission_slack(6, 6, core.tau());
  for (tollgate::detail::fine_t short_by : {tollgate::detail::fine_t(1), slack, slack + 1, tollgate::detail::fine_t(100),
                                            tollgate::detail::fine_t(1 << 20)}) {
    BucketCore c = core;
    const auto now = core.tau() - short_by;
    const double avail = c.available(now);
    INFO("short by " << static_cast<long long>(short_by) << " fine units: available " << avail);
    CHECK(avail < 6);  // not full, and says so
    if (short_by <= slack) CHECK(avail == std::nextafter(6.0, 0.0));
    CHECK(c.try_acquire(now, avail).ok());
  }
  CHECK(core.available(core.tau()) == 6);
}
