#pragma once
// AcquireResult: what became of one acquisition.

#include <chrono>
#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>

namespace tollgate {

/// How an acquisition ended. Only `acquired` took tokens.
enum class Status : std::uint8_t {
  acquired,   ///< the tokens were taken
  not_now,    ///< not taken; `retry_after()` says when they would be there
  never,      ///< not taken and never will be: the cost exceeds the capacity
  invalid,    ///< not taken: the request itself is wrong (see `reason()`)
  cancelled,  ///< a waiter left the queue (stop token); nothing was taken
  timed_out,  ///< a waiter's deadline passed after a reconfiguration; nothing taken
  rejected,   ///< a BucketRegistry at its key cap refused a new key; nothing taken
};

/// Returns the enumerator's name, such as "not_now".
constexpr std::string_view to_string(Status s) noexcept {
  switch (s) {
    case Status::acquired: return "acquired";
    case Status::not_now: return "not_now";
    case Status::never: return "never";
    case Status::invalid: return "invalid";
    case Status::cancelled: return "cancelled";
    case Status::timed_out: return "timed_out";
    case Status::rejected: return "rejected";
  }
  return "unknown";
}

/// The outcome of `try_acquire`, `acquire`, `acquire_for` or `acquire_blocking`.
///
/// Converts to `true` only when the tokens were taken. `not_now` carries the
/// wait after which the same request would succeed if nothing else arrived,
/// rounded up to the next nanosecond (never down, so a retry at that instant is
/// never early). `never` and `invalid` carry a reason naming what was wrong.
class [[nodiscard]] AcquireResult {
 public:
  constexpr AcquireResult() noexcept = default;

  static constexpr AcquireResult acquired() noexcept { return AcquireResult(Status::acquired); }
  static constexpr AcquireResult not_now(std::chrono::nanoseconds retry_after) noexcept {
    AcquireResult r(Status::not_now);
    r.retry_after_ = retry_after;
    return r;
  }
  static constexpr AcquireResult failed(Status s, const char* reason, double cost = 0,
                                        double limit = 0) noexcept {
    AcquireResult r(s);
    r.reason_ = reason;
    r.cost_ = cost;
    r.limit_ = limit;
    return r;
  }

  constexpr Status status() const noexcept { return status_; }
  constexpr bool ok() const noexcept { return status_ == Status::acquired; }
  constexpr explicit operator bool() const noexcept { return ok(); }

  /// For `not_now`: how long until the request would succeed; zero otherwise.
  constexpr std::chrono::nanoseconds retry_after() const noexcept { return retry_after_; }

  /// For `never`, `invalid`, `cancelled`, `timed_out`: a fixed phrase naming the
  /// problem ("cost exceeds capacity", "cost is NaN", ...); empty otherwise.
  constexpr std::string_view reason() const noexcept { return reason_; }

  /// The cost the request asked for, when the result is a failure about it.
  constexpr double cost() const noexcept { return cost_; }

  /// One readable line, for logs and error replies, e.g.
  /// "never: cost exceeds capacity (cost 12, capacity 10)".
  std::string message() const {
    std::ostringstream os;
    os << to_string(status_);
    if (status_ == Status::not_now) {
      os << ": retry after " << retry_after_.count() << " ns";
    } else if (!reason_.empty()) {
      os << ": " << reason_;
      if (status_ == Status::never) os << " (cost " << cost_ << ", capacity " << limit_ << ")";
      else if (status_ == Status::invalid) os << " (cost " << cost_ << ")";
    }
    return os.str();
  }

  friend constexpr bool operator==(const AcquireResult& a, const AcquireResult& b) noexcept {
    return a.status_ == b.status_ && a.retry_after_ == b.retry_after_;
  }

 private:
  constexpr explicit AcquireResult(Status s) noexcept : status_(s) {}

  std::chrono::nanoseconds retry_after_{0};
  std::string_view reason_{};
  double cost_ = 0;
  double limit_ = 0;
  Status status_ = Status::invalid;
};

}  // namespace tollgate
