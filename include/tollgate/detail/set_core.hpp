#pragma once
// SetCore: the arithmetic and FIFO queue of a LimitSet, several token
// buckets ("dimensions", each a BucketStep) taken all or nothing, as pure
// functions of `now`.
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
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>

#include "../costs.hpp"
#include "../limit.hpp"
#include "../result.hpp"
#include "bucket_step.hpp"
#include "fine_time.hpp"
#include "hold.hpp"
#include "waiter.hpp"

namespace tollgate::detail {

/// A LimitSet's queue node: the cost vector and its refill times.
struct SetWaiter : Waiter {
  Costs costs;
  std::array<fine_t, max_dimensions> iv{};
};

class SetCore {
 public:
  using cost_type = Costs;
  using waiter_type = SetWaiter;
  static void set_cost(SetWaiter& w, const Costs& c) noexcept { w.costs = c; }
  static const Costs& cost_of(const SetWaiter& w) noexcept { return w.costs; }

  /// Throws `std::invalid_argument` unless every value of `v` is finite and
  /// >= 0 and (when `like` is given) `v` has as many values as `*like`.
  static void check_amount(const char* who, const char* what, const Costs& v, const Costs* like = nullptr) {
    if (like && v.size() != like->size()) {
      std::ostringstream os;
      os << who << ": " << what << " has " << v.size() << " values, expected " << like->size();
      throw std::invalid_argument(os.str());
    }
    for (std::size_t d = 0; d < v.size(); ++d)
      if (!(v[d] >= 0 && v[d] <= std::numeric_limits<double>::max())) [[unlikely]]  // the message only when it fails
        detail::check_amount(who, (std::string(what) + "[" + std::to_string(d) + "]").c_str(), v[d]);
  }

  /// A full set at relative time 0. Limits must be valid, 1..max_dimensions of them.
  explicit SetCore(std::span<const Limit> limits) noexcept : n_(limits.size()) {
    for (std::size_t d = 0; d < n_; ++d) {
      dims_[d].step.apply(limits[d]);
      dims_[d].start = -dims_[d].step.tau;
    }
    tail_end_ = starts();
  }

  std::size_t size() const noexcept { return n_; }
  const Limit& limit(std::size_t d) const noexcept { return dims_[d].step.limit; }
  void set_horizon(fine_t horizon) noexcept { horizon_ = horizon; }

  /// `acquired` when `c` is usable; otherwise the failure, naming the dimension.
  AcquireResult check(const Costs& c) const noexcept {
    if (c.size() != n_) [[unlikely]]
      return AcquireResult::failed(Status::invalid, Reason::wrong_dimension_count, static_cast<double>(c.size()));
    for (std::size_t d = 0; d < n_; ++d) {
      const AcquireResult r = check_cost(c[d], dims_[d].step.limit.capacity);
      if (!r) [[unlikely]]
        return AcquireResult::failed(r.status(), r.reason_code(), c[d], static_cast<std::uint8_t>(d));
    }
    return AcquireResult::acquired();
  }

  /// Clamps `now` to the latest instant seen and grants every pending waiter
  /// due by then. Returns the clamped now.
  fine_t grant_due(fine_t now) noexcept {
    if (now < last_now_) now = last_now_;
    else last_now_ = now;
    if (now < paused_until_) return now;
    while (auto* w = head()) {
      const fine_t g = due(floor_, starts_view(), w->iv, w->costs, holds_.budgets());
      if (g > now) break;
      grant(g, w->iv, w->costs);
      q_.grant(*w);
    }
    // A hold over by now can delay nobody (grants are never before now
    // again once nobody is queued).
    if (holds_.any() && q_.pending.empty()) holds_.expire(now);
    return now;
  }

  /// Takes `c` at `now` if every dimension has it and nobody is queued.
  AcquireResult try_acquire(fine_t now, const Costs& c) noexcept {
    const AcquireResult chk = check(c);
    if (!chk) [[unlikely]]
      return chk;
    now = grant_due(now);
    std::array<fine_t, max_dimensions> iv;
    intervals(c, iv);
    if (grantable_now(now, iv, c)) {
      commit_now(now, iv, c);
      return AcquireResult::acquired();
    }
    return AcquireResult::not_now(to_ns_ceil(newcomer_due(now, iv, c) - now));
  }

  /// Takes `c` if try_acquire would; false otherwise (then admit decides).
  bool take_fast(fine_t now, const Costs& c) noexcept { return try_acquire(now, c).ok(); }

  /// Like try_acquire, but queues `w` (FIFO) when the wait is at most `max_wait`.
  Admission admit(fine_t now, SetWaiter& w, fine_t max_wait) noexcept {
    const AcquireResult chk = check(w.costs);
    if (!chk) [[unlikely]]
      return {chk};
    now = grant_due(now);
    intervals(w.costs, w.iv);
    if (grantable_now(now, w.iv, w.costs)) {
      commit_now(now, w.iv, w.costs);
      return {AcquireResult::acquired()};
    }
    const fine_t g = newcomer_due(now, w.iv, w.costs);
    if (g - now > max_wait) return {AcquireResult::not_now(to_ns_ceil(g - now))};
    if (g > horizon_) return {AcquireResult::failed(Status::invalid, Reason::wait_overflows_clock)};
    w.deadline = max_wait >= fine_max - now ? fine_max : now + max_wait;
    if (q_.pending.empty()) {  // the prediction is just the current state
      tail_end_ = starts();
      tail_budget_ = holds_.budgets();
      stale_ = false;
    }
    const bool fresh = !stale_;
    q_.enqueue(w);
    if (fresh) {  // extend the tail prediction by this waiter
      advance(g, tail_end_, w.iv);
      holds_.spend(g, w.costs, tail_budget_);
      tail_due_ = g;
    }
    return {AcquireResult::acquired(), true, g};
  }

  /// As BucketCore::remove: a pending waiter leaves exactly (later waiters
  /// move up); a granted one is given back only when `abandon`.
  Removal remove(fine_t now, Waiter& base, bool abandon) noexcept {
    now = grant_due(now);
    const Removal r = q_.remove(
        base, abandon, [](Waiter&) {},
        [&](Waiter& w) {
          for (std::size_t d = 0; d < n_; ++d) give_back(now, d, static_cast<SetWaiter&>(w).iv[d]);
        });
    if (r == Removal::removed) changed(now);
    return r;
  }

  /// Moves the granted waiters, and those the core finished on its own (a
  /// re-timing pushed them past their deadline), to `out`.
  void take_ready(WaiterList& out) noexcept { q_.take_ready(out); }

  fine_t next_wake() const noexcept {
    if (q_.has_done()) return last_now_;
    if (const auto* w = head()) return due(floor_, starts_view(), w->iv, w->costs, holds_.budgets());
    return fine_max;
  }

  /// As BucketCore::pause_until, for every dimension at once.
  void pause_until(fine_t now, fine_t until, WaiterList& finished) noexcept {
    now = grant_due(now);
    if (until <= paused_until_) return;
    paused_until_ = until;
    floor_ = std::max(floor_, now);
    retime(n_, finished);
  }

  /// Gives `c` back, never above capacity in any dimension; waiters move up.
  void refund(fine_t now, const Costs& c) noexcept {
    now = grant_due(now);
    for (std::size_t d = 0; d < n_; ++d)
      if (c[d] > 0) {
        refund_dim(now, d, c[d]);
        holds_.adjust(now, d, -c[d]);
      }
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
    now = grant_due(now);
    std::array<fine_t, max_dimensions> end{};
    bool later = false;
    for (std::size_t d = 0; d < n_; ++d) {
      const Dim& x = dims_[d];
      end[d] = x.start;
      if (!(actual[d] > estimate[d])) continue;
      end[d] = x.step.charged(x.start, now, fine_interval(actual[d] - estimate[d], x.step.limit.rate));
      if (end[d] == x.start) continue;
      if (end[d] > horizon_) return false;
      later = true;
    }
    for (std::size_t d = 0; d < n_; ++d) {
      Dim& x = dims_[d];
      if (actual[d] > estimate[d]) {
        x.start = end[d];
        holds_.adjust(now, d, actual[d] - estimate[d]);
      } else if (actual[d] < estimate[d]) {
        refund_dim(now, d, estimate[d] - actual[d]);
        holds_.adjust(now, d, actual[d] - estimate[d]);
      }
    }
    changed(now, later);
    return true;
  }

  /// The most debt a charge or settle may leave in dimension d, in tokens;
  /// negative: one capacity (the default, following the capacity).
  void set_max_debt(std::size_t d, double tokens) noexcept { dims_[d].step.set_max_debt(tokens); }
  double max_debt(std::size_t d) const noexcept { return dims_[d].step.max_debt_tokens(); }

  /// Lowers dimension d's unreserved tokens to at most `remaining`; never raises them.
  void limit_remaining(fine_t now, std::size_t d, double remaining) noexcept {
    now = grant_due(now);
    Dim& x = dims_[d];
    const fine_t start = x.step.lowered(x.start, now, remaining);
    if (start == x.start) return;
    x.start = start;
    changed(now, true);
  }

  /// Lowers dimension d's unreserved tokens to at most `remaining` and holds
  /// them there until `until` (see Holds): grants before `until` take at
  /// most `remaining` in d, whatever its refill; then, for a windowed
  /// provider (`window` > 0), one more window at what a window holds.
  void hold(fine_t now, std::size_t d, double remaining, fine_t until, fine_t window = 0) noexcept {
    now = grant_due(now);
    if (!holds_.hold(now, d, remaining, ceil_ns(until) * fine_per_ns, ceil_ns(window) * fine_per_ns))
      return;  // an earlier window's count: the level stays too
    Dim& x = dims_[d];
    x.start = x.step.lowered(x.start, now, remaining);
    changed(now, true);
  }
  /// The instant dimension d's hold ends, if one holds it at `now`.
  std::optional<fine_t> held_until(fine_t now, std::size_t d) noexcept {
    now = grant_due(now);
    if (!holds_.held(now, d)) return std::nullopt;
    return holds_.until(d);
  }

  /// Unreserved tokens of dimension d at `now` (0 while paused or while
  /// waiters are queued: a try_acquire could take nothing then).
  double available(fine_t now, std::size_t d) noexcept {
    now = grant_due(now);
    if (now < paused_until_ || !q_.pending.empty()) return 0;
    return holds_.cap(now, d, dims_[d].step.tokens(dims_[d].start, now));
  }

  /// Settles dimension d's tokens under its old limit, applies `limit`, then
  /// re-times the queue: a waiter whose cost in d now exceeds the capacity
  /// finishes `never`, one pushed past its deadline `timed_out`.
  void reconfigure(fine_t now, std::size_t d, const Limit& limit, WaiterList& finished) noexcept {
    now = grant_due(now);
    dims_[d].start = dims_[d].step.reconfigure(dims_[d].start, now, limit);  // never creates tokens
    floor_ = std::max(floor_, now);
    retime(d, finished);
    grant_due(now);
  }

  bool idle() const noexcept { return q_.idle(); }
  std::size_t waiters() const noexcept { return q_.pending.size(); }
  void cancel_all(WaiterList& finished) noexcept { q_.cancel_all(finished); }

  /// True when every dimension is full, nothing is paused and nobody waits.
  bool is_fresh(fine_t now) noexcept {
    now = grant_due(now);
    if (!idle() || now < paused_until_) return false;
    for (std::size_t d = 0; d < n_; ++d)
      if (!dims_[d].step.full(dims_[d].start, now)) return false;
    return true;
  }

 private:
  struct Dim {
    BucketStep step;
    fine_t start = 0;  // paid-up-to instant of everything granted
  };

  // Fills `iv` with the refill times of `c` (and each dimension's cache
  // with its cost's rounding allowance).
  void intervals(const Costs& c, std::array<fine_t, max_dimensions>& iv) noexcept {
    for (std::size_t d = 0; d < n_; ++d) iv[d] = dims_[d].step.interval(c[d]);
  }

  // True when a newcomer whose refill times `intervals` just computed can be
  // granted at `now`: nobody queued, no pause, and every dimension has the
  // tokens, within its rounding allowance.
  bool grantable_now(fine_t now, const std::array<fine_t, max_dimensions>& iv, const Costs& c) const noexcept {
    if (!q_.pending.empty() || now < paused_until_ || now < floor_) return false;
    for (std::size_t d = 0; d < n_; ++d)
      if (!dims_[d].step.admits(dims_[d].start + iv[d], now)) return false;
    return !holds_.any() || holds_.earliest(now, c, holds_.budgets()) == now;
  }

  SetWaiter* head() const noexcept { return static_cast<SetWaiter*>(q_.pending.front()); }

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
  // A hold `c` overruns (with the budgets `b` left) delays it to the hold's end.
  template <class Ends, class Iv>
  fine_t due(fine_t prev, const Ends& e, const Iv& iv, const Costs& c, const Budgets& b) const noexcept {
    fine_t g = std::max(prev, paused_until_);
    for (std::size_t d = 0; d < n_; ++d) g = std::max(g, e[d] + iv[d]);
    if (holds_.any()) g = holds_.earliest(g, c, b);
    return ceil_ns(g) * fine_per_ns;
  }
  // Pays for `iv` in every dimension at grant instant `g` (tokens a
  // dimension could not hold by then are lost): on the predicted ends `e`.
  void advance(fine_t g, std::array<fine_t, max_dimensions>& e, const std::array<fine_t, max_dimensions>& iv) const noexcept {
    for (std::size_t d = 0; d < n_; ++d) e[d] = dims_[d].step.end_of(e[d], g, iv[d]);
  }

  // The same on the dimensions themselves: a grant at `g` (never before the
  // latest instant seen, so `floor_` simply becomes `g`).
  void grant(fine_t g, const std::array<fine_t, max_dimensions>& iv, const Costs& c) noexcept {
    for (std::size_t d = 0; d < n_; ++d) dims_[d].start = dims_[d].step.end_of(dims_[d].start, g, iv[d]);
    if (holds_.any()) holds_.spend(g, c);
    floor_ = g;
  }

  // A grant at `now` with nobody queued: the tail prediction is the new state.
  void commit_now(fine_t now, const std::array<fine_t, max_dimensions>& iv, const Costs& c) noexcept {
    grant(now, iv, c);
    tail_end_ = starts();
    tail_budget_ = holds_.budgets();
    tail_due_ = floor_;
  }

  // When a newcomer with refill times `iv` would be granted: after the tail
  // of the queue (or now, if nobody waits).
  fine_t newcomer_due(fine_t now, const std::array<fine_t, max_dimensions>& iv, const Costs& c) noexcept {
    if (q_.pending.empty()) return due(std::max(floor_, now), starts_view(), iv, c, holds_.budgets());
    refresh_tail();
    return due(std::max(tail_due_, now), tail_end_, iv, c, tail_budget_);
  }

  // Waiters the re-timing finishes (timed out) are kept for take_ready:
  // whoever holds the lock completes them after releasing it.
  void refresh_tail() noexcept {
    if (stale_) retime(n_, q_.finished);
  }

  // Something moved the queue: grants from now on happen at `now` or later,
  // and the tail prediction must be recomputed. When waiters may have moved
  // `later` (a debt, a lower remaining count), the queue is re-timed at once
  // so that a waiter pushed past its deadline finishes now, not at its due
  // instant; moves earlier (a refund, a waiter leaving) re-time lazily.
  void changed(fine_t now, bool later = false) noexcept {
    floor_ = std::max(floor_, now);
    stale_ = true;
    if (later && !q_.pending.empty()) retime(n_, q_.finished);
    grant_due(now);
  }

  // Gives `amount` back to dimension d, never above capacity.
  void refund_dim(fine_t now, std::size_t d, double amount) noexcept {
    const Limit& l = dims_[d].step.limit;
    give_back(now, d, fine_interval(std::min(amount, l.capacity), l.rate));
  }

  // Moves dimension d's paid-up-to instant back by `iv`, never above capacity.
  void give_back(fine_t now, std::size_t d, fine_t iv) noexcept {
    dims_[d].start = dims_[d].step.given_back(dims_[d].start, now, iv);
  }

  // One pass over the queue from the head: recomputes every due instant and
  // the tail prediction. When `changed_dim < n_`, that dimension's limit
  // changed: its refill times are recomputed and a waiter whose cost exceeds
  // its capacity finishes `never`. A waiter whose due instant passes its
  // deadline (or the clock's range) finishes `timed_out`.
  void retime(std::size_t changed_dim, WaiterList& finished) noexcept {
    fine_t g = floor_;
    std::array<fine_t, max_dimensions> e = starts();
    Budgets b = holds_.budgets();
    for (Waiter* p = q_.pending.front(); p;) {
      auto& w = static_cast<SetWaiter&>(*p);
      p = p->next;
      if (changed_dim < n_) {
        const std::size_t d = changed_dim;
        if (w.costs[d] > dims_[d].step.limit.capacity) {
          drop(w, Status::never, Reason::cost_exceeds_new_capacity, static_cast<std::uint8_t>(d), w.costs[d], finished);
          continue;
        }
        w.iv[d] = dims_[d].step.interval(w.costs[d]);
      }
      const fine_t due_w = due(g, e, w.iv, w.costs, b);
      if (due_w > w.deadline || due_w > horizon_) {
        drop(w, Status::timed_out, Reason::deadline_after_reconfiguration, no_dimension, 0, finished);
        continue;
      }
      g = due_w;
      advance(g, e, w.iv);
      holds_.spend(g, w.costs, b);
    }
    tail_due_ = g;
    tail_end_ = e;
    tail_budget_ = b;
    stale_ = false;
  }

  void drop(SetWaiter& w, Status s, Reason r, std::uint8_t dimension, double cost, WaiterList& finished) noexcept {
    w.dimension = dimension;
    w.cost = cost;
    WaiterQueue::finish(q_.pending, w, s, r, finished);
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
  Budgets tail_budget_{};  // ... and the holds' budgets after it
  bool stale_ = false;
  Holds holds_;
  WaiterQueue q_;
};

}  // namespace tollgate::detail
