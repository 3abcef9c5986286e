// tollgate_redis_bench: the Redis backend against a redis-server on loopback.
// Run with benchmarks/run_redis_bench.sh (starts a throwaway server) or set
// TOLLGATE_REDIS_PORT. Counters: round_trips_per_acquire (pipelines sent to
// Redis per acquisition) and items_per_second (acquisitions per second).

#include <benchmark/benchmark.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

#include <tollgate/redis.hpp>

namespace {

using tollgate::Costs;
using tollgate::Limit;
namespace redis = tollgate::redis;

int port() {
  const char* p = std::getenv("TOLLGATE_REDIS_PORT");
  return p ? std::atoi(p) : 6379;
}

redis::Connection& connection() {
  static redis::Connection c([] {
    redis::ConnectionOptions o;
    o.port = port();
    o.command_timeout = std::chrono::seconds(2);
    return o;
  }());
  return c;
}

// Limits far above what a benchmark can take: every acquisition succeeds.
const std::vector<tollgate::Dimension> kOne = {{"requests", Limit{1e9, 1e9}}};
const std::vector<tollgate::Dimension> kTwo = {{"requests", Limit{1e9, 1e9}}, {"tokens", Limit{1e12, 1e12}}};

void report(benchmark::State& state, std::uint64_t trips_before, std::int64_t acquired) {
  const auto trips = connection().stats().round_trips - trips_before;
  state.SetItemsProcessed(acquired);
  state.counters["round_trips_per_acquire"] = acquired ? double(trips) / double(acquired) : 0.0;
}

void BM_Redis_TryAcquire(benchmark::State& state) {
  static redis::RedisLimitSet<> set(kOne, connection(), "bench:try");
  const auto before = connection().stats().round_trips;
  std::int64_t ok = 0;
  for (auto _ : state) ok += set.try_acquire({1.0}).ok();
  if (state.thread_index() == 0) report(state, before, ok * state.threads());
  if (ok != std::int64_t(state.iterations())) state.SkipWithError("an acquisition was refused");
}
BENCHMARK(BM_Redis_TryAcquire)->UseRealTime();
BENCHMARK(BM_Redis_TryAcquire)->Threads(8)->UseRealTime();

void BM_Redis_TryAcquire_TwoDimensions(benchmark::State& state) {
  static redis::RedisLimitSet<> set(kTwo, connection(), "bench:try2");
  const auto before = connection().stats().round_trips;
  std::int64_t ok = 0;
  const Costs cost{1, 1500};
  for (auto _ : state) ok += set.try_acquire(cost).ok();
  report(state, before, ok);
}
BENCHMARK(BM_Redis_TryAcquire_TwoDimensions)->UseRealTime();

void BM_Redis_TryAcquire_Lease(benchmark::State& state) {
  redis::RedisLimitOptions o;
  o.lease = {double(state.range(0))};
  o.lease_lifetime = std::chrono::milliseconds(100);
  redis::RedisLimitSet<> set(kOne, connection(), "bench:lease" + std::to_string(state.range(0)), o);
  const auto before = connection().stats().round_trips;
  std::int64_t ok = 0;
  for (auto _ : state) ok += set.try_acquire({1.0}).ok();
  report(state, before, ok);
}
BENCHMARK(BM_Redis_TryAcquire_Lease)->Arg(10)->Arg(100)->Arg(1000)->UseRealTime();

// `batch` acquisitions in flight at once through the awaitable's callback
// form: the Connection pipelines them.
void BM_Redis_AsyncAcquire_Pipelined(benchmark::State& state) {
  static redis::RedisLimitSet<> set(kOne, connection(), "bench:async");
  const int batch = int(state.range(0));
  const auto before = connection().stats().round_trips;
  std::mutex m;
  std::condition_variable cv;
  std::int64_t ok = 0;
  for (auto _ : state) {
    int left = batch;
    for (int i = 0; i < batch; ++i)
      set.async_acquire({1}, [&](redis::Decision d) {
        std::lock_guard lock(m);
        ok += d.result.ok();
        if (--left == 0) cv.notify_one();
      });
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return left == 0; });
  }
  report(state, before, ok);
}
BENCHMARK(BM_Redis_AsyncAcquire_Pipelined)->Arg(1)->Arg(64)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
