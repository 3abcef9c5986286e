#pragma once
// WaitingBucket<Core, Clock, Mutex>: the clock, lock, timer and waiting
// front-ends (awaitable, blocking) shared by TokenBucket (one dimension) and
// LimitSet (several). The Core holds the arithmetic and the FIFO queue as pure
// functions of an explicit `now`; this class reads the clock, takes the lock,
// keeps one timer armed for the queue head, and completes waiters outside the lock.
//
// A Core provides: `cost_type`, `waiter_type` (derived from Waiter) with
// `static void set_cost(waiter_type&, const cost_type&)`, and `take_fast`
// (takes the cost if it can cheaply, else changes nothing), `try_acquire`,
// `admit`, `remove`, `grant_due`, `take_ready`, `next_wake`, `pause_until`,
// `cancel_all`, `waiters`, `set_horizon`, with BucketCore's meanings.

#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <coroutine>
#include <limits>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include "../stop_token.hpp"
#include <type_traits>
#include <utility>

#include "../listener.hpp"
#include "../mutex_traits.hpp"
#include "../permit.hpp"
#include "../result.hpp"
#include "../scheduler.hpp"
#include "../timer_thread_scheduler.hpp"
#include "bucket_core.hpp"
#include "bucket_gate.hpp"
#include "fine_time.hpp"
#include "waiter.hpp"

namespace tollgate {
template <class Bucket>
class AcquireOperation;
template <class Bucket>
class PermitOperation;
template <class Bucket>
class Reservation;
}  // namespace tollgate

namespace tollgate::detail {

struct WaitAccess;

/// The lock-free gate a bucket of `Core` guarded by `Mutex` gets.
template <class Core, class Mutex>
struct gate_for {
  using type = NoGate;
};
#if TOLLGATE_HAS_ATOMIC128
template <class Mutex>
  requires(lock_free_admission_v<Mutex>())
struct gate_for<BucketCore, Mutex> {
  using type = BucketGate;
};
#endif

template <class Core, class Clock, class Mutex>
class WaitingBucket : public PermitIssuer<typename Core::cost_type> {
  static_assert(!std::chrono::treat_as_floating_point_v<typename Clock::rep>,
                "tollgate: Clock must have an integral representation");

 public:
  using clock_type = Clock;
  using mutex_type = Mutex;
  using time_point = typename Clock::time_point;
  using duration = typename Clock::duration;
  using scheduler_type = Scheduler<Clock>;
  using cost_type = typename Core::cost_type;
  using core_type = Core;
  using waiter_type = typename Core::waiter_type;
  using gate_type = typename gate_for<Core, Mutex>::type;

  WaitingBucket(const WaitingBucket&) = delete;
  WaitingBucket& operator=(const WaitingBucket&) = delete;

  /// Admits nothing before `until`: what an upstream 429 with a Retry-After
  /// asks for. Suspended waiters keep their order and wake from then on;
  /// `try_acquire` answers `not_now` with the remaining pause; tokens keep
  /// accruing up to capacity. A pause is only extended, never shortened. An
  /// `acquire_for` waiter whose `max_wait` the pause overruns finishes
  /// `timed_out` at once.
  void pause_until(time_point until) {
    // Clamp to the clock's range first: rel() of a far instant could overflow.
    pause(until >= horizon_tp_ ? kFar : rel(until), false);
  }

  /// `pause_until(now + d)`; a negative, zero or NaN `d` does nothing.
  template <class Rep, class Period>
  void pause_for(std::chrono::duration<Rep, Period> d) {
    const fine_t f = to_fine(d);
    if (f > 0) pause(std::min(f, kFar), true);
  }

  /// Sets the listener that receives this bucket's events (see Listener);
  /// nullptr removes it. Without one, an event costs one load and a branch.
  void set_listener(Listener<cost_type>* listener) noexcept { listener_.store(listener, std::memory_order_release); }
  /// The listener set, if any.
  Listener<cost_type>* listener() const noexcept { return listener_.load(std::memory_order_acquire); }

  /// How many waiters are queued and not yet due.
  std::size_t waiters() const {
    std::lock_guard lock(mutex_);
    return core_.waiters();
  }

  const Clock& clock() const noexcept { return clock_; }

 protected:
  template <class... CoreArgs>
  explicit WaitingBucket(Clock clock, scheduler_type* scheduler, CoreArgs&&... core_args)
      : PermitIssuer<cost_type>(kSettling),
        clock_(std::move(clock)),
        scheduler_(scheduler),
        core_(std::forward<CoreArgs>(core_args)...) {
    origin_ = clock_.now();
    core_.set_horizon(horizon_of(origin_));
    horizon_tp_ = at(horizon_of(origin_));
    timer_.fire = &WaitingBucket::fire_thunk;
    timer_.context = this;
    gate_.open(core_);
  }

  /// Completes every remaining waiter with `cancelled` (or `acquired`, for one
  /// already granted).
  ~WaitingBucket() {
    if (scheduler_type* s = timer_owner_) s->disarm(timer_);
    mutex_traits<Mutex>::before_teardown(mutex_);
    WaiterList done;
    {
      std::lock_guard lock(mutex_);
      core_.cancel_all(done);
    }
    complete_all(done);
  }

  template <class>
  friend class ::tollgate::AcquireOperation;
  template <class>
  friend class ::tollgate::PermitOperation;
  template <class>
  friend class ::tollgate::Reservation;
  friend struct WaitAccess;

  using Issuer = PermitIssuer<cost_type>;
  static constexpr typename Issuer::Settling kSettling{
      [](const Issuer&, const cost_type& estimate, const cost_type& actual) {
        Core::check_amount("Permit::settle", "actual", actual, &estimate);
      },
      [](Issuer& self, const cost_type& estimate, const cost_type& actual) {
        static_cast<WaitingBucket&>(self).settle(estimate, actual);
      }};

  // Refunds the surplus of `actual` over `estimate`, or charges the overrun.
  void settle(const cost_type& estimate, const cost_type& actual) {
    mutate([&](Core& core, fine_t t, WaiterList&) {
      if (!core.settle(t, estimate, actual)) throw std::overflow_error("Permit::settle: debt beyond the clock's range");
    });
  }

  /// The blocking front-end: waits on a condition variable for the scheduler.
  AcquireResult block(const cost_type& cost, fine_t max_wait, ::tollgate::stop_token stop) {
    struct Blocking : Core::waiter_type {
      std::mutex m;
      std::condition_variable cv;
      bool done = false;
    } w;
    if (stop.stop_requested()) return cancelled_result();
    Core::set_cost(w, cost);
    w.on_complete = [](Waiter* p) noexcept {
      auto* b = static_cast<Blocking*>(p);
      std::lock_guard l(b->m);
      b->done = true;
      b->cv.notify_one();
    };
    bool queued = false;
    const AcquireResult r = take_or_queue(cost, max_wait, [&]() -> typename Core::waiter_type& { return w; }, queued);
    if (!queued) return r;
    {
      ::tollgate::stop_callback on_stop(stop, [&] { cancel(w); });
      std::unique_lock l(w.m);
      w.cv.wait(l, [&] { return w.done; });
    }
    return result_of(w);
  }

  // Runs `f(core, now, finished)` under the lock, then re-arms the timer and
  // completes (outside the lock) every waiter it appended to `finished` and
  // every waiter the core granted, in that order.
  template <class F>
  decltype(auto) mutate(F&& f) {
    return mutate_at(rel(clock_.now()), std::forward<F>(f));
  }
  // `mutate` at an explicit bucket-relative instant `t`.
  template <class F>
  decltype(auto) mutate_at(fine_t t, F&& f) {
    WaiterList finished;
    struct Completer {
      const WaitingBucket& self;
      WaiterList& list;
      fine_t t;
      ~Completer() { self.finish_all(list, t); }
    } completer{*this, finished, t};
    std::lock_guard lock(mutex_);
    gate_.close(core_);
    // `finished` outlives the lock guard: waiters complete after it unlocks.
    struct Sync {
      WaitingBucket& self;
      WaiterList& list;
      ~Sync() {
        self.core_.take_ready(list);
        self.sync_timer();
        self.gate_.open(self.core_);
      }
    } sync{*this, finished};
    return std::forward<F>(f)(core_, t, finished);
  }

  // Farther than any instant a bucket can reach, with room to add a `now`.
  static constexpr fine_t kFar = fine_max / 4;

  // A pause until `v` (bucket-relative), or for `v` from now if `relative`.
  void pause(fine_t v, bool relative) {
    fine_t from = 0;
    mutate([&](Core& core, fine_t t, WaiterList& finished) {
      from = t;
      core.pause_until(t, relative ? t + v : v, finished);
    });
    if (Listener<cost_type>* l = listener()) [[unlikely]] {
      const fine_t len = relative ? v : v - from;
      l->on_event(BucketEvent<cost_type>{BucketEventKind::paused, nullptr, AcquireResult::acquired(),
                                         std::chrono::nanoseconds(len > 0 ? ns_of(len) : 0)});
    }
  }

  // Whole ns of a non-negative fine duration, rounded up, saturated.
  static std::int64_t ns_of(fine_t d) noexcept {
    const fine_t ns = ceil_ns(d);
    return ns > fine_t(std::numeric_limits<std::int64_t>::max()) ? std::numeric_limits<std::int64_t>::max()
                                                                   : static_cast<std::int64_t>(ns);
  }

  // Reports a decision made at once (admitted or refused) to the listener,
  // if any, and returns it.
  [[gnu::always_inline]] AcquireResult told(const cost_type& cost, AcquireResult r) const noexcept {
    if (Listener<cost_type>* l = listener_.load(std::memory_order_acquire)) [[unlikely]]
      tell(*l, cost, r);
    return r;
  }
  [[gnu::noinline]] static void tell(Listener<cost_type>& l, const cost_type& cost, const AcquireResult& r) noexcept {
    l.on_event(BucketEvent<cost_type>{r.ok() ? BucketEventKind::admitted : BucketEventKind::refused, &cost, r});
  }

  // Completes `list` (with no lock held), first reporting each waiter to the
  // listener, if any: granted (waited), cancelled, or refused (timed out).
  void finish_all(WaiterList& list, fine_t t) const noexcept {
    if (!list.empty())
      if (Listener<cost_type>* l = listener_.load(std::memory_order_acquire)) [[unlikely]]
        tell_finished(*l, list, t);
    complete_all(list);
  }
  [[gnu::noinline]] static void tell_finished(Listener<cost_type>& l, const WaiterList& list, fine_t t) noexcept {
    for (const Waiter* w = list.front(); w; w = w->next) {
      const BucketEventKind kind = w->outcome == Status::acquired    ? BucketEventKind::waited
                                   : w->outcome == Status::cancelled ? BucketEventKind::cancelled
                                                                     : BucketEventKind::refused;
      const fine_t in_queue = t - w->queued_at;
      l.on_event(BucketEvent<cost_type>{kind, &Core::cost_of(static_cast<const waiter_type&>(*w)), waiter_result(*w),
                                        std::chrono::nanoseconds(in_queue > 0 ? ns_of(in_queue) : 0)});
    }
  }

  static AcquireResult cancelled_result() noexcept {
    return AcquireResult::failed(Status::cancelled, Reason::stop_requested);
  }

  template <class Rep, class Period>
  static fine_t to_fine(std::chrono::duration<Rep, Period> d) noexcept {
    using ns = std::chrono::nanoseconds;
    if (!(d > std::chrono::duration<Rep, Period>::zero())) return 0;  // also NaN: waits nothing
    if (d >= std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(ns::max())) return fine_max;
    return fine_from_ns(std::chrono::ceil<ns>(d).count());
  }

  static fine_t horizon_of(time_point origin) noexcept {
    using ns = std::chrono::nanoseconds;
    if (origin.time_since_epoch() < duration::zero()) return fine_from_ns(ns::max().count());
    const duration room = time_point::max() - origin;
    if (room >= std::chrono::duration_cast<duration>(ns::max())) return fine_from_ns(ns::max().count());
    return fine_from_ns(std::chrono::floor<ns>(room).count());
  }

  fine_t rel(time_point now) const noexcept {
    return fine_from_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(now - origin_).count());
  }

  time_point at(fine_t t) const noexcept {
    return origin_ +
           std::chrono::ceil<duration>(std::chrono::nanoseconds(static_cast<std::int64_t>(ceil_ns(t))));
  }

  scheduler_type* scheduler() noexcept {
    if (scheduler_) return scheduler_;
    if constexpr (Clock::is_steady)  // a real monotonic clock: a background timer thread
      return scheduler_ = &TimerThreadScheduler<Clock>::shared();
    return nullptr;
  }

  // Every waiting front-end starts here: takes `cost` at once, fails for
  // good, or queues the node `make_node()` returns (called only when the
  // core's fast path could not take the cost, so an awaiter that needs no
  // wait builds no node), under one lock acquisition. Sets `queued` (left
  // false otherwise) when the node joined the queue; the result is then
  // unused. Only the fast path is inline (the result travels in registers).
  template <class MakeNode>
  [[gnu::always_inline]] AcquireResult take_or_queue(const cost_type& cost, fine_t max_wait, MakeNode make_node,
                                                     bool& queued, fine_t* due = nullptr) {
    const fine_t t = rel(clock_.now());
    if (due) *due = t;
    if constexpr (gate_type::enabled) {
      fine_t wait;
      if (gate_.try_take(t, cost, wait) == FastOutcome::taken) [[likely]]
        return told(cost, AcquireResult::acquired());
    }
    if (mutex_traits<Mutex>::try_enter_fast(mutex_)) {
      const bool taken = core_.take_fast(t, cost);
      mutex_traits<Mutex>::leave_fast(mutex_);
      if (taken) [[likely]]
        return told(cost, AcquireResult::acquired());
    }
    std::unique_lock lock(mutex_);
    gate_.close(core_);  // begin_locked reopens it before it unlocks (closed is always safe)
    if (core_.take_fast(t, cost)) [[likely]] {
      gate_.open(core_);
      lock.unlock();
      return told(cost, AcquireResult::acquired());
    }
    return begin_locked(lock, t, cost, max_wait, make_node, queued, due);
  }

  // The rest of `take_or_queue`, with the lock held; releases it.
  template <class MakeNode>
  [[gnu::noinline]] AcquireResult begin_locked(std::unique_lock<Mutex>& lock, fine_t t, const cost_type& cost,
                                               fine_t max_wait, MakeNode& make_node, bool& queued, fine_t* due) {
    if (scheduler() == nullptr) {
      const AcquireResult r = core_.try_acquire(t, cost);
      gate_.open(core_);
      lock.unlock();
      if (r.status() != Status::not_now) return told(cost, r);
      return told(cost, AcquireResult::failed(Status::invalid, Reason::no_scheduler));
    }
    // admit() decides everything else (it takes, refuses or queues), so the
    // node is built whenever the fast path did not take the cost.
    waiter_type& node = make_node();
    node.queued_at = t;
    const Admission a = core_.admit(t, node, max_wait);
    WaiterList done;  // earlier waiters found due on the way
    core_.take_ready(done);
    sync_timer();
    gate_.open(core_);
    lock.unlock();
    finish_all(done, t);
    queued = a.queued;
    if (due && a.queued) *due = a.due;
    return a.queued ? a.result : told(cost, a.result);
  }

  // For the length of a locked section (declared after a lock_guard): the
  // gate's state is in the core, and the gate reopens (if the core allows)
  // before the lock is released. A section that leaves by an exception
  // leaves it closed at worst, which is always safe (admissions lock).
  struct GateHeld {
    explicit GateHeld(const WaitingBucket& b) noexcept : self(b) { self.gate_.close(self.core_); }
    ~GateHeld() { self.gate_.open(self.core_); }
    GateHeld(const GateHeld&) = delete;
    GateHeld& operator=(const GateHeld&) = delete;
    const WaitingBucket& self;
  };

  // Runs `f()` with the lock held and the gate's state in the core.
  template <class F>
  decltype(auto) locked(F&& f) const {
    std::lock_guard lock(mutex_);
    GateHeld held{*this};
    return std::forward<F>(f)();
  }

  // Stop-token cancellation: completes `w` as cancelled unless already granted.
  // Later waiters that moved up and are due now complete after it.
  // Returns true when it was removed (false: already granted or completed).
  bool cancel(Waiter& w) noexcept {
    return mutate([&](Core& core, fine_t t, WaiterList& finished) {
      if (core.remove(t, w, false) != Removal::removed) return false;
      w.outcome = Status::cancelled;
      w.reason = Reason::stop_requested;
      finished.push_back(w);
      return true;
    });
  }

  // The waiter's owner is gone (coroutine destroyed): unlink, give back.
  void abandon(Waiter& w) noexcept {
    mutate([&](Core& core, fine_t t, WaiterList&) { core.remove(t, w, true); });
  }

  static AcquireResult result_of(const Waiter& w) noexcept { return waiter_result(w); }

  // Arms the bucket's single timer for the earliest instant a waiter is due.
  // Called with the lock held; Scheduler::arm never calls back into the bucket.
  void sync_timer() {
    const fine_t want = core_.next_wake();
    if (want == fine_max || want == armed_at_) return;
    scheduler_type* s = scheduler();
    if (!s) return;
    s->arm(timer_, at(want));
    timer_owner_ = s;
    armed_at_ = want;
  }

  static void fire_thunk(void* self) noexcept { static_cast<WaitingBucket*>(self)->on_timer(); }

  // The scheduler's callback: grant what is due, re-arm, then resume the
  // granted waiters in FIFO order with no lock held.
  void on_timer() noexcept {
    mutate([&](Core& core, fine_t t, WaiterList&) {
      armed_at_ = fine_max;
      core.grant_due(t);
    });
  }

  Clock clock_;
  time_point origin_{};
  time_point horizon_tp_{};  // the last instant the bucket can represent
  scheduler_type* scheduler_;
  scheduler_type* timer_owner_ = nullptr;
  mutable Mutex mutex_;
  mutable Core core_;  // mutable: reads also advance "latest time seen"
  mutable gate_type gate_;  // lock-free admission while nobody waits (or nothing)
  std::atomic<Listener<cost_type>*> listener_{nullptr};
  TimerNode<Clock> timer_;
  fine_t armed_at_ = fine_max;
};

/// The WaitingBucket a public bucket type derives from.
template <class C, class K, class M>
WaitingBucket<C, K, M>& as_waiting(WaitingBucket<C, K, M>& b) noexcept {
  return b;
}
template <class Bucket>
using waiting_base_t = std::remove_reference_t<decltype(as_waiting(std::declval<Bucket&>()))>;

/// The way in for waiting front-ends outside the library's own (the Asio
/// binding): queue a node the front-end embeds, cancel it, read its result.
struct WaitAccess {
  /// Takes `cost` at once (`.second == false`: the result is final) or queues
  /// `w` (`.second == true`: `w.on_complete` will run, once, with no lock
  /// held). A wait longer than `max_wait` is refused at once with `not_now`.
  template <class C, class K, class M, class Rep, class Period>
  static std::pair<AcquireResult, bool> start(WaitingBucket<C, K, M>& b, typename C::waiter_type& w,
                                              const typename C::cost_type& cost,
                                              std::chrono::duration<Rep, Period> max_wait) {
    C::set_cost(w, cost);
    bool queued = false;
    const AcquireResult r =
        b.take_or_queue(cost, b.to_fine(max_wait), [&]() -> typename C::waiter_type& { return w; }, queued);
    return {r, queued};
  }
  /// Takes a queued `w` out (exact accounting) and completes it `cancelled`;
  /// nothing when it was already granted.
  template <class C, class K, class M>
  static void cancel(WaitingBucket<C, K, M>& b, Waiter& w) noexcept {
    b.cancel(w);
  }
  /// What a completed `w` got.
  static AcquireResult result(const Waiter& w) noexcept { return waiter_result(w); }
};

}  // namespace tollgate::detail
