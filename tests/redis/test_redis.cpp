// RedisLimitSet against a real redis-server (started by the CTest fixture
// "redis: start server"). Time is the manual clock, sent to the script
// instead of the server's TIME (RedisLimitOptions::time_override), and waits
// run on the manual scheduler, so every instant here is exact: the Redis set
// is compared operation by operation with the in-process LimitSet.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cstdlib>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <tollgate/stop_token.hpp>
#include <string>
#include <vector>

#include <tollgate/limit_set.hpp>
#include <tollgate/redis.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>

#include "catch.hpp"
#include "redis_support.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::AcquireResult;
using tollgate::Costs;
using tollgate::Dimension;
using tollgate::Limit;
using tollgate::LimitSet;
using tollgate::Reason;
using tollgate::Status;
using tollgate::testing::ManualScheduler;
namespace redis = tollgate::redis;

namespace {

using tgredis::fixture;

// A manual clock at a realistic Unix time, its scheduler, and the override
// that makes the script use it.
struct Rig {
  ManualClock clock{ManualClock::time_point(std::chrono::seconds(1'795'000'000))};
  ManualScheduler sched{clock};
  redis::Connection conn{fixture()};
  std::string key;

  explicit Rig(std::string name) : key("tollgate-test:" + std::move(name)) { (void)conn.command({"DEL", key}); }

  redis::RedisLimitOptions options() const {
    redis::RedisLimitOptions o;
    ManualClock c = clock;
    o.time_override = [c] { return c.now().time_since_epoch(); };
    return o;
  }
  using Set = redis::RedisLimitSet<ManualClock>;
  Set make(std::vector<Dimension> dims, redis::RedisLimitOptions o) { return Set(std::move(dims), conn, key, std::move(o), clock, &sched); }
  Set make(std::vector<Dimension> dims) { return make(std::move(dims), options()); }
  // Every reply queued so far has been handled (replies run in order).
  void barrier() {
    REQUIRE(conn.command({"PING"}));
    REQUIRE(conn.command({"PING"}));
  }
};

struct Completion {
  int id;
  std::int64_t t_ns;
  Status status;
  friend bool operator==(const Completion&, const Completion&) = default;
};

}  // namespace

TEST_CASE("take, refund, charge, pause and remaining match the in-process set, operation by operation") {
  const std::int64_t rates[] = {1, 2, 4, 5, 10, 1000};
  for (int seed = 0; seed < 30; ++seed) {
    CAPTURE(seed);
    std::mt19937_64 rng(static_cast<std::uint64_t>(seed));
    auto pick = [&](std::int64_t n) { return static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(n)); };
    Rig rig("compare-" + std::to_string(seed));
    std::vector<Dimension> dims;
    const std::size_t n = 1 + static_cast<std::size_t>(pick(3));
    for (std::size_t d = 0; d < n; ++d)
      dims.push_back({"d" + std::to_string(d), Limit{double(1 + pick(16)), double(rates[pick(6)])}});
    auto remote = rig.make(dims);
    LimitSet<ManualClock> local(dims, rig.clock);
    auto costs = [&](std::int64_t extra) {
      Costs c = Costs::zeros(n);
      for (std::size_t d = 0; d < n; ++d) c[d] = double(pick(std::int64_t(dims[d].limit.capacity) + extra));
      return c;
    };
    for (int step = 0; step < 150; ++step) {
      CAPTURE(step);
      switch (pick(8)) {
        case 0:
        case 1: rig.clock.set(rig.clock.now() + std::chrono::milliseconds(pick(3000))); break;
        case 2:
        case 3: {
          const Costs c = costs(2);
          const AcquireResult want = local.try_acquire(c);
          const AcquireResult got = remote.try_acquire(c);
          REQUIRE(got.status() == want.status());
          REQUIRE(got.retry_after() == want.retry_after());
          if (!want) REQUIRE(got.dimension() == want.dimension());
          break;
        }
        case 4: {
          const Costs c = costs(1);
          local.refund(c);
          const Costs credited = remote.refund(c);
          for (std::size_t d = 0; d < n; ++d) REQUIRE(credited[d] <= c[d]);
          break;
        }
        case 5: {
          const Costs c = costs(1);
          local.charge(c);
          REQUIRE(remote.charge(c));
          break;
        }
        case 6: {
          const auto d = std::chrono::milliseconds(pick(2000));
          local.pause_for(d);
          REQUIRE(remote.pause_for(d));
          break;
        }
        case 7: {
          const std::size_t d = static_cast<std::size_t>(pick(std::int64_t(n)));
          const double remaining = double(pick(std::int64_t(dims[d].limit.capacity) + 1));
          local.limit_remaining(d, remaining);
          REQUIRE(remote.limit_remaining(d, remaining));
          break;
        }
      }
    }
  }
}

TEST_CASE("reservations are FIFO across processes and complete at the in-process set's instants") {
  Rig rig("fifo");
  const std::vector<Dimension> dims = {{"requests", Limit{4, 2}}, {"tokens", Limit{100, 50}}};
  redis::Connection second_conn(fixture());
  auto a = rig.make(dims);
  auto b = redis::RedisLimitSet<ManualClock>(dims, second_conn, rig.key, rig.options(), rig.clock, &rig.sched);
  LimitSet<ManualClock> local(dims, rig.clock, &rig.sched);  // one scheduler: one order of firing

  REQUIRE(a.try_acquire({4, 10}));  // the requests dimension is empty
  REQUIRE(local.try_acquire({4, 10}));
  const std::vector<Costs> asks = {{1, 80}, {1, 5}, {2, 60}, {1, 1}, {3, 100}, {1, 0}};
  std::vector<Completion> got, want;
  std::vector<Task> tasks;
  auto waiter = [](LimitSet<ManualClock>& s, Costs c, int id, std::vector<Completion>& out, ManualClock clock) -> Task {
    AcquireResult r = co_await s.acquire(c);
    out.push_back({id, ns_of(clock.now()), r.status()});
  };
  for (int i = 0; i < int(asks.size()); ++i) {
    auto& set = i % 2 == 0 ? a : b;  // alternate processes
    set.async_acquire(asks[std::size_t(i)], [&got, i, clock = rig.clock](redis::Decision d) {
      got.push_back({i, ns_of(clock.now()), d.result.status()});
    });
    rig.barrier();
    REQUIRE(second_conn.command({"PING"}));
    REQUIRE(second_conn.command({"PING"}));
    tasks.push_back(waiter(local, asks[std::size_t(i)], i, want, rig.clock));
  }
  rig.clock.advance(std::chrono::seconds(30));
  REQUIRE(got.size() == asks.size());
  REQUIRE(got == want);
  // A newcomer's try_acquire does not overtake the reservations: only after the last.
  REQUIRE(a.try_acquire({1, 1}).ok() == local.try_acquire({1, 1}).ok());
}

TEST_CASE("cancelling the latest reservation gives its tokens back exactly, behind others nothing is returned") {
  Rig rig("cancel");
  auto set = rig.make({{"requests", Limit{2, 1}}});
  REQUIRE(set.try_acquire({2.0}));
  std::vector<Completion> got;
  auto record = [&](int id) {
    return [&got, id, clock = rig.clock](redis::Decision d) { got.push_back({id, ns_of(clock.now()), d.result.status()}); };
  };
  const std::int64_t t0 = ns_of(rig.clock.now());
  tollgate::stop_source stop_a, stop_b;
  set.async_acquire({1}, record(0), std::chrono::hours(1), stop_a.get_token());  // due t0 + 1 s
  rig.barrier();
  set.async_acquire({1}, record(1), std::chrono::hours(1), stop_b.get_token());  // due t0 + 2 s
  rig.barrier();
  stop_b.request_stop();  // the latest: its second goes back
  rig.barrier();
  rig.sched.run_due();
  REQUIRE(got == std::vector<Completion>{{1, t0, Status::cancelled}});
  REQUIRE(set.stats().returned_cancels == 1);

  set.async_acquire({1}, record(2), std::chrono::hours(1));  // takes b's place: due t0 + 2 s
  rig.barrier();
  stop_a.request_stop();  // behind it: c keeps its instant, a's token is not returned
  rig.barrier();
  rig.sched.run_due();
  REQUIRE(set.stats().unreturned_cancels == 1);
  rig.clock.advance(std::chrono::seconds(2));
  REQUIRE(got.size() == 3);
  CHECK(got[1] == Completion{0, t0, Status::cancelled});
  CHECK(got[2] == Completion{2, t0 + 2'000'000'000, Status::acquired});
  // c was granted at t0 + 2 s with the bucket empty behind it. Had a's token
  // been handed back, one more would be admitted at this same instant: 3 in
  // [t0, t0 + 2 s] where capacity 2 + rate 1 * 0 s allows 2 at this instant.
  const AcquireResult after = set.try_acquire({1.0});
  CHECK(after.status() == Status::not_now);
  CHECK(after.retry_after() == std::chrono::seconds(1));
}

TEST_CASE("a stop after the grant is too late: the waiter is acquired") {
  Rig rig("late-stop");
  auto set = rig.make({{"requests", Limit{1, 1}}});
  REQUIRE(set.try_acquire({1.0}));
  std::optional<redis::Decision> got;
  tollgate::stop_source stop;
  set.async_acquire({1}, [&](redis::Decision d) { got = d; }, std::chrono::hours(1), stop.get_token());
  rig.barrier();
  // The reservation is due at +1 s; the timer has not fired, but the server's
  // clock has passed the grant: the cancel finds it granted.
  rig.clock.set(rig.clock.now() + std::chrono::seconds(2));
  stop.request_stop();
  rig.barrier();
  rig.sched.run_due();
  REQUIRE(got);
  CHECK(got->result.ok());
  CHECK(set.stats().returned_cancels + set.stats().unreturned_cancels == 0);
}

TEST_CASE("coroutines: co_await resumes at the due instant; a destroyed coroutine cancels its reservation") {
  Rig rig("coroutine");
  auto set = rig.make({{"requests", Limit{1, 1}}});
  REQUIRE(set.try_acquire({1.0}));
  std::vector<Completion> got;
  auto waiter = [&](int id) -> Task {
    const Costs one{1};  // named: g++ 12 cannot keep a braced list across co_await
    AcquireResult r = co_await set.acquire_for(one, std::chrono::hours(1));
    got.push_back({id, ns_of(rig.clock.now()), r.status()});
  };
  const std::int64_t t0 = ns_of(rig.clock.now());
  Task first = waiter(0);
  rig.barrier();
  Task second = waiter(1);
  rig.barrier();
  second.reset();  // destroyed while waiting: its (latest) reservation goes back
  rig.barrier();
  rig.sched.run_due();
  REQUIRE(set.stats().returned_cancels == 1);
  rig.clock.advance(std::chrono::seconds(1));
  REQUIRE(got == std::vector<Completion>{{0, t0 + 1'000'000'000, Status::acquired}});
  // Nothing was kept for the destroyed coroutine: one second later one token is there.
  rig.clock.advance(std::chrono::seconds(1));
  CHECK(set.try_acquire({1.0}));
}

TEST_CASE("a wait beyond max_wait is refused at once with the wait, nothing reserved") {
  Rig rig("max-wait");
  auto set = rig.make({{"requests", Limit{2, 1}}, {"tokens", Limit{100, 10}}});
  REQUIRE(set.try_acquire({1, 100}));
  std::optional<redis::Decision> got;
  set.async_acquire({1, 50}, [&](redis::Decision d) { got = d; }, std::chrono::seconds(4));
  rig.barrier();
  rig.sched.run_due();
  REQUIRE(got);
  CHECK(got->result.status() == Status::not_now);
  CHECK(got->result.retry_after() == std::chrono::seconds(5));
  CHECK(set.try_acquire({1, 0}));  // nothing reserved: requests still has one
}

TEST_CASE("impossible and invalid costs are refused without a round trip, naming the dimension") {
  Rig rig("invalid");
  auto set = rig.make({{"requests", Limit{10, 1}}, {"tokens", Limit{1000, 100}}});
  const auto before = rig.conn.stats().commands;
  AcquireResult r = set.try_acquire({1, 1001});
  CHECK(r.status() == Status::never);
  CHECK(set.message(r) == "never: cost exceeds capacity (cost 1001 in tokens)");
  CHECK(set.try_acquire({-1, 1}).reason_code() == Reason::cost_is_negative);
  CHECK(set.try_acquire({1, std::nan("")}).reason_code() == Reason::cost_is_nan);
  CHECK(set.try_acquire(Costs{1}).reason_code() == Reason::wrong_dimension_count);
  CHECK(rig.conn.stats().commands == before);
  CHECK_THROWS_WITH(set.refund({1}), "RedisLimitSet::refund: 1 costs for 2 dimensions");
  CHECK_THROWS_AS(set.charge({1, -2}), std::invalid_argument);
  CHECK_THROWS_WITH(rig.make({{"r", Limit{1e6, 1e-3}}}),
                    Catch::Matchers::Contains("exceeds the Redis backend's longest refill window"));
  CHECK_THROWS_WITH(redis::RedisLimitSet<ManualClock>({{"r", Limit{1, 1}}}, rig.conn, "", {}, rig.clock, &rig.sched),
                    "RedisLimitSet: the key is empty");
}

TEST_CASE("a key expires when its set would be full again, a set refilled to full is deleted") {
  Rig rig("expiry");
  // The server's own TIME here: expiry runs on the server's clock.
  auto set = rig.make({{"requests", Limit{10, 10}}, {"tokens", Limit{100, 50}}}, redis::RedisLimitOptions{});
  REQUIRE(set.try_acquire({10, 20}));
  const redis::Reply ttl = rig.conn.command({"PTTL", rig.key});
  REQUIRE(ttl.values.size() == 1);
  CHECK(ttl.values[0] > 0);
  CHECK(ttl.values[0] <= 1000);  // requests: 1 s to refill; tokens: 0.4 s
  // Refunding what was taken fills the set again (never above capacity: what
  // refilled meanwhile is not credited twice), and a full set is deleted.
  const Costs back = set.refund({10, 20});
  CHECK(back[0] <= 10);
  CHECK(back[1] <= 20);
  CHECK(rig.conn.command({"EXISTS", rig.key}).values == std::vector<long long>{0});
}

TEST_CASE("a pause holds new admissions in every process until it ends") {
  Rig rig("pause");
  redis::Connection other_conn(fixture());
  auto a = rig.make({{"requests", Limit{10, 10}}});
  auto b = redis::RedisLimitSet<ManualClock>({{"requests", Limit{10, 10}}}, other_conn, rig.key, rig.options(),
                                             rig.clock, &rig.sched);
  REQUIRE(a.pause_for(std::chrono::milliseconds(1500)));
  AcquireResult r = b.try_acquire({1.0});
  CHECK(r.status() == Status::not_now);
  CHECK(r.retry_after() == std::chrono::milliseconds(1500));
  CHECK(a.pause_for(std::chrono::hours(1000)));  // capped at 24 h
  CHECK(b.try_acquire({1.0}).retry_after() == std::chrono::hours(24));
}

TEST_CASE("leases: one round trip takes several acquisitions' worth, the rest goes back") {
  Rig rig("lease");
  auto o = rig.options();
  o.lease = {5};
  o.lease_lifetime = std::chrono::milliseconds(500);
  // capacity 20 at 10/s: leases spend up to 0.5 s late, so Redis keeps 20 - 10*0.5 = 15.
  auto set = rig.make({{"requests", Limit{20, 10}}}, o);
  auto plain_o = rig.options();
  auto observer = rig.make({{"requests", Limit{15, 10}}}, plain_o);
  const auto trips = rig.conn.stats().commands;
  REQUIRE(set.try_acquire({1.0}));  // a lease of 5: 1 spent, 4 left
  CHECK(rig.conn.stats().commands == trips + 1);
  for (int i = 0; i < 4; ++i) REQUIRE(set.try_acquire({1.0}));
  CHECK(rig.conn.stats().commands == trips + 1);
  CHECK(set.stats().lease_hits == 4);
  REQUIRE(observer.available());
  CHECK((*observer.available())[0] == 10);  // 15 - 5 leased
  REQUIRE(set.try_acquire({2.0}));  // a new lease of 5: 2 spent, 3 left
  CHECK((*observer.available())[0] == 5);
  // The lease expires: the next round trip hands the 3 back before leasing again.
  rig.clock.set(rig.clock.now() + std::chrono::milliseconds(600));
  REQUIRE(set.try_acquire({5.0}));
  // 5 + 6 (refill over 0.6 s) + 3 (handed back) - 5 (new lease) = 9, capped at 15.
  CHECK((*observer.available())[0] == 9);
  CHECK(set.try_acquire({15.0}).ok() == false);
  CHECK(set.try_acquire({16.0}).status() == Status::never);  // above the lowered capacity
  auto bad = rig.options();
  bad.lease = {12};
  CHECK_THROWS_WITH(rig.make({{"requests", Limit{20, 10}}}, bad), Catch::Matchers::Contains("shorten the lifetime"));
}

TEST_CASE("Redis unreachable: fail closed, fail open or a local fallback at a share of the limit") {
  ManualClock clock;
  ManualScheduler sched(clock);
  redis::ConnectionOptions o;
  o.port = 1;  // nothing listens there: connection refused at once
  redis::Connection down(o);
  const std::vector<Dimension> dims = {{"requests", Limit{10, 1}}};
  redis::RedisLimitOptions closed;
  auto closed_set = redis::RedisLimitSet<ManualClock>(dims, down, "k", closed, clock, &sched);
  AcquireResult r = closed_set.try_acquire({1.0});
  CHECK(r.status() == Status::unavailable);
  CHECK(r.reason_code() == Reason::store_unreachable);
  CHECK(r.message() == "unavailable: the store cannot be reached (connection refused or lost)");

  redis::RedisLimitOptions open;
  open.on_failure = redis::OnFailure::fail_open;
  auto open_set = redis::RedisLimitSet<ManualClock>(dims, down, "k", open, clock, &sched);
  redis::Decision d = open_set.try_acquire_detailed({1});
  CHECK(d.result.ok());
  CHECK(d.source == redis::Source::fail_open);

  redis::RedisLimitOptions fb;
  fb.on_failure = redis::OnFailure::local_fallback;
  fb.fallback_share = 0.5;
  auto fb_set = redis::RedisLimitSet<ManualClock>(dims, down, "k", fb, clock, &sched);
  for (int i = 0; i < 5; ++i) REQUIRE(fb_set.try_acquire_detailed({1}).source == redis::Source::fallback);
  AcquireResult sixth = fb_set.try_acquire({1.0});
  CHECK(sixth.status() == Status::not_now);
  CHECK(sixth.retry_after() == std::chrono::seconds(2));  // 0.5/s locally
  // A waiter under the fallback waits for the local tokens, then asks Redis again.
  std::optional<redis::Decision> got;
  fb_set.async_acquire({1}, [&](redis::Decision x) { got = x; }, std::chrono::seconds(10));
  REQUIRE(down.command({"PING"}).status == redis::ReplyStatus::unreachable);  // the reply has been handled
  clock.advance(std::chrono::seconds(2));
  REQUIRE(down.command({"PING"}).status == redis::ReplyStatus::unreachable);
  clock.advance(std::chrono::seconds(0));
  sched.run_due();
  REQUIRE(got);
  CHECK(got->result.ok());
  CHECK(got->source == redis::Source::fallback);
  CHECK(ns_of(clock.now()) == 2'000'000'000);
}

TEST_CASE("a flushed script cache is loaded again (NOSCRIPT)") {
  Rig rig("noscript");
  auto set = rig.make({{"requests", Limit{3, 1}}});
  REQUIRE(set.try_acquire({1.0}));
  REQUIRE(rig.conn.command({"SCRIPT", "FLUSH"}));
  REQUIRE(set.try_acquire({1.0}));
  REQUIRE(set.try_acquire({1.0}));
  CHECK(set.try_acquire({1.0}).status() == Status::not_now);
}

TEST_CASE("a key busy for longer than 2^52 ns keeps exact time (the epoch moves)") {
  Rig rig("epoch");
  const std::vector<Dimension> dims = {{"quota", Limit{1, 0x1p-20}}};  // 12.1 days to refill (exact in binary)
  auto options = rig.options();
  options.max_debt = {10};  // room for the debts below
  auto remote = rig.make(dims, options);
  LimitSet<ManualClock> local(dims, rig.clock);
  local.set_max_debt(0, 10);
  REQUIRE(remote.try_acquire({1.0}));
  REQUIRE(local.try_acquire({1}));
  auto charge = [&] {
    REQUIRE(remote.charge({1}));  // a debt: 12.1 days more
    local.charge({1});
  };
  charge(), charge(), charge();
  rig.clock.set(rig.clock.now() + std::chrono::hours(24 * 20));
  charge(), charge();  // 72.8 days after the start in all
  rig.clock.set(rig.clock.now() + std::chrono::hours(24 * 33));  // past 2^52 ns since the epoch
  const AcquireResult want = local.try_acquire({1});
  const AcquireResult got = remote.try_acquire({1.0});
  REQUIRE(want.status() == Status::not_now);
  CHECK(got.status() == want.status());
  CHECK(got.retry_after() == want.retry_after());
}

TEST_CASE("a key holding something else is a store error, not a crash or a grant") {
  Rig rig("wrong-type");
  REQUIRE(rig.conn.command({"SET", rig.key, "not a hash"}));
  auto set = rig.make({{"requests", Limit{3, 1}}});
  const AcquireResult r = set.try_acquire({1.0});
  CHECK(r.status() == Status::unavailable);
  CHECK(r.reason_code() == Reason::store_error);
  std::optional<redis::Decision> got;
  set.async_acquire({1}, [&](redis::Decision d) { got = d; }, std::chrono::seconds(1));
  rig.barrier();
  rig.sched.run_due();
  REQUIRE(got);
  CHECK(got->result.reason_code() == Reason::store_error);

  // An error reply follows the failure policy, as a lost connection does.
  auto open_options = rig.options();
  open_options.on_failure = redis::OnFailure::fail_open;
  auto open = rig.make({{"requests", Limit{3, 1}}}, open_options);
  redis::Decision d = open.try_acquire_detailed({1});
  CHECK(d.result.ok());
  CHECK(d.source == redis::Source::fail_open);
  auto fb_options = rig.options();
  fb_options.on_failure = redis::OnFailure::local_fallback;
  fb_options.fallback_share = 1;
  auto fallback = rig.make({{"requests", Limit{3, 1}}}, fb_options);
  d = fallback.try_acquire_detailed({1});
  CHECK(d.source == redis::Source::fallback);
  CHECK(d.result.status() == Status::not_now);  // the fallback starts empty, not full
  rig.clock.advance(std::chrono::seconds(1));
  d = fallback.try_acquire_detailed({1});
  CHECK(d.source == redis::Source::fallback);
  CHECK(d.result.ok());  // one second's worth at its share
  CHECK(fallback.try_acquire_detailed({1}).result.status() == Status::not_now);
}

TEST_CASE("absurd usage: a charge adds at most max_debt, and never converts out of range") {
  Rig rig("absurd");
  const std::vector<Dimension> dims = {{"tokens", Limit{1000, 500}}};
  auto remote = rig.make(dims);
  LimitSet<ManualClock> local(dims, rig.clock);
  const double actuals[] = {1e11, 4.7e12, 1e18, 1e300, std::numeric_limits<double>::max()};
  for (double a : actuals) {
    CAPTURE(a);
    REQUIRE(remote.try_acquire({1000.0}));
    REQUIRE(local.try_acquire({1000}));
    CHECK(remote.settle({0}, {a}));
    local.settle({0}, {a});
    const AcquireResult want = local.try_acquire({1});
    const AcquireResult got = remote.try_acquire({1.0});
    CHECK(want.retry_after() == std::chrono::milliseconds(2002));  // one capacity of debt (2 s), then 1 token
    CHECK(got.status() == want.status());
    CHECK(got.retry_after() == want.retry_after());
    rig.clock.advance(std::chrono::seconds(10));  // full again
  }
  for (double bad : {std::numeric_limits<double>::quiet_NaN(), -1.0, std::numeric_limits<double>::infinity()}) {
    CHECK_THROWS_AS(remote.settle({0}, {bad}), std::invalid_argument);
    CHECK_THROWS_AS(remote.charge({bad}), std::invalid_argument);
  }
  CHECK((*remote.available())[0] == 1000);  // the refusals changed nothing
}

TEST_CASE("concurrent waits and stops from other threads: every operation completes exactly once") {
  // Real time and the timer thread (the server's TIME): races between replies,
  // wake-ups and stop requests, meant for TSan and ASan.
  redis::Connection conn(fixture());
  const std::string key = "tollgate-test:races";
  (void)conn.command({"DEL", key});
  redis::RedisLimitSet<> set({{"requests", Limit{5, 2000}}}, conn, key);
  constexpr int kOps = 600;
  std::vector<tollgate::stop_source> stops(kOps);
  std::vector<std::atomic<int>> calls(kOps);
  std::mutex m;
  std::condition_variable cv;
  int done = 0, acquired = 0, cancelled = 0;
  auto issue = [&](int from, int to) {
    for (int i = from; i < to; ++i) {
      set.async_acquire(
          {1},
          [&, i](redis::Decision d) {
            calls[std::size_t(i)].fetch_add(1);
            std::lock_guard lock(m);
            ++done;
            acquired += d.result.ok();
            cancelled += d.result.status() == Status::cancelled;
            cv.notify_one();
          },
          std::chrono::seconds(5), stops[std::size_t(i)].get_token());
      if (i % 3 == 0) stops[std::size_t(i)].request_stop();  // at once, from the issuing thread
    }
  };
  std::thread a(issue, 0, kOps / 2), b(issue, kOps / 2, kOps);
  std::thread stopper([&] {
    for (int i = 1; i < kOps; i += 3) stops[std::size_t(i)].request_stop();  // from another thread, whenever
  });
  a.join(), b.join(), stopper.join();
  std::unique_lock lock(m);
  cv.wait(lock, [&] { return done == kOps; });
  for (auto& c : calls) REQUIRE(c.load() == 1);
  CHECK(acquired + cancelled == kOps);
  // Every third was stopped right after it was sent: cancelled, unless the
  // bucket could grant it at once (its first 5 tokens).
  CHECK(cancelled >= kOps / 3 - 5);
}

namespace {
// Generic code written once against the concept: the same calls and result
// types for the in-process set and the Redis one.
template <tollgate::limit_set_like S>
std::vector<std::string> exercise(S& set) {
  std::vector<std::string> seen;
  const Costs first{1, 600};
  tollgate::Permit<Costs> permit = set.try_acquire_permit(first);
  seen.push_back(std::string(permit ? "permit" : "refused"));
  const AcquireResult over = set.try_acquire({1, 600});  // 400 left: refused, 200 short at 100/s
  seen.push_back(set.message(over) + " after " + std::to_string(over.retry_after().count()) + " ns");
  permit.settle({1, 300});  // 300 came back
  const AcquireResult now = set.try_acquire({1, 600});
  seen.push_back(now ? "acquired" : set.message(now));
  const AcquireResult bad = set.try_acquire({1, 5000});
  seen.push_back(set.message(bad));
  return seen;
}
}  // namespace

TEST_CASE("limit_set_like: one generic function, the same answers from LimitSet and RedisLimitSet") {
  static_assert(tollgate::limit_set_like<LimitSet<ManualClock>>);
  static_assert(tollgate::limit_set_like<redis::RedisLimitSet<ManualClock>>);
  Rig rig("generic");
  const std::vector<Dimension> dims{{"requests", Limit{10, 10}}, {"tokens", Limit{1000, 100}}};
  LimitSet<ManualClock> local(dims, rig.clock);
  auto remote = rig.make(dims);
  const std::vector<std::string> want = exercise(local);
  CHECK(want == exercise(remote));
  CHECK(want[0] == "permit");
  CHECK(want[1] == "not_now: retry after 2000000000 ns after 2000000000 ns");
  CHECK(want[3] == "never: cost exceeds capacity (cost 5000 in tokens)");
  CHECK(want[2] == "acquired");
}
