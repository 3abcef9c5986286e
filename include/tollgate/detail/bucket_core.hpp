#pragma once
// BucketCore: the token-bucket arithmetic and the FIFO waiter queue, as pure
// functions of an explicit `now`. No clock, no lock: the caller holds the lock.
//
// Representation (GCRA, "virtual scheduling"): instead of a token count and a
// last-refill time, the bucket keeps one instant `tat_`: the time up to which
// every admitted or queued cost has been paid for. Tokens accrue at `rate_`,
// so the bucket holds `min(capacity, rate * (now - tat_))` unreserved tokens.
// An acquisition of cost c needs `interval(c) = c / rate` of refill time:
//
//     base = max(tat_, now - tau_)          // tau_ = interval(capacity): "full"
//     if base + interval(c) <= now  -> admitted, tat_ = base + interval(c)
//     else                          -> due at base + interval(c)
//
// Refill is implicit (no per-call rounding, no drift), time never has to be
// re-read under the lock, and a smaller `now` can never re-credit time because
// `tat_` only moves forward (and `now` is clamped to the largest seen anyway).
//
// Queued waiters have their cost reserved in `tat_` at arrival, in arrival
// order, so their due instants are contiguous: the head is due at
// `tat_ - queued_ + head.interval`, the next one `interval` later, and so on.
// Nothing per waiter needs re-timing when one leaves: removing a pending waiter
// subtracts its interval from `tat_` and `queued_`, and every later waiter moves
// up by exactly that much, as if it had never arrived.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "../limit.hpp"
#include "../result.hpp"
#include "fine_time.hpp"
#include "waiter.hpp"

namespace tollgate::detail {

/// What `BucketCore::admit` did with a request.
struct Admission {
  AcquireResult result;  // acquired / not_now / never / invalid, or ...
  bool queued = false;   // ... true: the waiter was queued; result is unused
};

/// What `BucketCore::remove` found.
enum class Removal {
  removed,     // it was queued; its cost is back in the bucket (or refunded)
  granted,     // it was already granted; the timer side will complete it
  not_queued,  // it was never queued, or already completed
};

/// Checks a per-call cost. Returns `acquired` when usable.
inline AcquireResult check_cost(double cost, double capacity) noexcept {
  if (cost >= 0 && cost <= capacity) [[likely]]
    return AcquireResult::acquired();
  if (std::isnan(cost)) return AcquireResult::failed(Status::invalid, Reason::cost_is_nan, cost);
  if (cost < 0) return AcquireResult::failed(Status::invalid, Reason::cost_is_negative, cost);
  if (std::isinf(cost)) return AcquireResult::failed(Status::invalid, Reason::cost_is_infinite, cost);
  return AcquireResult::failed(Status::never, Reason::cost_exceeds_capacity, cost);
}

/// The tokens a refill time `level` holds (in [0, capacity]): the largest
/// cost an admission would take from it (its rounding allowance included), so
/// taking them always succeeds; the capacity exactly when full, and less
/// otherwise.
inline double tokens_in(fine_t level, fine_t tau, const Limit& limit, double fine_per_unit) noexcept {
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

/// A pending waiter whose due instant passed its deadline leaves the queue:
/// appended to `finished` as `timed_out`.
inline void finish_overdue(WaiterList& pending, Waiter& w, WaiterList& finished) noexcept {
  pending.remove(w);
  w.place = WaiterPlace::none;
  w.outcome = Status::timed_out;
  w.reason = Reason::deadline_after_reconfiguration;
  finished.push_back(w);
}

class alignas(64) BucketCore {
 public:
  using cost_type = double;
  using waiter_type = Waiter;
  static void set_cost(Waiter& w, double cost) noexcept { w.cost = cost; }
  static double zero_like(double) noexcept { return 0; }

  /// Throws `std::invalid_argument("<who>: <what> must be finite and >= 0, got v")`.
  static void check_amount(const char* who, const char* what, double v, const double* = nullptr) {
    if (v >= 0 && !std::isinf(v)) return;
    std::ostringstream os;
    os << who << ": " << what << " must be finite and >= 0, got " << v;
    throw std::invalid_argument(os.str());
  }

  /// A full bucket at relative time 0. `limit` must be valid.
  explicit BucketCore(const Limit& limit) noexcept {
    apply(limit);
    tat_ = -tau_;
  }

  const Limit& limit() const noexcept { return limit_; }
  double capacity() const noexcept { return limit_.capacity; }
  double rate() const noexcept { return limit_.rate; }

  /// The largest relative instant a wait may end at (set from the clock's range).
  void set_horizon(fine_t horizon) noexcept { horizon_ = horizon; }

  /// Refill time of `cost` in fine units, rounded up. Cost must be valid.
  /// Also caches the cost's rounding allowance (`admission_slack`).
  fine_t interval(double cost) noexcept {
    if (cost != last_cost_) {
      last_cost_ = cost;
      last_interval_ = fine_interval(cost, limit_.rate);
      last_slack_ = static_cast<std::int64_t>(admission_slack(cost, limit_.capacity, tau_));
    }
    return last_interval_;
  }

  /// Clamps `now` to the latest instant seen and grants every pending waiter
  /// that is due by then (moving it to the ready list). Returns the clamped now.
  fine_t observe(fine_t now) noexcept {
    if (now < last_now_) now = last_now_;
    else last_now_ = now;
    if (now < paused_until_) [[unlikely]]
      return now;  // paused: nobody is granted yet
    while (Waiter* w = pending_.front()) {
      const fine_t due = tat_ - queued_ + w->interval;
      if (due > now) break;
      // Granted at max(due, end of pause), rounded up to the whole nanosecond
      // a clock can complete it at: tokens beyond one bucket at that instant
      // are lost, as they would have been had it waited in a bucket (so every
      // window of observed completion instants conforms).
      const fine_t floor = ceil_ns(std::max(due, paused_until_)) * fine_per_ns - tau_;
      if (tat_ - queued_ < floor) tat_ = floor + queued_;
      queued_ -= w->interval;
      pending_.remove(*w);
      w->place = WaiterPlace::ready;
      w->outcome = Status::acquired;
      ready_.push_back(*w);
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
    // `last_cost_` only ever holds a valid cost (<= capacity): a match checks it.
    if (cost != last_cost_ || !pending_.empty() || now < last_now_ || now < paused_until_) [[unlikely]]
      return false;
    // end = max(tat_, now - tau_) + iv, arranged so that only two integer
    // steps wait for `now` (the clock read is the long pole): `tat_ + iv` is
    // the end unless the bucket is full, and a full bucket always has room
    // for a valid cost (iv <= tau_), ending at now - (tau_ - iv).
    const fine_t iv = last_interval_;
    const fine_t end = tat_ + iv;
    if (end > now + last_slack_) return false;
    const fine_t from_full = now - (tau_ - iv);
    tat_ = end < from_full ? from_full : end;
    last_now_ = now;
    return true;
  }

  /// Like try_acquire, but when the tokens are not there and the wait would be
  /// at most `max_wait`, queues `w` (FIFO) and reserves its cost.
  Admission admit(fine_t now, Waiter& w, fine_t max_wait) noexcept {
    AcquireResult check = check_cost(w.cost, limit_.capacity);
    if (!check) [[unlikely]]
      return {check};
    now = observe(now);
    const fine_t iv = interval(w.cost);
    fine_t base = tat_;
    if (base < now - tau_) base = now - tau_;
    const fine_t end = base + iv;
    if (end <= now + last_slack_ && pending_.empty() && now >= paused_until_) {
      tat_ = end;
      return {AcquireResult::acquired()};
    }
    const fine_t wait = std::max(end, paused_until_) - now;
    if (wait > max_wait) return {AcquireResult::not_now(to_ns_ceil(wait))};
    if (end > horizon_)
      return {AcquireResult::failed(Status::invalid, Reason::wait_overflows_clock, w.cost)};
    // pending_ non-empty implies base == tat_ (tat_ > now), so dues stay contiguous.
    tat_ = end;
    queued_ += iv;
    w.interval = iv;
    w.deadline = max_wait >= fine_max - now ? fine_max : now + max_wait;
    w.place = WaiterPlace::pending;
    pending_.push_back(w);
    return {AcquireResult::acquired(), true};
  }

  /// Takes `w` out of the queue at `now`. A pending waiter's cost is given
  /// back exactly (later waiters move up). A waiter already granted is left
  /// alone (`granted`) unless `abandon`, in which case it is unlinked and its
  /// cost refunded, capped at capacity.
  Removal remove(fine_t now, Waiter& w, bool abandon) noexcept {
    now = observe(now);
    switch (w.place) {
      case WaiterPlace::pending:
        pending_.remove(w);
        tat_ -= w.interval;
        queued_ -= w.interval;
        w.place = WaiterPlace::none;
        observe(now);  // the waiters behind it moved up; some may be due now
        return Removal::removed;
      case WaiterPlace::ready:
        if (!abandon) return Removal::granted;
        ready_.remove(w);
        w.place = WaiterPlace::none;
        give_back(now, w.interval);
        return Removal::removed;
      case WaiterPlace::none:
        break;
    }
    return Removal::not_queued;
  }

  /// Moves the granted waiters to `out` (to be completed outside the lock).
  /// Also moves the waiters the core finished on its own (a charge or a
  /// corrected remaining count pushed them past their deadline).
  void take_ready(WaiterList& out) noexcept {
    detail::take_ready(ready_, out);
    out.splice_back(finished_);
  }

  /// When the scheduler must next run this bucket: now if some waiter is
  /// granted but not completed, the head's due instant if some are pending,
  /// `fine_max` if nobody waits.
  fine_t next_wake() const noexcept {
    if (!ready_.empty() || !finished_.empty()) return last_now_;
    if (Waiter* w = pending_.front()) return std::max(tat_ - queued_ + w->interval, paused_until_);
    return fine_max;
  }

  /// Admits nothing before `until` (an upstream said "retry after"): waiters
  /// keep their order and are granted from then on; tokens keep accruing, up
  /// to capacity. A pause is only ever extended, never shortened. A pending
  /// waiter whose deadline the pause overruns finishes `timed_out` (appended
  /// to `finished`).
  void pause_until(fine_t now, fine_t until, WaiterList& finished) noexcept {
    now = observe(now);
    if (until <= paused_until_) return;
    paused_until_ = until;
    expire_overdue(finished);
  }

  /// The instant before which nothing is admitted (a past instant when not paused).
  fine_t paused_until() const noexcept { return paused_until_; }

  /// Takes `cost` unconditionally: an overrun already spent upstream (the
  /// actual token count exceeded the estimate). The bucket may go into debt,
  /// at most `max_debt` tokens of it (what a charge would take beyond that
  /// is not taken); the debt is never dropped and delays everyone after it,
  /// queued waiters included (one pushed past its deadline finishes
  /// `timed_out`). Returns false (taking nothing) only if the debt would
  /// reach beyond the clock's range. `cost` must be finite and >= 0.
  bool charge(fine_t now, double cost) noexcept {
    now = observe(now);
    const fine_t iv = fine_interval(cost, limit_.rate);  // saturates: cost is finite
    fine_t base = tat_;
    if (base < now - tau_ + queued_) base = now - tau_ + queued_;
    fine_t end = now + queued_ + max_debt_iv_;  // the most debt allowed
    if (iv < end - base) end = base + iv;
    if (end <= base) return true;  // already at (or past) the most debt allowed
    if (end > horizon_) return false;
    tat_ = end;
    expire_overdue(finished_);
    return true;
  }

  /// The most debt a charge (or a settle's overrun) may leave, in tokens;
  /// negative: one capacity (the default, following the capacity).
  void set_max_debt(double tokens) noexcept {
    max_debt_ = tokens;
    max_debt_iv_ = tokens < 0 ? tau_ : fine_interval(tokens, limit_.rate);
  }
  double max_debt() const noexcept { return max_debt_ < 0 ? limit_.capacity : max_debt_; }

  /// Refunds `estimate - actual` or charges `actual - estimate` (see charge).
  bool settle(fine_t now, double estimate, double actual) noexcept {
    if (actual < estimate) (void)refund(now, estimate - actual);
    else if (actual > estimate) return charge(now, actual - estimate);
    return true;
  }

  /// Lowers the unreserved tokens to at most `remaining` (what the upstream
  /// says is left); never raises them. `remaining` must be >= 0.
  void limit_remaining(fine_t now, double remaining) noexcept {
    now = observe(now);
    if (remaining >= limit_.capacity) return;
    const fine_t floor = now - fine_interval(remaining, limit_.rate) + queued_;
    if (tat_ >= floor) return;
    tat_ = floor;
    expire_overdue(finished_);
  }

  /// Returns `cost` to the bucket, never above capacity; waiters move up.
  /// Returns the amount actually credited. `cost` must be finite and >= 0.
  double refund(fine_t now, double cost) noexcept {
    now = observe(now);
    if (cost > limit_.capacity) cost = limit_.capacity;  // never more than a full bucket
    const fine_t iv = interval(cost);
    const fine_t credited = give_back(now, iv);
    return credited == iv ? cost : static_cast<double>(credited) / fine_per_unit_;
  }

  /// Unreserved tokens at `now`: what a try_acquire could take, in [0, capacity].
  /// Rounded down: `try_acquire(available())` always succeeds, and the full
  /// capacity is reported only when the bucket is exactly full.
  double available(fine_t now) noexcept {
    now = observe(now);
    if (now < paused_until_) return 0;
    return tokens_in(now - tat_, tau_, limit_, fine_per_unit_);
  }

  /// True when the bucket is indistinguishable from a new full one at `now`.
  bool is_fresh(fine_t now) noexcept {
    now = observe(now);
    return idle() && now >= paused_until_ && now - tat_ >= tau_;
  }

  std::size_t waiters() const noexcept { return pending_.size(); }

  /// True when no waiter is queued or granted-but-not-completed.
  bool idle() const noexcept { return pending_.empty() && ready_.empty() && finished_.empty(); }

  /// Replaces the paid-up-to instant (moving a bucket's state between
  /// representations). Only when idle.
  void set_tat(fine_t tat) noexcept { tat_ = tat; }

  /// Settles the tokens accrued so far under the old limit, then applies
  /// `limit` (already validated) and re-times the pending waiters in their
  /// order. A waiter whose cost now exceeds the capacity finishes `never`; one
  /// whose new due instant passes its deadline finishes `timed_out`. Finished
  /// waiters are appended to `finished` (complete them outside the lock).
  void reconfigure(fine_t now, const Limit& limit, WaiterList& finished) noexcept {
    now = observe(now);
    // Unreserved level (may be negative: a debt), capped at the old capacity.
    fine_t start = tat_ - queued_;
    if (start < now - tau_) start = now - tau_;
    const double tokens = static_cast<double>(now - start) / fine_per_unit_;
    apply(limit);
    // Round the new level down (a debt up): reconfiguring never creates tokens.
    start = now - floor_fine(tokens * fine_per_unit_);
    if (start < now - tau_) start = now - tau_;
    fine_t end = start;
    WaiterList old;
    old.splice_back(pending_);
    queued_ = 0;
    while (Waiter* w = old.pop_front()) {
      if (w->cost > limit_.capacity) {
        w->outcome = Status::never;
        w->reason = Reason::cost_exceeds_new_capacity;
      } else {
        const fine_t iv = interval(w->cost);
        if (end + iv > w->deadline || end + iv > horizon_) {
          w->outcome = Status::timed_out;
          w->reason = Reason::deadline_after_reconfiguration;
        } else {
          w->interval = iv;
          end += iv;
          queued_ += iv;
          pending_.push_back(*w);
          continue;
        }
      }
      w->place = WaiterPlace::none;
      finished.push_back(*w);
    }
    tat_ = end;
    observe(now);  // a faster rate may have made some waiters due already
  }

  /// Every pending and ready waiter, finished as `cancelled` (bucket teardown).
  void cancel_all(WaiterList& finished) noexcept {
    detail::cancel_all(pending_, ready_, finished);
    finished.splice_back(finished_);
  }

  // Introspection for tests and invariants.
  fine_t tat() const noexcept { return tat_; }
  fine_t tau() const noexcept { return tau_; }
  fine_t queued() const noexcept { return queued_; }
  double fine_per_unit() const noexcept { return fine_per_unit_; }

 private:
  [[gnu::noinline]] AcquireResult try_acquire_slow(fine_t now, double cost) noexcept {
    AcquireResult check = check_cost(cost, limit_.capacity);
    if (!check) return check;
    if (!pending_.empty()) now = observe(now);
    else if (now < last_now_) now = last_now_;
    else last_now_ = now;
    const fine_t iv = interval(cost);
    if (now < paused_until_) {
      const fine_t end = std::max(tat_, now - tau_) + iv;
      return AcquireResult::not_now(to_ns_ceil(std::max(end, paused_until_) - now));
    }
    fine_t base = tat_;
    if (base < now - tau_) base = now - tau_;
    const fine_t end = base + iv;
    if (end <= now + last_slack_ && pending_.empty()) {
      tat_ = end;
      return AcquireResult::acquired();
    }
    // With waiters queued, `tat_ > now` already includes them: the newcomer
    // would be served after all of them.
    return AcquireResult::not_now(to_ns_ceil(end - now));
  }

  void apply(const Limit& limit) noexcept {
    limit_ = limit;
    fine_per_unit_ = 1e9 * fine_per_ns_d / limit.rate;
    tau_ = fine_interval(limit.capacity, limit.rate);
    last_cost_ = std::numeric_limits<double>::quiet_NaN();  // invalidates the cache: NaN equals no cost
    set_max_debt(max_debt_);
  }

  // After the queue moved later (a pause, a charge, a lower remaining count):
  // every pending waiter whose due instant now passes its deadline leaves
  // the queue `timed_out` (later waiters move up, in token terms).
  void expire_overdue(WaiterList& finished) noexcept {
    fine_t due = tat_ - queued_;
    for (Waiter* w = pending_.front(); w;) {
      Waiter* next = w->next;
      due += w->interval;
      if (std::max(due, paused_until_) > w->deadline) {
        due -= w->interval;
        tat_ -= w->interval;
        queued_ -= w->interval;
        finish_overdue(pending_, *w, finished);
      }
      w = next;
    }
  }

  /// Moves `tat_` back by `iv`, keeping the unreserved level <= capacity.
  fine_t give_back(fine_t now, fine_t iv) noexcept {
    fine_t floor = now - tau_ + queued_;
    fine_t target = tat_ - iv;
    if (target < floor) target = floor;
    if (target > tat_) target = tat_;
    fine_t credited = tat_ - target;
    tat_ = target;
    observe(now);
    return credited;
  }

  // Hot fields first, in the order try_acquire reads them: one cache line.
  fine_t tat_ = 0;                   // paid-up-to instant, bucket-relative
  fine_t last_now_ = 0;              // largest `now` seen (time never runs backwards)
  fine_t paused_until_ = -fine_max;  // nothing admitted before this (upstream 429s)
  fine_t tau_ = 0;                   // refill time of a full bucket
  // Second line: the interval cache, the limit, the queue head.
  fine_t last_interval_ = 0;  // one-entry cache for interval()
  double last_cost_ = std::numeric_limits<double>::quiet_NaN();  // never a valid cost: equal to none
  std::int64_t last_slack_ = 0;  // the cached cost's rounding allowance
  WaiterList pending_;           // queued, not yet due, FIFO
  // Cold.
  Limit limit_;
  fine_t queued_ = 0;         // sum of the pending waiters' intervals
  double max_debt_ = -1;      // the most debt a charge may leave (< 0: one capacity)
  fine_t max_debt_iv_ = 0;    // ... as refill time
  WaiterList finished_;       // finished by the core itself, to be completed
  fine_t horizon_ = fine_from_ns(std::int64_t{1} << 62);
  double fine_per_unit_ = 0;  // fine units of refill time per cost unit
  WaiterList ready_;          // granted, not yet completed, FIFO
};

}  // namespace tollgate::detail
