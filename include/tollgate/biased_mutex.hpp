#pragma once
// BiasedMutex: an option for a bucket one thread owns. A spin lock that lets the one
// thread using a bucket in and out without any atomic read-modify-write.

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <thread>

#include "spin_mutex.hpp"
#include "mutex_traits.hpp"

#if defined(__linux__)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace tollgate {

namespace detail {

/// A number for the calling thread, unique for the life of the process
/// (never reused, unlike thread ids): 2, 3, ...
[[gnu::noinline]] inline std::uint64_t new_thread_token() noexcept {
  static std::atomic<std::uint64_t> next{2};
  return next.fetch_add(1, std::memory_order_relaxed);
}
[[gnu::always_inline]] inline std::uint64_t thread_token() noexcept {
  static constinit thread_local std::uint64_t token = 0;  // constinit: no TLS guard
  if (token == 0) [[unlikely]]
    token = new_thread_token();
  return token;
}

#if defined(__linux__) && defined(__NR_membarrier)
inline long membarrier(int cmd) noexcept { return syscall(__NR_membarrier, cmd, 0U, 0); }

/// True when this process can issue the heavy side of an asymmetric fence
/// (Linux >= 4.14 membarrier, registered once; refused by some sandboxes).
inline bool heavy_barrier_available() noexcept {
  static const bool ok = membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
  return ok;
}

/// Makes every thread of the process that is running now execute a full
/// memory barrier before this returns (membarrier(2)). Microseconds: it
/// interrupts the CPUs running this process's threads.
inline void heavy_barrier() noexcept {
  if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return;
  // A child after fork() may need its own registration.
  if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0 &&
      membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0)
    return;
  if (membarrier(MEMBARRIER_CMD_GLOBAL) == 0) return;  // slower, needs no registration
  std::fputs("tollgate::BiasedMutex: membarrier failed after it had worked; cannot revoke a bias safely\n", stderr);
  std::terminate();
}
#else
inline bool heavy_barrier_available() noexcept { return false; }
inline void heavy_barrier() noexcept { std::terminate(); }  // unreachable: nothing is ever biased
#endif

}  // namespace detail

/// A Mutex biased towards the first thread that uses it: an expert's option
/// for a bucket that one thread owns and on which nothing ever waits.
///
/// Why: a bucket's lock costs one atomic read-modify-write, which right after
/// a `steady_clock::now()` (that the CPU must finish first) is a visible part
/// of a `try_acquire` (the README's performance section has the figures). A
/// bucket touched by one thread only for its whole life can skip it:
///
///  - The first thread that calls `try_acquire` (`try_enter_biased`) becomes
///    the owner. From then on it enters with a plain store, a compiler-only
///    fence and a load, and leaves with a plain store: no atomic RMW at all.
///  - Any other thread takes the spin lock as usual; the first time one does,
///    it revokes the bias for good: it raises a flag, runs a process-wide
///    memory barrier (Linux `membarrier`: an inter-processor interrupt to
///    every core running the process, once per bucket), and waits until the owner is outside. This is the asymmetric
///    Dekker protocol of folly's `asymmetric_thread_fence_heavy` and of
///    userspace RCU: either the owner sees the flag and takes the lock, or the
///    revoking thread sees the owner inside and waits.
///  - After revocation the bucket behaves as a `SpinMutex` (plus a
///    thread-local read and two loads from a line nobody writes any more).
///    Only `try_acquire` and the no-wait case of `acquire` use the biased
///    entry; every other member function takes the lock.
///
/// Where `membarrier` is unavailable (not Linux, or refused by a sandbox)
/// nothing is ever biased and this is a `SpinMutex`. A bucket on which
/// anything waits is revoked at the first wake-up (the timer thread takes the
/// lock), after which each call costs a little more than a `SpinMutex`'s; a
/// bucket made per connection and touched by two threads pays a revocation
/// each. Hence `SpinMutex` is the default, and this is for a bucket that one
/// thread owns and that never waits. The thread token lives in a `thread_local`; in a
/// shared library built with -fPIC reading it costs a call to __tls_get_addr.
class BiasedMutex {
 public:
  void lock() noexcept {
    lock_.lock();
    const std::uint64_t owner = owner_.load(std::memory_order_relaxed);
    if (owner != kUnowned && owner != kRevoked && owner != detail::thread_token()) [[unlikely]]
      revoke();
  }
  bool try_lock() noexcept {
    if (!lock_.try_lock()) return false;
    const std::uint64_t owner = owner_.load(std::memory_order_relaxed);
    if (owner != kUnowned && owner != kRevoked && owner != detail::thread_token()) [[unlikely]]
      revoke();
    return true;
  }
  void unlock() noexcept { lock_.unlock(); }

  /// The owner's way in, without the lock: true when the caller may touch the
  /// guarded state (then it must call `leave_biased`, with nothing in between
  /// that can block or re-enter). False otherwise (take the lock instead); the
  /// first call on a mutex nobody owns makes the caller its owner.
  [[gnu::always_inline]] bool try_enter_biased() noexcept {
    const std::uint64_t me = detail::thread_token();
    const std::uint64_t owner = owner_.load(std::memory_order_relaxed);
    if (owner != me) [[unlikely]] {
      if (owner == kUnowned) claim(me);
      return false;
    }
    active_.store(true, std::memory_order_relaxed);
    // The light side of the asymmetric fence: the store above is ordered
    // before the load below for the revoking thread by its heavy barrier.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (revoking_.load(std::memory_order_relaxed)) [[unlikely]] {
      active_.store(false, std::memory_order_release);
      return false;
    }
    return true;
  }
  [[gnu::always_inline]] void leave_biased() noexcept { active_.store(false, std::memory_order_release); }

  /// For the guarded object's destructor, when by contract no other thread
  /// uses it any more: ends the bias without the revocation's barrier, so a
  /// bucket destroyed on another thread than its owner's costs no membarrier.
  void end_bias_for_teardown() noexcept { owner_.store(kRevoked, std::memory_order_relaxed); }

  /// True while some thread holds the bias (for tests).
  bool biased() const noexcept {
    const std::uint64_t owner = owner_.load(std::memory_order_relaxed);
    return owner != kUnowned && owner != kRevoked;
  }

 private:
  static constexpr std::uint64_t kUnowned = 0;
  static constexpr std::uint64_t kRevoked = 1;

  [[gnu::noinline]] void claim(std::uint64_t me) noexcept {
    if (!detail::heavy_barrier_available()) {
      owner_.store(kRevoked, std::memory_order_relaxed);  // never biased here
      return;
    }
    lock_.lock();  // a holder of the lock is excluded by it; later ones revoke
    if (owner_.load(std::memory_order_relaxed) == kUnowned) owner_.store(me, std::memory_order_relaxed);
    lock_.unlock();
  }

  // Called with the lock held, by a thread other than the owner.
  [[gnu::noinline]] void revoke() noexcept {
    revoking_.store(true, std::memory_order_relaxed);
    detail::heavy_barrier();
    while (active_.load(std::memory_order_acquire)) std::this_thread::yield();
    owner_.store(kRevoked, std::memory_order_relaxed);
  }

  // The bias fields are read on every entry and almost never written: they
  // get a cache line of their own, away from the lock's (which threads
  // sharing a bucket write on every call).
  alignas(64) std::atomic<std::uint64_t> owner_{kUnowned};
  std::atomic<bool> revoking_{false};  // set once, under the lock, never cleared
  std::atomic<bool> active_{false};    // the owner is inside (written by the owner only)
  alignas(64) SpinMutex lock_;
};

/// A bucket enters a BiasedMutex through the owner's way when it can, and
/// ends the bias without a barrier when it is destroyed.
template <>
struct mutex_traits<BiasedMutex> {
  static constexpr bool single_threaded = false;
  static constexpr bool lock_free_admission = false;  // its owner's path writes nothing shared already
  [[gnu::always_inline]] static bool try_enter_fast(BiasedMutex& m) noexcept { return m.try_enter_biased(); }
  [[gnu::always_inline]] static void leave_fast(BiasedMutex& m) noexcept { m.leave_biased(); }
  static void before_teardown(BiasedMutex& m) noexcept { m.end_bias_for_teardown(); }
};

}  // namespace tollgate
