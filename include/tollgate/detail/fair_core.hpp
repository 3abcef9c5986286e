#pragma once
// FairCore: the arithmetic and queues of a SharedLimitSet: one set of shared
// dimensions (the upstream's quota), each key's own capped dimensions (its
// tier's limits), and a queue per key, served in weighted fair order (or
// FIFO). No clock, no lock: the caller holds the lock.
//
// Accounting. Shared dimension d keeps `start[d]` and a key's capped
// dimension d keeps its own, as SetCore does (BucketStep's paid-up-to
// instants). A request is granted at one instant g, taking its cost from the
// shared dimensions and its key's capped ones together:
//
//     g = max(previous grant, pause end, max_d(start[d] + iv[d]), max_d(key_start[d] + kiv[d]))
//
// so both the shared set and every key are conformant at every grant
// instant, and nothing is held anywhere while a request waits: a waiter
// takes nothing until it is granted, so cancelling it (or refusing it) is
// exact by construction.
//
// Order. Every key with waiters has a FIFO queue. Between keys, start-time
// fair queueing (SFQ): a request gets the virtual start tag
// `max(V, key's last finish tag)` and finish tag `start + dominant / weight`,
// where `dominant` is the request's largest refill time over the shared
// dimensions (its dominant share of the upstream: dominant-resource
// fairness measured in refill time) and V is the start tag of the latest
// grant. The next grant goes to the head with the smallest start tag among
// the keys whose own limits would not delay it past the shared set's
// instant; when every head waits on its own key, to the one that can go
// earliest (work-conserving: the shared set never idles while some waiter
// could take it). With `fair == false` the order is arrival (FIFO).
//
// Costs: keys with waiters sit in two heaps: those whose head waits on the
// shared set (by tag) and those whose head waits on its own limits (by the
// instant they allow it), so a grant is O(log keys waiting). A newcomer's
// prediction is O(1) when its tag is the largest, else O(keys whose head
// tag is below its own + their waiters below it). Nothing is allocated per
// request but the queue node itself (the heaps and key records grow
// geometrically; running out of memory while queueing terminates).

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <optional>
#include <span>
#include <vector>

#include "../costs.hpp"
#include "../keyed_costs.hpp"
#include "../limit.hpp"
#include "../result.hpp"
#include "bucket_step.hpp"
#include "fine_time.hpp"
#include "hold.hpp"
#include "key_records.hpp"
#include "pos_heap.hpp"
#include "set_core.hpp"
#include "waiter.hpp"

namespace tollgate::detail {

/// A tier's weight and its per-key caps (a capped dimension has a limit).
struct FairTier {
  double weight = 1;
  std::array<BucketStep, max_dimensions> cap{};
  std::array<bool, max_dimensions> capped{};
};

/// A SharedLimitSet's queue node.
struct FairWaiter : Waiter {
  KeyedCosts request;
  std::array<fine_t, max_dimensions> iv{};   // refill times in the shared dimensions
  std::array<fine_t, max_dimensions> kiv{};  // ... and in its key's capped ones
  double stag = 0;                           // virtual start tag
  std::uint64_t seq = 0;                     // arrival order
  std::size_t heap_pos = not_in_heap;        // in the deadline heap, if it has a deadline
};

class FairCore {
 public:
  using cost_type = KeyedCosts;
  using waiter_type = FairWaiter;
  static constexpr std::uint32_t none = ~std::uint32_t{0};

  static void set_cost(FairWaiter& w, const KeyedCosts& c) noexcept { w.request = c; }
  static const KeyedCosts& cost_of(const FairWaiter& w) noexcept { return w.request; }
  static void check_amount(const char* who, const char* what, const KeyedCosts& v, const KeyedCosts* like = nullptr) {
    SetCore::check_amount(who, what, v.costs(), like ? &like->costs() : nullptr);
  }

  /// Limits and tiers must be valid (the public class checks them). Without
  /// `has_shared`, the dimensions are the keys' own only: `shared` gives
  /// their number, and nothing is shared between keys.
  /// Each key's record keeps `key_size` bytes (aligned to `key_align`) for
  /// the caller's key object (see `key_storage`).
  FairCore(std::span<const Limit> shared, std::vector<FairTier> tiers, bool fair, bool has_shared = true,
           std::size_t key_size = 0, std::size_t key_align = 1)
      : n_(shared.size()),
        shared_(has_shared),
        fair_(fair),
        tiers_(std::move(tiers)),
        keys_(shared.size(), key_size, key_align),
        open_(ByTag{fair}) {
    for (std::size_t d = 0; d < n_; ++d) {
      dims_[d].step.apply(shared[d]);
      dims_[d].start = -dims_[d].step.tau;
    }
  }

  std::size_t size() const noexcept { return n_; }
  const Limit& limit(std::size_t d) const noexcept { return dims_[d].step.limit; }
  void set_horizon(fine_t horizon) noexcept { horizon_ = horizon; }
  std::size_t tier_count() const noexcept { return tiers_.size(); }
  const FairTier& tier(std::size_t t) const noexcept { return tiers_[t]; }

  // ---- keys -----------------------------------------------------------

  /// A new key of tier `tier`, full at `now`. Its address never changes.
  KeySlot& new_slot(std::uint32_t tier, fine_t now) {
    KeySlot& k = keys_.make();
    k.tier = tier;
    k.active = none;
    k.finish = 0;
    for (std::size_t d = 0; d < n_; ++d) ks(k, d) = now - tiers_[tier].cap[d].tau;
    return k;
  }
  /// Gives a fresh key's record back (see `fresh`; its key object destroyed).
  void free_slot(KeySlot& k) noexcept { keys_.release(k); }
  /// Records made so far (ids 0 .. slot_count() - 1; see KeySlot::in_use).
  std::uint32_t slot_count() const noexcept { return keys_.count(); }
  KeySlot& slot(std::uint32_t id) noexcept { return keys_.at(id); }
  /// Where the caller keeps the key object of `k`.
  void* key_storage(KeySlot& k) const noexcept { return keys_.key(k); }
  /// Bytes per key record (slot, paid-up-to instants and key object).
  std::size_t bytes_per_slot() const noexcept { return keys_.stride(); }

  /// True when dropping `k` is unobservable: nothing refers to it, nothing
  /// waits on it, and each of its capped dimensions is full.
  bool fresh(const KeySlot& k, fine_t now) const noexcept {
    if (k.pins.load(std::memory_order_acquire) != 0 || k.active != none) return false;
    const FairTier& t = tiers_[k.tier];
    for (std::size_t d = 0; d < n_; ++d)
      if (t.capped[d] && !t.cap[d].full(ks(k, d), now)) return false;
    return true;
  }

  /// Unreserved tokens of key `k`'s capped dimension d (infinity when uncapped).
  double key_available(fine_t now, const KeySlot& k, std::size_t d) noexcept {
    now = grant_due(now);
    const FairTier& t = tiers_[k.tier];
    if (!t.capped[d]) return std::numeric_limits<double>::infinity();
    if (k.active != none) return 0;
    return t.cap[d].tokens(ks(k, d), now);
  }


  // ---- the waiting core (see WaitingBucket) -----------------------------

  /// `acquired` when `c` is usable; otherwise the failure, naming the dimension.
  AcquireResult check(const KeyedCosts& c) const noexcept {
    if (!c.key_) [[unlikely]] {
      switch (c.refusal_) {
        case KeyedCosts::Refusal::key_cap: return AcquireResult::failed(Status::rejected, Reason::key_cap_reached);
        case KeyedCosts::Refusal::key_too_long: return AcquireResult::failed(Status::invalid, Reason::key_too_long);
        case KeyedCosts::Refusal::none: break;
      }
      return AcquireResult::failed(Status::invalid, Reason::key_missing);
    }
    return check(*c.key_, c.costs_);
  }
  AcquireResult check(const KeySlot& k, const Costs& v) const noexcept {
    if (v.size() != n_) [[unlikely]]
      return AcquireResult::failed(Status::invalid, Reason::wrong_dimension_count, static_cast<double>(v.size()));
    const FairTier& t = tiers_[k.tier];
    for (std::size_t d = 0; d < n_; ++d) {
      const AcquireResult r =
          check_cost(v[d], shared_ ? dims_[d].step.limit.capacity : std::numeric_limits<double>::max());
      if (!r) [[unlikely]]
        return AcquireResult::failed(r.status(), r.reason_code(), v[d], static_cast<std::uint8_t>(d));
      if (t.capped[d] && v[d] > t.cap[d].limit.capacity) [[unlikely]]
        return AcquireResult::failed(Status::never, Reason::cost_exceeds_key_capacity, v[d],
                                     static_cast<std::uint8_t>(d));
    }
    return AcquireResult::acquired();
  }

  /// Clamps `now` to the latest instant seen, then, in time order, grants
  /// every waiter due by then and finishes those whose deadline passed.
  fine_t grant_due(fine_t now) noexcept {
    if (now < last_now_) now = last_now_;
    else last_now_ = now;
    if (pending_ == 0) [[likely]] {
      if (holds_.any()) [[unlikely]]
        holds_.expire(now);  // over by now: can delay nobody
      return now;  // nothing waits (and no deadline)
    }
    return grant_waiting(now);
  }
  [[gnu::noinline]] fine_t grant_waiting(fine_t now) noexcept {
    for (;;) {
      const Pick p = pick();
      FairWaiter* x = deadlines_.empty() ? nullptr : deadlines_.top();
      if (p.w && p.at <= now && (!x || p.at <= x->deadline)) {
        grant(*p.w, p.at);
      } else if (x && x->deadline < now && (!p.w || x->deadline < p.at)) {
        unqueue(*x);
        x->outcome = Status::timed_out;
        x->reason = Reason::wait_grew_past_max_wait;
        x->place = WaiterPlace::none;
        finished_.push_back(*x);
      } else {
        return now;
      }
    }
  }

  /// Takes `c` at `now` if nobody waits and the shared set and the key have it.
  AcquireResult try_acquire(fine_t now, const KeyedCosts& c) noexcept {
    if (!c.key_) [[unlikely]]
      return check(c);
    return try_acquire(now, *c.key_, c.costs_);
  }
  AcquireResult try_acquire(fine_t now, KeySlot& k, const Costs& c) noexcept {
    if (c.size() != n_) [[unlikely]]
      return check(k, c);
    now = grant_due(now);
    int taken = shared_ ? take_now<true>(now, k, c) : take_now<false>(now, k, c);
    if (taken > 0) [[likely]]
      return AcquireResult::acquired();
    if (taken < 0) return check(k, c);
    // It does not fit now (take_now has just made the same test): when would it?
    std::array<fine_t, max_dimensions> iv, kiv;
    intervals(c, k, iv, kiv);
    double stag;
    return AcquireResult::not_now(to_ns_ceil(predicted(now, k, c, iv, kiv, stag) - now));
  }

  /// Takes `c` if it fits now and nobody is ahead; false otherwise (then
  /// `admit` decides, and reports any error). Never computes a prediction.
  bool take_fast(fine_t now, const KeyedCosts& c) noexcept {
    if (!c.key_ || c.costs_.size() != n_) [[unlikely]]
      return false;
    now = grant_due(now);
    return (shared_ ? take_now<true>(now, *c.key_, c.costs_) : take_now<false>(now, *c.key_, c.costs_)) > 0;
  }

 private:
  // The common case in one pass: valid costs, nobody ahead, and every
  // dimension (shared and the key's own) has the tokens now: takes them (1).
  // 0: it does not fit now; -1: a cost is invalid (check says which).
  template <bool Shared>
  int take_now(fine_t now, KeySlot& k, const Costs& c) noexcept {
    FairTier& t = tiers_[k.tier];
    fine_t* starts = keys_.starts(k);
    std::array<fine_t, max_dimensions> send, kend;
    // Without shared dimensions `floor_` (the latest grant) is never after
    // `now` (the latest instant seen): one comparison less.
    bool fits = open_.empty() && k.active == none && now >= paused_until_ && (!Shared || now >= floor_);
    for (std::size_t d = 0; d < n_; ++d) {
      const double v = c[d];
      if constexpr (Shared) {
        BucketStep& x = dims_[d].step;
        if (!(v >= 0 && v <= x.limit.capacity)) [[unlikely]]
          return -1;
        send[d] = x.end_of(dims_[d].start, now, x.interval(v));
        fits = fits && x.admits(send[d], now);
      } else {
        if (!(v >= 0 && v <= std::numeric_limits<double>::max())) [[unlikely]]
          return -1;
      }
      if (t.capped[d]) {
        BucketStep& x = t.cap[d];
        if (!(v <= x.limit.capacity)) [[unlikely]]
          return -1;
        kend[d] = x.end_of(starts[d], now, x.interval(v));
        fits = fits && x.admits(kend[d], now);
      }
    }
    if (!fits) return 0;
    if constexpr (Shared) {
      if (holds_.any()) [[unlikely]] {
        if (holds_.earliest(now, c, holds_.budgets()) != now) return 0;
        holds_.spend(now, c);
      }
    }
    for (std::size_t d = 0; d < n_; ++d) {
      if constexpr (Shared) dims_[d].start = send[d];
      if (t.capped[d]) starts[d] = kend[d];
    }
    floor_ = now;
    return 1;
  }

 public:

  /// Takes at once, refuses (when the predicted wait exceeds `max_wait`), or
  /// queues `w` in its key's queue.
  Admission admit(fine_t now, FairWaiter& w, fine_t max_wait) noexcept {
    const AcquireResult chk = check(w.request);
    if (!chk) [[unlikely]]
      return {chk};
    now = grant_due(now);
    KeySlot& k = *w.request.key_;
    intervals(w.request.costs_, k, w.iv, w.kiv);
    if (grantable_now(now, k, w.request.costs_, w.iv, w.kiv)) {
      take(now, k, w.request.costs_, w.iv, w.kiv);
      return {AcquireResult::acquired()};
    }
    const fine_t due = predicted(now, k, w.request.costs_, w.iv, w.kiv, w.stag);
    if (due - now > max_wait) return {AcquireResult::not_now(to_ns_ceil(due - now))};
    if (due > horizon_) return {AcquireResult::failed(Status::invalid, Reason::wait_overflows_clock)};
    w.deadline = max_wait >= fine_max - now ? fine_max : now + max_wait;
    enqueue(k, w);
    grant_due(now);  // a newcomer whose key's head goes first is granted at once
    return {AcquireResult::acquired(), true, due};
  }

  /// A pending waiter leaves exactly (it held nothing); a granted one gives
  /// its cost back to the key and the shared set only when `abandon`.
  Removal remove(fine_t now, Waiter& base, bool abandon) noexcept {
    now = grant_due(now);
    auto& w = static_cast<FairWaiter&>(base);
    Removal r = Removal::not_queued;
    if (w.place == WaiterPlace::pending) {
      unqueue(w);
      w.place = WaiterPlace::none;
      r = Removal::removed;
    } else if (w.place == WaiterPlace::ready) {
      if (!abandon) return Removal::granted;
      ready_.remove(w);
      w.place = WaiterPlace::none;
      give_back(now, *w.request.key_, w.iv, w.kiv);
      key_changed(*w.request.key_);
      r = Removal::removed;
    }
    if (r == Removal::removed) {
      floor_ = std::max(floor_, now);
      grant_due(now);
    }
    return r;
  }

  void take_ready(WaiterList& out) noexcept {
    for (Waiter* w = ready_.front(); w; w = w->next) w->place = WaiterPlace::none;
    out.splice_back(ready_);
    out.splice_back(finished_);
  }

  fine_t next_wake() noexcept {
    if (!ready_.empty() || !finished_.empty()) return last_now_;
    if (pending_ == 0) return fine_max;
    fine_t want = pick().at;
    if (!deadlines_.empty()) want = std::min(want, ceil_ns(deadlines_.top()->deadline + 1) * fine_per_ns);
    return want;
  }

  /// Admits nothing before `until`; waiters keep their places.
  void pause_until(fine_t now, fine_t until, WaiterList&) noexcept {
    now = grant_due(now);
    if (until <= paused_until_) return;
    paused_until_ = until;
    floor_ = std::max(floor_, now);
  }

  /// Per dimension, in the shared set and in the key's capped dimensions:
  /// refunds `estimate - actual` (never above capacity) or charges
  /// `actual - estimate` (a debt of at most `max_debt`). False, changing
  /// nothing, when a debt would pass the clock's range.
  bool settle(fine_t now, const KeyedCosts& estimate, const KeyedCosts& actual) noexcept {
    now = grant_due(now);
    KeySlot* k = estimate.key_;
    const FairTier* t = k ? &tiers_[k->tier] : nullptr;
    const Costs& e = estimate.costs_;
    const Costs& a = actual.costs_;
    std::array<fine_t, max_dimensions> shared_end{}, key_end{};
    for (std::size_t d = 0; d < n_; ++d) {
      shared_end[d] = dims_[d].start;
      if (k) key_end[d] = ks(*k, d);
      if (!(a[d] > e[d])) continue;
      const Dim& x = dims_[d];
      if (shared_) shared_end[d] = x.step.charged(x.start, now, fine_interval(a[d] - e[d], x.step.limit.rate));
      if (t && t->capped[d])
        key_end[d] = t->cap[d].charged(ks(*k, d), now, fine_interval(a[d] - e[d], t->cap[d].limit.rate));
      if (shared_end[d] > horizon_ || key_end[d] > horizon_) return false;
    }
    for (std::size_t d = 0; d < n_; ++d) {
      if (a[d] > e[d]) {
        dims_[d].start = shared_end[d];
        if (shared_) holds_.adjust(now, d, a[d] - e[d]);
        if (k) ks(*k, d) = key_end[d];
      } else if (a[d] < e[d]) {
        const double back = e[d] - a[d];
        Dim& x = dims_[d];
        if (shared_) {
          x.start = x.step.given_back(x.start, now, fine_interval(std::min(back, x.step.limit.capacity), x.step.limit.rate));
          holds_.adjust(now, d, -back);
        }
        if (t && t->capped[d]) {
          const BucketStep& s = t->cap[d];
          ks(*k, d) = s.given_back(ks(*k, d), now, fine_interval(std::min(back, s.limit.capacity), s.limit.rate));
        }
      }
    }
    if (k) key_changed(*k);
    floor_ = std::max(floor_, now);
    grant_due(now);
    return true;
  }

  void set_max_debt(std::size_t d, double tokens) noexcept { dims_[d].step.set_max_debt(tokens); }
  double max_debt(std::size_t d) const noexcept { return dims_[d].step.max_debt_tokens(); }

  /// Lowers shared dimension d's unreserved tokens to at most `remaining`.
  void limit_remaining(fine_t now, std::size_t d, double remaining) noexcept {
    now = grant_due(now);
    Dim& x = dims_[d];
    x.start = x.step.lowered(x.start, now, remaining);
    floor_ = std::max(floor_, now);
  }
  /// ... and holds it there until `until` (see Holds).
  void hold(fine_t now, std::size_t d, double remaining, fine_t until, fine_t window = 0) noexcept {
    now = grant_due(now);  // waiters due by now are granted under the holds in effect
    if (!holds_.hold(now, d, remaining, ceil_ns(until) * fine_per_ns, ceil_ns(window) * fine_per_ns))
      return;  // an earlier window's count: the level stays too
    limit_remaining(now, d, remaining);
  }
  std::optional<fine_t> held_until(fine_t now, std::size_t d) noexcept {
    now = grant_due(now);
    if (!holds_.held(now, d)) return std::nullopt;
    return holds_.until(d);
  }

  /// Unreserved tokens of shared dimension d (0 while paused or while waiters are queued).
  double available(fine_t now, std::size_t d) noexcept {
    now = grant_due(now);
    if (!shared_) return std::numeric_limits<double>::infinity();
    if (now < paused_until_ || pending_ != 0) return 0;
    return holds_.cap(now, d, dims_[d].step.tokens(dims_[d].start, now));
  }

  // A queued waiter whose cost in dimension d a new capacity cannot hold:
  // leaves the queue, finished `never`.
  void outgrown(FairWaiter& w, std::size_t d, WaiterList& finished) noexcept {
    unqueue(w);
    w.place = WaiterPlace::none;
    w.outcome = Status::never;
    w.reason = Reason::cost_exceeds_new_capacity;
    w.dimension = static_cast<std::uint8_t>(d);
    w.cost = w.request.costs_[d];
    finished.push_back(w);
  }

  /// Replaces the tiers (a reloaded configuration); key `k` takes tier
  /// `tier_of(k)`. Each key's own limits are settled under its old caps and
  /// carried to its new ones (tokens never created; a dimension newly capped
  /// starts full, one no longer capped forgets its state); queued waiters are
  /// re-timed, and one whose cost now exceeds its key's capacity finishes
  /// `never`. New weights apply to requests queued from now on.
  template <class TierOf>
  void retier(fine_t now, std::vector<FairTier> tiers, TierOf&& tier_of, WaiterList& finished) noexcept {
    now = grant_due(now);
    for (std::uint32_t id = 0; id < keys_.count(); ++id) {
      KeySlot& k = keys_.at(id);
      if (!k.in_use) continue;
      const std::uint32_t t = tier_of(k);
      const FairTier& was = tiers_[k.tier];
      const FairTier& is = tiers[t];
      for (std::size_t d = 0; d < n_; ++d) {
        if (!is.capped[d]) continue;
        if (was.capped[d]) {
          BucketStep step = was.cap[d];
          ks(k, d) = step.reconfigure(ks(k, d), now, is.cap[d].limit);
        } else {
          ks(k, d) = now - is.cap[d].tau;
        }
      }
      k.tier = t;
    }
    tiers_ = std::move(tiers);
    floor_ = std::max(floor_, now);
    for (Active& a : records_) {
      if (!a.key) continue;
      FairTier& t = tiers_[a.key->tier];
      for (Waiter* p = a.q.front(); p;) {
        auto& w = static_cast<FairWaiter&>(*p);
        p = p->next;  // before unqueue: the record may be freed with its last waiter
        std::size_t over = n_;
        for (std::size_t d = 0; d < n_ && over == n_; ++d)
          if (t.capped[d] && w.request.costs_[d] > t.cap[d].limit.capacity) over = d;
        if (over < n_) {
          outgrown(w, over, finished);
          continue;
        }
        for (std::size_t d = 0; d < n_; ++d) {
          a.ktotal[d] -= w.kiv[d];
          w.kiv[d] = t.capped[d] ? t.cap[d].interval(w.request.costs_[d]) : 0;
          a.ktotal[d] += w.kiv[d];
        }
      }
      if (a.key) refresh(a);
    }
    grant_due(now);
  }

  /// Changes shared dimension d's limit (tokens settled first, never
  /// created); a waiter whose cost in d now exceeds the capacity finishes `never`.
  void reconfigure(fine_t now, std::size_t d, const Limit& limit, WaiterList& finished) noexcept {
    now = grant_due(now);
    Dim& x = dims_[d];
    x.start = x.step.reconfigure(x.start, now, limit);
    floor_ = std::max(floor_, now);
    for (Active& a : records_) {
      for (Waiter* p = a.key ? a.q.front() : nullptr; p;) {
        auto& w = static_cast<FairWaiter&>(*p);
        p = p->next;  // before unqueue: the record may be freed with its last waiter
        if (w.request.costs_[d] > limit.capacity) {
          outgrown(w, d, finished);
          continue;
        }
        a.stotal[d] -= w.iv[d];
        if (!a.blocked) open_total_[d] -= w.iv[d];
        w.iv[d] = x.step.interval(w.request.costs_[d]);
        a.stotal[d] += w.iv[d];
        if (!a.blocked) open_total_[d] += w.iv[d];
      }
    }
    grant_due(now);
  }

  bool idle() const noexcept { return pending_ == 0 && ready_.empty() && finished_.empty(); }
  std::size_t waiters() const noexcept { return pending_; }

  /// Teardown: pending waiters finish `cancelled`, granted ones keep `acquired`.
  void cancel_all(WaiterList& out) noexcept {
    while (!open_.empty() || !blocked_.empty()) {
      Active& a = open_.empty() ? *blocked_.top() : *open_.top();
      auto& w = head(a);
      unqueue(w);
      w.outcome = Status::cancelled;
      w.reason = Reason::bucket_destroyed;
      w.place = WaiterPlace::none;
      out.push_back(w);
    }
    for (Waiter* w = ready_.front(); w; w = w->next) w->place = WaiterPlace::none;
    out.splice_back(ready_);
    out.splice_back(finished_);
  }

 private:
  struct Dim {
    BucketStep step;
    fine_t start = 0;
  };
  // The queue of a key with waiters, and its waiters' total refill times.
  struct Active {
    KeySlot* key = nullptr;  // null: a free record (`next_free` links them)
    WaiterList q;
    std::array<fine_t, max_dimensions> stotal{};  // shared dimensions
    std::array<fine_t, max_dimensions> ktotal{};  // the key's capped ones
    fine_t kr = -fine_max;                        // when the key's own limits allow its head
    std::size_t heap_pos = not_in_heap;
    bool blocked = false;  // in `blocked_` (waiting on its own limits), else in `open_`
    std::uint32_t next_free = none;
  };
  static FairWaiter& head(const Active& a) noexcept { return static_cast<FairWaiter&>(*a.q.front()); }
  static bool before(const FairWaiter& a, const FairWaiter& b, bool fair) noexcept {
    if (fair && a.stag != b.stag) return a.stag < b.stag;
    return a.seq < b.seq;
  }
  struct ByTag {
    bool fair;
    bool operator()(const Active& a, const Active& b) const noexcept { return before(head(a), head(b), fair); }
  };
  struct ByKeyReady {
    bool operator()(const Active& a, const Active& b) const noexcept { return a.kr < b.kr; }
  };
  struct ByDeadline {
    bool operator()(const FairWaiter& a, const FairWaiter& b) const noexcept { return a.deadline < b.deadline; }
  };
  struct Pick {
    FairWaiter* w = nullptr;
    fine_t at = fine_max;
  };

  fine_t& ks(const KeySlot& k, std::size_t d) noexcept { return keys_.starts(k)[d]; }
  fine_t ks(const KeySlot& k, std::size_t d) const noexcept { return keys_.starts(k)[d]; }

  void intervals(const Costs& c, const KeySlot& k, std::array<fine_t, max_dimensions>& iv,
                 std::array<fine_t, max_dimensions>& kiv) noexcept {
    FairTier& t = tiers_[k.tier];
    for (std::size_t d = 0; d < n_; ++d) {
      iv[d] = shared_ ? dims_[d].step.interval(c[d]) : 0;
      kiv[d] = t.capped[d] ? t.cap[d].interval(c[d]) : 0;
    }
  }

  // Nobody waits, nothing is paused, and the shared set and the key have the
  // cost now (within the rounding allowance of the costs `intervals` cached).
  bool grantable_now(fine_t now, const KeySlot& k, const Costs& c, const std::array<fine_t, max_dimensions>& iv,
                     const std::array<fine_t, max_dimensions>& kiv) const noexcept {
    // Nobody ahead: no key waiting on the shared set, none of its own waiting.
    if (!open_.empty() || k.active != none || now < paused_until_ || now < floor_) return false;
    const FairTier& t = tiers_[k.tier];
    for (std::size_t d = 0; d < n_; ++d) {
      if (shared_ && !dims_[d].step.admits(dims_[d].step.end_of(dims_[d].start, now, iv[d]), now)) return false;
      if (t.capped[d] && !t.cap[d].admits(t.cap[d].end_of(ks(k, d), now, kiv[d]), now)) return false;
    }
    return !holds_.any() || holds_.earliest(now, c, holds_.budgets()) == now;
  }

  // Pays for a grant at `g` in the shared set and in the key.
  void take(fine_t g, KeySlot& k, const Costs& c, const std::array<fine_t, max_dimensions>& iv,
            const std::array<fine_t, max_dimensions>& kiv) noexcept {
    const FairTier& t = tiers_[k.tier];
    if (holds_.any()) holds_.spend(g, c);
    for (std::size_t d = 0; d < n_; ++d) {
      if (shared_) dims_[d].start = dims_[d].step.end_of(dims_[d].start, g, iv[d]);
      if (t.capped[d]) ks(k, d) = t.cap[d].end_of(ks(k, d), g, kiv[d]);
    }
    floor_ = g;
  }

  void give_back(fine_t now, KeySlot& k, const std::array<fine_t, max_dimensions>& iv,
                 const std::array<fine_t, max_dimensions>& kiv) noexcept {
    const FairTier& t = tiers_[k.tier];
    for (std::size_t d = 0; d < n_; ++d) {
      if (shared_) dims_[d].start = dims_[d].step.given_back(dims_[d].start, now, iv[d]);
      if (t.capped[d]) ks(k, d) = t.cap[d].given_back(ks(k, d), now, kiv[d]);
    }
  }

  // When the key's own limits allow its head `h`, and when the shared set does.
  fine_t key_ready(const KeySlot& k, const FairWaiter& h) const noexcept {
    const FairTier& t = tiers_[k.tier];
    fine_t r = -fine_max;
    for (std::size_t d = 0; d < n_; ++d)
      if (t.capped[d]) r = std::max(r, ks(k, d) + h.kiv[d]);
    return r;
  }
  fine_t shared_ready(const FairWaiter& h) const noexcept {
    fine_t r = std::max(floor_, paused_until_);
    if (shared_)
      for (std::size_t d = 0; d < n_; ++d) r = std::max(r, dims_[d].start + h.iv[d]);
    if (holds_.any()) r = holds_.earliest(r, h.request.costs_, holds_.budgets());
    return r;
  }

  static fine_t grid(fine_t t) noexcept { return ceil_ns(t) * fine_per_ns; }

  // The next grant: the head with the smallest tag among the keys whose own
  // limits would not delay it past the instant the shared set would serve
  // it (or serve the best candidate so far); when every key waits on its own
  // limits, the one they release first. A key whose own limits are the later
  // constraint moves to `blocked_` until the grants reach its instant; so a
  // grant moves each key at most twice: O(log keys waiting).
  Pick pick() noexcept {
    fine_t threshold = std::max(floor_, paused_until_);
    for (;;) {
      if (open_.empty()) {
        if (blocked_.empty()) return {};
        Active& b = *blocked_.top();
        if (b.kr <= threshold) {
          unblock(b);
          continue;
        }
        return {&head(b), grid(std::max(b.kr, shared_ready(head(b))))};
      }
      Active& a = *open_.top();
      const fine_t sr = shared_ready(head(a));
      if (a.kr > std::max(sr, threshold)) {
        block(a);
        continue;
      }
      threshold = std::max(threshold, sr);
      if (!blocked_.empty() && blocked_.top()->kr <= threshold) {  // may have a smaller tag
        unblock(*blocked_.top());
        continue;
      }
      return {&head(a), grid(std::max(a.kr, sr))};
    }
  }

  void block(Active& a) noexcept {
    open_.erase(a);
    for (std::size_t d = 0; d < n_; ++d) open_total_[d] -= a.stotal[d];
    a.blocked = true;
    blocked_.push(a);
  }
  void unblock(Active& a) noexcept {
    blocked_.erase(a);
    a.blocked = false;
    open(a);
  }
  void open(Active& a) noexcept {
    open_.push(a);
    for (std::size_t d = 0; d < n_; ++d) open_total_[d] += a.stotal[d];
  }
  // The key's head or its own state changed: its release instant and its place.
  void refresh(Active& a) noexcept {
    a.kr = key_ready(*a.key, head(a));
    if (a.blocked) blocked_.fix(a);
    else open_.fix(a);
  }
  void key_changed(KeySlot& k) noexcept {
    if (k.active != none) refresh(records_[k.active]);
  }

  // A waiter is granted at `g`: pays, leaves its key's queue for `ready_`.
  void grant(FairWaiter& w, fine_t g) noexcept {
    take(g, *w.request.key_, w.request.costs_, w.iv, w.kiv);
    if (w.stag > vtime_) vtime_ = w.stag;
    unqueue(w, true);
    w.place = WaiterPlace::ready;
    w.outcome = Status::acquired;
    ready_.push_back(w);
  }

  // The instant a newcomer (refill times iv, kiv) of key `k` would be granted
  // if nothing else arrived, counting ahead of it the waiters with a smaller
  // tag of every key whose head waits on the shared set (a key waiting on its
  // own limits is passed over, so its waiters are not counted); sets its tag.
  // A hold the newcomer overruns already delays it (waiters ahead only spend more of it).
  fine_t predicted(fine_t now, const KeySlot& k, const Costs& c, const std::array<fine_t, max_dimensions>& iv,
                   const std::array<fine_t, max_dimensions>& kiv, double& stag) const noexcept {
    stag = fair_ ? std::max(vtime_, k.finish) : 0;
    std::array<fine_t, max_dimensions> ahead{};
    if (!fair_ || stag >= max_stag_) ahead = open_total_;
    else add_ahead(0, stag, ahead);
    if (k.active != none && records_[k.active].blocked)  // its own queue is ahead of it anyway
      for (std::size_t d = 0; d < n_; ++d) ahead[d] += records_[k.active].stotal[d];
    fine_t g = std::max({floor_, paused_until_, now});
    if (shared_)
      for (std::size_t d = 0; d < n_; ++d) g = std::max(g, dims_[d].step.end_of(dims_[d].start, now, ahead[d] + iv[d]));
    const FairTier& t = tiers_[k.tier];
    for (std::size_t d = 0; d < n_; ++d) {
      if (!t.capped[d]) continue;
      const fine_t queued = k.active != none ? records_[k.active].ktotal[d] : 0;
      g = std::max(g, t.cap[d].end_of(ks(k, d), now, queued + kiv[d]));
    }
    if (holds_.any()) g = holds_.earliest(g, c, holds_.budgets());
    return ceil_ns(g) * fine_per_ns;
  }

  // Adds the refill times of the waiters tagged at most `stag` of the open
  // keys in the subtree of open_[i] (a heap: a head above `stag` prunes it).
  void add_ahead(std::size_t i, double stag, std::array<fine_t, max_dimensions>& ahead) const noexcept {
    if (i >= open_.size()) return;
    const Active& a = *open_[i];
    if (head(a).stag > stag) return;
    for (const Waiter* p = a.q.front(); p; p = p->next) {
      const auto& x = static_cast<const FairWaiter&>(*p);
      if (x.stag > stag) break;
      for (std::size_t d = 0; d < n_; ++d) ahead[d] += x.iv[d];
    }
    add_ahead(2 * i + 1, stag, ahead);
    add_ahead(2 * i + 2, stag, ahead);
  }

  void enqueue(KeySlot& k, FairWaiter& w) noexcept {
    w.seq = ++seq_;
    if (fair_) {
      fine_t dominant = 0;
      for (std::size_t d = 0; d < n_; ++d) dominant = std::max(dominant, w.iv[d]);
      k.finish = w.stag + static_cast<double>(dominant) / (fine_per_ns_d * 1e9) / tiers_[k.tier].weight;
      max_finish_ = std::max(max_finish_, k.finish);
      max_stag_ = std::max(max_stag_, w.stag);
    }
    w.place = WaiterPlace::pending;
    ++pending_;
    if (w.deadline != fine_max) deadlines_.push(w);
    if (k.active == none) {
      Active& a = new_record(k);
      a.q.push_back(w);
      for (std::size_t d = 0; d < n_; ++d) {
        a.stotal[d] = w.iv[d];
        a.ktotal[d] = w.kiv[d];
      }
      a.kr = key_ready(k, w);
      a.blocked = false;
      open(a);
      return;
    }
    Active& a = records_[k.active];
    a.q.push_back(w);
    for (std::size_t d = 0; d < n_; ++d) {
      a.stotal[d] += w.iv[d];
      a.ktotal[d] += w.kiv[d];
      if (!a.blocked) open_total_[d] += w.iv[d];
    }
  }

  // Takes a pending waiter out of its key's queue and the deadline heap.
  // One that leaves unserved (cancelled, timed out) and was its key's latest
  // takes its tag back with it: the key's next request starts where it did.
  void unqueue(FairWaiter& w, bool served = false) noexcept {
    KeySlot& k = *w.request.key_;
    Active& a = records_[k.active];
    const bool was_head = a.q.front() == &w;
    if (fair_ && !served && a.q.back() == &w) k.finish = w.stag;
    a.q.remove(w);
    for (std::size_t d = 0; d < n_; ++d) {
      a.stotal[d] -= w.iv[d];
      a.ktotal[d] -= w.kiv[d];
      if (!a.blocked) open_total_[d] -= w.iv[d];
    }
    if (w.heap_pos != not_in_heap) deadlines_.erase(w);
    --pending_;
    if (a.q.empty()) free_record(a);
    else if (was_head) refresh(a);
    if (pending_ == 0) {  // idle: past service is forgiven
      if (max_finish_ > vtime_) vtime_ = max_finish_;
      max_stag_ = -1;
    }
  }

  // A key's queue record: allocated when it first has a waiter, recycled
  // when its last one leaves (records never move: the heaps point at them).
  Active& new_record(KeySlot& k) noexcept {
    std::uint32_t i = free_record_;
    if (i != none) {
      free_record_ = records_[i].next_free;
    } else {
      i = static_cast<std::uint32_t>(records_.size());
      records_.emplace_back();  // running out of memory here terminates (see the top)
    }
    Active& a = records_[i];
    a.key = &k;
    k.active = i;
    return a;
  }
  void free_record(Active& a) noexcept {
    if (a.blocked) blocked_.erase(a);
    else open_.erase(a);  // its totals are already zero
    const std::uint32_t i = a.key->active;
    a.key->active = none;
    a.key = nullptr;
    a.next_free = free_record_;
    free_record_ = i;
  }

  std::array<Dim, max_dimensions> dims_{};
  std::size_t n_;
  bool shared_;  // false: keys' own limits only
  Holds holds_;  // shared dimensions held at a provider's remaining count
  bool fair_;
  std::vector<FairTier> tiers_;
  KeyRecords keys_;  // every key's record
  std::deque<Active> records_;  // queue records of keys with waiters (and free ones)
  std::uint32_t free_record_ = none;
  PosHeap<Active, ByTag> open_;                   // keys whose head waits on the shared set
  PosHeap<Active, ByKeyReady> blocked_;           // keys whose head waits on its own limits
  PosHeap<FairWaiter, ByDeadline> deadlines_;     // waiters with a finite max_wait
  std::array<fine_t, max_dimensions> open_total_{};  // the open keys' `stotal`, summed
  WaiterList ready_;
  WaiterList finished_;
  std::size_t pending_ = 0;
  std::uint64_t seq_ = 0;
  double vtime_ = 0;       // virtual time: the start tag of the latest grant
  double max_finish_ = 0;  // the largest finish tag given
  double max_stag_ = -1;   // at least every pending waiter's start tag
  fine_t last_now_ = 0;
  fine_t paused_until_ = -fine_max;
  fine_t floor_ = -fine_max;
  fine_t horizon_ = fine_from_ns(std::int64_t{1} << 62);
};

}  // namespace tollgate::detail
