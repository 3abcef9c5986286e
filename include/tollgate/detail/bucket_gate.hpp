#pragma once
// BucketGate: lock-free admission for one token bucket while nobody waits.
//
// A TokenBucket's state on its common path is one instant, the paid-up-to
// `tat` of BucketCore. While the gate is *open*, that instant lives in one
// 16-byte atomic word (its own cache line) and `try_acquire`, or a `co_await`
// that needs no wait, admits with one compare-and-swap on it, and refuses
// with no write at all. Everything else (queueing a waiter, a refund, a
// charge, a pause, a reconfiguration, a read of the level) takes the lock
// and *closes* the gate first: one CAS moves the instant into the core and
// marks the word closed, so from then on admissions wait for the lock; when
// the locked operation ends, the gate reopens if the core allows it (no
// waiter queued) with the core's instant. While closed, the word is never
// written except by the lock holder, so the core is the one state.
//
// The word: bits 0..95 are `tat` (two's complement, relative to the bucket's
// origin: 2^63 ns in units of 2^-32 ns fit with room), bit 96 says closed,
// bits 97..127 count the openings. Beside it, in other cache lines read by
// every admission and written only while closed, the configuration the fast
// path needs (the limit, the cached cost's interval and allowance, and the
// earliest instant it may act at). An admission reads the word, then the
// configuration, and its CAS succeeds only if the word (generation included)
// did not change meanwhile, so it never combines a configuration with
// another opening's state; a refusal reads the word again to check the same.
//
// Instants. The locked paths clamp `now` to the latest instant they saw
// (time never runs backwards for a bucket). The fast path acts only at or
// after that instant and after any pause (the `floor`); two admissions
// racing on the word each act at their own instant, in CAS order. An
// admission at an instant earlier than one already applied needs more
// refill than it would at the later instant, never less (tat only moves
// forward): the bound in every window holds exactly as when serialised.

#include <atomic>
#include <cstdint>
#include <limits>

#include "atomic128.hpp"
#include "bucket_core.hpp"
#include "bucket_step.hpp"
#include "fine_time.hpp"

namespace tollgate::detail {

/// What a lock-free attempt decided.
enum class FastOutcome : unsigned char {
  taken,    ///< admitted: the cost is taken
  refused,  ///< not now: `wait` holds how long until it would be admitted
  locked,   ///< the gate is closed, or the case is not the common one: take the lock
};

/// The gate of a bucket without lock-free admission (a lock-free word is not
/// available here, the bucket is not a single one, or the mutex opts out).
struct NoGate {
  static constexpr bool enabled = false;
  FastOutcome try_take(fine_t, double, fine_t&) noexcept { return FastOutcome::locked; }
  template <class Core>
  void close(Core&) noexcept {}
  template <class Core>
  void open(const Core&) noexcept {}
};

#if TOLLGATE_HAS_ATOMIC128

class BucketGate {
 public:
  static constexpr bool enabled = true;

  BucketGate() noexcept = default;
  BucketGate(const BucketGate&) = delete;
  BucketGate& operator=(const BucketGate&) = delete;

  /// Takes `cost` at `now` with one CAS if the gate is open and `now` is not
  /// before the floor; or refuses without writing; or says `locked`.
  ///
  /// The common case (the cached cost, one attempt) is inline and arranged
  /// so that only two integer steps wait for `now`: the bucket admits iff
  /// `tat + iv <= now + slack` (a full bucket, `tat < now - tau`, always has
  /// room for a valid cost), and then ends at `max(tat + iv, now - (tau - iv))`.
  [[gnu::always_inline]] FastOutcome try_take(fine_t now, double cost, fine_t& wait) noexcept {
    u128 w = word_.load();
    if (!(w & kClosedBit) && cost == cfg_.cost.load(std::memory_order_relaxed)) [[likely]] {
      const fine_t tat = tat_of(w);
      const fine_t end = tat + cfg_.iv.load();
      if (tat + cfg_.iv_less_slack.load() <= now && now >= cfg_.floor.load()) [[likely]] {
        const fine_t from_full = now - cfg_.tau_less_iv.load();
        if (word_.compare_exchange(w, (w & kMetaMask) | encode(end < from_full ? from_full : end))) [[likely]]
          return FastOutcome::taken;
      }
    }
    return try_take_loop(w, now, cost, wait);  // `w`: the word as last read (a failed CAS reads it)
  }

  /// The general case: any valid cost, refusals, and retries after a CAS
  /// lost to another thread.
  [[gnu::noinline]] FastOutcome try_take_loop(u128 w, fine_t now, double cost, fine_t& wait) noexcept {
    for (;;) {
      if (w & kClosedBit) return FastOutcome::locked;
      if (now < cfg_.floor.load()) return FastOutcome::locked;
      fine_t iv, slack;
      const double cached = cfg_.cost.load(std::memory_order_relaxed);
      if (cost == cached) {
        iv = cfg_.iv.load();
        slack = cfg_.slack.load();
      } else if (cached != cached || !costed(cost, iv, slack)) {
        // No cost cached yet: the locked path caches this one (the gate
        // reopens with it). An invalid cost: the locked path names what is wrong.
        return FastOutcome::locked;
      }
      const fine_t tau = cfg_.tau.load();
      const fine_t tat = tat_of(w);
      const fine_t end = (tat < now - tau ? now - tau : tat) + iv;
      if (end > now + slack) {
        // No write: valid if the word is unchanged since the configuration
        // was read (the fence keeps those reads before the second one).
        std::atomic_thread_fence(std::memory_order_acquire);
        const u128 again = word_.load();
        if (again != w) {
          w = again;
          continue;
        }
        wait = end - now;
        return FastOutcome::refused;
      }
      if (word_.compare_exchange(w, (w & kMetaMask) | encode(end))) return FastOutcome::taken;
    }
  }

  /// With the lock held: moves the word's instant into `core` and closes the
  /// gate (admissions take the lock from now on). Nothing if already closed.
  void close(BucketCore& core) noexcept {
    if (!open_) return;
    u128 w = word_.load();
    while (!word_.compare_exchange(w, w | kClosedBit)) {
    }
    core.set_tat(tat_of(w));
    open_ = false;
  }

  /// With the lock held, the gate closed: reopens it with the core's state if
  /// the core is on its common path (no waiter queued) and its instants fit.
  void open(const BucketCore& core) noexcept {
    if (open_) return;
    fine_t floor, iv, slack;
    double cost;
    if (!core.lock_free_view(floor, cost, iv, slack)) return;
    const fine_t tat = core.tat();
    const fine_t tau = core.tau();
    if (tat < -kRange || tat > kRange || tau > kRange || floor > kRange) return;
    const Limit& l = core.limit();
    cfg_.floor.store(floor);
    cfg_.cost.store(cost, std::memory_order_relaxed);
    cfg_.iv.store(iv);
    cfg_.slack.store(slack);
    cfg_.iv_less_slack.store(iv - slack);
    cfg_.tau_less_iv.store(tau - iv);
    cfg_.tau.store(tau);
    cfg_.rate.store(l.rate, std::memory_order_relaxed);
    cfg_.capacity.store(l.capacity, std::memory_order_relaxed);
    generation_ = (generation_ + 1) & kGenerationMask;
    word_.store((u128(generation_) << 97) | encode(tat));  // release: the configuration first
    open_ = true;
  }

  bool is_open() const noexcept { return open_; }

 private:
  static constexpr u128 kClosedBit = u128(1) << 96;
  static constexpr u128 kTatMask = kClosedBit - 1;
  static constexpr u128 kMetaMask = ~kTatMask;
  static constexpr std::uint32_t kGenerationMask = (std::uint32_t{1} << 31) - 1;
  static constexpr fine_t kRange = fine_t(1) << 94;  // every instant a bucket reaches (2^62 ns), with room

  static u128 encode(fine_t tat) noexcept { return static_cast<u128>(tat) & kTatMask; }
  static fine_t tat_of(u128 w) noexcept { return static_cast<fine_t>(w << 32) >> 32; }

  // The interval and allowance of a cost other than the cached one, computed
  // from the configuration; false when the cost is not valid (NaN, negative,
  // beyond capacity).
  bool costed(double cost, fine_t& iv, fine_t& slack) const noexcept {
    const double capacity = cfg_.capacity.load(std::memory_order_relaxed);
    if (!(cost >= 0 && cost <= capacity)) return false;
    const fine_t tau = cfg_.tau.load();
    iv = fine_interval(cost, cfg_.rate.load(std::memory_order_relaxed));
    slack = admission_slack(cost, capacity, tau);
    return true;
  }

  // A fine_t published for the fast path: two relaxed halves, written only
  // while the gate is closed (the word's release/acquire orders them).
  class Fine {
   public:
    fine_t load() const noexcept {
      const std::uint64_t lo = lo_.load(std::memory_order_relaxed);
      const std::uint64_t hi = hi_.load(std::memory_order_relaxed);
      return static_cast<fine_t>((u128(hi) << 64) | lo);
    }
    void store(fine_t v) noexcept {
      lo_.store(static_cast<std::uint64_t>(static_cast<u128>(v)), std::memory_order_relaxed);
      hi_.store(static_cast<std::uint64_t>(static_cast<u128>(v) >> 64), std::memory_order_relaxed);
    }

   private:
    std::atomic<std::uint64_t> lo_{0}, hi_{0};
  };

  // The word alone in its cache line: the only line admissions write.
  alignas(64) Atomic128 word_{kClosedBit};
  // Read by every admission, written only while closed.
  struct alignas(64) Config {
    Fine floor, iv, iv_less_slack, tau_less_iv;  // the inline path's (the cached cost)
    Fine slack, tau;
    std::atomic<double> cost{std::numeric_limits<double>::quiet_NaN()}, rate{1}, capacity{0};
  } cfg_;
  // The lock holder's own knowledge (guarded by the bucket's mutex).
  alignas(64) bool open_ = false;
  std::uint32_t generation_ = 0;
};

#endif  // TOLLGATE_HAS_ATOMIC128

}  // namespace tollgate::detail
