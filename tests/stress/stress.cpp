// tollgate_stress (CTest label "stress"): bounded, real-clock and large-scale
// checks that do not fit the deterministic unit suite.
//
//  1. Two threads x 10,000 coroutines plus try_acquire callers on a shared
//     bucket and on per-key buckets, with random stop requests and
//     reconfigurations, on steady_clock and the timer-thread scheduler, for
//     about two seconds. Afterwards: every waiter finished exactly once; no
//     window [s, t] holds more than capacity + rate * (t - s) (counting only
//     admissions known to lie inside it: sound despite scheduling noise); the
//     total obeys B + r * T; all buckets refill and empty their queues.
//  2. A key flood: 10,000,000 distinct keys (1,000,000 under sanitizers)
//     against a registry capped at 100,000 keys: the cap holds, memory stays
//     within its budget, and keys that were mid-limit keep their state.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <malloc.h>
#include <random>
#include <tollgate/stop_token.hpp>
#include <string>
#include <thread>
#include <vector>

#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/tollgate.hpp>

#include "catch.hpp"
#include "test_support.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TOLLGATE_STRESS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TOLLGATE_STRESS_SANITIZED 1
#endif
#endif

namespace {

using Clock = std::chrono::steady_clock;
using tgtest::Task;
using tollgate::Limit;
using tollgate::Status;

#ifndef TOLLGATE_STRESS_SANITIZED
// Bytes in use on the heap, including blocks glibc served with mmap.
std::size_t heap_in_use() {
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}
#endif

std::int64_t ns_since(Clock::time_point t0, Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t - t0).count();
}

// An admission known to have happened somewhere in [lo, hi] (ns since t0).
struct Span {
  std::int64_t lo, hi, cost;
};

// Sound window check: for every window [S, T] with S a start and T an end of
// some span, the spans lying wholly inside it must fit capacity + rate*(T-S).
// Returns the number of violating windows (0 expected).
long violations(std::vector<Span> spans, std::int64_t capacity, std::int64_t rate) {
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.hi < b.hi; });
  long bad = 0;
  for (const Span& first : spans) {
    const std::int64_t s = first.lo;
    std::int64_t inside = 0;
    for (const Span& x : spans) {  // by increasing end T = x.hi
      if (x.hi < s) continue;
      if (x.lo >= s) inside += x.cost;
      __extension__ const __int128 bound = __int128(capacity) * 1'000'000'000 + __int128(rate) * (x.hi - s);
      if (__int128(inside) * 1'000'000'000 > bound) ++bad;
    }
  }
  return bad;
}

}  // namespace

TEST_CASE("stress: 2 threads x 10,000 coroutines on the real clock", "[stress]") {
  // Two configurations the shared bucket alternates between; the check uses
  // the larger of each (a sound bound for the whole run).
  const Limit small{20, 2000}, large{40, 4000};
  constexpr int kThreads = 2, kPerThread = 10'000;
  // Each waiter writes only its own slots (it may resume on the timer thread,
  // or on a thread requesting its stop); each thread writes only its own
  // try_acquire logs. Everything is merged after join.
  struct Log {
    std::vector<Span> shared, keyed[4];  // this thread's try_acquire admissions
    std::vector<Span> span;              // per waiter
    std::vector<int> target;             // per waiter: -1 shared, else key
    std::vector<Status> status;          // per waiter
    std::vector<std::uint8_t> done;      // per waiter: completions
    std::vector<Task> tasks;
    std::vector<tollgate::stop_source> stops;
  };
  // Declared before the scheduler: the coroutine frames are destroyed only
  // after its thread, which may still be leaving the last of them, is joined.
  std::vector<Log> logs(kThreads);
  tollgate::TimerThreadScheduler<> sched;
  tollgate::TokenBucket<> shared(small, {}, &sched);
  tollgate::BucketRegistry<> keyed({.default_limit = Limit{10, 1000}, .shards = 4}, {}, &sched);

  std::atomic<int> finished{0};
  std::atomic<int> twice{0};
  const Clock::time_point t0 = Clock::now();

  auto body = [&](int t) {
    Log& log = logs[static_cast<std::size_t>(t)];
    log.done.assign(kPerThread, 0);
    log.span.resize(kPerThread);
    log.target.assign(kPerThread, -1);
    log.status.assign(kPerThread, Status::invalid);
    log.stops.resize(kPerThread);
    log.tasks.reserve(kPerThread);
    std::mt19937 rng(99 + t);
    for (int i = 0; i < kPerThread; ++i) {
      const int key = static_cast<int>(rng() % 4);
      const bool on_shared = rng() % 2 == 0;
      const std::int64_t cost = 1 + rng() % 3;
      log.tasks.push_back([](tollgate::TokenBucket<>* bucket, tollgate::BucketRegistry<>* reg, int key,
                             std::int64_t cost, tollgate::stop_token stop, Clock::time_point t0, Log& log, int i,
                             std::atomic<int>& finished, std::atomic<int>& twice) -> Task {
        const std::int64_t lo = ns_since(t0, Clock::now());
        tollgate::AcquireResult r;
        if (bucket) {
          r = co_await bucket->acquire_for(double(cost), std::chrono::milliseconds(20), stop);
        } else {
          auto h = reg->get("key-" + std::to_string(key));
          r = co_await h->acquire_for(double(cost), std::chrono::milliseconds(20), stop);
        }
        const std::int64_t hi = ns_since(t0, Clock::now());
        const auto slot = static_cast<std::size_t>(i);
        if (++log.done[slot] != 1) twice.fetch_add(1);
        log.span[slot] = {lo, hi, cost};
        log.target[slot] = bucket ? -1 : key;
        log.status[slot] = r.status();
        finished.fetch_add(1, std::memory_order_release);
        finished.notify_all();
      }(on_shared ? &shared : nullptr, on_shared ? nullptr : &keyed, key, cost,
                     log.stops[static_cast<std::size_t>(i)].get_token(), t0, log, i, finished, twice));
      if (rng() % 3 == 0) {  // a try_acquire caller
        const std::int64_t lo = ns_since(t0, Clock::now());
        const bool ok = on_shared ? shared.try_acquire(1).ok() : keyed.try_acquire("key-" + std::to_string(key), 1).ok();
        const std::int64_t hi = ns_since(t0, Clock::now());
        if (ok) (on_shared ? log.shared : log.keyed[key]).push_back({lo, hi, 1});
      }
      if (rng() % 8 == 0) log.stops[rng() % (static_cast<std::size_t>(i) + 1)].request_stop();
      if (t == 0 && i % 500 == 0) shared.set_limit(i % 1000 == 0 ? large : small);
      if (i % 10 == 9) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // ~2 s in all
    }
  };
  std::thread other(body, 1);
  body(0);
  other.join();
  for (int v = finished.load(); v != kThreads * kPerThread; v = finished.load()) finished.wait(v);
  const std::int64_t total_ns = ns_since(t0, Clock::now());

  CHECK(twice.load() == 0);
  std::vector<Span> shared_all, keyed_all[4];
  int cancelled = 0, refused = 0;
  for (Log& log : logs) {
    shared_all.insert(shared_all.end(), log.shared.begin(), log.shared.end());
    for (int k = 0; k < 4; ++k) keyed_all[k].insert(keyed_all[k].end(), log.keyed[k].begin(), log.keyed[k].end());
    for (std::size_t i = 0; i < log.span.size(); ++i) {
      CHECK(log.done[i] == 1);
      if (log.status[i] == Status::acquired)
        (log.target[i] < 0 ? shared_all : keyed_all[log.target[i]]).push_back(log.span[i]);
      else if (log.status[i] == Status::cancelled) ++cancelled;
      else ++refused;
    }
  }
  INFO("shared admissions " << shared_all.size() << ", cancelled " << cancelled << ", refused " << refused
                            << ", run " << total_ns / 1'000'000 << " ms");
  CHECK(cancelled > 0);
  CHECK(violations(shared_all, 40, 4000) == 0);
  for (auto& k : keyed_all) CHECK(violations(k, 10, 1000) == 0);
  std::int64_t taken = 0;
  for (const Span& s : shared_all) taken += s.cost;
  CHECK(taken * 1'000'000'000 <= 40 * std::int64_t{1'000'000'000} + 4000 * total_ns);
  // Token accounting: with nobody waiting, every bucket refills completely.
  CHECK(shared.waiters() == 0);
  const auto settle = Clock::now() + std::chrono::milliseconds(50);
  while (Clock::now() < settle) std::this_thread::yield();
  CHECK(shared.available() == shared.limit().capacity);
  for (int k = 0; k < 4; ++k) CHECK(keyed.get("key-" + std::to_string(k))->available() == 10);
}

TEST_CASE("stress: a flood of distinct keys against a capped registry", "[stress][flood]") {
#ifdef TOLLGATE_STRESS_SANITIZED
  constexpr std::size_t kFlood = 1'000'000;
#else
  constexpr std::size_t kFlood = 10'000'000;
#endif
  constexpr std::size_t kCap = 100'000;
  tollgate::testing::ManualClock clock;
  tollgate::BucketRegistry<std::string, tollgate::testing::ManualClock> reg(
      {.default_limit = Limit{5, 0.25},
       .policy = [](const std::string& k) { return k.starts_with("vip-") ? Limit{1000, 0.001} : Limit{5, 0.25}; },
       .max_keys = kCap,
       .overflow_limit = Limit{100, 100}},
      clock);
  // 1,000 keys that are mid-limit for the whole test (they refill 0.001/s).
  for (int i = 0; i < 1000; ++i) REQUIRE(reg.try_acquire("vip-" + std::to_string(i), 600).ok());
#ifndef TOLLGATE_STRESS_SANITIZED
  const std::size_t heap_before = heap_in_use();
#endif
  std::size_t max_size = 0;
  std::string key;
  for (std::size_t i = 0; i < kFlood; ++i) {
    key = "flood-" + std::to_string(i);
    (void)reg.try_acquire(key, 1);
    if (i % 1000 == 999) {
      clock.advance(std::chrono::milliseconds(20));  // earlier flood keys become fresh: evictable
      max_size = std::max(max_size, reg.size());
    }
  }
  // A flood key refills in 4 s = 200,000 insertions: more keys want their
  // own bucket than the cap allows, so the cap and the overflow are exercised.
  INFO("most keys held at once: " << max_size);
  CHECK(max_size == kCap);
#ifndef TOLLGATE_STRESS_SANITIZED
  const std::size_t heap_growth = heap_in_use() - heap_before;
  INFO("heap growth " << heap_growth << " bytes for at most " << kCap << " keys");
  CHECK(heap_growth <= kCap * 256);  // the cap's budget: 256 bytes a key
#endif
  for (int i = 0; i < 1000; ++i) {
    INFO("vip-" << i);
    // Still 400 (+ a trickle), not a fresh 1000: nobody was handed a new bucket.
    CHECK(reg.try_acquire("vip-" + std::to_string(i), 401).status() == Status::not_now);
    CHECK(reg.try_acquire("vip-" + std::to_string(i), 400).ok());
  }
}
