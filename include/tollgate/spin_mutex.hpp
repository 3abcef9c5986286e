#pragma once
// SpinMutex: the default Mutex of TokenBucket, LimitSet and BucketRegistry
// (and the lock inside BiasedMutex); a lock for critical sections of a few
// nanoseconds.

#include <atomic>
#include <thread>

namespace tollgate {

/// A test-and-test-and-set spin lock that yields the CPU after a short spin.
///
/// Why a spin lock: a bucket's lock guards only arithmetic (a few
/// nanoseconds) — never a blocking call, never user code — so a waiter for
/// the lock almost always gets it within a few spins. Unlocking is a plain
/// release store (std::mutex needs an atomic read-modify-write to know whether
/// to wake a sleeper), which makes an uncontended lock/unlock about half the
/// cost of std::mutex's, and under contention it avoids futex system calls
/// altogether (see the README's performance table). After 64 spins it calls
/// `std::this_thread::yield()`, so a preempted holder does not burn a core.
/// Use `std::mutex` instead if your buckets can be contended by many more
/// threads than you have cores.
class SpinMutex {
 public:
  void lock() noexcept {
    if (!locked_.exchange(true, std::memory_order_acquire)) [[likely]]
      return;
    lock_contended();
  }
  bool try_lock() noexcept {
    return !locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  // Out of line: the uncontended lock is one exchange and costs its caller
  // no registers.
  [[gnu::noinline]] void lock_contended() noexcept {
    do {
      for (int spins = 0; locked_.load(std::memory_order_relaxed); ++spins) {
        if (spins < 64) relax();
        else std::this_thread::yield();
      }
    } while (locked_.exchange(true, std::memory_order_acquire));
  }
  static void relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
  }
  std::atomic<bool> locked_{false};
};

}  // namespace tollgate
