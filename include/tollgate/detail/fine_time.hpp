#pragma once
// Fixed-point time for the bucket arithmetic: 2^-32 ns units in a 128-bit integer.
//
// Why: a per-token interval such as 1/3 ns (rate 3e9/s) or 333 333 333.3 ns
// (rate 3/s) is not a whole number of nanoseconds. Rounding it to whole ns on
// every acquisition (as governor does) makes the effective rate wrong by up to
// 1 ns per call. In units of 2^-32 ns the rounding error is below 2.4e-10 ns per
// call, always rounded towards admitting later (never earlier), and all
// accumulation is exact integer arithmetic, so nothing drifts however many
// operations run. 128 bits hold +-2^95 ns (10^12 years): no overflow in range.

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>

#if !defined(__SIZEOF_INT128__) && !defined(TOLLGATE_PORTABLE_INT128)
#define TOLLGATE_PORTABLE_INT128 1
#endif
#if defined(TOLLGATE_PORTABLE_INT128)
#include "int128.hpp"
#endif

namespace tollgate::detail {

#if defined(TOLLGATE_PORTABLE_INT128)
using fine_t = int128;  // no __int128 (MSVC), or chosen: the same results, slower
#else
__extension__ typedef __int128 fine_t;
#endif

inline constexpr int fine_shift = 32;
inline constexpr fine_t fine_per_ns = fine_t(1) << fine_shift;
inline constexpr double fine_per_ns_d = 4294967296.0;
inline constexpr fine_t fine_max = ~(fine_t(1) << 127);

/// Whole nanoseconds to fine units (exact).
constexpr fine_t fine_from_ns(std::int64_t ns) noexcept { return fine_t(ns) * fine_per_ns; }

/// Fine units to nanoseconds, rounded up (towards +infinity). `f` must not be
/// the most negative value (no fine time is).
constexpr fine_t ceil_ns(fine_t f) noexcept { return -((-f) >> fine_shift); }

static_assert(ceil_ns(0) == 0 && ceil_ns(1) == 1 && ceil_ns(fine_per_ns) == 1 && ceil_ns(fine_per_ns + 1) == 2);
static_assert(ceil_ns(-1) == 0 && ceil_ns(-fine_per_ns) == -1 && ceil_ns(-fine_per_ns - 1) == -1);

/// Rounds a non-negative finite double up to a whole fine unit.
inline fine_t ceil_fine(double x) noexcept {
  if (x < 9.2233720368547758e18) {  // 2^63: fits int64, the fast and common case
    auto i = static_cast<std::int64_t>(x);
    if (static_cast<double>(i) < x) ++i;
    return i;
  }
  return static_cast<fine_t>(x);  // >= 2^63 is already a whole number
}

/// Rounds a non-negative finite long double up to a whole fine unit,
/// saturating at 2^126 (callers validate far below that).
inline fine_t ceil_fine(long double x) noexcept {
  if (x < 9.2233720368547758e18L) {
    auto i = static_cast<std::int64_t>(x);
    if (static_cast<long double>(i) < x) ++i;
    return i;
  }
  if (!(x < 8.5070591730234615866e37L)) return fine_t(1) << 126;
  return static_cast<fine_t>(x);  // >= 2^63 is already a whole number
}

/// Fine units per second: 10^9 * 2^32 (exact in double and long double).
inline constexpr long double fine_per_second = 4294967296.0e9L;

/// Refill time of `cost` units at `rate` units/s, in fine units, rounded up.
/// Computed in long double (64-bit mantissa on x86-64): exact whenever the
/// true value is a whole number of fine units (cost 3 at rate 3 is exactly
/// 1 s), otherwise within 2^-63 relative.
inline fine_t fine_interval(double cost, double rate) noexcept {
  return ceil_fine(static_cast<long double>(cost) * fine_per_second / static_cast<long double>(rate));
}

/// How far past `now` an admission of `cost` may end and still be granted at
/// `now`, in fine units: the rounding allowance.
///
/// Every refill interval is rounded up to a whole fine unit, so the intervals
/// of n costs that add up to the capacity can add up to a little more than
/// the full bucket's `tau` (by up to n units, plus long double's relative
/// 2^-64 in `tau` itself): without an allowance, `Limit::per_second(3)` would
/// admit two units of cost 1 at one instant instead of three. The allowance
/// covers twice ceil(capacity / cost) rounded intervals and `tau`'s own
/// rounding, and is capped at tau / 2^24 (+16): whatever the costs, an
/// allowance admits at most capacity * 2^-24 of a token beyond
/// `capacity + rate * t` in any window, once (it does not accumulate: the
/// state is an absolute instant). With unit costs it is 2 * capacity + 2
/// units of 2^-32 ns: far below one nanosecond's refill at any rate.
inline fine_t admission_slack(double cost, double capacity, fine_t tau) noexcept {
  const fine_t cap = (tau >> 24) + 16;
  if (!(cost > 0)) return 0;  // a zero cost takes no time
  const double n = capacity / cost;
  if (!(n < 1e30)) return cap;
  const fine_t want = 2 * ceil_fine(n) + (tau >> 60) + 2;
  return want < cap ? want : cap;
}

/// Rounds a finite double down to a whole fine unit (any sign).
inline fine_t floor_fine(double x) noexcept {
  if (x > -9.2233720368547758e18 && x < 9.2233720368547758e18) {
    auto i = static_cast<std::int64_t>(x);
    if (static_cast<double>(i) > x) --i;
    return i;
  }
  return static_cast<fine_t>(x);
}

/// Clamps a fine-unit value to a std::chrono::nanoseconds, rounding up.
inline std::chrono::nanoseconds to_ns_ceil(fine_t f) noexcept {
  fine_t ns = ceil_ns(f);
  constexpr auto hi = std::numeric_limits<std::int64_t>::max();
  if (ns > hi) ns = hi;
  if (ns < 0) ns = 0;
  return std::chrono::nanoseconds(static_cast<std::int64_t>(ns));
}

}  // namespace tollgate::detail
