#pragma once
// AcquireResult: what became of one acquisition.

#include <bit>
#include <chrono>
#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>

namespace tollgate {

/// "No particular dimension", in results about a cost (see LimitSet).
inline constexpr std::uint8_t no_dimension = 0xff;

/// How an acquisition ended. Only `acquired` took tokens.
enum class Status : std::uint8_t {
  acquired,   ///< the tokens were taken
  not_now,    ///< not taken; `retry_after()` says when they would be there
  never,      ///< not taken and never will be: the cost exceeds the capacity
  invalid,    ///< not taken: the request itself is wrong (see `reason()`)
  cancelled,  ///< a waiter left the queue (stop token); nothing was taken
  timed_out,  ///< a waiter's wait grew past its max_wait after it queued; nothing taken
  rejected,   ///< a BucketRegistry at its key cap refused a new key; nothing taken
  unavailable,  ///< a remote store (Redis) did not answer in time; nothing taken
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
    case Status::unavailable: return "unavailable";
  }
  return "unknown";
}

/// Why an acquisition failed, beyond its Status.
enum class Reason : std::uint8_t {
  none,
  cost_exceeds_capacity,
  cost_exceeds_new_capacity,
  cost_is_nan,
  cost_is_negative,
  cost_is_infinite,
  no_scheduler,
  wait_overflows_clock,
  stop_requested,
  bucket_destroyed,
  deadline_after_reconfiguration,
  key_cap_reached,
  wrong_dimension_count,
  store_unreachable,
  store_timeout,
  store_error,
  store_closed,
  key_too_long,
  key_missing,
  cost_exceeds_key_capacity,
  wait_grew_past_max_wait,
};

/// A fixed phrase for each Reason, e.g. "cost exceeds capacity".
constexpr std::string_view to_string(Reason r) noexcept {
  switch (r) {
    case Reason::none: return "";
    case Reason::cost_exceeds_capacity: return "cost exceeds capacity";
    case Reason::cost_exceeds_new_capacity: return "cost exceeds the new capacity";
    case Reason::cost_is_nan: return "cost is NaN";
    case Reason::cost_is_negative: return "cost is negative";
    case Reason::cost_is_infinite: return "cost is infinite";
    case Reason::no_scheduler: return "bucket has no scheduler to wait with";
    case Reason::wait_overflows_clock: return "wait would overflow the clock";
    case Reason::stop_requested: return "stop requested";
    case Reason::bucket_destroyed: return "bucket destroyed while waiting";
    case Reason::deadline_after_reconfiguration: return "wait grew past max_wait after it queued (reconfiguration, pause, debt or lower remaining count)";
    case Reason::key_cap_reached: return "key cap reached; new keys are refused";
    case Reason::wrong_dimension_count: return "the cost vector's length differs from the limit set's dimensions";
    case Reason::store_unreachable: return "the store cannot be reached (connection refused or lost)";
    case Reason::store_timeout: return "the store did not answer within the command timeout";
    case Reason::store_error: return "the store answered with an error";
    case Reason::store_closed: return "the connection to the store was closed";
    case Reason::key_too_long: return "key longer than the registry's max_key_bytes";
    case Reason::key_missing: return "the costs carry no key (make them with SharedLimitSet::keyed)";
    case Reason::cost_exceeds_key_capacity: return "cost exceeds the key's own capacity (its tier's limit)";
    case Reason::wait_grew_past_max_wait:
      return "wait grew past max_wait after it queued (keys with a smaller share, a pause, a debt or a lower remaining count went first)";
  }
  return "unknown";
}

/// The outcome of `try_acquire`, `acquire`, `acquire_for` or `acquire_blocking`.
///
/// Converts to `true` only when the tokens were taken. `not_now` carries the
/// wait after which the same request would succeed if nothing else arrived,
/// rounded up to the next nanosecond (never down, so a retry at that instant is
/// never early). Failures carry a Reason naming what was wrong, and the cost
/// asked for. 16 bytes, trivially copyable: returned in registers.
class [[nodiscard]] AcquireResult {
 public:
  constexpr AcquireResult() noexcept = default;

  static constexpr AcquireResult acquired() noexcept { return AcquireResult(Status::acquired); }
  static constexpr AcquireResult not_now(std::chrono::nanoseconds retry_after) noexcept {
    AcquireResult r(Status::not_now);
    r.retry_after_ns_ = retry_after.count();
    return r;
  }
  static constexpr AcquireResult failed(Status s, Reason reason, double cost = 0,
                                        std::uint8_t dimension = no_dimension) noexcept {
    AcquireResult r(s);
    r.info_ = pack(s, reason, dimension, std::bit_cast<std::uint32_t>(static_cast<float>(cost)));
    return r;
  }

  constexpr Status status() const noexcept { return static_cast<Status>(info_ & 0xff); }
  constexpr bool ok() const noexcept { return status() == Status::acquired; }
  constexpr explicit operator bool() const noexcept { return ok(); }

  /// For `not_now`: how long until the request would succeed; zero otherwise.
  constexpr std::chrono::nanoseconds retry_after() const noexcept {
    return std::chrono::nanoseconds(retry_after_ns_);
  }

  /// For failures: what was wrong ("cost exceeds capacity", "cost is NaN", ...).
  constexpr std::string_view reason() const noexcept { return to_string(reason_code()); }
  constexpr Reason reason_code() const noexcept { return static_cast<Reason>((info_ >> 8) & 0xff); }

  /// For failures about the cost: the cost asked for (as a float).
  constexpr double cost() const noexcept { return std::bit_cast<float>(static_cast<std::uint32_t>(info_ >> 32)); }

  /// For a LimitSet's failures: the index of the dimension that refused
  /// (`LimitSet::name(i)` names it); `no_dimension` otherwise.
  constexpr std::uint8_t dimension() const noexcept { return static_cast<std::uint8_t>((info_ >> 16) & 0xff); }

  /// One readable line, for logs and error replies, e.g.
  /// "never: cost exceeds capacity (cost 12)" or "not_now: retry after 500000000 ns".
  /// `dimension_name` names the dimension of a LimitSet's failure (see
  /// `LimitSet::message`); without it the dimension's index is printed.
  std::string message(std::string_view dimension_name = {}) const {
    std::ostringstream os;
    const Status status_ = status();
    os << to_string(status_);
    if (status_ == Status::not_now) {
      os << ": retry after " << retry_after_ns_ << " ns";
    } else if (reason_code() != Reason::none) {
      os << ": " << reason();
      if (reason_code() == Reason::key_too_long) {
        os << " (" << static_cast<std::uint64_t>(cost()) << " bytes)";
      } else if (status_ == Status::never || status_ == Status::invalid) {
        os << " (cost " << cost();
        if (!dimension_name.empty()) os << " in " << dimension_name;
        else if (dimension() != no_dimension) os << " in dimension " << int(dimension());
        os << ")";
      }
    }
    return os.str();
  }

  friend constexpr bool operator==(const AcquireResult& a, const AcquireResult& b) noexcept {
    // Everything but the cost (a float may be NaN).
    return a.retry_after_ns_ == b.retry_after_ns_ && (a.info_ & 0xffffff) == (b.info_ & 0xffffff);
  }

 private:
  constexpr explicit AcquireResult(Status s) noexcept : info_(pack(s, Reason::none, no_dimension, 0)) {}

  static constexpr std::uint64_t pack(Status s, Reason r, std::uint8_t dimension, std::uint32_t cost_bits) noexcept {
    return std::uint64_t(s) | std::uint64_t(r) << 8 | std::uint64_t(dimension) << 16 | std::uint64_t(cost_bits) << 32;
  }

  std::int64_t retry_after_ns_ = 0;
  // Status, Reason, dimension and the cost's float bits (bits 0-7, 8-15,
  // 16-23, 32-63): one integer, so that a result travels in two registers
  // without being taken apart and packed again on every return.
  std::uint64_t info_ = pack(Status::invalid, Reason::none, no_dimension, 0);
};

static_assert(sizeof(AcquireResult) == 16);

}  // namespace tollgate
