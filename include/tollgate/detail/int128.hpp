#pragma once
// A portable signed 128-bit integer for compilers without `__int128` (MSVC):
// two's complement in two 64-bit halves, with the operations tollgate's
// fixed-point time needs (+, -, *, /, shifts, comparisons, conversions from
// and to integers and floating point). Same results as `__int128` for every
// value in range; slower (a multiply is four 64-bit multiplies). Selected by
// fine_time.hpp when the compiler has no `__int128`, or everywhere with
// TOLLGATE_PORTABLE_INT128 (CI runs the whole suite so, preset `portable`).

#include <bit>
#include <compare>
#include <concepts>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace tollgate::detail {

class int128 {
 public:
  constexpr int128() noexcept = default;
  template <std::integral T>
  constexpr int128(T v) noexcept  // NOLINT: implicit, as for a built-in integer
      : lo_(static_cast<std::uint64_t>(v)) {
    if constexpr (std::is_signed_v<T>) hi_ = static_cast<std::int64_t>(v) < 0 ? -1 : 0;
  }
  template <std::floating_point F>
  explicit int128(F x) noexcept {  // truncates towards zero, as a built-in conversion
    const bool neg = x < 0;
    if (neg) x = -x;
    const F two64 = static_cast<F>(18446744073709551616.0L);
    const F h = static_cast<F>(static_cast<std::uint64_t>(x / two64));
    hi_ = static_cast<std::int64_t>(static_cast<std::uint64_t>(h));
    lo_ = static_cast<std::uint64_t>(x - h * two64);
    if (neg) *this = -*this;
  }
  static constexpr int128 from_parts(std::int64_t hi, std::uint64_t lo) noexcept {
    int128 r;
    r.hi_ = hi;
    r.lo_ = lo;
    return r;
  }

  template <std::integral T>
  explicit constexpr operator T() const noexcept {
    return static_cast<T>(lo_);
  }
  template <std::floating_point F>
  explicit constexpr operator F() const noexcept {  // rounded once, to nearest, as a built-in conversion
    if (hi_ < 0) return -static_cast<F>(-*this);
    const auto h = static_cast<std::uint64_t>(hi_);
    if (h == 0) return static_cast<F>(lo_);
    // The magnitude is top * 2^shift + rest, with `top` its leading 64 bits.
    const int shift = 64 - std::countl_zero(h);  // 1..63
    const std::uint64_t top = (h << (64 - shift)) | (lo_ >> shift);
    const std::uint64_t rest = lo_ & ((std::uint64_t{1} << shift) - 1);
    const F scale = static_cast<F>(std::uint64_t{1} << shift);
    if constexpr (std::numeric_limits<F>::digits >= 64)  // top is exact: round once, in the addition
      return static_cast<F>(top) * scale + static_cast<F>(rest);
    else  // rest as a sticky bit below the rounding position
      return static_cast<F>(top | (rest != 0 ? 1u : 0u)) * scale;
  }

  friend constexpr int128 operator+(int128 a, int128 b) noexcept {
    const std::uint64_t lo = a.lo_ + b.lo_;
    return from_parts(static_cast<std::int64_t>(static_cast<std::uint64_t>(a.hi_) + static_cast<std::uint64_t>(b.hi_) +
                                                (lo < a.lo_ ? 1u : 0u)),
                      lo);
  }
  friend constexpr int128 operator-(int128 a) noexcept { return ~a + int128(1); }
  friend constexpr int128 operator~(int128 a) noexcept { return from_parts(~a.hi_, ~a.lo_); }
  friend constexpr int128 operator-(int128 a, int128 b) noexcept { return a + -b; }
  friend constexpr int128 operator*(int128 a, int128 b) noexcept {
    // The low 128 bits of the product (two's complement makes it the same for signed values).
    const std::uint64_t a0 = a.lo_ & 0xffffffffu, a1 = a.lo_ >> 32, b0 = b.lo_ & 0xffffffffu, b1 = b.lo_ >> 32;
    const std::uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    const std::uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    const std::uint64_t lo = (mid << 32) | (p00 & 0xffffffffu);
    const std::uint64_t hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32) + a.lo_ * static_cast<std::uint64_t>(b.hi_) +
                             static_cast<std::uint64_t>(a.hi_) * b.lo_;
    return from_parts(static_cast<std::int64_t>(hi), lo);
  }
  friend constexpr int128 operator/(int128 a, int128 b) noexcept {  // truncates towards zero; b != 0
    const bool neg = (a.hi_ < 0) != (b.hi_ < 0);
    const int128 q = udiv(a.hi_ < 0 ? -a : a, b.hi_ < 0 ? -b : b);
    return neg ? -q : q;
  }
  friend constexpr int128 operator<<(int128 a, int n) noexcept {
    if (n == 0) return a;
    if (n >= 64) return from_parts(static_cast<std::int64_t>(a.lo_ << (n - 64)), 0);
    return from_parts(static_cast<std::int64_t>((static_cast<std::uint64_t>(a.hi_) << n) | (a.lo_ >> (64 - n))), a.lo_ << n);
  }
  friend constexpr int128 operator>>(int128 a, int n) noexcept {  // arithmetic: rounds towards -infinity
    if (n == 0) return a;
    if (n >= 64) return from_parts(a.hi_ < 0 ? -1 : 0, static_cast<std::uint64_t>(a.hi_ >> (n - 64)));
    return from_parts(a.hi_ >> n, (a.lo_ >> n) | (static_cast<std::uint64_t>(a.hi_) << (64 - n)));
  }
  friend constexpr bool operator==(int128 a, int128 b) noexcept = default;
  friend constexpr std::strong_ordering operator<=>(int128 a, int128 b) noexcept {
    if (a.hi_ != b.hi_) return a.hi_ <=> b.hi_;
    return a.lo_ <=> b.lo_;
  }
  constexpr int128& operator+=(int128 b) noexcept { return *this = *this + b; }
  constexpr int128& operator-=(int128 b) noexcept { return *this = *this - b; }
  constexpr int128& operator*=(int128 b) noexcept { return *this = *this * b; }
  constexpr int128& operator>>=(int n) noexcept { return *this = *this >> n; }
  constexpr int128& operator<<=(int n) noexcept { return *this = *this << n; }
  constexpr int128& operator++() noexcept { return *this += 1; }
  constexpr int128& operator--() noexcept { return *this -= 1; }

 private:
  // Unsigned long division of non-negative values, bit by bit.
  static constexpr int128 udiv(int128 n, int128 d) noexcept {
    int128 q, r;
    for (int i = 127; i >= 0; --i) {
      r = r << 1;
      if (((n >> i).lo_ & 1u) != 0) r.lo_ |= 1u;
      if (r >= d) {
        r = r - d;
        q = q + (int128(1) << i);
      }
    }
    return q;
  }

  std::uint64_t lo_ = 0;
  std::int64_t hi_ = 0;
};

}  // namespace tollgate::detail
