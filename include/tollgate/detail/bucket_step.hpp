#pragma once
// BucketStep: one token bucket's limit and the pure steps on its paid-up-to
// instant, written once for every in-process backend: TokenBucket's core,
// each dimension of a LimitSet, and a registry key's compact state.
//
// Representation (GCRA, "virtual scheduling"): instead of a token count and a
// last-refill time, a bucket keeps one instant `tat`: the time up to which
// every admitted cost has been paid for. Tokens accrue at `rate`, so the
// bucket holds `min(capacity, rate * (now - tat))` unreserved tokens. An
// acquisition of cost c needs `interval(c) = c / rate` of refill time:
//
//     base = max(tat, now - tau)             // tau = interval(capacity): "full"
//     if base + interval(c) <= now + slack   -> admitted, tat = base + interval(c)
//     else                                   -> due at base + interval(c)
//
// Refill is implicit (no per-call rounding, no drift), and a smaller `now`
// can never re-credit time because `tat` only moves forward. `slack` is the
// rounding allowance of `admission_slack` (fine_time.hpp).
//
// A core that reserves queued waiters' costs in `tat` (TokenBucket's) passes
// their total as `queued`: the unreserved level is then measured from
// `tat - queued`, and nothing may fill the bucket past capacity under them.

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "../limit.hpp"
#include "../result.hpp"
#include "fine_time.hpp"

namespace tollgate::detail {

/// Checks a per-call cost against a capacity. Returns `acquired` when usable.
inline AcquireResult check_cost(double cost, double capacity) noexcept {
  if (cost >= 0 && cost <= capacity) [[likely]]
    return AcquireResult::acquired();
  if (std::isnan(cost)) return AcquireResult::failed(Status::invalid, Reason::cost_is_nan, cost);
  if (cost < 0) return AcquireResult::failed(Status::invalid, Reason::cost_is_negative, cost);
  if (std::isinf(cost)) return AcquireResult::failed(Status::invalid, Reason::cost_is_infinite, cost);
  return AcquireResult::failed(Status::never, Reason::cost_exceeds_capacity, cost);
}

/// Throws `std::invalid_argument("<who>: <what> must be finite and >= 0, got v")`.
inline void check_amount(const char* who, const char* what, double v) {
  if (v >= 0 && !std::isinf(v)) return;
  std::ostringstream os;
  os << who << ": " << what << " must be finite and >= 0, got " << v;
  throw std::invalid_argument(os.str());
}

struct BucketStep {
  BucketStep() = default;
  explicit BucketStep(const Limit& l) noexcept { apply(l); }

  // Read by every admission, first: the cost cache and the full bucket's time.
  fine_t tau = 0;         // refill time of a full bucket
  fine_t last_iv = 0;     // one-entry cache: the interval of `last_cost` ...
  fine_t last_slack = 0;  // ... and its rounding allowance
  double last_cost = std::numeric_limits<double>::quiet_NaN();  // NaN equals no cost: an empty cache
  double fine_per_unit = 0;  // fine units of refill time per cost unit
  Limit limit{};
  fine_t max_debt_iv = 0;  // the most debt a charge may leave, as refill time
  double max_debt = -1;    // ... in tokens (< 0: one capacity, following it)

  /// Takes `l` (already validated) as the limit; the cost cache is emptied.
  void apply(const Limit& l) noexcept {
    limit = l;
    fine_per_unit = 1e9 * fine_per_ns_d / l.rate;
    tau = fine_interval(l.capacity, l.rate);
    last_cost = std::numeric_limits<double>::quiet_NaN();
    set_max_debt(max_debt);
  }

  /// Refill time of a valid `cost`, rounded up; caches it and its allowance.
  fine_t interval(double cost) noexcept {
    if (cost != last_cost) [[unlikely]]
      recompute(cost);
    return last_iv;
  }
  [[gnu::noinline]] void recompute(double cost) noexcept {
    last_cost = cost;
    last_iv = fine_interval(cost, limit.rate);
    last_slack = admission_slack(cost, limit.capacity, tau);
  }

  /// Where taking refill time `iv` at `now` ends, from paid-up-to `tat`.
  fine_t end_of(fine_t tat, fine_t now, fine_t iv) const noexcept {
    return (tat < now - tau ? now - tau : tat) + iv;
  }
  /// True when an admission ending at `end` (of the cached cost) is granted at `now`.
  bool admits(fine_t end, fine_t now) const noexcept { return end <= now + last_slack; }

  /// Takes `cost` from `tat` at `now` if it is there; never waits.
  AcquireResult try_take(fine_t& tat, fine_t now, double cost) noexcept {
    const AcquireResult check = check_cost(cost, limit.capacity);
    if (!check) [[unlikely]]
      return check;
    const fine_t end = end_of(tat, now, interval(cost));
    if (admits(end, now)) {
      tat = end;
      return AcquireResult::acquired();
    }
    return AcquireResult::not_now(to_ns_ceil(end - now));
  }

  /// `tat` after giving back refill time `iv`: never above capacity, never later.
  fine_t given_back(fine_t tat, fine_t now, fine_t iv, fine_t queued = 0) const noexcept {
    fine_t target = tat - iv;
    if (target < now - tau + queued) target = now - tau + queued;
    return target < tat ? target : tat;
  }

  /// `tat` after charging refill time `iv` unconditionally (a debt), leaving at
  /// most `max_debt` of debt: what a charge would add beyond it is not taken.
  fine_t charged(fine_t tat, fine_t now, fine_t iv, fine_t queued = 0) const noexcept {
    const fine_t base = tat < now - tau + queued ? now - tau + queued : tat;
    fine_t end = now + queued + max_debt_iv;  // the most debt allowed
    if (iv < end - base) end = base + iv;
    return end > base ? end : tat;  // already at (or past) the most debt allowed: unchanged
  }

  /// `tat` after lowering the unreserved tokens to at most `remaining`; never raised.
  fine_t lowered(fine_t tat, fine_t now, double remaining, fine_t queued = 0) const noexcept {
    if (remaining >= limit.capacity) return tat;
    const fine_t floor = now - fine_interval(remaining, limit.rate) + queued;
    return tat < floor ? floor : tat;
  }

  /// Unreserved tokens of paid-up-to `unreserved` at `now`, in [0, capacity]:
  /// the largest cost an admission would take (its allowance included), the
  /// capacity exactly when full, and less otherwise.
  double tokens(fine_t unreserved, fine_t now) const noexcept {
    const fine_t level = now - unreserved;
    if (level <= 0) return 0;
    if (level >= tau) return limit.capacity;
    const auto fits = [&](double v) {
      return fine_interval(v, limit.rate) <= level + admission_slack(v, limit.capacity, tau);
    };
    // Below `tau` the bucket is not full, and says so (a registry evicts only
    // full buckets), even where an admission's allowance would take it all.
    const double below = std::nextafter(limit.capacity, 0.0);
    double v = static_cast<double>(level) / fine_per_unit;
    if (v > below) v = below;
    // The division is off by a few ulps either way: step up while the next
    // value still fits (1 - 2^-53 becomes 1), then down until it fits.
    for (int i = 0; i < 8 && v < below; ++i) {
      const double up = std::nextafter(v, limit.capacity);
      if (!fits(up)) break;
      v = up;
    }
    while (v > 0 && !fits(v)) v = std::nextafter(v, 0.0);
    return v;
  }

  /// True when paid-up-to `unreserved` is a full bucket at `now`.
  bool full(fine_t unreserved, fine_t now) const noexcept { return now - unreserved >= tau; }

  /// Settles the tokens of paid-up-to `unreserved` under the current limit,
  /// applies `l`, and returns the new paid-up-to instant: the level rounded
  /// down (a debt up), capped at the new capacity: reconfiguring never
  /// creates tokens.
  fine_t reconfigure(fine_t unreserved, fine_t now, const Limit& l) noexcept {
    if (unreserved < now - tau) unreserved = now - tau;
    const double tokens = static_cast<double>(now - unreserved) / fine_per_unit;
    apply(l);
    const fine_t start = now - floor_fine(tokens * fine_per_unit);
    return start < now - tau ? now - tau : start;
  }

  /// The most debt a charge may leave, in tokens; negative: one capacity.
  void set_max_debt(double tokens) noexcept {
    max_debt = tokens;
    max_debt_iv = tokens < 0 ? tau : fine_interval(tokens, limit.rate);
  }
  double max_debt_tokens() const noexcept { return max_debt < 0 ? limit.capacity : max_debt; }
};

}  // namespace tollgate::detail
