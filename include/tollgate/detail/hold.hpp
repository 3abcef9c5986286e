#pragma once
// Holds: a provider's `remaining` count taken as authoritative until its
// reset. While a grant's instant is before dimension d's `until`, at most
// `budget` more tokens may be granted in d, whatever the dimension's own
// refill would allow; from `until` on, only the refill counts (a hold adds a
// cap, never tokens). A hold is the same rule for a provider that enforces
// fixed windows (where `remaining` stays until the reset) and for one that
// refills continuously (where it is a lower bound until the reset).
//
// A hold may have a second segment: the next window of a windowed provider,
// from `until` for the window's length, so that the window's reset releases
// no more than a window holds, not everything the local refill gathered
// meanwhile. What a window holds is learned from the counts: each count r
// with g granted in its window so far bounds it by r + g (equal when nothing
// granted is still on its way to the provider), and the least such bound is
// the estimate. The first count in the next window takes over from it.

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "../costs.hpp"
#include "fine_time.hpp"

namespace tollgate::detail {

/// What each held dimension may still grant: before `until`, and in the next window.
struct Budgets {
  std::array<double, max_dimensions> now{}, next{};
};

class Holds {
 public:
  /// True while some dimension may hold a grant back.
  bool any() const noexcept { return mask_ != 0; }

  /// The earliest instant at or after `g` that a grant of `c` can have, with
  /// `b` left: `g`, or the end of a segment `c` overruns.
  template <class C>
  fine_t earliest(fine_t g, const C& c, const Budgets& b) const noexcept {
    for (std::uint32_t m = mask_; m; m &= m - 1) {
      const auto d = static_cast<std::size_t>(std::countr_zero(m));
      if (g < until_[d] && overruns(c[d], b.now[d])) g = until_[d];
      if (g >= until_[d] && g < next_until_[d] && overruns(c[d], b.next[d])) g = next_until_[d];
    }
    return g;
  }
  /// Spends `c` from the budgets `b` for a grant at `g`.
  template <class C>
  void spend(fine_t g, const C& c, Budgets& b) const noexcept {
    for (std::uint32_t m = mask_; m; m &= m - 1) {
      const auto d = static_cast<std::size_t>(std::countr_zero(m));
      if (g < until_[d]) b.now[d] = std::max(0.0, b.now[d] - c[d]);
      else if (g < next_until_[d]) b.next[d] = std::max(0.0, b.next[d] - c[d]);
    }
  }
  /// The same on the current budgets.
  template <class C>
  void spend(fine_t g, const C& c) noexcept {
    for (std::uint32_t m = mask_; m; m &= m - 1) {
      const auto d = static_cast<std::size_t>(std::countr_zero(m));
      if (g < until_[d]) {
        spent_now_[d] += c[d];
        budget_.now[d] = std::max(0.0, budget_.now[d] - c[d]);
      } else if (g < next_until_[d]) {
        spent_next_[d] += c[d];
        budget_.next[d] = std::max(0.0, budget_.next[d] - c[d]);
      }
    }
  }
  /// A debt of `tokens` in dimension d at `now` (the provider counts it too),
  /// or, negative, a refund (a reservation the provider reconciles, or one
  /// for a call never made): the count in effect moves with it.
  void adjust(fine_t now, std::size_t d, double tokens) noexcept {
    if (!(mask_ >> d & 1u)) return;
    if (now < until_[d]) budget_.now[d] = std::max(0.0, budget_.now[d] - tokens);
    else if (now < next_until_[d]) budget_.next[d] = std::max(0.0, budget_.next[d] - tokens);
  }

  /// Holds dimension d at most at `remaining` until `until`, then, when
  /// `window` > 0 (a windowed provider's window length), for one more window
  /// at what a window was learned to hold. A count for the window in effect
  /// (ending at the same instant within the precision of a reset header: 1
  /// ms, or 1% of the time left) keeps the lower of it and what is left of
  /// the one before (grants since then may still be on their way to the
  /// provider); a count for a later window replaces it; a count for an
  /// earlier window than the one in effect is a stale answer (a call
  /// admitted before the one that reported the window in effect, answered
  /// after it) and changes nothing: then it returns false, and the caller
  /// must not lower the level either. An `until` not after `now` ends
  /// dimension d's hold.
  [[nodiscard]] bool hold(fine_t now, std::size_t d, double remaining, fine_t until, fine_t window = 0) noexcept {
    const std::uint32_t bit = std::uint32_t{1} << d;
    if (stale(now, d, until)) return false;
    if (until <= now) {
      mask_ &= ~bit;
      return true;
    }
    double spent = 0;
    // What a window holds. Where the grants since the window's start are
    // known (the segment began at it), each count plus them bounds it from
    // above, and the least bound is taken; otherwise each count bounds it
    // from below, and the greatest is taken. Fresh for each window.
    double bound = remaining;
    bool whole = false;  // `spent` covers the window from its start
    if ((mask_ & bit) && now < next_until_[d]) {
      const bool first = now < until_[d];
      const fine_t end = first ? until_[d] : next_until_[d];
      const fine_t gap = until > end ? until - end : end - until;
      if (gap <= precision(now, end)) {
        spent = first ? spent_now_[d] : spent_next_[d];
        whole = first ? whole_[d] : true;
        const bool again = first && counted_[d];  // this window has been counted before
        if (whole) bound = again ? std::min(estimate_[d], remaining + spent) : remaining + spent;
        else bound = again ? std::max(estimate_[d], remaining) : remaining;
        remaining = std::min(remaining, first ? budget_.now[d] : budget_.next[d]);
      }
    }
    estimate_[d] = bound;
    counted_[d] = true;
    whole_[d] = whole;
    until_[d] = until;
    budget_.now[d] = remaining;
    spent_now_[d] = spent;
    next_until_[d] = window > 0 ? until + window : until;
    budget_.next[d] = estimate_[d];
    spent_next_[d] = 0;
    mask_ |= bit;
    return true;
  }
  /// Moves to the next segment, or ends, every hold over by `now` (no grant
  /// can happen before `now` again).
  void expire(fine_t now) noexcept {
    for (std::uint32_t m = mask_; m; m &= m - 1) {
      const auto d = static_cast<std::size_t>(std::countr_zero(m));
      if (now < until_[d]) continue;
      if (now < next_until_[d]) {
        until_[d] = next_until_[d];
        budget_.now[d] = budget_.next[d];
        spent_now_[d] = spent_next_[d];
        counted_[d] = false;  // the next window: no count of its own yet
        whole_[d] = true;
      } else {
        mask_ &= ~(std::uint32_t{1} << d);
      }
    }
  }

  bool held(fine_t now, std::size_t d) const noexcept { return (mask_ >> d & 1u) && now < next_until_[d]; }
  /// What dimension d may grant at `now`: at most `level`, and its count.
  double cap(fine_t now, std::size_t d, double level) const noexcept {
    if (!(mask_ >> d & 1u)) return level;
    if (now < until_[d]) return std::min(level, budget_.now[d]);
    if (now < next_until_[d]) return std::min(level, budget_.next[d]);
    return level;
  }
  /// When the hold of dimension d ends (its next window's end, if it has one).
  fine_t until(std::size_t d) const noexcept { return next_until_[d]; }
  const Budgets& budgets() const noexcept { return budget_; }

 private:
  // Whether a count whose window ends at `until` describes an earlier window
  // than the one a count reported for dimension d's hold in effect (ending
  // before it, beyond the precision of a reset header). Only against a window
  // a count reported: the next window a hold runs on into is projected from a
  // learned length, and its first count takes over.
  bool stale(fine_t now, std::size_t d, fine_t until) const noexcept {
    if (!(mask_ >> d & 1u) || until <= now || now >= until_[d] || !counted_[d]) return false;
    return until < until_[d] && until_[d] - until > precision(now, until_[d]);
  }
  // How close two reset instants must be to name the same window: 1 ms, or
  // 1% of the time left until `end`.
  static fine_t precision(fine_t now, fine_t end) noexcept {
    return std::max<fine_t>(fine_from_ns(1'000'000), (end - now) / 100);
  }
  // Doubles: a budget computed by subtractions may sit a rounding below a cost equal to it.
  static bool overruns(double cost, double budget) noexcept { return cost > budget + 1e-9 * std::max(1.0, budget); }

  std::array<fine_t, max_dimensions> until_{}, next_until_{};
  Budgets budget_{};
  std::array<double, max_dimensions> spent_now_{}, spent_next_{};  // granted in each segment
  std::array<double, max_dimensions> estimate_{};                   // what a window holds, learned
  std::array<bool, max_dimensions> counted_{};                       // the segment in effect has a count
  std::array<bool, max_dimensions> whole_{};                         // its `spent` covers its window
  std::uint32_t mask_ = 0;
};

}  // namespace tollgate::detail
