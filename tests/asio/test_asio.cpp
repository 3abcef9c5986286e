// tollgate/asio.hpp and tollgate/boost_asio.hpp: async_acquire with every
// kind of completion token and every cancellation path. Built twice: with
// standalone Asio, and with Boost.Asio (TOLLGATE_TEST_BOOST). Buckets run on
// the manual clock and scheduler; completions run on an io_context that the
// test polls, so every instant is exact.

#include <chrono>
#include <future>
#include <optional>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#ifdef TOLLGATE_TEST_BOOST
#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <tollgate/boost_asio.hpp>
namespace net = boost::asio;
namespace tga = tollgate::boost_asio;
#define TG_DEFERRED net::deferred
#else
#include <asio.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/experimental/deferred.hpp>
#include <tollgate/asio.hpp>
namespace net = ::asio;
namespace tga = tollgate::asio;
#define TG_DEFERRED net::experimental::deferred  // Asio 1.22: not yet out of experimental
#endif

#include <tollgate/limit_set.hpp>
#include <tollgate/keyed_limit_sets.hpp>
#include <tollgate/shared_limit_set.hpp>
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
using namespace net::experimental::awaitable_operators;
using Bucket = tollgate::TokenBucket<ManualClock>;

namespace {

struct Done {
  int id;
  std::int64_t t_ns;
  Status status;
  friend bool operator==(const Done&, const Done&) = default;
};

}  // namespace

namespace Catch {
template <>
struct StringMaker<Done> {
  static std::string convert(const Done& d) {
    std::ostringstream os;  // not operator+: g++ 12 -O3 -Wrestrict false positive
    os << '{' << d.id << ", " << d.t_ns << " ns, " << tollgate::to_string(d.status) << '}';
    return os.str();
  }
};
}  // namespace Catch

namespace {

// Runs every ready handler (the io_context may run out of work meanwhile).
void poll(net::io_context& io) {
  io.restart();
  io.poll();
}

struct Rig {
  ManualClock clock;
  ManualScheduler sched{clock};
  net::io_context io;
  std::vector<Done> done;
  // Advances the manual clock (granting waiters), then runs their handlers.
  void advance(std::chrono::nanoseconds d) {
    clock.advance(d);
    poll(io);
  }
  auto recorder(int id) {
    return net::bind_executor(io, [this, id](AcquireResult r) { done.push_back({id, ns_of(clock.now()), r.status()}); });
  }
};

}  // namespace

TEST_CASE("a callback completes in FIFO order, on its executor, never inside the initiating call") {
  Rig rig;
  Bucket bucket(Limit{2, 1}, rig.clock, &rig.sched);
  bool on_executor = true;
  for (int i = 0; i < 4; ++i)
    tga::async_acquire(bucket, i == 2 ? 2.0 : 1.0, net::bind_executor(rig.io, [&, i](AcquireResult r) {
                         on_executor = on_executor && rig.io.get_executor().running_in_this_thread();
                         rig.done.push_back({i, ns_of(rig.clock.now()), r.status()});
                       }));
  CHECK(rig.done.empty());  // not even the immediate ones run inline
  poll(rig.io);
  CHECK(rig.done == std::vector<Done>{{0, 0, Status::acquired}, {1, 0, Status::acquired}});
  // Handlers run when the test polls: step to each due instant.
  rig.advance(std::chrono::seconds(2));
  rig.advance(std::chrono::seconds(1));
  CHECK(rig.done == std::vector<Done>{{0, 0, Status::acquired},
                                      {1, 0, Status::acquired},
                                      {2, 2'000'000'000, Status::acquired},
                                      {3, 3'000'000'000, Status::acquired}});
  CHECK(on_executor);
}

TEST_CASE("use_awaitable: a coroutine resumes at its due instant with the result") {
  Rig rig;
  Bucket bucket(Limit{1, 2}, rig.clock, &rig.sched);
  REQUIRE(bucket.try_acquire(1.0));
  std::optional<Done> got;
  net::co_spawn(
      rig.io,
      [&]() -> net::awaitable<void> {
        AcquireResult r = co_await tga::async_acquire(bucket, 1.0, net::use_awaitable);
        got = Done{0, ns_of(rig.clock.now()), r.status()};
      },
      net::detached);
  poll(rig.io);
  CHECK(!got);
  rig.advance(std::chrono::milliseconds(499));
  CHECK(!got);
  rig.advance(std::chrono::milliseconds(1));
  REQUIRE(got);
  CHECK(*got == Done{0, 500'000'000, Status::acquired});
}

TEST_CASE("deferred and use_future tokens") {
  Rig rig;
  tollgate::LimitSet<ManualClock> set({{"requests", Limit{1, 1}}, {"tokens", Limit{100, 100}}}, rig.clock, &rig.sched);
  auto deferred = tga::async_acquire(set, Costs{1, 60}, TG_DEFERRED);
  CHECK(rig.done.empty());  // a deferred operation starts only when invoked
  std::move(deferred)(rig.recorder(0));
  std::future<AcquireResult> future =
      tga::async_acquire(set, Costs{1, 60}, net::bind_executor(rig.io, net::use_future));
  poll(rig.io);
  CHECK(rig.done == std::vector<Done>{{0, 0, Status::acquired}});
  CHECK(future.wait_for(std::chrono::seconds(0)) == std::future_status::timeout);
  rig.advance(std::chrono::seconds(1));
  REQUIRE(future.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  CHECK(future.get().ok());
}

TEST_CASE("a cancellation slot takes the waiter out exactly: the one behind moves up") {
  Rig rig;
  Bucket bucket(Limit{4, 1}, rig.clock, &rig.sched);
  REQUIRE(bucket.try_acquire(4.0));
  net::cancellation_signal signal;
  tga::async_acquire(bucket, 3.0, net::bind_cancellation_slot(signal.slot(), rig.recorder(0)));  // due 3 s
  tga::async_acquire(bucket, 1.0, rig.recorder(1));                                              // due 4 s
  poll(rig.io);
  rig.advance(std::chrono::seconds(1));
  signal.emit(net::cancellation_type::terminal);
  poll(rig.io);
  // 1 s in: the 3-token waiter leaves, the 1-token one is due at once.
  CHECK(rig.done == std::vector<Done>{{0, 1'000'000'000, Status::cancelled}, {1, 1'000'000'000, Status::acquired}});
  CHECK(bucket.waiters() == 0);
  // Nothing was lost or created: 0 tokens now, 3 after 3 s more.
  CHECK(!bucket.try_acquire(0.5));
  rig.advance(std::chrono::seconds(3));
  CHECK(bucket.try_acquire(3.0));
}

TEST_CASE("SharedLimitSet: async_acquire on keyed costs, in weighted fair order, cancelled exactly") {
  Rig rig;
  using Shared = tollgate::SharedLimitSet<std::string, ManualClock>;
  Shared::Options o;
  o.tiers = {{"light", 1, {}}, {"heavy", 3, {}}};
  o.tier_of = [](const std::string& k) -> std::size_t { return k == "b" ? 1 : 0; };
  Shared set({{"requests", Limit{1, 1}}}, o, rig.clock, &rig.sched);
  REQUIRE(set.try_acquire("a", {1}));
  for (int i = 0; i < 3; ++i) tga::async_acquire(set, set.keyed("a", {1}), rig.recorder(i));
  net::cancellation_signal signal;
  tga::async_acquire(set, set.keyed("b", {1}), net::bind_cancellation_slot(signal.slot(), rig.recorder(10)));
  tga::async_acquire(set, set.keyed("b", {1}), rig.recorder(11));
  tga::async_acquire(set, set.keyed("b", {1}), std::chrono::milliseconds(1500), rig.recorder(12));  // predicted 3 s: refused
  poll(rig.io);
  CHECK(rig.done == std::vector<Done>{{12, 0, Status::not_now}});
  signal.emit(net::cancellation_type::terminal);  // b's first leaves; b's second takes its place
  poll(rig.io);
  for (int s = 0; s < 4; ++s) rig.advance(std::chrono::seconds(1));
  // Start tags (in seconds of service / weight): a's 0, 1, 2; b's 0
  // (cancelled) and 1/3: after a's first, before a's second.
  CHECK(rig.done == std::vector<Done>{{12, 0, Status::not_now},
                                      {10, 0, Status::cancelled},
                                      {0, 1'000'000'000, Status::acquired},
                                      {11, 2'000'000'000, Status::acquired},
                                      {1, 3'000'000'000, Status::acquired},
                                      {2, 4'000'000'000, Status::acquired}});
  CHECK(set.waiters() == 0);
}

TEST_CASE("KeyedLimitSets: async_acquire on a key's shard, FIFO within the key, other keys unaffected") {
  Rig rig;
  using Keyed = tollgate::KeyedLimitSets<std::string, ManualClock>;
  Keyed::Options o;
  o.tiers = {{"t", 1, {{"requests", Limit{1, 1}}}}};
  Keyed keys({"requests", "tokens"}, o, rig.clock, &rig.sched);
  for (int i = 0; i < 3; ++i)
    tga::async_acquire(keys.set_for("alice"), keys.keyed("alice", {1, 10}), rig.recorder(i));
  tga::async_acquire(keys.set_for("bob"), keys.keyed("bob", {1, 10}), rig.recorder(10));
  poll(rig.io);
  CHECK(rig.done == std::vector<Done>{{0, 0, Status::acquired}, {10, 0, Status::acquired}});
  rig.advance(std::chrono::seconds(1));
  rig.advance(std::chrono::seconds(1));
  CHECK(rig.done == std::vector<Done>{{0, 0, Status::acquired},
                                      {10, 0, Status::acquired},
                                      {1, 1'000'000'000, Status::acquired},
                                      {2, 2'000'000'000, Status::acquired}});
}

TEST_CASE("the || of awaitable operators cancels the loser exactly") {
  Rig rig;
  Bucket slow(Limit{1, 1}, rig.clock, &rig.sched);
  Bucket fast(Limit{1, 4}, rig.clock, &rig.sched);
  REQUIRE(slow.try_acquire(1.0));
  REQUIRE(fast.try_acquire(1.0));
  std::optional<std::size_t> winner;
  net::co_spawn(
      rig.io,
      [&]() -> net::awaitable<void> {
        auto r = co_await (tga::async_acquire(slow, 1.0, net::use_awaitable) ||
                           tga::async_acquire(fast, 1.0, net::use_awaitable));
        winner = r.index();
      },
      net::detached);
  poll(rig.io);
  CHECK(slow.waiters() == 1);
  rig.advance(std::chrono::milliseconds(250));
  REQUIRE(winner);
  CHECK(*winner == 1);
  CHECK(slow.waiters() == 0);  // the loser left the queue
  // ... and took nothing: a newcomer gets the slow bucket's token at 1 s.
  tga::async_acquire(slow, 1.0, rig.recorder(7));
  rig.advance(std::chrono::milliseconds(749));
  CHECK(rig.done.empty());
  rig.advance(std::chrono::milliseconds(1));
  CHECK(rig.done == std::vector<Done>{{7, 1'000'000'000, Status::acquired}});
}

TEST_CASE("a timeout with || and an expired timer cancels the acquisition") {
  Rig rig;
  Bucket bucket(Limit{1, 1}, rig.clock, &rig.sched);
  REQUIRE(bucket.try_acquire(1.0));
  std::optional<std::size_t> winner;
  net::co_spawn(
      rig.io,
      [&]() -> net::awaitable<void> {
        net::steady_timer timeout(rig.io);  // already expired: fires at the next poll
        auto r = co_await (tga::async_acquire(bucket, 1.0, net::use_awaitable) || timeout.async_wait(net::use_awaitable));
        winner = r.index();
      },
      net::detached);
  for (int i = 0; i < 10 && !winner; ++i) poll(rig.io);
  REQUIRE(winner);
  CHECK(*winner == 1);
  CHECK(bucket.waiters() == 0);
  rig.advance(std::chrono::seconds(1));
  CHECK(bucket.try_acquire(1.0));
}

TEST_CASE("a cancelled co_spawn takes its waiter out of the queue") {
  Rig rig;
  Bucket bucket(Limit{1, 1}, rig.clock, &rig.sched);
  REQUIRE(bucket.try_acquire(1.0));
  net::cancellation_signal signal;
  std::optional<Status> got;
  net::co_spawn(
      rig.io,
      [&]() -> net::awaitable<void> {
        AcquireResult r = co_await tga::async_acquire(bucket, 1.0, net::use_awaitable);
        got = r.status();
      },
      net::bind_cancellation_slot(signal.slot(), net::detached));
  poll(rig.io);
  REQUIRE(bucket.waiters() == 1);
  signal.emit(net::cancellation_type::terminal);
  poll(rig.io);
  CHECK(bucket.waiters() == 0);
  REQUIRE(got);
  CHECK(*got == Status::cancelled);
}

TEST_CASE("max_wait refuses at once, and impossible costs are never") {
  Rig rig;
  Bucket bucket(Limit{2, 1}, rig.clock, &rig.sched);
  REQUIRE(bucket.try_acquire(2.0));
  std::vector<AcquireResult> got;
  auto keep = net::bind_executor(rig.io, [&](AcquireResult r) { got.push_back(r); });
  tga::async_acquire(bucket, 2.0, std::chrono::seconds(1), keep);
  tga::async_acquire(bucket, 3.0, keep);
  poll(rig.io);
  REQUIRE(got.size() == 2);
  CHECK(got[0].status() == Status::not_now);
  CHECK(got[0].retry_after() == std::chrono::seconds(2));
  CHECK(got[1].status() == Status::never);
  CHECK(bucket.waiters() == 0);
}

TEST_CASE("TimerScheduler: a steady-clock bucket waits on the io_context, multi-threaded") {
  net::io_context io(2);
  tga::TimerScheduler<> timers(io.get_executor());
  {
    tollgate::TokenBucket<> bucket(Limit{5, 2000}, {}, &timers);  // 0.5 ms a token
    constexpr int kWaiters = 200;
    std::atomic<int> acquired{0}, cancelled{0}, finished{0};
    std::vector<int> order;
    std::mutex order_mutex;
    auto strand = net::make_strand(io);
    for (int i = 0; i < kWaiters; ++i) {
      net::co_spawn(
          strand,
          [&, i]() -> net::awaitable<void> {
            AcquireResult r;
            if (i % 10 == 9) {  // some give up at once: an expired timer wins the race
              net::steady_timer t(co_await net::this_coro::executor);
              auto v = co_await (tga::async_acquire(bucket, 1.0, net::use_awaitable) || t.async_wait(net::use_awaitable));
              r = v.index() == 0 ? std::get<0>(v) : AcquireResult::failed(Status::cancelled, tollgate::Reason::stop_requested);
            } else {
              r = co_await tga::async_acquire(bucket, 1.0, net::use_awaitable);
            }
            if (r) {
              ++acquired;
              std::lock_guard lock(order_mutex);
              // FIFO among the plain waiters (a || adds a hop of its own before resuming).
              if (i % 10 != 9) order.push_back(i);
            } else {
              ++cancelled;
            }
            ++finished;
          },
          net::detached);
    }
    std::thread other([&] { io.run(); });
    io.run();
    other.join();
    CHECK(finished == kWaiters);
    CHECK(acquired + cancelled == kWaiters);
    CHECK(acquired >= kWaiters - kWaiters / 10);
    CHECK(std::is_sorted(order.begin(), order.end()));  // FIFO: spawned in order on one strand
    CHECK(bucket.waiters() == 0);
  }
}
