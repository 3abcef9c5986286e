// The awaitable acquire and the blocking acquire, on the manual clock and the
// manual scheduler: FIFO, one wake-up per waiter, cancellation, deadlines,
// reconfiguration while waiters queue.

#include <atomic>
#include <limits>
#include <stdexcept>
#include <memory>
#include <mutex>
#include <optional>
#include <tollgate/stop_token.hpp>
#include <thread>
#include <vector>

#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/timer_thread_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::AcquireResult;
using tollgate::Limit;
using tollgate::NullMutex;
using tollgate::Status;
using tollgate::testing::ManualScheduler;

namespace {

struct Done {
  int id;
  std::int64_t t_ns;
  Status status;
};

template <class Bucket>
Task waiter(Bucket& b, double cost, int id, std::vector<Done>& log, const ManualClock& clock,
            tollgate::stop_token stop = {}) {
  AcquireResult r = co_await b.acquire(cost, std::move(stop));
  log.push_back({id, ns_of(clock.now()), r.status()});
}

template <class Bucket>
Task waiter_for(Bucket& b, double cost, std::chrono::nanoseconds max_wait, int id, std::vector<Done>& log,
                const ManualClock& clock) {
  AcquireResult r = co_await b.acquire_for(cost, max_wait);
  log.push_back({id, ns_of(clock.now()), r.status()});
}

// A manual clock, its scheduler, a bucket on them drained empty at t = 0, and
// the log its waiters write to: the set-up most tests here share.
template <class Mutex = tollgate::SpinMutex>
struct Drained {
  ManualClock clock;
  ManualScheduler sched{clock};
  tollgate::TokenBucket<ManualClock, Mutex> bucket;
  std::vector<Done> log;
  explicit Drained(Limit limit) : bucket(limit, clock, &sched) {
    REQUIRE(bucket.try_acquire(limit.capacity).ok());
  }
};

constexpr std::int64_t kMs = 1'000'000;

}  // namespace

TEMPLATE_TEST_CASE("acquire: completes without suspending when the tokens are there", "[acquire]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  ManualClock clock;
  ManualScheduler sched(clock);
  tollgate::TokenBucket<ManualClock, TestType> bucket(Limit{3, 1}, clock, &sched);
  std::vector<Done> log;
  Task t = waiter(bucket, 3, 1, log, clock);
  REQUIRE(t.done());
  REQUIRE(log.size() == 1);
  CHECK(log[0].status == Status::acquired);
  CHECK(sched.armed() == 0);  // no timer was needed
}

TEMPLATE_TEST_CASE("acquire: never and invalid finish at once", "[acquire]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  ManualClock clock;
  ManualScheduler sched(clock);
  tollgate::TokenBucket<ManualClock, TestType> bucket(Limit{3, 1}, clock, &sched);
  std::vector<Done> log;
  Task a = waiter(bucket, 4, 1, log, clock);
  Task b = waiter(bucket, -1, 2, log, clock);
  REQUIRE(log.size() == 2);
  CHECK(log[0].status == Status::never);
  CHECK(log[1].status == Status::invalid);
  CHECK(bucket.available() == 3);
}

TEMPLATE_TEST_CASE("acquire: FIFO, a large cost is not starved by small ones", "[acquire][fifo]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  // A polling bucket (the common asyncio pattern) never serves the cost-8 request after the initial burst.
  Drained<TestType> fixture(Limit{10, 2});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  std::vector<Task> tasks;
  tasks.push_back(waiter(bucket, 8, 0, log, clock));  // due at 4 s
  for (int i = 1; i <= 6; ++i) {
    clock.advance(10ms);
    tasks.push_back(waiter(bucket, 1, i, log, clock));
    // A newcomer's try_acquire does not jump the queue either.
    CHECK(bucket.try_acquire(1).status() == Status::not_now);
  }
  CHECK(bucket.waiters() == 7);
  clock.advance(10s);
  REQUIRE(log.size() == 7);
  for (int i = 0; i < 7; ++i) {
    INFO("waiter " << i);
    CHECK(log[i].id == i);
    CHECK(log[i].status == Status::acquired);
    // Work-conserving: cost 8 at 4.0 s, then one token every 0.5 s.
    CHECK(log[i].t_ns == (i == 0 ? 4000 : 4000 + 500 * i) * kMs);
  }
}

TEMPLATE_TEST_CASE("acquire: each waiter is woken once, at its instant", "[acquire]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  Drained<TestType> fixture(Limit{1, 1});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  std::vector<Task> tasks;
  for (int i = 0; i < 100; ++i) tasks.push_back(waiter(bucket, 1, i, log, clock));
  CHECK(sched.armed() == 1);  // only the head has a timer
  clock.advance(1000s);
  REQUIRE(log.size() == 100);
  CHECK(sched.fired() == 100);  // one timer fire per waiter: nobody polls
  for (int i = 0; i < 100; ++i) CHECK(log[i].t_ns == (i + 1) * 1000 * kMs);
}

TEMPLATE_TEST_CASE("acquire: a stop token cancels exactly; later waiters move up", "[acquire][cancel]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  Drained<TestType> fixture(Limit{4, 1});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  tollgate::stop_source stop;
  Task a = waiter(bucket, 2, 0, log, clock);                    // due 2 s
  Task b = waiter(bucket, 3, 1, log, clock, stop.get_token());  // due 5 s
  Task c = waiter(bucket, 1, 2, log, clock);                    // due 6 s -> 3 s
  clock.advance(1s);
  stop.request_stop();  // resumes b now, on this thread
  REQUIRE(log.size() == 1);
  CHECK(log[0].id == 1);
  CHECK(log[0].status == Status::cancelled);
  CHECK(log[0].t_ns == 1000 * kMs);
  clock.advance(10s);
  REQUIRE(log.size() == 3);
  CHECK(log[1].id == 0);
  CHECK(log[1].t_ns == 2000 * kMs);
  CHECK(log[2].id == 2);
  CHECK(log[2].t_ns == 3000 * kMs);  // as if b had never arrived
  // Tokens conserved: 4 + 11 s * 1/s = 15 produced, capped at 4 in the end;
  // taken: 4 + 2 + 1 = 7. At 11 s the bucket has refilled 8 s since 3 s: full.
  CHECK(bucket.available() == 4);
  clock.set(clock.now());
  CHECK(bucket.try_acquire(4).ok());
}

TEMPLATE_TEST_CASE("acquire: a stop already requested takes nothing", "[acquire][cancel]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  ManualClock clock;
  ManualScheduler sched(clock);
  tollgate::TokenBucket<ManualClock, TestType> bucket(Limit{4, 1}, clock, &sched);
  tollgate::stop_source stop;
  stop.request_stop();
  std::vector<Done> log;
  Task a = waiter(bucket, 1, 0, log, clock, stop.get_token());
  REQUIRE(log.size() == 1);
  CHECK(log[0].status == Status::cancelled);
  CHECK(bucket.available() == 4);
}

TEMPLATE_TEST_CASE("acquire: destroying a suspended coroutine leaves the queue exactly", "[acquire][cancel]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  Drained<TestType> fixture(Limit{4, 1});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  Task a = waiter(bucket, 3, 0, log, clock);  // head, due 3 s
  Task b = waiter(bucket, 1, 1, log, clock);  // due 4 s -> 1 s
  CHECK(bucket.waiters() == 2);
  a.reset();  // destroys the coroutine frame, and its awaiter with it
  CHECK(bucket.waiters() == 1);
  clock.advance(10s);
  REQUIRE(log.size() == 1);
  CHECK(log[0].id == 1);
  CHECK(log[0].t_ns == 1000 * kMs);
  CHECK(bucket.available() == 4);
}

TEMPLATE_TEST_CASE("acquire: a destroyed waiter that was already granted refunds its cost", "[acquire][cancel]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  Drained<TestType> fixture(Limit{4, 1});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  Task a = waiter(bucket, 2, 0, log, clock);  // due 2 s
  clock.set(ManualClock::time_point(3s));     // time passes without firing timers
  a.reset();                                  // granted at 2 s, never resumed
  CHECK(bucket.available() == 3);             // 1 s of refill since 2 s + the 2 refunded
  CHECK(log.empty());
}

TEMPLATE_TEST_CASE("acquire_for: refuses at once when the wait is too long", "[acquire][deadline]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  Drained<TestType> fixture(Limit{10, 2});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  Task a = waiter_for(bucket, 4, 1s, 0, log, clock);  // needs 2 s
  REQUIRE(log.size() == 1);
  CHECK(log[0].status == Status::not_now);
  CHECK(bucket.waiters() == 0);
  Task b = waiter_for(bucket, 4, 2s, 1, log, clock);  // exactly 2 s: accepted
  CHECK(bucket.waiters() == 1);
  clock.advance(2s);
  REQUIRE(log.size() == 2);
  CHECK(log[1].status == Status::acquired);
  CHECK(log[1].t_ns == 2000 * kMs);
}

TEMPLATE_TEST_CASE("acquire_for: a slower rate that breaks the deadline times the waiter out", "[acquire][deadline]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  Drained<TestType> fixture(Limit{10, 2});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  Task a = waiter_for(bucket, 2, 3s, 0, log, clock);  // due 1 s, deadline 3 s
  Task b = waiter_for(bucket, 2, 3s, 1, log, clock);  // due 2 s, deadline 3 s
  Task c = waiter(bucket, 2, 2, log, clock);          // due 3 s, no deadline
  bucket.set_rate(1);  // now a is due 2 s (ok), b 4 s (> 3 s: out), c 4 s
  REQUIRE(log.size() == 1);
  CHECK(log[0].id == 1);
  CHECK(log[0].status == Status::timed_out);
  clock.advance(10s);
  REQUIRE(log.size() == 3);
  CHECK(log[1].id == 0);
  CHECK(log[1].t_ns == 2000 * kMs);
  CHECK(log[2].id == 2);
  CHECK(log[2].t_ns == 4000 * kMs);  // b's cost was given back exactly
}

TEMPLATE_TEST_CASE("acquire: a higher rate wakes queued waiters sooner", "[acquire][reconfigure]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  Drained<TestType> fixture(Limit{10, 1});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  Task a = waiter(bucket, 4, 0, log, clock);  // due 4 s
  Task b = waiter(bucket, 4, 1, log, clock);  // due 8 s
  clock.advance(2s);                          // 2 tokens accrued at 1/s
  bucket.set_rate(4);                         // remaining 2 for a: 0.5 s; b 1 s later
  clock.advance(10s);
  REQUIRE(log.size() == 2);
  CHECK(log[0].t_ns == 2500 * kMs);
  CHECK(log[1].t_ns == 3500 * kMs);
}

TEMPLATE_TEST_CASE("acquire: a capacity below a waiter's cost finishes it never", "[acquire][reconfigure]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  Drained<TestType> fixture(Limit{10, 1});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  Task a = waiter(bucket, 8, 0, log, clock);
  Task b = waiter(bucket, 2, 1, log, clock);
  bucket.set_capacity(5);
  REQUIRE(log.size() == 1);
  CHECK(log[0].id == 0);
  CHECK(log[0].status == Status::never);
  clock.advance(10s);
  REQUIRE(log.size() == 2);
  CHECK(log[1].t_ns == 2000 * kMs);  // b moved up: 2 tokens from empty at 1/s
}

TEMPLATE_TEST_CASE("acquire: a refund moves the head up", "[acquire]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  Drained<TestType> fixture(Limit{10, 1});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  Task a = waiter(bucket, 5, 0, log, clock);  // due 5 s
  clock.advance(1s);
  CHECK(bucket.refund(4) == 4);  // 1 accrued + 4 refunded: a is due now ...
  REQUIRE(log.size() == 1);      // ... and resumed by the refunding thread
  CHECK(log[0].t_ns == 1000 * kMs);
}

TEST_CASE("acquire: destroying the bucket cancels its waiters", "[acquire]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  std::vector<Done> log;
  Task a;
  {
    tollgate::TokenBucket<ManualClock> bucket(Limit{1, 1}, clock, &sched);
    REQUIRE(bucket.try_acquire(1).ok());
    a = waiter(bucket, 1, 0, log, clock);
  }
  REQUIRE(log.size() == 1);
  CHECK(log[0].status == Status::cancelled);
  CHECK(sched.armed() == 0);
}

TEST_CASE("acquire_blocking: a thread blocks until the manual clock reaches its turn", "[blocking]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  tollgate::TokenBucket<ManualClock> bucket(Limit{2, 1}, clock, &sched);
  REQUIRE(bucket.try_acquire(2).ok());
  std::atomic<int> status{-1};
  std::atomic<std::int64_t> at{0};
  std::thread t([&] {
    auto r = bucket.acquire_blocking(2);
    at = ns_of(clock.now());
    status = static_cast<int>(r.status());
  });
  while (bucket.waiters() == 0) std::this_thread::yield();
  clock.advance(2s);  // wakes the thread, at 2 s, from this thread's advance
  t.join();
  CHECK(status == static_cast<int>(Status::acquired));
  CHECK(at == 2000 * kMs);
  CHECK(bucket.available() == 0);
  clock.advance(1s);
  CHECK(bucket.available() == 1);
}

TEST_CASE("acquire_blocking: max_wait and stop token", "[blocking][cancel]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  tollgate::TokenBucket<ManualClock> bucket(Limit{2, 1}, clock, &sched);
  REQUIRE(bucket.try_acquire(2).ok());
  auto r = bucket.acquire_blocking(2, 1s);
  CHECK(r.status() == Status::not_now);
  CHECK(r.retry_after() == 2s);

  tollgate::stop_source stop;
  std::atomic<int> status{-1};
  std::thread t([&] { status = static_cast<int>(bucket.acquire_blocking(2, std::chrono::hours(1), stop.get_token()).status()); });
  while (bucket.waiters() == 0) std::this_thread::yield();
  stop.request_stop();
  t.join();
  CHECK(status == static_cast<int>(Status::cancelled));
  CHECK(bucket.waiters() == 0);
  clock.advance(2s);
  CHECK(bucket.available() == 2);  // the cancelled wait took nothing
}

TEST_CASE("acquire: a wait beyond the clock's range is refused, not wrapped", "[acquire][clock]") {
  ManualClock clock(ManualClock::max() - 1s);
  ManualScheduler sched(clock);
  tollgate::TokenBucket<ManualClock> bucket(Limit{1, 0.1}, clock, &sched);  // 10 s per token
  REQUIRE(bucket.try_acquire(1).ok());
  std::vector<Done> log;
  AcquireResult r;
  Task t = [](auto& b, AcquireResult& out) -> Task { out = co_await b.acquire(1); }(bucket, r);
  CHECK(r.status() == Status::invalid);
  CHECK(r.reason() == "wait would overflow the clock");
  CHECK(bucket.waiters() == 0);
  CHECK(bucket.try_acquire(1).retry_after() == 10s);  // try_acquire still answers
}

TEST_CASE("acquire: failures carry a reason", "[acquire]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  AcquireResult never, late, gone;
  Task a, b, c;
  {
    tollgate::TokenBucket<ManualClock> bucket(Limit{10, 1}, clock, &sched);
    REQUIRE(bucket.try_acquire(10).ok());
    auto grab = [](auto& bk, double cost, std::chrono::nanoseconds max_wait, AcquireResult& out) -> Task {
      out = co_await bk.acquire_for(cost, max_wait);
    };
    a = grab(bucket, 8, 1h, never);
    b = grab(bucket, 1, 10s, late);
    c = grab(bucket, 1, 1h, gone);
    bucket.set_rate(0.01);  // b's wait grows past 10 s; a still fits for now
    bucket.set_capacity(5);  // a can never fit any more
  }  // the bucket goes away with c still waiting
  CHECK(late.status() == Status::timed_out);
  CHECK(late.reason() == "wait grew past max_wait after it queued (reconfiguration, pause, debt or lower remaining count)");
  CHECK(never.status() == Status::never);
  CHECK(never.reason() == "cost exceeds the new capacity");
  CHECK(gone.status() == Status::cancelled);
  CHECK(gone.reason() == "bucket destroyed while waiting");
  CHECK(never.message() == "never: cost exceeds the new capacity (cost 8)");
}

TEST_CASE("TimerThreadScheduler: resumes waiters on its own thread", "[acquire][timer-thread]") {
  // A real steady_clock bucket, drained at a rate so slow that every waiter
  // certainly queues (whatever the pace of this thread), then sped up so
  // they are due 1 ms apart from the instant of the change: none is due at
  // that instant, so only the timer thread can resume them. The test blocks
  // on an atomic (no sleep, no clock reading) until all resumed. `tasks` is
  // declared first so that it is destroyed last, after the scheduler's
  // thread has been joined.
  std::vector<Task> tasks;
  tollgate::TimerThreadScheduler<> sched;
  tollgate::TokenBucket<> bucket(Limit{50, 1e-3}, {}, &sched);
  REQUIRE(bucket.try_acquire(50).ok());
  constexpr int kWaiters = 50;
  std::atomic<int> left{kWaiters};
  std::atomic<int> on_timer_thread{0};
  const auto test_thread = std::this_thread::get_id();
  for (int i = 0; i < kWaiters; ++i) {
    tasks.push_back([](auto& b, std::atomic<int>& n, std::atomic<int>& other, std::thread::id me) -> Task {
      if (co_await b.acquire(50) && std::this_thread::get_id() != me) other.fetch_add(1);
      if (n.fetch_sub(1) == 1) n.notify_all();
    }(bucket, left, on_timer_thread, test_thread));
  }
  REQUIRE(bucket.waiters() == kWaiters);
  bucket.set_rate(50'000);  // 50 tokens per ms: the first waiter is due 1 ms from now
  for (int v = left.load(); v != 0; v = left.load()) left.wait(v);
  CHECK(on_timer_thread.load() == kWaiters);
  CHECK(bucket.waiters() == 0);
}

TEMPLATE_TEST_CASE("pause: nothing is admitted before the upstream's retry-after", "[acquire][pause]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  Drained<TestType> fixture(Limit{10, 1});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  Task a = waiter(bucket, 2, 0, log, clock);  // due 2 s
  Task b = waiter(bucket, 2, 1, log, clock);  // due 4 s
  bucket.pause_until(ManualClock::time_point(5s));
  bucket.pause_until(ManualClock::time_point(3s));  // never shortened
  clock.advance(4999ms);
  CHECK(log.empty());
  CHECK(bucket.try_acquire(1).retry_after() == 1ms);  // the pause, not the tokens, decides
  clock.advance(1ms);
  REQUIRE(log.size() == 2);  // both due by 5 s: granted together, in order
  CHECK(log[0].id == 0);
  CHECK(log[1].id == 1);
  CHECK(log[0].t_ns == 5000 * kMs);
  CHECK(log[1].t_ns == 5000 * kMs);
  CHECK(bucket.available() == 1);  // accrued during the pause: 5 - 4
  CHECK(bucket.try_acquire(1).ok());
}

TEST_CASE("pause: an acquire_for waiter the pause overruns times out at once", "[acquire][pause]") {
  Drained<> fixture(Limit{10, 1});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  Task a = waiter_for(bucket, 1, 3s, 0, log, clock);  // due 1 s, deadline 3 s
  Task b = waiter(bucket, 1, 1, log, clock);          // due 2 s, no deadline
  bucket.pause_for(10s);
  REQUIRE(log.size() == 1);
  CHECK(log[0].id == 0);
  CHECK(log[0].status == Status::timed_out);
  clock.advance(20s);
  REQUIRE(log.size() == 2);
  CHECK(log[1].t_ns == 10000 * kMs);
  bucket.pause_for(std::chrono::hours::max());  // absurd: clamped, no overflow
  CHECK(bucket.try_acquire(1).status() == Status::not_now);
}

TEST_CASE("pause: waiters released together never exceed one bucket (regression)", "[acquire][pause]") {
  // A waiter whose tokens were reserved before a long pause is granted at its
  // end; the bucket refilled meanwhile, but the waiter and a newcomer at that
  // instant must still fit one bucket: 2 + 10 > 10.
  Drained<> fixture(Limit{10, 1});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  Task a = waiter(bucket, 2, 0, log, clock);  // due 2 s
  bucket.pause_until(ManualClock::time_point(100s));
  clock.advance(100s);
  REQUIRE(log.size() == 1);
  CHECK(log[0].t_ns == 100000 * kMs);
  CHECK(bucket.try_acquire(10).retry_after() == 2s);  // 8 left, not 10
  CHECK(bucket.try_acquire(8).ok());
}

TEMPLATE_TEST_CASE("permit: settle refunds a surplus and charges an overrun as debt", "[acquire][permit]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  using Bucket = tollgate::TokenBucket<ManualClock, TestType>;
  ManualClock clock;
  ManualScheduler sched(clock);
  Bucket bucket(Limit{100, 10}, clock, &sched);
  {
    REQUIRE(bucket.try_acquire(50).ok());
    typename Bucket::Permit p(bucket, 50);
    p.settle(30);  // the answer was shorter than estimated
    CHECK(p.settled());
    CHECK(bucket.available() == 70);
    CHECK_THROWS_AS(p.settle(30), std::logic_error);
  }
  {
    REQUIRE(bucket.try_acquire(50).ok());  // 20 left
    typename Bucket::Permit p(bucket, 50);
    p.settle(120);  // 70 more than estimated: 50 of debt
    CHECK(bucket.available() == 0);
    CHECK(bucket.try_acquire(1).retry_after() == 5100ms);  // pay 50, then 1, at 10/s
  }
  {
    typename Bucket::Permit p(bucket, 5);
    CHECK_THROWS_AS(p.settle(-1), std::invalid_argument);
    CHECK_THROWS_AS(p.settle(std::numeric_limits<double>::quiet_NaN()), std::invalid_argument);
    CHECK_FALSE(p.settled());
  }  // destroyed unsettled: the estimate stands, nothing changes
  CHECK(bucket.try_acquire(1).retry_after() == 5100ms);
}

TEST_CASE("permit: a debt delays the waiters already queued", "[acquire][permit]") {
  Drained<> fixture(Limit{10, 1});
  [[maybe_unused]] auto& [clock, sched, bucket, log] = fixture;
  Task a = waiter(bucket, 2, 0, log, clock);  // due 2 s
  bucket.charge(3);                           // an overrun spent upstream: 3 s more
  clock.advance(10s);
  REQUIRE(log.size() == 1);
  CHECK(log[0].t_ns == 5000 * kMs);
  CHECK_THROWS_AS(bucket.charge(-1), std::invalid_argument);
  CHECK_THROWS_AS(bucket.charge(std::numeric_limits<double>::infinity()), std::invalid_argument);
  CHECK(bucket.available() == 5);  // the failures took nothing
  bucket.charge(1e30);  // 3e22 years of debt asked; one capacity (10) taken
  CHECK(bucket.available() == 0);
  CHECK(bucket.try_acquire(1).retry_after() == 11s);  // 10 of debt to pay, then 1
}
