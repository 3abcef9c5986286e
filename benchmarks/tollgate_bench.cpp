// tollgate_bench: the Google Benchmark suite. Names are stable across
// versions so results can be compared; see README "Performance".

#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdlib>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/tollgate.hpp>

// ---- Allocation counting (this binary only) ----------------------------------
namespace {
std::atomic<long> g_allocs{0};
std::atomic<long> g_bytes{0};
}  // namespace

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
// g_bytes: live heap bytes, as malloc really reserves them (usable size).
void* operator new(std::size_t n) {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) {
    g_bytes.fetch_add(static_cast<long>(malloc_usable_size(p)), std::memory_order_relaxed);
    return p;
  }
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept {
  if (p) g_bytes.fetch_sub(static_cast<long>(malloc_usable_size(p)), std::memory_order_relaxed);
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept { operator delete(p); }
void operator delete[](void* p) noexcept { operator delete(p); }
void operator delete[](void* p, std::size_t) noexcept { operator delete(p); }

namespace {

using tollgate::Limit;
using tollgate::NullMutex;
using tollgate::TokenBucket;
using tollgate::testing::ManualClock;
using tollgate::testing::ManualScheduler;
using SteadyClock = std::chrono::steady_clock;

// A coroutine type whose frames are allocated outside the global counter, so
// every counted allocation is the library's.
struct Task {
  struct promise_type {
    static void* operator new(std::size_t n) { return std::malloc(n); }
    static void operator delete(void* p) noexcept { std::free(p); }
    Task get_return_object() { return Task{std::coroutine_handle<promise_type>::from_promise(*this)}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
  std::coroutine_handle<promise_type> h;
  Task(std::coroutine_handle<promise_type> handle) : h(handle) {}
  Task(Task&& o) noexcept : h(std::exchange(o.h, {})) {}
  ~Task() {
    if (h) h.destroy();
  }
  bool done() const { return h.done(); }
};

// An always-admitting limit: 10^12 per second.
const Limit kWide{1e12, 1e12};

// Every *_Shared benchmark runs two threads on one object, each pinned to its
// own CPU (thread i on the i-th CPU this process may use): unpinned, the
// scheduler sometimes runs both on one CPU, which measures something else
// (no cache-line transfer between cores). The label says where they ran.
// The CPUs the process may use, read at start-up: the main thread also runs
// thread 0 of each benchmark and new threads inherit its pinned mask.
const cpu_set_t g_allowed_cpus = [] {
  cpu_set_t s;
  CPU_ZERO(&s);
  if (sched_getaffinity(0, sizeof s, &s) != 0) CPU_ZERO(&s);
  return s;
}();
void pin_thread(benchmark::State& st) {
  const cpu_set_t allowed = g_allowed_cpus;
  if (CPU_COUNT(&allowed) < st.threads()) {
    st.SkipWithError("needs one CPU per thread");
    return;
  }
  int want = st.thread_index(), cpu = 0;
  for (; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &allowed) && want-- == 0) break;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (pthread_setaffinity_np(pthread_self(), sizeof one, &one) != 0) {
    st.SkipWithError("pthread_setaffinity_np failed");
    return;
  }
  if (st.thread_index() == 0) st.SetLabel("pinned: " + std::to_string(st.threads()) + " threads on distinct CPUs");
}

// ---- The floor ----------------------------------------------------------------
void BM_Primitive_SteadyClockNow(benchmark::State& st) {
  for (auto _ : st) benchmark::DoNotOptimize(SteadyClock::now());
}
BENCHMARK(BM_Primitive_SteadyClockNow);

void BM_Primitive_MutexLockUnlock(benchmark::State& st) {
  std::mutex m;
  for (auto _ : st) {
    m.lock();
    benchmark::ClobberMemory();
    m.unlock();
  }
}
BENCHMARK(BM_Primitive_MutexLockUnlock);

void BM_Primitive_CasLoop(benchmark::State& st) {
  std::atomic<std::int64_t> v{0};
  for (auto _ : st) {
    std::int64_t cur = v.load(std::memory_order_relaxed);
    while (!v.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) {
    }
  }
  benchmark::DoNotOptimize(v.load());
}
BENCHMARK(BM_Primitive_CasLoop);

// The two measured together: what any design that does one atomic RMW per
// call after reading the clock pays at least (the RMW waits for the clock read).
void BM_Primitive_SteadyClockNowThenCas(benchmark::State& st) {
  std::atomic<std::int64_t> v{0};
  for (auto _ : st) {
    const std::int64_t t = SteadyClock::now().time_since_epoch().count();
    std::int64_t cur = v.load(std::memory_order_relaxed);
    while (!v.compare_exchange_weak(cur, cur + (t & 1), std::memory_order_acq_rel)) {
    }
  }
  benchmark::DoNotOptimize(v.load());
}
BENCHMARK(BM_Primitive_SteadyClockNowThenCas);

// The contended floor: two threads (pinned to distinct CPUs), each reading
// the clock and then CAS-ing one shared word; each call moves the word's
// cache line between the two cores.
std::atomic<std::int64_t> g_shared_word{0};
void BM_Primitive_SteadyClockNowThenCas_Shared(benchmark::State& st) {
  pin_thread(st);
  for (auto _ : st) {
    const std::int64_t t = SteadyClock::now().time_since_epoch().count();
    std::int64_t cur = g_shared_word.load(std::memory_order_relaxed);
    while (!g_shared_word.compare_exchange_weak(cur, cur + (t & 1), std::memory_order_acq_rel)) {
    }
  }
}
BENCHMARK(BM_Primitive_SteadyClockNowThenCas_Shared)->Threads(2);

// Only the CAS loop on a shared word (no clock): the line transfer alone.
void BM_Primitive_CasLoop_Shared(benchmark::State& st) {
  pin_thread(st);
  for (auto _ : st) {
    std::int64_t cur = g_shared_word.load(std::memory_order_relaxed);
    while (!g_shared_word.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) {
    }
  }
}
BENCHMARK(BM_Primitive_CasLoop_Shared)->Threads(2);

// ---- The baseline: the common Python asyncio token bucket, ported line for line
// (docs/coming-from.md shows it; "SeedPort": the pattern tollgate started from)
class SeedBucket {
 public:
  SeedBucket(double capacity, double rate)
      : capacity_(capacity), rate_(rate), tokens_(capacity), last_(SteadyClock::now()) {}
  bool try_acquire(double cost) {
    std::lock_guard lock(m_);
    const auto now = SteadyClock::now();
    const double elapsed = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min(capacity_, tokens_ + elapsed * rate_);
    last_ = now;
    if (tokens_ >= cost) {
      tokens_ -= cost;
      return true;
    }
    return false;
  }

 private:
  double capacity_, rate_, tokens_;
  SteadyClock::time_point last_;
  std::mutex m_;
};

void BM_SeedPort_TryAcquire(benchmark::State& st) {
  SeedBucket b(1e12, 1e12);
  for (auto _ : st) benchmark::DoNotOptimize(b.try_acquire(1));
}
BENCHMARK(BM_SeedPort_TryAcquire);

SeedBucket g_seed_shared(1e12, 1e12);
void BM_SeedPort_TryAcquire_Shared(benchmark::State& st) {
  pin_thread(st);
  for (auto _ : st) benchmark::DoNotOptimize(g_seed_shared.try_acquire(1));
}
BENCHMARK(BM_SeedPort_TryAcquire_Shared)->Threads(2);

// ---- TokenBucket::try_acquire --------------------------------------------------
void BM_TokenBucket_TryAcquire(benchmark::State& st) {
  TokenBucket<> b(kWide);
  for (auto _ : st) benchmark::DoNotOptimize(b.try_acquire(1));
}
BENCHMARK(BM_TokenBucket_TryAcquire);

// With a listener that counts admissions: what observing every decision
// costs (without one, the bucket pays a load and a branch: compare with
// BM_TokenBucket_TryAcquire).
struct CountingListener final : tollgate::Listener<double> {
  long admitted = 0;
  void on_event(const tollgate::BucketEvent<double>& e) noexcept override {
    admitted += e.kind == tollgate::BucketEventKind::admitted;
  }
};
void BM_TokenBucket_TryAcquire_Listener(benchmark::State& st) {
  TokenBucket<> b(kWide);
  CountingListener heard;
  b.set_listener(&heard);
  for (auto _ : st) benchmark::DoNotOptimize(b.try_acquire(1));
  benchmark::DoNotOptimize(heard.admitted);
}
BENCHMARK(BM_TokenBucket_TryAcquire_Listener);

// The option for a bucket one thread owns: no atomic RMW on the owner's path.
void BM_TokenBucket_TryAcquire_Biased(benchmark::State& st) {
  TokenBucket<SteadyClock, tollgate::BiasedMutex> b(kWide);
  for (auto _ : st) benchmark::DoNotOptimize(b.try_acquire(1));
}
BENCHMARK(BM_TokenBucket_TryAcquire_Biased);

// What the first lock by a second thread costs a biased bucket (once per
// bucket): the owner thread is running meanwhile, as it would be.
void BM_BiasedMutex_Revoke(benchmark::State& st) {
  constexpr int kMutexes = 2000;
  auto mutexes = std::make_unique<tollgate::BiasedMutex[]>(kMutexes);
  std::atomic<bool> claimed{false}, done{false};
  std::thread owner([&] {
    for (int i = 0; i < kMutexes; ++i) (void)mutexes[i].try_enter_biased();  // claims each
    claimed.store(true, std::memory_order_release);
    while (!done.load(std::memory_order_acquire)) std::this_thread::yield();
  });
  while (!claimed.load(std::memory_order_acquire)) std::this_thread::yield();
  int i = 0;
  for (auto _ : st) {
    mutexes[i].lock();  // revokes
    mutexes[i].unlock();
    ++i;
  }
  done.store(true, std::memory_order_release);
  owner.join();
  int revoked = 0;  // 0 where membarrier is unavailable: nothing was biased to revoke
  for (int j = 0; j < i; ++j) revoked += tollgate::detail::heavy_barrier_available() && !mutexes[j].biased();
  st.counters["revoked"] = revoked;
}
BENCHMARK(BM_BiasedMutex_Revoke)->Iterations(2000)->Unit(benchmark::kMicrosecond);

void BM_TokenBucket_TryAcquire_NullMutex(benchmark::State& st) {
  TokenBucket<SteadyClock, NullMutex> b(kWide);
  for (auto _ : st) benchmark::DoNotOptimize(b.try_acquire(1));
}
BENCHMARK(BM_TokenBucket_TryAcquire_NullMutex);

void BM_TokenBucket_TryAcquire_CoarseClock(benchmark::State& st) {
  TokenBucket<tollgate::CoarseSteadyClock> b(kWide);
  for (auto _ : st) benchmark::DoNotOptimize(b.try_acquire(1));
}
BENCHMARK(BM_TokenBucket_TryAcquire_CoarseClock);

void BM_TokenBucket_TryAcquire_ManualClock(benchmark::State& st) {
  ManualClock clock;
  TokenBucket<ManualClock, NullMutex> b(kWide, clock);
  const auto now = clock.now();
  for (auto _ : st) benchmark::DoNotOptimize(b.try_acquire_at(now, 1));
}
BENCHMARK(BM_TokenBucket_TryAcquire_ManualClock);

void BM_TokenBucket_TryAcquire_Denied(benchmark::State& st) {
  TokenBucket<> b(Limit{1, 1e-3});
  (void)b.try_acquire(1);
  for (auto _ : st) benchmark::DoNotOptimize(b.try_acquire(1));
}
BENCHMARK(BM_TokenBucket_TryAcquire_Denied);

TokenBucket<>* g_shared_bucket = nullptr;
void BM_TokenBucket_TryAcquire_Shared(benchmark::State& st) {
  pin_thread(st);
  if (st.thread_index() == 0) g_shared_bucket = new TokenBucket<>(kWide);
  for (auto _ : st) benchmark::DoNotOptimize(g_shared_bucket->try_acquire(1));
  if (st.thread_index() == 0) {
    delete g_shared_bucket;
    g_shared_bucket = nullptr;
  }
}
BENCHMARK(BM_TokenBucket_TryAcquire_Shared)->Threads(2);

void BM_TokenBucket_TryAcquire_Separate(benchmark::State& st) {
  pin_thread(st);
  TokenBucket<> b(kWide);
  for (auto _ : st) benchmark::DoNotOptimize(b.try_acquire(1));
}
BENCHMARK(BM_TokenBucket_TryAcquire_Separate)->Threads(2);

// ---- The awaitable -----------------------------------------------------------
void BM_Acquire_Ready(benchmark::State& st) {
  TokenBucket<> b(kWide);
  long allocs = 0;
  auto loop = [](benchmark::State& s, TokenBucket<>& bucket, long& counted) -> Task {
    const long before = g_allocs.load();
    for (auto _ : s) {
      auto r = co_await bucket.acquire(1);
      benchmark::DoNotOptimize(r);
    }
    counted = g_allocs.load() - before;
  };
  Task t = loop(st, b, allocs);
  st.counters["allocs_per_op"] = benchmark::Counter(double(allocs) / double(st.iterations()));
}
BENCHMARK(BM_Acquire_Ready);

void BM_Acquire_SuspendResume(benchmark::State& st) {
  // One coroutine loops over co_await; each acquire must wait 1 us, and the
  // driver below advances the manual clock by 1 us, which resumes it.
  ManualClock clock;
  ManualScheduler sched(clock);
  TokenBucket<ManualClock, NullMutex> b(Limit{1, 1e6}, clock, &sched);
  (void)b.try_acquire(1);
  long allocs = 0;
  auto loop = [](benchmark::State& s, TokenBucket<ManualClock, NullMutex>& bucket, long& counted) -> Task {
    long before = -1;
    for (auto _ : s) {
      if (before < 0) before = g_allocs.load();  // after the first arm (heap slot)
      auto r = co_await bucket.acquire(1);
      benchmark::DoNotOptimize(r);
    }
    counted = g_allocs.load() - before;
  };
  Task t = loop(st, b, allocs);
  while (!t.done()) clock.advance(std::chrono::microseconds(1));
  st.counters["allocs_per_op"] = benchmark::Counter(double(allocs) / double(st.iterations()));
}
BENCHMARK(BM_Acquire_SuspendResume);

// ---- The registry --------------------------------------------------------------
void BM_Registry_HotKey(benchmark::State& st) {
  tollgate::BucketRegistry<> reg({.default_limit = kWide});
  const std::string_view key = "api-key-00000042";
  (void)reg.try_acquire(key);
  for (auto _ : st) benchmark::DoNotOptimize(reg.try_acquire(key));
}
BENCHMARK(BM_Registry_HotKey);

// Two threads (pinned) on one key of one registry.
void BM_Registry_HotKey_Shared(benchmark::State& st) {
  pin_thread(st);
  static tollgate::BucketRegistry<> reg({.default_limit = kWide});
  const std::string_view key = "api-key-00000042";
  for (auto _ : st) benchmark::DoNotOptimize(reg.try_acquire(key));
}
BENCHMARK(BM_Registry_HotKey_Shared)->Threads(2);

std::vector<std::string> make_keys(std::size_t n) {
  std::vector<std::string> keys;
  keys.reserve(n);
  char buf[32];
  for (std::size_t i = 0; i < n; ++i) {
    std::snprintf(buf, sizeof buf, "api-key-%08zu", i);  // 16 characters
    keys.emplace_back(buf);
  }
  return keys;
}

void BM_Registry_ColdKeys(benchmark::State& st) {
  constexpr std::size_t kKeys = 1'000'000;
  static const std::vector<std::string> keys = make_keys(kKeys);
  tollgate::BucketRegistry<> reg({.default_limit = Limit{10, 1}, .max_keys = 2 * kKeys});
  const long bytes_before = g_bytes.load();
  for (const auto& k : keys) (void)reg.try_acquire(std::string_view(k));  // all keys held (not full)
  // Live bytes per key, keys included (malloc's real chunk sizes).
  const double bytes_per_key = double(g_bytes.load() - bytes_before) / double(kKeys);
  std::size_t i = 0;
  for (auto _ : st) {
    benchmark::DoNotOptimize(reg.try_acquire(std::string_view(keys[i])));
    i = (i + 7919) % kKeys;  // stride through memory: cache-cold lookups
  }
  st.counters["bytes_per_key"] = bytes_per_key;
  st.counters["keys"] = double(reg.size());
}
BENCHMARK(BM_Registry_ColdKeys)->Unit(benchmark::kNanosecond);

// ---- Keys sharing one upstream (SharedLimitSet) ----------------------------------
using Shared = tollgate::SharedLimitSet<>;
std::vector<tollgate::Dimension> three_wide() {
  return {{"requests", kWide}, {"input_tokens", kWide}, {"output_tokens", kWide}};
}
Shared::Options capped_tier() {  // every key capped in all three dimensions (wide)
  Shared::Options o;
  o.tiers = {{"t", 1, three_wide()}};
  o.max_keys = 4'000'000;
  return o;
}

// A LimitSet of three dimensions: try_acquire, then the same with every
// dimension held at a provider's count (a hold adds a cap, checked per grant),
// then a Permit made and settled, without and with in-flight counting.
void BM_LimitSet_TryAcquire(benchmark::State& st) {
  tollgate::LimitSet<> set(three_wide());
  const tollgate::Costs c{1, 1200, 300};
  for (auto _ : st) benchmark::DoNotOptimize(set.try_acquire(c));
}
BENCHMARK(BM_LimitSet_TryAcquire);

// Two threads (pinned) on one set of two dimensions (requests and tokens).
void BM_LimitSet_TryAcquire_Shared(benchmark::State& st) {
  pin_thread(st);
  static tollgate::LimitSet<> set({{"requests", kWide}, {"tokens", kWide}});
  const tollgate::Costs c{1, 1200};
  for (auto _ : st) benchmark::DoNotOptimize(set.try_acquire(c));
}
BENCHMARK(BM_LimitSet_TryAcquire_Shared)->Threads(2);

void BM_LimitSet_TryAcquire_Held(benchmark::State& st) {
  tollgate::LimitSet<> set(three_wide());
  for (std::size_t i = 0; i < 3; ++i) set.limit_remaining(i, 1e300, std::chrono::hours(24));
  const tollgate::Costs c{1, 1200, 300};
  for (auto _ : st) benchmark::DoNotOptimize(set.try_acquire(c));
}
BENCHMARK(BM_LimitSet_TryAcquire_Held);

void BM_LimitSet_Permit(benchmark::State& st) {
  tollgate::LimitSet<> set(three_wide());
  if (st.range(0)) set.count_in_flight();
  const tollgate::Costs estimate{1, 1200, 1300}, actual{1, 1200, 300};
  for (auto _ : st) {
    auto p = set.try_acquire_permit(estimate);
    p.settle(actual);
  }
}
BENCHMARK(BM_LimitSet_Permit)->Arg(0)->Arg(1);

// One key, three dimensions, key caps and the shared set: try_acquire.
void BM_SharedSet_HotKey(benchmark::State& st) {
  Shared set(three_wide(), capped_tier());
  const std::string_view key = "api-key-00000042";
  const tollgate::Costs c{1, 1200, 300};
  for (auto _ : st) benchmark::DoNotOptimize(set.try_acquire(key, c));
}
BENCHMARK(BM_SharedSet_HotKey);

// co_await acquire(key, costs) that need not wait: the key's state is found
// and held, then the key and the shared set are taken at one instant.
void BM_FairShare_Acquire(benchmark::State& st) {
  Shared set(three_wide(), capped_tier());
  long allocs = 0;
  auto loop = [](benchmark::State& s, Shared& shared, long& counted) -> Task {
    const std::string_view key = "api-key-00000042";
    const tollgate::Costs c{1, 1200, 300};
    (void)shared.try_acquire(key, c);
    const long before = g_allocs.load();
    for (auto _ : s) {
      auto r = co_await shared.acquire(key, c);
      benchmark::DoNotOptimize(r);
    }
    counted = g_allocs.load() - before;
  };
  Task t = loop(st, set, allocs);
  st.counters["allocs_per_op"] = benchmark::Counter(double(allocs) / double(st.iterations()));
}
BENCHMARK(BM_FairShare_Acquire);

// A saturated shared set with `keys` keys waiting, one waiter each; every
// grant re-queues its key: the cost of one fair grant (pick is O(keys waiting)).
void BM_FairShare_SaturatedGrant(benchmark::State& st) {
  const auto keys = static_cast<std::size_t>(st.range(0));
  ManualClock clock;
  ManualScheduler sched(clock);
  using Set = tollgate::SharedLimitSet<std::string, ManualClock, NullMutex>;
  Set set({{"requests", Limit{1, 1e6}}}, {}, clock, &sched);
  (void)set.try_acquire(std::string("warm"), {1});
  std::vector<Task> tasks;
  bool stop = false;
  long grants = 0;
  auto client = [](Set& shared, std::string key, bool& halt, long& count) -> Task {
    const tollgate::Costs one{1};
    while (!halt) {
      auto r = co_await shared.acquire(key, one);
      benchmark::DoNotOptimize(r);
      ++count;
    }
  };
  for (std::size_t k = 0; k < keys; ++k) tasks.push_back(client(set, std::string("key-").append(std::to_string(k)), stop, grants));
  for (auto _ : st) clock.advance(std::chrono::microseconds(1));  // one grant per microsecond
  stop = true;
  clock.advance(std::chrono::seconds(1));
  st.counters["grants_per_iter"] = benchmark::Counter(double(grants) / double(st.iterations()));
}
BENCHMARK(BM_FairShare_SaturatedGrant)->Arg(10)->Arg(100)->Arg(1000);

// Bytes per idle key with three capped dimensions, measured as live heap
// bytes (malloc's real chunk sizes) over 10^6 keys, and random hits.
void BM_SharedSet_ColdKeys(benchmark::State& st) {
  constexpr std::size_t kKeys = 1'000'000;
  static const std::vector<std::string> keys = make_keys(kKeys);
  Shared::Options o = capped_tier();
  o.tiers[0].limits = {{"requests", Limit{10, 1}}, {"input_tokens", Limit{1e6, 1e4}}, {"output_tokens", Limit{1e5, 1e3}}};
  Shared set({{"requests", kWide}, {"input_tokens", kWide}, {"output_tokens", kWide}}, o);
  const long bytes_before = g_bytes.load();
  const tollgate::Costs c{1, 1, 1};
  for (const auto& k : keys) (void)set.try_acquire(std::string_view(k), c);  // all keys held (not full)
  const double bytes_per_key = double(g_bytes.load() - bytes_before) / double(kKeys);
  std::size_t i = 0;
  for (auto _ : st) {
    benchmark::DoNotOptimize(set.try_acquire(std::string_view(keys[i]), c));
    i = (i + 7919) % kKeys;
  }
  // The key's own bytes: a 16-character std::string, stored inline (no heap).
  st.counters["bytes_per_key"] = bytes_per_key - double(sizeof(std::string));
  st.counters["bytes_per_key_declared"] = double(set.bytes_per_key());
  st.counters["keys"] = double(set.keys());
}
BENCHMARK(BM_SharedSet_ColdKeys)->Unit(benchmark::kNanosecond);

// ---- Keyed limit sets (KeyedLimitSets) ----------------------------------------------
// One key, three dimensions all limited (wide): try_acquire.
void BM_KeyedSet_HotKey(benchmark::State& st) {
  tollgate::KeyedLimitSets<> keys({"requests", "input_tokens", "output_tokens"}, {.tiers = {{"t", 1, three_wide()}}});
  const std::string_view key = "api-key-00000042";
  const tollgate::Costs c{1, 1200, 300};
  for (auto _ : st) benchmark::DoNotOptimize(keys.try_acquire(key, c));
}
BENCHMARK(BM_KeyedSet_HotKey);

// The machine's memory latency: a random cyclic pointer chase over 256 MB.
void BM_Primitive_DramChase(benchmark::State& st) {
  constexpr std::size_t kSlots = (256u << 20) / sizeof(std::size_t);
  static const std::vector<std::size_t> next = [] {
    std::vector<std::size_t> order(kSlots);
    for (std::size_t i = 0; i < kSlots; ++i) order[i] = i;
    std::mt19937_64 rng(7);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<std::size_t> n(kSlots);
    for (std::size_t i = 0; i < kSlots; ++i) n[order[i]] = order[(i + 1) % kSlots];
    return n;
  }();
  std::size_t at = 0;
  for (auto _ : st) {
    at = next[at];
    benchmark::DoNotOptimize(at);
  }
}
BENCHMARK(BM_Primitive_DramChase);

// Random hits over `keys` live keys (all held: each has taken one request of
// ten). Keys are 15-character strings (a std::string keeps them inline),
// pre-made in a packed array and visited in a pre-shuffled order, so the
// benchmark's own key access is one cache miss.
void BM_KeyedSet_RandomKeys(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  std::vector<std::array<char, 16>> keys(n);
  for (std::size_t i = 0; i < n; ++i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "k-%013zu", i);
    std::copy_n(buf, 16, keys[i].data());
  }
  std::vector<std::array<char, 16>> order = keys;
  std::mt19937_64 rng(11);
  std::shuffle(order.begin(), order.end(), rng);
  tollgate::KeyedLimitSets<> sets({"requests", "input_tokens", "output_tokens"},
                                  {.tiers = {{"t", 1, {{"requests", Limit{10, 1e-3}}, {"input_tokens", kWide}, {"output_tokens", kWide}}}},
                                   .max_keys = 2 * n});
  const tollgate::Costs c{1, 1200, 300};
  for (const auto& k : keys) (void)sets.try_acquire(std::string_view(k.data(), 15), c);
  std::size_t i = 0;
  for (auto _ : st) {
    benchmark::DoNotOptimize(sets.try_acquire(std::string_view(order[i].data(), 15), c));
    if (++i == n) i = 0;
  }
  st.counters["keys"] = double(sets.keys());
  st.counters["bytes_per_key"] = double(sets.bytes_per_key());
}
BENCHMARK(BM_KeyedSet_RandomKeys)->Arg(1'000)->Arg(100'000)->Arg(1'000'000)->Arg(4'000'000)->Iterations(2'000'000);

// ---- A million waiters ------------------------------------------------------------
void BM_Waiters_1M(benchmark::State& st) {
  constexpr int kWaiters = 1'000'000;
  double ns_total = 0;
  long library_allocs = 0;
  for (auto _ : st) {
    st.PauseTiming();
    ManualClock clock;
    ManualScheduler sched(clock);
    auto bucket = std::make_unique<TokenBucket<ManualClock, NullMutex>>(Limit{1, 1e9}, clock, &sched);
    (void)bucket->try_acquire(1);
    std::vector<Task> tasks;
    tasks.reserve(kWaiters);
    int resumed = 0;
    auto waiter = [](TokenBucket<ManualClock, NullMutex>& b, int& count) -> Task {
      if (co_await b.acquire(1)) ++count;
    };
    st.ResumeTiming();
    const auto t0 = SteadyClock::now();
    const long a0 = g_allocs.load();
    for (int i = 0; i < kWaiters; ++i) tasks.push_back(waiter(*bucket, resumed));
    clock.advance(std::chrono::milliseconds(2));  // 1 ns apiece: drains them all
    library_allocs += g_allocs.load() - a0;
    ns_total += std::chrono::duration<double, std::nano>(SteadyClock::now() - t0).count();
    if (resumed != kWaiters) st.SkipWithError("not every waiter was resumed");
    st.PauseTiming();
    tasks.clear();
    bucket.reset();
    st.ResumeTiming();
  }
  const double n = double(st.iterations()) * kWaiters;
  st.counters["ns_per_waiter"] = ns_total / n;
  st.counters["library_allocs_per_waiter"] = double(library_allocs) / n;
}
BENCHMARK(BM_Waiters_1M)->Unit(benchmark::kMillisecond)->Iterations(3);

// ---- Real-time wake-up lateness of the timer thread ------------------------------
void BM_TimerThread_WakeLateness(benchmark::State& st) {
  // 400 waiters, one every 1 ms, on a steady_clock bucket and the shared
  // timer thread; lateness = resume instant - due instant.
  constexpr int kWaiters = 400;
  std::vector<double> late_us;
  for (auto _ : st) {
    TokenBucket<> b(Limit{1, 1000});
    (void)b.try_acquire(1);
    std::vector<SteadyClock::time_point> due(kWaiters), resumed(kWaiters);
    std::atomic<int> left{kWaiters};
    std::vector<Task> tasks;
    tasks.reserve(kWaiters);
    auto waiter = [](TokenBucket<>& bucket, SteadyClock::time_point& at, std::atomic<int>& n) -> Task {
      (void)co_await bucket.acquire(1);
      at = SteadyClock::now();
      n.fetch_sub(1, std::memory_order_release);
    };
    for (int i = 0; i < kWaiters; ++i) {
      const auto before = SteadyClock::now();
      const auto r = b.try_acquire(1);  // not_now: tells the wait the queue would give
      due[i] = before + r.retry_after();
      tasks.push_back(waiter(b, resumed[i], left));
    }
    while (left.load(std::memory_order_acquire) > 0) std::this_thread::yield();
    for (int i = 0; i < kWaiters; ++i)
      late_us.push_back(std::chrono::duration<double, std::micro>(resumed[i] - due[i]).count());
  }
  std::sort(late_us.begin(), late_us.end());
  st.counters["p50_us"] = late_us[late_us.size() / 2];
  st.counters["p99_us"] = late_us[late_us.size() * 99 / 100];
}
BENCHMARK(BM_TimerThread_WakeLateness)->Unit(benchmark::kMillisecond)->Iterations(2)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
