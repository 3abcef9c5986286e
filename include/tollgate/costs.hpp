#pragma once
// Costs: one cost per dimension of a LimitSet (requests, tokens, ...).

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <span>
#include <sstream>
#include <stdexcept>

namespace tollgate {

/// The most dimensions a LimitSet can have.
inline constexpr std::size_t max_dimensions = 8;

/// A cost vector: `costs[i]` is taken from dimension `i` of a LimitSet. A
/// small value type (no allocation); its length must equal the set's number
/// of dimensions, or the acquisition fails `invalid`.
///
///     set.try_acquire({1, 1200});  // 1 request and 1,200 tokens
class Costs {
 public:
  Costs() = default;
  /// Throws `std::invalid_argument` for more than `max_dimensions` values.
  Costs(std::initializer_list<double> v) : Costs(std::span<const double>(v.begin(), v.size())) {}
  explicit Costs(std::span<const double> v) {
    if (v.size() > max_dimensions) {
      std::ostringstream os;
      os << "Costs: " << v.size() << " values; a LimitSet has at most " << max_dimensions << " dimensions";
      throw std::invalid_argument(os.str());
    }
    std::copy(v.begin(), v.end(), v_);
    n_ = v.size();
  }
  /// `n` zeros (`n <= max_dimensions`).
  static Costs zeros(std::size_t n) {
    Costs c;
    c.n_ = std::min(n, max_dimensions);
    return c;
  }

  std::size_t size() const noexcept { return n_; }
  double operator[](std::size_t i) const noexcept { return v_[i]; }
  double& operator[](std::size_t i) noexcept { return v_[i]; }
  const double* begin() const noexcept { return v_; }
  const double* end() const noexcept { return v_ + n_; }

  friend bool operator==(const Costs& a, const Costs& b) noexcept {
    return a.n_ == b.n_ && std::equal(a.begin(), a.end(), b.begin());
  }

 private:
  double v_[max_dimensions] = {};
  std::size_t n_ = 0;
};

}  // namespace tollgate
