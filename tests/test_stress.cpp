// Two threads share one bucket: coroutines, try_acquire callers and stop-token
// cancellations on both, while one thread drives the manual clock. Checked
// after join: the conformance property over every window, every coroutine
// finished exactly once, and the token accounting balances.

#include <atomic>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <tollgate/stop_token.hpp>
#include <thread>
#include <vector>

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

namespace {

struct Finished {
  std::int64_t t_ns;
  std::int64_t cost;
  Status status;
};

Task stress_waiter(tollgate::TokenBucket<ManualClock>& b, std::int64_t cost, tollgate::stop_token stop,
                   const ManualClock& clock, Finished& out, std::atomic<int>& finishes) {
  AcquireResult r = co_await b.acquire(double(cost), std::move(stop));
  out = {ns_of(clock.now()), cost, r.status()};
  finishes.fetch_add(1);
}

}  // namespace

TEST_CASE("stress: 2 threads x thousands of coroutines and try_acquire callers", "[stress]") {
  constexpr std::int64_t kCapacity = 20, kRate = 1000;
  constexpr int kPerThread = 4000;
  ManualClock clock;
  ManualScheduler sched(clock);
  tollgate::TokenBucket<ManualClock> bucket(Limit{double(kCapacity), double(kRate)}, clock, &sched);

  // The driver thread moves time only while holding `time_lock` exclusively;
  // the other thread reads the time and acts under a shared lock, so each
  // try_acquire is recorded at the instant the bucket saw.
  std::shared_mutex time_lock;
  std::atomic<int> finishes{0};
  std::vector<Finished> results[2];
  std::vector<Admission> tried[2];
  std::vector<Task> tasks[2];
  std::vector<tollgate::stop_source> stops[2];
  for (int t = 0; t < 2; ++t) {
    results[t].resize(kPerThread);
    stops[t].resize(kPerThread);
    tasks[t].reserve(kPerThread);
  }

  auto body = [&](int t) {
    std::mt19937 rng(1234 + t);
    for (int i = 0; i < kPerThread; ++i) {
      if (t == 0 && i % 8 == 0) {
        std::unique_lock lock(time_lock);
        clock.advance(ns(rng() % 3'000'000));
      }
      std::shared_lock lock(time_lock);
      const std::int64_t cost = 1 + rng() % 5;
      tasks[t].push_back(stress_waiter(bucket, cost, stops[t][i].get_token(), clock, results[t][i], finishes));
      if (rng() % 4 == 0) {
        const std::int64_t c = 1 + rng() % 3;
        const std::int64_t now = ns_of(clock.now());
        if (bucket.try_acquire(double(c)).ok()) tried[t].push_back({now, c});
      }
      if (rng() % 5 == 0) stops[t][rng() % (i + 1)].request_stop();
    }
  };
  std::thread other(body, 1);
  body(0);
  other.join();
  clock.advance(std::chrono::hours(1));  // drain

  REQUIRE(finishes.load() == 2 * kPerThread);  // every coroutine finished exactly once
  std::vector<Admission> admitted;
  std::int64_t taken = 0;
  int cancelled = 0;
  for (int t = 0; t < 2; ++t) {
    for (const Finished& f : results[t]) {
      if (f.status == Status::acquired) {
        admitted.push_back({f.t_ns, f.cost});
        taken += f.cost;
      } else {
        CHECK(f.status == Status::cancelled);
        ++cancelled;
      }
    }
    for (const Admission& a : tried[t]) {
      admitted.push_back(a);
      taken += a.cost;
    }
    for (Task& task : tasks[t]) CHECK(task.done());
  }
  CHECK(cancelled > 0);
  std::stable_sort(admitted.begin(), admitted.end(), [](auto& a, auto& b) { return a.t_ns < b.t_ns; });
  CHECK(check_conformance(admitted, kCapacity, kRate) == "");
  // Accounting: the bucket refilled completely during the final hour, so what
  // was taken must fit in what it produced from the start to the last admission.
  const std::int64_t last = admitted.empty() ? 0 : admitted.back().t_ns;
  CHECK(taken * 1'000'000'000 <= kCapacity * 1'000'000'000 + kRate * last);
  CHECK(bucket.available() == kCapacity);
  CHECK(bucket.waiters() == 0);
}
