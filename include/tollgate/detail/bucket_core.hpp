#pragma once
// BucketCore: one token bucket (BucketStep) with a FIFO waiter queue, as pure
// functions of an explicit `now`. No clock, no lock: the caller holds the lock.
//
// Queued waiters have their cost reserved in `tat_` at arrival, in arrival
// order, so their due instants are contiguous: the head is due at
// `tat_ - queued_ + head.interval`, the next one `interval` later, and so on.
// Nothing per waiter needs re-timing when one leaves: removing a pending waiter
// subtracts its interval from `tat_` and `queued_`, and every later waiter moves
// up by exactly that much, as if it had never arrived.

#include <algorithm>
#include <cstddef>
#include <limits>

#include "../limit.hpp"
#include "../result.hpp"
#include "bucket_step.hpp"
#include "fine_time.hpp"
#include "waiter.hpp"

namespace tollgate::detail {

class alignas(64) BucketCore {
 public:
  using cost_type = double;
  using waiter_type = Waiter;
  static void set_cost(Waiter& w, double cost) noexcept { w.cost = cost; }
  static const double& cost_of(const Waiter& w) noexcept { return w.cost; }
  static void check_amount(const char* who, const char* what, double v, const double* = nullptr) {
    detail::check_amount(who, what, v);
  }

  /// A full bucket at relative time 0. `limit` must be valid.
  explicit BucketCore(const Limit& limit) noexcept : step_(limit) { tat_ = -step_.tau; }

  const Limit& limit() const noexcept { return step_.limit; }

  /// The largest relative instant a wait may end at (set from the clock's range).
  void set_horizon(fine_t horizon) noexcept { horizon_ = horizon; }

  /// Refill time of a valid `cost` in fine units, rounded up (cached).
  fine_t interval(double cost) noexcept { return step_.interval(cost); }

  /// Clamps `now` to the latest instant seen and grants every pending waiter
  /// that is due by then (moving it to the ready list). Returns the clamped now.
  fine_t grant_due(fine_t now) noexcept {
    if (now < last_now_) now = last_now_;
    else last_now_ = now;
    if (now < paused_until_) [[unlikely]]
      return now;  // paused: nobody is granted yet
    while (Waiter* w = q_.pending.front()) {
      const fine_t due = tat_ - queued_ + w->interval;
      if (due > now) break;
      // Granted at max(due, end of pause), rounded up to the whole nanosecond
      // a clock can complete it at: tokens beyond one bucket at that instant
      // are lost, as they would have been had it waited in a bucket (so every
      // window of observed completion instants conforms).
      const fine_t floor = ceil_ns(std::max(due, paused_until_)) * fine_per_ns - step_.tau;
      if (tat_ - queued_ < floor) tat_ = floor + queued_;
      queued_ -= w->interval;
      q_.grant(*w);
    }
    return now;
  }

  /// Takes `cost` at `now` if it is there and nobody is queued. Never waits.
  AcquireResult try_acquire(fine_t now, double cost) noexcept {
    if (take_fast(now, cost)) [[likely]]
      return AcquireResult::acquired();
    return try_acquire_slow(now, cost);
  }

  /// The common case of try_acquire, kept inline and small: the cost of the
  /// previous call, nobody queued, no pause, time not running backwards, and
  /// the tokens there. Returns false, changing nothing, in every other case
  /// (refusals included); the out-of-line paths decide those.
  [[gnu::always_inline]] bool take_fast(fine_t now, double cost) noexcept {
    // `last_cost` only ever holds a valid cost (<= capacity): a match checks it.
    if (cost != step_.last_cost || !q_.pending.empty() || now < last_now_ || now < paused_until_) [[unlikely]]
      return false;
    // end = max(tat_, now - tau) + iv, arranged so that only two integer
    // steps wait for `now` (the clock read is the long pole): `tat_ + iv` is
    // the end unless the bucket is full, and a full bucket always has room
    // for a valid cost (iv <= tau), ending at now - (tau - iv).
    const fine_t iv = step_.last_iv;
    const fine_t end = tat_ + iv;
    if (end > now + step_.last_slack) return false;
    const fine_t from_full = now - (step_.tau - iv);
    tat_ = end < from_full ? from_full : end;
    last_now_ = now;
    return true;
  }

  /// Like try_acquire, but when the tokens are not there and the wait would be
  /// at most `max_wait`, queues `w` (FIFO) and reserves its cost.
  Admission admit(fine_t now, Waiter& w, fine_t max_wait) noexcept {
    AcquireResult check = check_cost(w.cost, step_.limit.capacity);
    if (!check) [[unlikely]]
      return {check};
    now = grant_due(now);
    const fine_t iv = step_.interval(w.cost);
    const fine_t end = step_.end_of(tat_, now, iv);
    if (step_.admits(end, now) && q_.pending.empty() && now >= paused_until_) {
      tat_ = end;
      return {AcquireResult::acquired()};
    }
    const fine_t due = std::max(end, paused_until_);
    if (due - now > max_wait) return {AcquireResult::not_now(to_ns_ceil(due - now))};
    if (end > horizon_)
      return {AcquireResult::failed(Status::invalid, Reason::wait_overflows_clock, w.cost)};
    // A non-empty queue implies tat_ > now - tau, so dues stay contiguous.
    tat_ = end;
    queued_ += iv;
    w.interval = iv;
    w.deadline = max_wait >= fine_max - now ? fine_max : now + max_wait;
    q_.enqueue(w);
    return {AcquireResult::acquired(), true, due};
  }

  /// Takes `w` out of the queue at `now`. A pending waiter's cost is given
  /// back exactly (later waiters move up). A waiter already granted is left
  /// alone (`granted`) unless `abandon`, in which case it is unlinked and its
  /// cost refunded, capped at capacity.
  Removal remove(fine_t now, Waiter& w, bool abandon) noexcept {
    now = grant_due(now);
    const Removal r = q_.remove(
        w, abandon,
        [&](Waiter& p) {
          tat_ -= p.interval;
          queued_ -= p.interval;
        },
        [&](Waiter& p) { give_back(now, p.interval); });
    if (r == Removal::removed) grant_due(now);  // the waiters behind it moved up
    return r;
  }

  /// Moves the granted waiters, and those the core finished on its own (a
  /// charge or a corrected remaining count pushed them past their deadline),
  /// to `out`, to be completed outside the lock.
  void take_ready(WaiterList& out) noexcept { q_.take_ready(out); }

  /// When the scheduler must next run this bucket: now if some waiter is
  /// granted but not completed, the head's due instant if some are pending,
  /// `fine_max` if nobody waits.
  fine_t next_wake() const noexcept {
    if (q_.has_done()) return last_now_;
    if (Waiter* w = q_.pending.front()) return std::max(tat_ - queued_ + w->interval, paused_until_);
    return fine_max;
  }

  /// Admits nothing before `until` (an upstream said "retry after"): waiters
  /// keep their order and are granted from then on; tokens keep accruing, up
  /// to capacity. A pause is only ever extended, never shortened. A pending
  /// waiter whose deadline the pause overruns finishes `timed_out` (appended
  /// to `finished`).
  void pause_until(fine_t now, fine_t until, WaiterList& finished) noexcept {
    grant_due(now);
    if (until <= paused_until_) return;
    paused_until_ = until;
    expire_overdue(finished);
  }

  /// Takes `cost` unconditionally: an overrun already spent upstream (the
  /// actual token count exceeded the estimate). The bucket may go into debt,
  /// at most `max_debt` tokens of it (what a charge would take beyond that
  /// is not taken); the debt is never dropped and delays everyone after it,
  /// queued waiters included (one pushed past its deadline finishes
  /// `timed_out`). Returns false (taking nothing) only if the debt would
  /// reach beyond the clock's range. `cost` must be finite and >= 0.
  bool charge(fine_t now, double cost) noexcept {
    now = grant_due(now);
    const fine_t end = step_.charged(tat_, now, fine_interval(cost, step_.limit.rate), queued_);
    if (end == tat_) return true;
    if (end > horizon_) return false;
    tat_ = end;
    expire_overdue(q_.finished);
    return true;
  }

  /// The most debt a charge (or a settle's overrun) may leave, in tokens;
  /// negative: one capacity (the default, following the capacity).
  void set_max_debt(double tokens) noexcept { step_.set_max_debt(tokens); }
  double max_debt() const noexcept { return step_.max_debt_tokens(); }

  /// Refunds `estimate - actual` or charges `actual - estimate` (see charge).
  bool settle(fine_t now, double estimate, double actual) noexcept {
    if (actual < estimate) (void)refund(now, estimate - actual);
    else if (actual > estimate) return charge(now, actual - estimate);
    return true;
  }

  /// Lowers the unreserved tokens to at most `remaining` (what the upstream
  /// says is left); never raises them. `remaining` must be >= 0.
  void limit_remaining(fine_t now, double remaining) noexcept {
    now = grant_due(now);
    const fine_t tat = step_.lowered(tat_, now, remaining, queued_);
    if (tat == tat_) return;
    tat_ = tat;
    expire_overdue(q_.finished);
  }

  /// Returns `cost` to the bucket, never above capacity; waiters move up.
  /// Returns the amount actually credited. `cost` must be finite and >= 0.
  double refund(fine_t now, double cost) noexcept {
    now = grant_due(now);
    if (cost > step_.limit.capacity) cost = step_.limit.capacity;  // never more than a full bucket
    const fine_t iv = step_.interval(cost);
    const fine_t credited = give_back(now, iv);
    return credited == iv ? cost : static_cast<double>(credited) / step_.fine_per_unit;
  }

  /// Unreserved tokens at `now`: what a try_acquire could take, in [0, capacity].
  /// Rounded down: `try_acquire(available())` always succeeds, and the full
  /// capacity is reported only when the bucket is exactly full.
  double available(fine_t now) noexcept {
    now = grant_due(now);
    if (now < paused_until_) return 0;
    return step_.tokens(tat_, now);
  }

  /// True when the bucket is indistinguishable from a new full one at `now`.
  bool is_fresh(fine_t now) noexcept {
    now = grant_due(now);
    return idle() && now >= paused_until_ && step_.full(tat_, now);
  }

  std::size_t waiters() const noexcept { return q_.pending.size(); }

  /// What lock-free admission (BucketGate) needs while it holds the state:
  /// false when it must not (a waiter is queued). `floor` is the earliest
  /// instant it may act at (the latest seen, the end of a pause); `cost`
  /// the cached cost (NaN if none: equal to no cost) with its interval and
  /// allowance.
  bool lock_free_view(fine_t& floor, double& cost, fine_t& iv, fine_t& slack) const noexcept {
    if (!q_.pending.empty()) return false;
    floor = std::max(last_now_, paused_until_);
    cost = step_.last_cost;
    iv = step_.last_iv;
    slack = step_.last_slack;
    return true;
  }

  /// True when no waiter is queued or granted-but-not-completed.
  bool idle() const noexcept { return q_.idle(); }

  /// The paid-up-to instant, and its replacement (moving a bucket's state
  /// between representations; only when idle).
  fine_t tat() const noexcept { return tat_; }
  void set_tat(fine_t tat) noexcept { tat_ = tat; }

  /// Settles the tokens accrued so far under the old limit, then applies
  /// `limit` (already validated) and re-times the pending waiters in their
  /// order. A waiter whose cost now exceeds the capacity finishes `never`; one
  /// whose new due instant passes its deadline finishes `timed_out`. Finished
  /// waiters are appended to `finished` (complete them outside the lock).
  void reconfigure(fine_t now, const Limit& limit, WaiterList& finished) noexcept {
    now = grant_due(now);
    fine_t end = step_.reconfigure(tat_ - queued_, now, limit);
    WaiterList old;
    old.splice_back(q_.pending);
    queued_ = 0;
    while (Waiter* w = old.front()) {
      if (w->cost > step_.limit.capacity) {
        WaiterQueue::finish(old, *w, Status::never, Reason::cost_exceeds_new_capacity, finished);
        continue;
      }
      const fine_t iv = step_.interval(w->cost);
      if (end + iv > w->deadline || end + iv > horizon_) {
        WaiterQueue::finish(old, *w, Status::timed_out, Reason::deadline_after_reconfiguration, finished);
        continue;
      }
      old.remove(*w);
      w->interval = iv;
      end += iv;
      queued_ += iv;
      q_.pending.push_back(*w);
    }
    tat_ = end;
    grant_due(now);  // a faster rate may have made some waiters due already
  }

  /// Every pending and ready waiter, finished as `cancelled` (bucket teardown).
  void cancel_all(WaiterList& finished) noexcept { q_.cancel_all(finished); }

  // Introspection for tests and invariants.
  fine_t tau() const noexcept { return step_.tau; }
  fine_t queued() const noexcept { return queued_; }

 private:
  [[gnu::noinline]] AcquireResult try_acquire_slow(fine_t now, double cost) noexcept {
    AcquireResult check = check_cost(cost, step_.limit.capacity);
    if (!check) return check;
    if (!q_.pending.empty()) now = grant_due(now);
    else if (now < last_now_) now = last_now_;
    else last_now_ = now;
    const fine_t end = step_.end_of(tat_, now, step_.interval(cost));
    if (now < paused_until_) return AcquireResult::not_now(to_ns_ceil(std::max(end, paused_until_) - now));
    if (step_.admits(end, now) && q_.pending.empty()) {
      tat_ = end;
      return AcquireResult::acquired();
    }
    // With waiters queued, `tat_ > now` already includes them: the newcomer
    // would be served after all of them.
    return AcquireResult::not_now(to_ns_ceil(end - now));
  }

  // After the queue moved later (a pause, a charge, a lower remaining count):
  // every pending waiter whose due instant now passes its deadline leaves
  // the queue `timed_out` (later waiters move up, in token terms).
  void expire_overdue(WaiterList& finished) noexcept {
    fine_t due = tat_ - queued_;
    for (Waiter* w = q_.pending.front(); w;) {
      Waiter* next = w->next;
      due += w->interval;
      if (std::max(due, paused_until_) > w->deadline) {
        due -= w->interval;
        tat_ -= w->interval;
        queued_ -= w->interval;
        WaiterQueue::finish(q_.pending, *w, Status::timed_out, Reason::deadline_after_reconfiguration, finished);
      }
      w = next;
    }
  }

  /// Moves `tat_` back by `iv`, keeping the unreserved level <= capacity.
  fine_t give_back(fine_t now, fine_t iv) noexcept {
    const fine_t target = step_.given_back(tat_, now, iv, queued_);
    const fine_t credited = tat_ - target;
    tat_ = target;
    grant_due(now);
    return credited;
  }

  // Hot fields first, in the order try_acquire reads them.
  fine_t tat_ = 0;                   // paid-up-to instant, bucket-relative
  fine_t last_now_ = 0;              // largest `now` seen (time never runs backwards)
  fine_t paused_until_ = -fine_max;  // nothing admitted before this (upstream 429s)
  WaiterQueue q_;
  BucketStep step_;
  // Cold.
  fine_t queued_ = 0;  // sum of the pending waiters' intervals
  fine_t horizon_ = fine_from_ns(std::int64_t{1} << 62);
};

}  // namespace tollgate::detail
