#pragma once
// MultiCore: the arithmetic and FIFO queue of a LimitSet, several token
// buckets ("dimensions") taken all or nothing, as pure functions of `now`.
// No clock, no lock: the caller holds the lock.
//
// Each dimension d keeps `start[d]`: the instant up to which everything
// granted in d has been paid for (BucketCore's `tat_` without the queue), so
// dimension d holds min(capacity_d, rate_d * (now - start[d])) tokens.
// A request with refill times iv[d] is granted at
//
//     g = max(previous grant, pause end, max_d(start[d] + iv[d]))
//
// (FIFO: never before the waiter ahead of it; all or nothing: when its
// latest dimension has the tokens), and then, in every dimension,
//
//     start[d] = max(start[d], g - tau[d]) + iv[d]
//
// where tau[d] is the refill time of a full bucket: tokens that a dimension
// could not hold while the request waited for another one are lost, as they
// would be in a real bucket. That keeps every dimension conformant to its own
// capacity + rate * t at every grant instant, whatever the other dimensions do.
//
// Unlike one dimension, the due instants of queued waiters are not a prefix
// sum (the max couples the dimensions), so the core computes the head's due
// instant afresh each time (O(dimensions)) and keeps a prediction of the
// tail (the instant a newcomer would follow the last waiter, and the
// dimensions' starts after it) for O(dimensions) admission. Operations that
// move waiters earlier or later (a waiter leaving from the middle, refund,
// charge, a corrected remaining count, a reconfiguration, a pause) mark the
// prediction stale; it is recomputed in one pass over the queue when next
// needed: O(waiters) once per change, not per waiter.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <sstream>
#include <stdexcept>

#include "../costs.hpp"
#include "../limit.hpp"
#include "../result.hpp"
#include "bucket_core.hpp"
#include "fine_time.hpp"
#include "waiter.hpp"

namespace tollgate::detail {

/// A LimitSet's queue node: the cost vector and its refill times.
struct MultiWaiter : Waiter {
  Costs costs;
  std::array<fine_t, max_dimensions> iv{};
};

class MultiCore {
 public:
  using cost_type = Costs;
  using waiter_type = MultiWaiter;
  static void set_cost(MultiWaiter& w, const Costs& c) noexcept { w.costs = c; }
  static Costs zero_like(const Costs& c) noexcept { return Costs::zeros(c.size()); }

  /// Throws `std::invalid_argument` unless every value of `v` is finite and
  /// >= 0 and (when `like` is given) `v` has as many values as `*like`.
  static void check_amount(const char* who, const char* what, const Costs& v, const Costs* like = nullptr) {
    std::ostringstream os;
    if (like && v.size() != like->size()) {
      os << who << ": " << what << " has " << v.size() << " values, expected " << like->size();
      throw std::invalid_argument(os.str());
    }
    for (std::size_t d = 0; d < v.size(); ++d) {
      if (v[d] >= 0 && !std::isinf(v[d])) continue;
      os << who << ": " << what << "[" << d << "] must be finite and >= 0, got " << v[d];
      throw std::invalid_argument(os.str());
    }
  }

  /// A full set at relative time 0. Limits must be valid, 1..max_dimensions of them.
  explicit MultiCore(std::span<const Limit> limits) noexcept : n_(limits.size()) {
    for (std::size_t d = 0; d < n_; ++d) {
      apply(d, limits[d]);
      dims_[d].start = -dims_[d].tau;
    }
    tail_end_ = starts();
  }

  std::size_t size() const noexcept { return n_; }
  const Limit& limit(std::size_t d) const noexcept { return dims_[d].limit; }
  void set_horizon(fine_t horizon) noexcept { horizon_ = horizon; }

  /// `acquired` when `c` is usable; otherwise the failure, naming the dimension.
  AcquireResult check(const Costs& c) const noexcept {
    if (c.size() != n_) [[unlikely]]
      return AcquireResult::failed(Status::invalid, Reason::wrong_dimension_count, static_cast<double>(c.size()));
    for (std::size_t d = 0; d < n_; ++d) {
      const AcquireResult r = check_cost(c[d], dims_[d].limit.capacity);
      if (!r) [[unlikely]]
        return AcquireResult::failed(r.status(), r.reason_code(), c[d], static_cast<std::uint8_t>(d));
    }
    return AcquireResult::acquired();
  }

  /// Clamps `now` to the latest instant seen and grants every pending waiter
  /// due by then. Returns the clamped now.
  fine_t observe(fine_t now) noexcept {
    if (now < last_now_) now = last_now_;
    else last_now_ = now;
    if (now < paused_until_) return now;
    while (auto* w = head()) {
      const fine_t g = due(floor_, starts_view(), w->iv);
      if (g > now) break;
      grant(g, w->iv);
      pending_.remove(*w);
      w->place = WaiterPlace::ready;
      w->outcome = Status::acquired;
      ready_.push_back(*w);
    }
    return now;
  }

  /// Takes `c` at `now` if every dimension has it and nobody is queued.
  AcquireResult try_acquire(fine_t now, const Costs& c) noexcept {
    const AcquireResult chk = check(c);
    if (!chk) [[unlikely]]
      return chk;
    now = observe(now);
    std::array<fine_t, max_dimensions> iv;
    intervals(c, iv);
    if (grantable_now(now, iv)) {
      commit_now(now, iv);
      return AcquireResult::acquired();
    }
    return AcquireResult::not_now(to_ns_ceil(newcomer_due(now, iv) - now));
  }

  /// Takes `c` if try_acquire would; false otherwise (then admit decides).
  bool take_fast(fine_t now, const Costs& c) noexcept { return try_acquire(now, c).ok(); }

  /// Like try_acquire, but queues `w` (FIFO) when the wait is at most `max_wait`.
  Admission admit(fine_t now, MultiWaiter& w, fine_t max_wait) noexcept {
    const AcquireResult chk = check(w.costs);
    if (!chk) [[unlikely]]
      return {chk};
    now = observe(now);
    intervals(w.costs, w.iv);
    if (grantable_now(now, w.iv)) {
      commit_now(now, w.iv);
      return {AcquireResult::acquired()};
    }
    const fine_t g = newcomer_due(now, w.iv);
    if (g - now > max_wait) return {AcquireResult::not_now(to_ns_ceil(g - now))};
    if (g > horizon_) return {AcquireResult::failed(Status::invalid, Reason::wait_overflows_clock)};
    w.deadline = max_wait >= fine_max - now ? fine_max : now + max_wait;
    w.place = WaiterPlace::pending;
    if (pending_.empty()) {  // the prediction is just the current state
      tail_end_ = starts();
      stale_ = false;
    }
    const bool fresh = !stale_;
    pending_.push_back(w);
    if (fresh) {  // extend the tail prediction by this waiter
      advance(g, tail_end_, w.iv);
      tail_due_ = g;
    }
    return {AcquireResult::acquired(), true};
  }

  /// As BucketCore::remove: a pending waiter leaves exactly (later waiters
  /// move up); a granted one is given back only when `abandon`.
  Removal remove(fine_t now, Waiter& base, bool abandon) noexcept {
    now = observe(now);
    auto& w = static_cast<MultiWaiter&>(base);
    switch (w.place) {
      case WaiterPlace::pending:
        pending_.remove(w);
        w.place = WaiterPlace::none;
        changed(now);
        return Removal::removed;
      case WaiterPlace::ready:
        if (!abandon) return Removal::granted;
        ready_.remove(w);
        w.place = WaiterPlace::none;
        for (std::size_t d = 0; d < n_; ++d) give_back(now, d, w.iv[d]);
        changed(now);
        return Removal::removed;
      case WaiterPlace::none:
        break;
    }
    return Removal::not_queued;
  }

  /// Moves the granted waiters, and those the core finished on its own (a
  /// re-timing pushed them past their deadline), to `out`.
  void take_ready(WaiterList& out) noexcept {
    detail::take_ready(ready_, out);
    out.splice_back(finished_);
  }

  fine_t next_wake() const noexcept {
    if (!ready_.empty() || !finished_.empty()) return last_now_;
    if (const auto* w = head()) return due(floor_, starts_view(), w->iv);
    return fine_max;
  }

  /// As BucketCore::pause_until, for every dimension at once.
  void pause_until(fine_t now, fine_t until, WaiterList& finished) noexcept {
    now = observe(now);
    if (until <= paused_until_) return;
    paused_until_ = until;
    floor_ = std::max(floor_, now);
    retime(n_, finished);
  }

  fine_t paused_until() const noexcept { return paused_until_; }

  /// Gives `c` back, never above capacity in any dimension; waiters move up.
  void refund(fine_t now, const Costs& c) noexcept {
    now = observe(now);
    for (std::size_t d = 0; d < n_; ++d)
      if (c[d] > 0) give_back(now, d, fine_interval(std::min(c[d], dims_[d].limit.capacity), dims_[d].limit.rate));
    changed(now);
  }

  /// Takes `c` unconditionally (a debt where the tokens are not there): all
  /// or nothing, false (taking nothing) when a debt would pass the clock's range.
  bool charge(fine_t now, const Costs& c) noexcept {
    Costs none = Costs::zeros(n_);
    return settle(now, none, c);
  }

  /// Per dimension: refunds `estimate - actual` or charges `actual - estimate`,
  /// leaving at most the dimension's `max_debt` of debt (see set_max_debt).
  /// False (changing nothing) when a debt would pass the clock's range.
  bool settle(fine_t now, const Costs& estimate, const Costs& actual) noexcept {
    now = observe(now);
    std::array<fine_t, max_dimensions> end{};
    bool later = false;
    for (std::size_t d = 0; d < n_; ++d) {
      if (!(actual[d] > estimate[d])) continue;
      const Dim& x = dims_[d];
      const fine_t iv = fine_interval(actual[d] - estimate[d], x.limit.rate);  // saturates: finite input
      const fine_t base = std::max(x.start, now - x.tau);
      end[d] = now + x.max_debt_iv;  // the most debt allowed
      if (iv < end[d] - base) end[d] = base + iv;
      if (end[d] <= base) continue;  // already at (or past) the most debt allowed
      if (end[d] > horizon_) return false;
      later = true;
    }
    for (std::size_t d = 0; d < n_; ++d) {
      Dim& x = dims_[d];
      if (actual[d] > estimate[d]) {
        if (end[d] > std::max(x.start, now - x.tau)) x.start = end[d];
      } else if (actual[d] < estimate[d]) {
        give_back(now, d, fine_interval(std::min(estimate[d] - actual[d], x.limit.capacity), x.limit.rate));
      }
    }
    changed(now, later);
    return true;
  }

  /// The most debt a charge or settle may leave in dimension d, in tokens;
  /// negative: one capacity (the default, following the capacity).
  void set_max_debt(std::size_t d, double tokens) noexcept {
    Dim& x = dims_[d];
    x.max_debt = tokens;
    x.max_debt_iv = tokens < 0 ? x.tau : fine_interval(tokens, x.limit.rate);
  }
  double max_debt(std::size_t d) const noexcept {
    return dims_[d].max_debt < 0 ? dims_[d].limit.capacity : dims_[d].max_debt;
  }

  /// Lowers dimension d's unreserved tokens to at most `remaining`; never raises them.
  void limit_remaining(fine_t now, std::size_t d, double remaining) noexcept {
    now = observe(now);
    Dim& x = dims_[d];
    if (remaining >= x.limit.capacity) return;
    const fine_t floor = now - fine_interval(remaining, x.limit.rate);
    if (x.start >= floor) return;
    x.start = floor;
    changed(now, true);
  }

  /// Unreserved tokens of dimension d at `now` (0 while paused or while
  /// waiters are queued: a try_acquire could take nothing then).
  double available(fine_t now, std::size_t d) noexcept {
    now = observe(now);
    if (now < paused_until_ || !pending_.empty()) return 0;
    const Dim& x = dims_[d];
    return tokens_in(now - x.start, x.tau, x.limit, x.fine_per_unit);
  }

  /// Settles dimension d's tokens under its old limit, applies `limit`, then
  /// re-times the queue: a waiter whose cost in d now exceeds the capacity
  /// finishes `never`, one pushed past its deadline `timed_out`.
  void reconfigure(fine_t now, std::size_t d, const Limit& limit, WaiterList& finished) noexcept {
    now = observe(now);
    Dim& x = dims_[d];
    const fine_t start = std::max(x.start, now - x.tau);
    const double tokens = static_cast<double>(now - start) / x.fine_per_unit;
    apply(d, limit);
    x.start = std::max(now - floor_fine(tokens * x.fine_per_unit), now - x.tau);  // never creates tokens
    floor_ = std::max(floor_, now);
    retime(d, finished);
    observe(now);
  }

  bool idle() const noexcept { return pending_.empty() && ready_.empty() && finished_.empty(); }
  std::size_t waiters() const noexcept { return pending_.size(); }
  void cancel_all(WaiterList& finished) noexcept {
    detail::cancel_all(pending_, ready_, finished);
    finished.splice_back(finished_);
  }

  /// True when every dimension is full, nothing is paused and nobody waits.
  bool is_fresh(fine_t now) noexcept {
    now = observe(now);
    if (!idle() || now < paused_until_) return false;
    for (std::size_t d = 0; d < n_; ++d)
      if (now - dims_[d].start < dims_[d].tau) return false;
    return true;
  }

 private:
  struct Dim {
    Limit limit;
    fine_t start = 0;        // paid-up-to instant of everything granted
    fine_t tau = 0;          // refill time of a full bucket
    double fine_per_unit = 0;
    double last_cost = -1;   // one-entry interval cache
    fine_t last_iv = 0;
    fine_t last_slack = 0;   // ... and the cost's rounding allowance
    double max_debt = -1;    // the most debt a charge may leave (< 0: one capacity)
    fine_t max_debt_iv = 0;  // ... as refill time
  };

  void apply(std::size_t d, const Limit& limit) noexcept {
    Dim& x = dims_[d];
    x.limit = limit;
    x.fine_per_unit = 1e9 * fine_per_ns_d / limit.rate;
    x.tau = fine_interval(limit.capacity, limit.rate);
    x.last_cost = -1;
    set_max_debt(d, x.max_debt);
  }

  fine_t interval(std::size_t d, double cost) noexcept {
    Dim& x = dims_[d];
    if (cost != x.last_cost) {
      x.last_cost = cost;
      x.last_iv = fine_interval(cost, x.limit.rate);
      x.last_slack = admission_slack(cost, x.limit.capacity, x.tau);
    }
    return x.last_iv;
  }

  // Fills `iv` with the refill times of `c` (and each dimension's cache
  // with its cost's rounding allowance).
  void intervals(const Costs& c, std::array<fine_t, max_dimensions>& iv) noexcept {
    for (std::size_t d = 0; d < n_; ++d) iv[d] = interval(d, c[d]);
  }

  // True when a newcomer whose refill times `intervals` just computed can be
  // granted at `now`: nobody queued, no pause, and every dimension has the
  // tokens, within its rounding allowance.
  bool grantable_now(fine_t now, const std::array<fine_t, max_dimensions>& iv) const noexcept {
    if (!pending_.empty() || now < paused_until_ || now < floor_) return false;
    for (std::size_t d = 0; d < n_; ++d)
      if (dims_[d].start + iv[d] > now + dims_[d].last_slack) return false;
    return true;
  }

  MultiWaiter* head() const noexcept { return static_cast<MultiWaiter*>(pending_.front()); }

  std::array<fine_t, max_dimensions> starts() const noexcept {
    std::array<fine_t, max_dimensions> s{};
    for (std::size_t d = 0; d < n_; ++d) s[d] = dims_[d].start;
    return s;
  }
  struct StartsView {
    const Dim* dims;
    fine_t operator[](std::size_t d) const noexcept { return dims[d].start; }
  };
  StartsView starts_view() const noexcept { return {dims_.data()}; }

  // The grant instant of a request with refill times `iv`, following a grant
  // at `prev` that left the dimensions paid up to `e`: rounded up to a whole
  // nanosecond, the instant a nanosecond clock can complete it at, so that
  // the loss of tokens a full dimension cannot hold is counted at the instant
  // the grant is seen (conformance holds at the observed completion instants).
  template <class Ends, class Iv>
  fine_t due(fine_t prev, const Ends& e, const Iv& iv) const noexcept {
    fine_t g = std::max(prev, paused_until_);
    for (std::size_t d = 0; d < n_; ++d) g = std::max(g, e[d] + iv[d]);
    return ceil_ns(g) * fine_per_ns;
  }
  // Pays for `iv` in every dimension at grant instant `g` (tokens a
  // dimension could not hold by then are lost): on the predicted ends `e`.
  void advance(fine_t g, std::array<fine_t, max_dimensions>& e, const std::array<fine_t, max_dimensions>& iv) const noexcept {
    for (std::size_t d = 0; d < n_; ++d) e[d] = std::max(e[d], g - dims_[d].tau) + iv[d];
  }

  // The same on the dimensions themselves: a grant at `g` (never before the
  // latest instant seen, so `floor_` simply becomes `g`).
  void grant(fine_t g, const std::array<fine_t, max_dimensions>& iv) noexcept {
    for (std::size_t d = 0; d < n_; ++d) dims_[d].start = std::max(dims_[d].start, g - dims_[d].tau) + iv[d];
    floor_ = g;
  }

  // A grant at `now` with nobody queued: the tail prediction is the new state.
  void commit_now(fine_t now, const std::array<fine_t, max_dimensions>& iv) noexcept {
    grant(now, iv);
    tail_end_ = starts();
    tail_due_ = floor_;
  }

  // When a newcomer with refill times `iv` would be granted: after the tail
  // of the queue (or now, if nobody waits).
  fine_t newcomer_due(fine_t now, const std::array<fine_t, max_dimensions>& iv) noexcept {
    if (pending_.empty()) return due(std::max(floor_, now), starts_view(), iv);
    refresh_tail();
    return due(std::max(tail_due_, now), tail_end_, iv);
  }

  // Waiters the re-timing finishes (timed out) are kept for take_ready:
  // whoever holds the lock completes them after releasing it.
  void refresh_tail() noexcept {
    if (stale_) retime(n_, finished_);
  }

  // Something moved the queue: grants from now on happen at `now` or later,
  // and the tail prediction must be recomputed. When waiters may have moved
  // `later` (a debt, a lower remaining count), the queue is re-timed at once
  // so that a waiter pushed past its deadline finishes now, not at its due
  // instant; moves earlier (a refund, a waiter leaving) re-time lazily.
  void changed(fine_t now, bool later = false) noexcept {
    floor_ = std::max(floor_, now);
    stale_ = true;
    if (later && !pending_.empty()) retime(n_, finished_);
    observe(now);
  }

  // Moves dimension d's paid-up-to instant back by `iv`, never above capacity.
  void give_back(fine_t now, std::size_t d, fine_t iv) noexcept {
    Dim& x = dims_[d];
    fine_t target = std::max(x.start - iv, now - x.tau);
    if (target < x.start) x.start = target;
  }

  // One pass over the queue from the head: recomputes every due instant and
  // the tail prediction. When `changed_dim < n_`, that dimension's limit
  // changed: its refill times are recomputed and a waiter whose cost exceeds
  // its capacity finishes `never`. A waiter whose due instant passes its
  // deadline (or the clock's range) finishes `timed_out`.
  void retime(std::size_t changed_dim, WaiterList& finished) noexcept {
    fine_t g = floor_;
    std::array<fine_t, max_dimensions> e = starts();
    for (Waiter* p = pending_.front(); p;) {
      auto& w = static_cast<MultiWaiter&>(*p);
      p = p->next;
      if (changed_dim < n_) {
        const std::size_t d = changed_dim;
        if (w.costs[d] > dims_[d].limit.capacity) {
          drop(w, Status::never, Reason::cost_exceeds_new_capacity, static_cast<std::uint8_t>(d), w.costs[d], finished);
          continue;
        }
        w.iv[d] = interval(d, w.costs[d]);
      }
      const fine_t due_w = due(g, e, w.iv);
      if (due_w > w.deadline || due_w > horizon_) {
        drop(w, Status::timed_out, Reason::deadline_after_reconfiguration, no_dimension, 0, finished);
        continue;
      }
      g = due_w;
      advance(g, e, w.iv);
    }
    tail_due_ = g;
    tail_end_ = e;
    stale_ = false;
  }

  void drop(MultiWaiter& w, Status s, Reason r, std::uint8_t dimension, double cost, WaiterList& finished) noexcept {
    pending_.remove(w);
    w.place = WaiterPlace::none;
    w.outcome = s;
    w.reason = r;
    w.dimension = dimension;
    w.cost = cost;
    finished.push_back(w);
  }

  std::array<Dim, max_dimensions> dims_{};
  std::size_t n_;
  fine_t last_now_ = 0;              // largest `now` seen
  fine_t paused_until_ = -fine_max;  // nothing granted before this
  fine_t floor_ = -fine_max;         // no grant from now on happens before this
  fine_t horizon_ = fine_from_ns(std::int64_t{1} << 62);
  // The tail prediction: when the last waiter is granted, and the dimensions'
  // paid-up-to instants after it. Valid unless `stale_`.
  fine_t tail_due_ = -fine_max;
  std::array<fine_t, max_dimensions> tail_end_{};
  bool stale_ = false;
  WaiterList pending_;
  WaiterList ready_;
  WaiterList finished_;  // finished by the core itself (timed out), to be completed
};

}  // namespace tollgate::detail
