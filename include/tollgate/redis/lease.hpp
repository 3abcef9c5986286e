#pragma once
// Lease: a share of a Redis limit set's tokens held by this process, spent
// locally (no round trip) until it expires; what is left goes back to Redis.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "script_codec.hpp"

namespace tollgate::redis::detail {

template <class Clock>
class Lease {
 public:
  using time_point = typename Clock::time_point;

  explicit Lease(std::size_t dimensions) noexcept : n_(dimensions) {}

  /// Spends `iv` (ns of refill time per dimension) from the lease if it
  /// covers all of it and has not expired at `now`.
  bool spend(const ns_array& iv, time_point now) {
    std::lock_guard lock(mutex_);
    if (!(now < expiry_)) return false;
    for (std::size_t d = 0; d < n_; ++d)
      if (left_[d] < iv[d]) return false;
    for (std::size_t d = 0; d < n_; ++d) left_[d] -= iv[d];
    hits_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  /// Empties the lease into `left` (expired or not: unspent tokens go back);
  /// true when anything was left.
  bool take_leftover(ns_array& left) {
    std::lock_guard lock(mutex_);
    left = left_;
    left_ = {};
    return std::any_of(left.begin(), left.end(), [](std::int64_t v) { return v > 0; });
  }

  /// Adds what a `lease` call granted (`reply`'s amounts) beyond what the
  /// request itself took (`used`); the lease expires at `expiry` or earlier.
  void add(const ScriptReply& reply, const ns_array& used, time_point expiry) {
    std::lock_guard lock(mutex_);
    const bool had = std::any_of(left_.begin(), left_.end(), [](std::int64_t v) { return v > 0; });
    for (std::size_t d = 0; d < n_; ++d) left_[d] += reply.amount(d) - used[d];
    expiry_ = had ? std::min(expiry_, expiry) : expiry;
  }

  /// Acquisitions served by the lease.
  std::uint64_t hits() const noexcept { return hits_.load(std::memory_order_relaxed); }

 private:
  std::size_t n_;
  std::mutex mutex_;
  ns_array left_{};
  time_point expiry_{};
  std::atomic<std::uint64_t> hits_{0};
};

}  // namespace tollgate::redis::detail
