#pragma once
// The wire format of the limit-set script (detail/redis_script.hpp): the
// arguments a call sends, and ScriptReply, which names the reply's fields.

#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../redis_connection.hpp"
#include "options.hpp"

namespace tollgate::redis::detail {

/// Whole nanoseconds per dimension.
using ns_array = std::array<std::int64_t, max_dimensions>;

/// Nanoseconds, saturating at 2^62 (callers cap them lower): an absurd cost
/// never converts an out-of-range double to an integer.
inline std::int64_t saturate_ns(double ns) noexcept {
  constexpr double top = 4611686018427387904.0;  // 2^62
  if (!(ns < top)) return std::int64_t{1} << 62;
  return ns > 0 ? static_cast<std::int64_t>(ns) : 0;
}
/// Refill time of `cost` at `rate` in whole ns, rounded up (a cost to take).
inline std::int64_t refill_ns_up(double cost, double rate) noexcept { return saturate_ns(std::ceil(cost * 1e9 / rate)); }
/// ... rounded down (an amount to give back or to leave).
inline std::int64_t refill_ns_down(double cost, double rate) noexcept {
  return saturate_ns(std::floor(cost * 1e9 / rate));
}
/// A wait in whole ns, rounded up, in [0, 2^62].
template <class Rep, class Period>
std::int64_t wait_ns(std::chrono::duration<Rep, Period> d) {
  if (!(d > std::chrono::duration<Rep, Period>::zero())) return 0;
  if (d >= std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(std::chrono::nanoseconds(std::int64_t{1} << 62)))
    return std::int64_t{1} << 62;
  return std::chrono::ceil<std::chrono::nanoseconds>(d).count();
}

/// The arguments of one script call: operation, "now", the dimensions' full
/// refill times and flags, then the operation's own arguments.
class ScriptArgs {
 public:
  ScriptArgs(const char* op, std::size_t n, const ns_array& tau, const RedisLimitOptions& options) : n_(n) {
    args_.reserve(5 + 3 * n);
    args_.emplace_back(op);
    if (options.time_override) {
      const std::int64_t t = options.time_override().count();
      args_.push_back(std::to_string(t / 1'000'000'000));
      args_.push_back(std::to_string(t % 1'000'000'000));
    } else {
      args_.emplace_back();  // the script reads the server's TIME
      args_.emplace_back();
    }
    args_.push_back(std::to_string(n));
    for (std::size_t d = 0; d < n; ++d) args_.push_back(std::to_string(tau[d]));
    args_.emplace_back(options.missing_key == MissingKey::empty ? "E" : "");
  }
  /// One value per dimension.
  ScriptArgs& add(const ns_array& v) {
    for (std::size_t d = 0; d < n_; ++d) args_.push_back(std::to_string(v[d]));
    return *this;
  }
  ScriptArgs& add(std::int64_t v) {
    args_.push_back(std::to_string(v));
    return *this;
  }
  std::vector<std::string> take() { return std::move(args_); }

 private:
  std::size_t n_;
  std::vector<std::string> args_;
};

/// A script reply, by name: `{code, wait_ns, dimension, epoch, instant, ...}`
/// and, after those five, one amount per dimension (`refund`, `lease`,
/// `peek`) or a reservation's undo record (`reserve`).
class ScriptReply {
 public:
  ScriptReply(const Reply& r, std::size_t n) noexcept : r_(r), n_(n) {}

  /// The store answered with at least the common fields.
  bool answered() const noexcept { return bool(r_) && r_.values.size() >= 5; }
  /// ... and with one amount per dimension after them.
  bool has_amounts() const noexcept { return bool(r_) && r_.values.size() >= 5 + n_; }
  /// ... and with a reservation's undo record.
  bool has_undo() const noexcept { return bool(r_) && r_.values.size() >= 6 + 2 * n_; }

  /// 0: done; 1: refused (or a cancel found others behind); 2: a cancel came after the grant.
  std::int64_t code() const noexcept { return r_.values[0]; }
  /// The wait until the grant (or the refusal's retry-after), ns.
  std::int64_t wait() const noexcept { return r_.values[1]; }
  /// The hash's epoch (server seconds) and an instant in ns since it: the
  /// grant of a reservation, otherwise the server's "now".
  std::int64_t epoch() const noexcept { return r_.values[3]; }
  std::int64_t instant() const noexcept { return r_.values[4]; }
  /// `instant()` as ns since the Unix epoch.
  std::int64_t server_time_ns() const noexcept { return epoch() * 1'000'000'000 + instant(); }
  /// Dimension d's amount (ns of refill time).
  std::int64_t amount(std::size_t d) const noexcept { return r_.values[5 + d]; }
  /// A reservation's undo record: the latest grant and each dimension's
  /// paid-up-to instant before it, and each one's after it.
  std::int64_t grant_before() const noexcept { return r_.values[5]; }
  std::int64_t paid_before(std::size_t d) const noexcept { return r_.values[6 + d]; }
  std::int64_t paid_after(std::size_t d) const noexcept { return r_.values[6 + n_ + d]; }

 private:
  const Reply& r_;
  std::size_t n_;
};

}  // namespace tollgate::redis::detail
