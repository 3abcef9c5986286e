// RedisLimitSet with Asio completion tokens (tollgate/boost_asio.hpp): the
// reservation in Redis, the wake-up on the manual scheduler, the completion
// on the io_context; cancellation through a cancellation slot cancels the
// reservation in Redis.

#include <boost/asio.hpp>

#include <optional>

#include <tollgate/boost_asio.hpp>
#include <tollgate/redis.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>

#include "catch.hpp"
#include "redis_support.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::AcquireResult;
using tollgate::Costs;
using tollgate::Limit;
using tollgate::Status;
namespace net = boost::asio;
namespace redis = tollgate::redis;

namespace {

struct Rig {
  ManualClock clock{ManualClock::time_point(std::chrono::seconds(1'795'000'000))};
  tollgate::testing::ManualScheduler sched{clock};
  redis::Connection conn{tgredis::fixture()};
  net::io_context io;
  std::string key;
  explicit Rig(std::string k) : key("tollgate-test:" + std::move(k)) { (void)conn.command({"DEL", key}); }
  redis::RedisLimitSet<ManualClock> make(double capacity, double rate) {
    redis::RedisLimitOptions o;
    ManualClock c = clock;
    o.time_override = [c] { return c.now().time_since_epoch(); };
    return redis::RedisLimitSet<ManualClock>({{"requests", Limit{capacity, rate}}}, conn, key, o, clock, &sched);
  }
  void settle() {  // every handler run, every reply handled, every due wake-up fired, every handler run
    io.restart();
    io.poll();
    REQUIRE(conn.command({"PING"}));
    REQUIRE(conn.command({"PING"}));
    sched.run_due();
    io.restart();
    io.poll();
  }
};

}  // namespace

TEST_CASE("use_awaitable: a coroutine waits for its Redis reservation on the io_context") {
  Rig rig("asio-await");
  auto set = rig.make(1, 1);
  REQUIRE(set.try_acquire({1.0}));
  std::optional<std::int64_t> at;
  net::co_spawn(
      rig.io,
      [&]() -> net::awaitable<void> {
        const Costs one{1};
        AcquireResult r = co_await tollgate::boost_asio::async_acquire(set, one, std::chrono::seconds(5), net::use_awaitable);
        if (r) at = ns_of(rig.clock.now());
      },
      net::detached);
  rig.settle();
  CHECK(!at);
  const std::int64_t t0 = ns_of(rig.clock.now());
  rig.clock.advance(std::chrono::seconds(1));
  rig.settle();
  REQUIRE(at);
  CHECK(*at == t0 + 1'000'000'000);
}

TEST_CASE("a cancellation slot cancels the Redis reservation and gives its token back") {
  Rig rig("asio-cancel");
  auto set = rig.make(1, 1);
  REQUIRE(set.try_acquire({1.0}));
  net::cancellation_signal signal;
  std::optional<AcquireResult> got;
  tollgate::boost_asio::async_acquire(set, Costs{1}, std::chrono::seconds(5),
                                      net::bind_cancellation_slot(signal.slot(), net::bind_executor(rig.io, [&](AcquireResult r) { got = r; })));
  rig.settle();
  CHECK(!got);
  signal.emit(net::cancellation_type::terminal);
  rig.settle();
  rig.settle();
  REQUIRE(got);
  CHECK(got->status() == Status::cancelled);
  CHECK(set.stats().returned_cancels == 1);
  rig.clock.advance(std::chrono::seconds(1));
  CHECK(set.try_acquire({1.0}));  // the token the reservation held is back
}
