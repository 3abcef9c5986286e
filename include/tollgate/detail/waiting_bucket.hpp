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
// `admit`, `remove`, `observe`, `take_ready`, `next_wake`, `pause_until`,
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

#include "../mutex_traits.hpp"
#include "../result.hpp"
#include "../scheduler.hpp"
#include "../timer_thread_scheduler.hpp"
#include "bucket_core.hpp"
#include "fine_time.hpp"
#include "waiter.hpp"

namespace tollgate::detail {

template <class Core, class Clock, class Mutex>
class WaitingBucket {
  static_assert(!std::chrono::treat_as_floating_point_v<typename Clock::rep>,
                "tollgate: Clock must have an integral representation");

 public:
  using clock_type = Clock;
  using mutex_type = Mutex;
  using time_point = typename Clock::time_point;
  using duration = typename Clock::duration;
  using scheduler_type = Scheduler<Clock>;
  using cost_type = typename Core::cost_type;

  class AcquireOperation;

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

  /// How many waiters are queued and not yet due.
  std::size_t waiters() const {
    std::lock_guard lock(mutex_);
    return core_.waiters();
  }

  const Clock& clock() const noexcept { return clock_; }

  // ---- For waiting front-ends outside the core (tollgate/asio.hpp) ----------

  /// The queue node such a front-end embeds. It sets `on_complete`, which
  /// runs once, with no lock held, on the thread that granted or cancelled it.
  using waiter_type = typename Core::waiter_type;

  /// Takes `cost` at once (`.second == false`: the result is final) or queues
  /// `w` (`.second == true`: `w.on_complete` will run). A wait longer than
  /// `max_wait` is refused at once with `not_now`, as `acquire_for`.
  template <class Rep, class Period>
  std::pair<AcquireResult, bool> wait_begin(waiter_type& w, const cost_type& cost,
                                            std::chrono::duration<Rep, Period> max_wait) {
    Core::set_cost(w, cost);
    bool queued = false;
    const AcquireResult r = begin(cost, to_fine(max_wait), [&]() -> waiter_type& { return w; }, queued);
    return {r, queued};
  }
  /// Takes a queued `w` out (exact accounting; later waiters move up) and
  /// completes it `cancelled`; nothing when it was already granted.
  void wait_cancel(waiter_type& w) noexcept { cancel(w); }
  /// What a completed `w` got.
  static AcquireResult wait_result(const waiter_type& w) noexcept { return result_of(w); }

  /// An acquisition whose real cost is known only afterwards (an LLM call's
  /// tokens): it holds the estimate taken, and `settle(actual)` refunds the
  /// surplus or charges the overrun as a debt (per dimension, for a LimitSet).
  /// A permit destroyed unsettled keeps the estimate as the cost: nothing is
  /// refunded and nothing more is charged, so an abandoned call costs exactly
  /// what was reserved for it. Move-only; not thread-safe itself (the bucket is).
  ///
  ///     auto permit = co_await bucket.acquire_permit(estimate);
  ///     if (!permit) co_return reply_429(permit.result());
  ///     auto response = co_await call_llm(...);
  ///     permit.settle(response.usage);
  ///
  /// An unsettled permit counts as a user of its bucket: a BucketRegistry
  /// does not evict (or fold away) a key's bucket while one exists.
  class [[nodiscard]] Permit {
   public:
    /// An empty permit (`result()` is `invalid`); `settle` throws.
    Permit() = default;
    /// Adopts an acquisition of `estimate` already made on `bucket` (or, when
    /// `result` is a failure, holds just that failure).
    Permit(WaitingBucket& bucket, const cost_type& estimate,
           AcquireResult result = AcquireResult::acquired()) noexcept
        : bucket_(result.ok() ? &bucket : nullptr), estimate_(estimate), result_(result) {
      if (bucket_) bucket_->permits_.fetch_add(1, std::memory_order_relaxed);
    }
    Permit(Permit&& o) noexcept
        : bucket_(std::exchange(o.bucket_, nullptr)), estimate_(o.estimate_), result_(o.result_) {}
    Permit& operator=(Permit&& o) noexcept {
      if (this != &o) {
        unpin(std::exchange(bucket_, std::exchange(o.bucket_, nullptr)));
        estimate_ = o.estimate_;
        result_ = o.result_;
      }
      return *this;
    }
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit() { unpin(bucket_); }

    /// True when the estimate was taken.
    explicit operator bool() const noexcept { return result_.ok(); }
    /// How the acquisition ended (a refusal's retry-after, reason, dimension).
    const AcquireResult& result() const noexcept { return result_; }
    const cost_type& estimate() const noexcept { return estimate_; }
    /// True once settled, moved from, or when the acquisition failed.
    bool settled() const noexcept { return bucket_ == nullptr; }

    /// Settles at the real cost: refunds `estimate - actual` (never above
    /// capacity) or charges `actual - estimate` as a debt. Once only: throws
    /// `std::logic_error` if already settled, moved from or never acquired,
    /// and `std::invalid_argument` for a negative, NaN or infinite `actual`
    /// (the permit then stays unsettled).
    void settle(const cost_type& actual) {
      if (!bucket_)
        throw std::logic_error(result_.ok() ? "Permit::settle: already settled"
                                            : "Permit::settle: the acquisition failed; nothing to settle");
      Core::check_amount("Permit::settle", "actual", actual, &estimate_);
      WaitingBucket* b = std::exchange(bucket_, nullptr);
      struct Unpin {
        WaitingBucket* b;
        ~Unpin() { unpin(b); }
      } unpin_after{b};  // the last touch of the bucket, even if settle throws
      b->settle(estimate_, actual);
    }

    /// Gives the whole estimate back (the call was never made): `settle` at
    /// zero. With several limits, releasing a permit from one after another
    /// refused leaves nothing taken from the first.
    void release() { settle(Core::zero_like(estimate_)); }

   private:
    static void unpin(WaitingBucket* b) noexcept {
      if (b) b->permits_.fetch_sub(1, std::memory_order_release);
    }
    WaitingBucket* bucket_ = nullptr;
    cost_type estimate_{};
    AcquireResult result_{};
  };

  class PermitOperation;

  /// True while an unsettled Permit refers to this bucket.
  bool has_permits() const noexcept { return permits_.load(std::memory_order_acquire) != 0; }

  /// The awaitable returned by `acquire` and `acquire_for`. It carries the
  /// queue node itself (built only if it has to wait): waiting allocates nothing.
  class [[nodiscard]] AcquireOperation {
   public:
    AcquireOperation(const AcquireOperation&) = delete;
    AcquireOperation& operator=(const AcquireOperation&) = delete;

    ~AcquireOperation() {
      if (!built_) return;
      node_.stop_callback.reset();
      if (queued_) bucket_.abandon(node_);  // the coroutine was destroyed while waiting
      node_.~Node();
    }

    /// Takes the tokens, fails for good, or joins the queue: all under one
    /// lock acquisition. Returns false only when the coroutine must wait.
    [[gnu::always_inline]] bool await_ready() noexcept {
      if (stop_.stop_requested()) {
        result_ = cancelled_result();
        return true;
      }
      const AcquireResult r = bucket_.begin(
          cost_, max_wait_,
          [this]() -> typename Core::waiter_type& {
            build_node();
            return node_;
          },
          queued_);
      if (queued_) return false;
      if (r.ok()) [[likely]] {
        // Only a flag goes through the coroutine frame on the hot path: a
        // 16-byte result stored and reloaded there stalls store forwarding.
        acquired_ = true;
        return true;
      }
      result_ = r;
      return true;
    }

    /// Already queued by await_ready: records the handle, registers the stop
    /// callback, and hands off with the completion (whoever comes second resumes).
    bool await_suspend(std::coroutine_handle<> handle) {
      node_.handle = handle;
      if (stop_.stop_possible()) node_.stop_callback.emplace(stop_, Canceller{&bucket_, &node_});
      if constexpr (mutex_traits<Mutex>::single_threaded) {
        // One thread only: nothing can complete the node concurrently, so a
        // load and a store replace the exchange (the stop callback above may
        // have completed it, on this thread).
        if (node_.handoff.load(std::memory_order_relaxed)) return false;
        node_.handoff.store(true, std::memory_order_relaxed);
        return true;
      } else {
        return !node_.handoff.exchange(true, std::memory_order_acq_rel);
      }
    }

    AcquireResult await_resume() noexcept {
      if (acquired_) return AcquireResult::acquired();
      if (queued_) {
        node_.stop_callback.reset();
        queued_ = false;
        result_ = result_of(node_);
      }
      return result_;
    }

   private:
    friend class WaitingBucket;
    friend class PermitOperation;

    struct Node;
    struct Canceller {
      WaitingBucket* bucket;
      Node* node;
      void operator()() const noexcept { bucket->cancel(*node); }
    };
    struct Node : Core::waiter_type {
      std::coroutine_handle<> handle{};
      std::atomic<bool> handoff{false};
      std::optional<::tollgate::stop_callback<Canceller>> stop_callback;
    };

    AcquireOperation(WaitingBucket& bucket, const cost_type& cost, fine_t max_wait, ::tollgate::stop_token stop) noexcept
        : bucket_(bucket), cost_(cost), max_wait_(max_wait), stop_(std::move(stop)) {}

    void build_node() noexcept {
      ::new (static_cast<void*>(&node_)) Node;  // default-init: every field has its initializer
      built_ = true;
      Core::set_cost(node_, cost_);
      node_.on_complete = &AcquireOperation::complete_thunk;
    }

    static void complete_thunk(Waiter* w) noexcept {
      auto* node = static_cast<Node*>(w);
      // Usually await_suspend finished long ago: a load then suffices.
      if (node->handoff.load(std::memory_order_acquire) || node->handoff.exchange(true, std::memory_order_acq_rel))
        node->handle.resume();
    }

    WaitingBucket& bucket_;
    cost_type cost_;
    fine_t max_wait_;
    ::tollgate::stop_token stop_;
    AcquireResult result_{};
    bool built_ = false;
    bool queued_ = false;
    bool acquired_ = false;
    union {
      Node node_;  // constructed in await_ready, only when the fast path did not take the cost
    };
  };

  /// The awaitable returned by `acquire_permit`: an AcquireOperation whose
  /// `co_await` yields a Permit.
  class [[nodiscard]] PermitOperation {
   public:
    bool await_ready() noexcept { return op_.await_ready(); }
    bool await_suspend(std::coroutine_handle<> h) { return op_.await_suspend(h); }
    Permit await_resume() noexcept { return Permit(bucket_, op_.cost_, op_.await_resume()); }

   private:
    friend class WaitingBucket;
    PermitOperation(WaitingBucket& bucket, const cost_type& cost, fine_t max_wait, ::tollgate::stop_token stop) noexcept
        : bucket_(bucket), op_(bucket, cost, max_wait, std::move(stop)) {}
    WaitingBucket& bucket_;
    AcquireOperation op_;
  };

 protected:
  template <class... CoreArgs>
  explicit WaitingBucket(Clock clock, scheduler_type* scheduler, CoreArgs&&... core_args)
      : clock_(std::move(clock)), scheduler_(scheduler), core_(std::forward<CoreArgs>(core_args)...) {
    origin_ = clock_.now();
    core_.set_horizon(horizon_of(origin_));
    horizon_tp_ = at(horizon_of(origin_));
    timer_.fire = &WaitingBucket::fire_thunk;
    timer_.context = this;
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

  AcquireOperation make_operation(const cost_type& cost, fine_t max_wait, ::tollgate::stop_token stop) {
    return AcquireOperation(*this, cost, max_wait, std::move(stop));
  }

  PermitOperation make_permit_operation(const cost_type& cost, fine_t max_wait, ::tollgate::stop_token stop) {
    return PermitOperation(*this, cost, max_wait, std::move(stop));
  }

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
    const AcquireResult r = begin(cost, max_wait, [&]() -> typename Core::waiter_type& { return w; }, queued);
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
      WaiterList& list;
      ~Completer() { complete_all(list); }
    } completer{finished};
    std::lock_guard lock(mutex_);
    // `finished` outlives the lock guard: waiters complete after it unlocks.
    struct Sync {
      WaitingBucket& self;
      WaiterList& list;
      ~Sync() {
        self.core_.take_ready(list);
        self.sync_timer();
      }
    } sync{*this, finished};
    return std::forward<F>(f)(core_, t, finished);
  }

  // Farther than any instant a bucket can reach, with room to add a `now`.
  static constexpr fine_t kFar = fine_max / 4;

  // A pause until `v` (bucket-relative), or for `v` from now if `relative`.
  void pause(fine_t v, bool relative) {
    mutate([&](Core& core, fine_t t, WaiterList& finished) { core.pause_until(t, relative ? t + v : v, finished); });
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
  [[gnu::always_inline]] AcquireResult begin(const cost_type& cost, fine_t max_wait, MakeNode make_node,
                                             bool& queued) {
    const fine_t t = rel(clock_.now());
    if (mutex_traits<Mutex>::try_enter_fast(mutex_)) {
      const bool taken = core_.take_fast(t, cost);
      mutex_traits<Mutex>::leave_fast(mutex_);
      if (taken) [[likely]]
        return AcquireResult::acquired();
    }
    std::unique_lock lock(mutex_);
    if (core_.take_fast(t, cost)) [[likely]]
      return AcquireResult::acquired();
    return begin_locked(lock, t, cost, max_wait, make_node, queued);
  }

  // The rest of `begin`, with the lock held; releases it.
  template <class MakeNode>
  [[gnu::noinline]] AcquireResult begin_locked(std::unique_lock<Mutex>& lock, fine_t t, const cost_type& cost,
                                               fine_t max_wait, MakeNode& make_node, bool& queued) {
    if (scheduler() == nullptr) {
      const AcquireResult r = core_.try_acquire(t, cost);
      if (r.status() != Status::not_now) return r;
      return AcquireResult::failed(Status::invalid, Reason::no_scheduler);
    }
    // admit() decides everything else (it takes, refuses or queues), so the
    // node is built whenever the fast path did not take the cost.
    const Admission a = core_.admit(t, make_node(), max_wait);
    WaiterList done;  // earlier waiters found due on the way
    core_.take_ready(done);
    sync_timer();
    lock.unlock();
    complete_all(done);
    queued = a.queued;
    return a.result;
  }

  // Stop-token cancellation: completes `w` as cancelled unless already granted.
  // Later waiters that moved up and are due now complete after it.
  void cancel(Waiter& w) noexcept {
    mutate([&](Core& core, fine_t t, WaiterList& finished) {
      if (core.remove(t, w, false) != Removal::removed) return;
      w.outcome = Status::cancelled;
      w.reason = Reason::stop_requested;
      finished.push_back(w);
    });
  }

  // The waiter's owner is gone (coroutine destroyed): unlink, give back.
  void abandon(Waiter& w) noexcept {
    mutate([&](Core& core, fine_t t, WaiterList&) { core.remove(t, w, true); });
  }

  static AcquireResult result_of(const Waiter& w) noexcept {
    if (w.outcome == Status::acquired) return AcquireResult::acquired();
    return AcquireResult::failed(w.outcome, w.reason, w.cost, w.dimension);
  }

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
  TimerNode<Clock> timer_;
  fine_t armed_at_ = fine_max;
  std::atomic<std::uint32_t> permits_{0};  // unsettled Permits on this bucket
};

}  // namespace tollgate::detail
