#pragma once
// Atomic128: one 16-byte word with an atomic compare-and-swap, where the
// target has one in hardware (x86-64 `cmpxchg16b`). TOLLGATE_HAS_ATOMIC128 says
// whether it exists here; without it, lock-free admission is off and every
// operation takes the bucket's lock (the same results).
//
// The word is read as two 64-bit halves, which may tear: a reader only ever
// uses what it read as the expected value of a CAS, which fails unless all
// 128 bits matched, or validates it by reading again. Under ThreadSanitizer
// every access is a 16-byte atomic builtin instead, so the sanitizer sees
// (and checks) the synchronisation; g++ instruments those itself, clang only
// with -mcx16 (otherwise lock-free admission is off under TSan with clang).

#include <atomic>
#include <cstdint>

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TOLLGATE_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) && !defined(TOLLGATE_TSAN)
#define TOLLGATE_TSAN 1
#endif

#if !defined(TOLLGATE_HAS_ATOMIC128)
#if defined(TOLLGATE_NO_LOCK_FREE) || defined(TOLLGATE_PORTABLE_INT128) || !defined(__SIZEOF_INT128__) || \
    !defined(__x86_64__) || !(defined(__GNUC__) || defined(__clang__))
#define TOLLGATE_HAS_ATOMIC128 0
#elif defined(TOLLGATE_TSAN) && defined(__clang__) && !defined(__GCC_HAVE_SYNC_COMPARE_AND_SWAP_16)
#define TOLLGATE_HAS_ATOMIC128 0
#else
#define TOLLGATE_HAS_ATOMIC128 1
#endif
#endif

namespace tollgate::detail {

#if TOLLGATE_HAS_ATOMIC128

__extension__ typedef unsigned __int128 u128;

class alignas(16) Atomic128 {
 public:
  explicit Atomic128(u128 v = 0) noexcept : lo_(static_cast<std::uint64_t>(v)), hi_(static_cast<std::uint64_t>(v >> 64)) {}
  Atomic128(const Atomic128&) = delete;
  Atomic128& operator=(const Atomic128&) = delete;

  /// The word, possibly torn outside ThreadSanitizer (see above). Acquire:
  /// what the writer of a complete value published before it is visible.
  [[gnu::always_inline]] u128 load() const noexcept {
#if defined(TOLLGATE_TSAN)
    return __atomic_load_n(word(), __ATOMIC_ACQUIRE);
#else
    const std::uint64_t lo = lo_.load(std::memory_order_acquire);
    const std::uint64_t hi = hi_.load(std::memory_order_acquire);
    return (u128(hi) << 64) | lo;
#endif
  }

  /// Replaces `expected` by `desired` if the word holds it (all 128 bits);
  /// otherwise loads the word into `expected` (atomically). A full barrier.
  [[gnu::always_inline]] bool compare_exchange(u128& expected, u128 desired) noexcept {
#if defined(TOLLGATE_TSAN)
    return __atomic_compare_exchange_n(word(), &expected, desired, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
#else
    auto elo = static_cast<std::uint64_t>(expected);
    auto ehi = static_cast<std::uint64_t>(expected >> 64);
    bool ok;
    __asm__ __volatile__("lock cmpxchg16b %1"
                         : "=@ccz"(ok), "+m"(*word()), "+a"(elo), "+d"(ehi)
                         : "b"(static_cast<std::uint64_t>(desired)), "c"(static_cast<std::uint64_t>(desired >> 64))
                         : "memory");
    if (!ok) expected = (u128(ehi) << 64) | elo;
    return ok;
#endif
  }

  /// Stores `v`: only while no other thread may compare-and-swap the word
  /// (its owner closed it); readers may see the halves one at a time.
  void store(u128 v) noexcept {
#if defined(TOLLGATE_TSAN)
    __atomic_store_n(word(), v, __ATOMIC_RELEASE);
#else
    lo_.store(static_cast<std::uint64_t>(v), std::memory_order_release);
    hi_.store(static_cast<std::uint64_t>(v >> 64), std::memory_order_release);
#endif
  }

 private:
  u128* word() noexcept { return reinterpret_cast<u128*>(this); }
  const u128* word() const noexcept { return reinterpret_cast<const u128*>(this); }

  // Little-endian halves of one 16-byte aligned word.
  std::atomic<std::uint64_t> lo_;
  std::atomic<std::uint64_t> hi_;
};

static_assert(sizeof(Atomic128) == 16 && alignof(Atomic128) == 16);

#endif  // TOLLGATE_HAS_ATOMIC128

}  // namespace tollgate::detail
