#pragma once
// Holds: a provider's `remaining` count taken as authoritative until its
// reset. While a grant's instant is before dimension d's `until`, at most
// `budget[d]` more tokens may be granted in d, whatever the dimension's own
// refill would allow; from `until` on, only the refill counts (the hold adds
// a cap, never tokens). A hold is the same rule for a provider that enforces
// fixed windows (where `remaining` stays until the reset) and for one that
// refills continuously (where it is a lower bound until the reset).

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "../costs.hpp"
#include "fine_time.hpp"

namespace tollgate::detail {

using Budgets = std::array<double, max_dimensions>;

class Holds {
 public:
  /// True while some dimension may hold a grant back.
  bool any() const noexcept { return mask_ != 0; }

  /// The earliest instant at or after `g` that a grant of `c` can have, with
  /// `b` left in the held dimensions: `g`, or the end of a hold `c` overruns.
  template <class C>
  fine_t earliest(fine_t g, const C& c, const Budgets& b) const noexcept {
    for (std::uint32_t m = mask_; m; m &= m - 1) {
      const auto d = static_cast<std::size_t>(std::countr_zero(m));
      if (g < until_[d] && overruns(c[d], b[d])) g = until_[d];
    }
    return g;
  }
  /// Spends `c` from the budgets `b` for a grant at `g`.
  template <class C>
  void spend(fine_t g, const C& c, Budgets& b) const noexcept {
    for (std::uint32_t m = mask_; m; m &= m - 1) {
      const auto d = static_cast<std::size_t>(std::countr_zero(m));
      if (g < until_[d]) b[d] = std::max(0.0, b[d] - c[d]);
    }
  }
  /// The same on the current budgets.
  template <class C>
  void spend(fine_t g, const C& c) noexcept {
    spend(g, c, budget_);
  }
  /// A debt of `tokens` in dimension d at `now` (the provider counts it too).
  void charge(fine_t now, std::size_t d, double tokens) noexcept {
    if (held(now, d)) budget_[d] = std::max(0.0, budget_[d] - tokens);
  }

  /// Holds dimension d at most at `remaining` until `until`. A hold ending at
  /// the same instant (the same window of a windowed provider: its count can
  /// only fall), within the precision of a reset header (1 ms, or 1% of the
  /// time left), keeps the lower budget; any other replaces it, being newer.
  /// An `until` not after `now` ends dimension d's hold.
  void hold(fine_t now, std::size_t d, double remaining, fine_t until) noexcept {
    if (until <= now) {
      mask_ &= ~(std::uint32_t{1} << d);
      return;
    }
    if (held(now, d)) {
      const fine_t gap = until > until_[d] ? until - until_[d] : until_[d] - until;
      if (gap <= std::max<fine_t>(fine_from_ns(1'000'000), (until_[d] - now) / 100))
        remaining = std::min(remaining, budget_[d]);
    }
    until_[d] = until;
    budget_[d] = remaining;
    mask_ |= std::uint32_t{1} << d;
  }
  /// Ends every hold over by `now` (no grant can happen before `now` again).
  void expire(fine_t now) noexcept {
    for (std::uint32_t m = mask_; m; m &= m - 1) {
      const auto d = static_cast<std::size_t>(std::countr_zero(m));
      if (now >= until_[d]) mask_ &= ~(std::uint32_t{1} << d);
    }
  }

  bool held(fine_t now, std::size_t d) const noexcept { return (mask_ >> d & 1u) && now < until_[d]; }
  /// What dimension d may still grant before its hold ends (infinite: no hold).
  double cap(fine_t now, std::size_t d, double level) const noexcept {
    return held(now, d) ? std::min(level, budget_[d]) : level;
  }
  fine_t until(std::size_t d) const noexcept { return until_[d]; }
  const Budgets& budgets() const noexcept { return budget_; }

 private:
  // Doubles: a budget computed by subtractions may sit a rounding below a cost equal to it.
  static bool overruns(double cost, double budget) noexcept { return cost > budget + 1e-9 * std::max(1.0, budget); }

  std::array<fine_t, max_dimensions> until_{};
  Budgets budget_{};
  std::uint32_t mask_ = 0;
};

}  // namespace tollgate::detail
