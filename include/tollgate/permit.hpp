#pragma once
// Permit<Cost>: an acquisition whose real cost is known only afterwards (an
// LLM call's tokens), settled once at that cost. One type for every backend
// of a cost type: TokenBucket's is Permit<double>; LimitSet's and
// RedisLimitSet's are Permit<Costs>, so code that settles takes either.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "costs.hpp"
#include "result.hpp"
#include "spin_mutex.hpp"

namespace tollgate {

template <class Cost>
class Permit;

namespace detail {

/// What a Permit needs of the bucket it came from: a count of its unsettled
/// permits, and the settling itself (two functions the bucket supplies; no
/// virtual functions, so a bucket stays a plain, non-polymorphic class).
template <class Cost>
class PermitIssuer {
 public:
  /// True while an unsettled Permit refers to this bucket.
  bool has_permits() const noexcept { return permits_.load(std::memory_order_acquire) != 0; }

  /// From now on, sums the estimates of this bucket's unsettled Permits:
  /// the calls in flight (UpstreamFeedback subtracts them from a provider's
  /// count where the provider has not charged them yet). Permits made
  /// before are not counted. Off by default: a Permit then costs nothing more.
  void count_in_flight() noexcept { counting_.store(true, std::memory_order_release); }
  /// The estimates of the unsettled Permits made since `count_in_flight`,
  /// in dimension `i` (for a single bucket, `i` = 0); 0 for a bad `i`.
  double in_flight(std::size_t i = 0) const noexcept {
    if (i >= sums_.size()) return 0;
    std::lock_guard lock(in_flight_mutex_);
    return sums_[i];
  }

 protected:
  struct Settling {
    /// Throws `std::invalid_argument` unless `actual` can settle `estimate`.
    void (*check)(const PermitIssuer&, const Cost& estimate, const Cost& actual);
    /// Refunds the surplus of `actual` over `estimate`, or charges the overrun.
    void (*settle)(PermitIssuer&, const Cost& estimate, const Cost& actual);
  };
  explicit PermitIssuer(const Settling& settling) noexcept : settling_(&settling) {}
  ~PermitIssuer() = default;
  PermitIssuer(const PermitIssuer&) = delete;
  PermitIssuer& operator=(const PermitIssuer&) = delete;

 private:
  friend class Permit<Cost>;
  static constexpr std::size_t kSums = std::is_same_v<Cost, double> ? 1 : max_dimensions;
  // Adds `sign` times `c` to the in-flight sums.
  void track(const Cost& c, double sign) noexcept {
    std::lock_guard lock(in_flight_mutex_);
    if constexpr (std::is_same_v<Cost, double>) {
      sums_[0] += sign * c;
    } else {
      const Costs& v = [&]() -> const Costs& {
        if constexpr (std::is_same_v<Cost, Costs>) return c;
        else return c.costs();
      }();
      for (std::size_t i = 0; i < v.size(); ++i) sums_[i] = std::max(0.0, sums_[i] + sign * v[i]);
    }
    if constexpr (std::is_same_v<Cost, double>) sums_[0] = std::max(0.0, sums_[0]);
  }

  const Settling* settling_;
  std::atomic<std::uint32_t> permits_{0};
  std::atomic<bool> counting_{false};
  mutable SpinMutex in_flight_mutex_;
  std::array<double, kSums> sums_{};
};

}  // namespace detail

/// An acquisition of an estimated cost, to be settled at the real one:
/// `settle(actual)` refunds the surplus or charges the overrun as a debt (per
/// dimension, for a limit set). A permit destroyed unsettled keeps the
/// estimate as the cost: nothing is refunded and nothing more is charged, so
/// an abandoned call costs exactly what was reserved for it. Move-only; not
/// thread-safe itself (the bucket is).
///
///     auto permit = co_await bucket.acquire_permit(estimate);
///     if (!permit) co_return reply_429(permit.result());
///     auto response = co_await call_llm(...);
///     permit.settle(response.usage);
///
/// An unsettled permit counts as a user of its bucket: a BucketRegistry does
/// not evict (or fold away) a key's bucket while one exists. The bucket must
/// outlive its permits.
template <class Cost = double>
class [[nodiscard]] Permit {
 public:
  using cost_type = Cost;

  /// An empty permit (`result()` is `invalid`); `settle` throws.
  Permit() = default;
  /// Adopts an acquisition of `estimate` already made on `bucket` (any
  /// bucket or set whose cost type is `Cost`), or, when `result` is a
  /// failure, holds just that failure.
  Permit(detail::PermitIssuer<Cost>& bucket, const Cost& estimate,
         AcquireResult result = AcquireResult::acquired()) noexcept
      : bucket_(result.ok() ? &bucket : nullptr), estimate_(estimate), result_(result) {
    if (!bucket_) return;
    bucket_->permits_.fetch_add(1, std::memory_order_relaxed);
    if (bucket_->counting_.load(std::memory_order_acquire)) {
      bucket_->track(estimate_, 1);
      counted_ = true;
    }
  }
  Permit(Permit&& o) noexcept
      : bucket_(std::exchange(o.bucket_, nullptr)), estimate_(o.estimate_), result_(o.result_), counted_(o.counted_) {}
  Permit& operator=(Permit&& o) noexcept {
    if (this != &o) {
      unpin(bucket_, estimate_, counted_);
      bucket_ = std::exchange(o.bucket_, nullptr);
      estimate_ = o.estimate_;
      result_ = o.result_;
      counted_ = o.counted_;
    }
    return *this;
  }
  Permit(const Permit&) = delete;
  Permit& operator=(const Permit&) = delete;
  ~Permit() { unpin(bucket_, estimate_, counted_); }

  /// True when the estimate was taken.
  explicit operator bool() const noexcept { return result_.ok(); }
  /// How the acquisition ended (a refusal's retry-after, reason, dimension).
  const AcquireResult& result() const noexcept { return result_; }
  const Cost& estimate() const noexcept { return estimate_; }
  /// True once settled, moved from, or when the acquisition failed.
  bool settled() const noexcept { return bucket_ == nullptr; }

  /// Settles at the real cost: refunds `estimate - actual` (never above
  /// capacity) or charges `actual - estimate` as a debt. Once only: throws
  /// `std::logic_error` if already settled, moved from or never acquired,
  /// and `std::invalid_argument` for a negative, NaN or infinite `actual`
  /// (the permit then stays unsettled).
  void settle(const Cost& actual) {
    if (!bucket_)
      throw std::logic_error(result_.ok() ? "Permit::settle: already settled"
                                          : "Permit::settle: the acquisition failed; nothing to settle");
    bucket_->settling_->check(*bucket_, estimate_, actual);
    detail::PermitIssuer<Cost>* b = std::exchange(bucket_, nullptr);
    if (counted_) b->track(estimate_, -1);  // no longer in flight, before its usage counts
    struct Unpin {
      detail::PermitIssuer<Cost>* b;
      ~Unpin() { b->permits_.fetch_sub(1, std::memory_order_release); }
    } unpin_after{b};  // the last touch of the bucket, even if settling throws
    b->settling_->settle(*b, estimate_, actual);
  }

  /// Gives the whole estimate back (the call was never made): `settle` at
  /// zero. With several limits, releasing a permit from one after another
  /// refused leaves nothing taken from the first.
  void release() { settle(zero_like(estimate_)); }

 private:
  static void unpin(detail::PermitIssuer<Cost>* b, const Cost& estimate, bool counted) noexcept {
    if (!b) return;
    if (counted) b->track(estimate, -1);
    b->permits_.fetch_sub(1, std::memory_order_release);
  }
  static Cost zero_like(const Cost& c) noexcept {
    if constexpr (std::is_same_v<Cost, Costs>) return Costs::zeros(c.size());
    else if constexpr (requires { c.zeroed(); }) return c.zeroed();  // KeyedCosts: the same key
    else return Cost{};
  }
  detail::PermitIssuer<Cost>* bucket_ = nullptr;
  Cost estimate_{};
  AcquireResult result_{};
  bool counted_ = false;  // counted in the bucket's in-flight sums
};

}  // namespace tollgate
