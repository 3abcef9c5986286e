#pragma once
// TokenBucket<Clock, Mutex>: a thread-safe token bucket with a FIFO queue of
// waiters, a non-blocking try_acquire, a C++20 awaitable acquire and a
// blocking acquire for thread-per-request code.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <limits>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "detail/bucket_core.hpp"
#include "detail/fine_time.hpp"
#include "detail/waiter.hpp"
#include "limit.hpp"
#include "null_mutex.hpp"
#include "result.hpp"
#include "scheduler.hpp"
#include "spin_mutex.hpp"
#include "timer_thread_scheduler.hpp"

namespace tollgate {

template <class Key, class Clock, class Mutex, class Hash, class KeyEqual>
class BucketRegistry;

/// A token bucket: `capacity` cost units of burst, refilled continuously at
/// `rate` units per second, starting full. The cost of a call is whatever the
/// upstream meters: 1 per request, N LLM tokens, bytes.
///
/// Most users want one of:
///  - `try_acquire(cost)`: take now or get `not_now` with a retry-after (a
///    handler that answers 429 itself);
///  - `co_await acquire(cost)`: wait in FIFO order without blocking a thread;
///  - `acquire_blocking(cost)`: block the calling thread.
///
/// Guarantees. The cost completed inside any interval [s, t] never exceeds
/// `capacity + rate * (t - s)`. Waiters complete in arrival order, each at the
/// earliest instant its cost conforms; a `try_acquire` never jumps ahead of a
/// queued waiter. A cost above the capacity is refused at once with `never`.
/// The lock is held only for arithmetic: no coroutine is resumed and no user
/// code runs under it. Time is read from `Clock` (an instance: copies of a
/// `testing::ManualClock` share one time); a `now` earlier than one already
/// seen is treated as that one. Arithmetic is exact (fixed point, 2^-32 ns).
///
/// Thread safety: every member function may be called concurrently when
/// `Mutex` is a real mutex (the default, `std::mutex`); with `NullMutex`,
/// from one thread only. The bucket must outlive its waiters' operations.
template <class Clock = std::chrono::steady_clock, class Mutex = SpinMutex>
class TokenBucket {
  static_assert(!std::chrono::treat_as_floating_point_v<typename Clock::rep>,
                "TokenBucket: Clock must have an integral representation");

 public:
  using clock_type = Clock;
  using mutex_type = Mutex;
  using time_point = typename Clock::time_point;
  using duration = typename Clock::duration;
  using scheduler_type = Scheduler<Clock>;

  class AcquireOperation;

  /// Creates a full bucket. `scheduler` wakes waiters; when null, a bucket on
  /// a steady clock (`Clock::is_steady`, e.g. `std::chrono::steady_clock`)
  /// uses `TimerThreadScheduler<Clock>::shared()` (its thread starts on the
  /// first wait) and any other clock cannot wait (waits then finish
  /// `invalid`; try_acquire works). A fake clock needs its own scheduler. Throws `std::invalid_argument`
  /// for an invalid limit.
  explicit TokenBucket(Limit limit, Clock clock = Clock{}, scheduler_type* scheduler = nullptr)
      : clock_(std::move(clock)), scheduler_(scheduler), core_(checked(limit)) {
    origin_ = clock_.now();
    core_.set_horizon(horizon_of(origin_));
    horizon_tp_ = at(horizon_of(origin_));
    timer_.fire = &TokenBucket::fire_thunk;
    timer_.context = this;
  }

  TokenBucket(const TokenBucket&) = delete;
  TokenBucket& operator=(const TokenBucket&) = delete;

  /// Completes every remaining waiter with `cancelled` (or `acquired`, for one
  /// already granted). Their code must not touch this bucket any more.
  ~TokenBucket() {
    if (scheduler_type* s = timer_owner_) s->disarm(timer_);
    detail::WaiterList done;
    {
      std::lock_guard lock(mutex_);
      core_.cancel_all(done);
    }
    detail::complete_all(done);
  }

  /// Takes `cost` now if the tokens are there and nobody is queued; never
  /// blocks or suspends. Otherwise `not_now` with the wait after which this
  /// request would succeed (rounded up), `never` if `cost > capacity`, or
  /// `invalid` for a negative, NaN or infinite cost.
  AcquireResult try_acquire(double cost = 1) { return try_acquire_at(clock_.now(), cost); }

  /// `try_acquire` at an explicit instant of this bucket's clock.
  AcquireResult try_acquire_at(time_point now, double cost = 1) {
    const detail::fine_t t = rel(now);
    std::lock_guard lock(mutex_);
    return core_.try_acquire(t, cost);
  }

  /// Returns an awaitable that takes `cost`, waiting in FIFO order as long as
  /// needed. `co_await` yields an AcquireResult: `acquired`, or `never`,
  /// `invalid`, or `cancelled` (stop requested through `stop`). Completes
  /// without suspending when the tokens are there.
  ///
  /// Which thread resumes a waiting coroutine: the bucket's scheduler, on its
  /// thread (the TimerThreadScheduler's thread, the thread advancing a
  /// ManualClock, the Asio executor), when the waiter's instant comes; or,
  /// when another call makes it due earlier (`refund`, `set_rate`, a waiter
  /// ahead of it leaving, a lagging timer noticed by a new `acquire`), the
  /// thread making that call, right after it releases the lock. A cancelled
  /// waiter is resumed on the thread requesting the stop.
  /// Waiting allocates nothing. Destroying the suspended coroutine leaves the
  /// queue exactly (later waiters move up).
  AcquireOperation acquire(double cost = 1, std::stop_token stop = {}) {
    return AcquireOperation(*this, cost, detail::fine_max, std::move(stop));
  }

  /// Like `acquire`, but refuses at once with `not_now` (taking nothing) when
  /// the wait would exceed `max_wait`. If a later `set_rate`/`set_capacity`
  /// pushes the wait past `max_wait`, the waiter finishes `timed_out`.
  template <class Rep, class Period>
  AcquireOperation acquire_for(double cost, std::chrono::duration<Rep, Period> max_wait,
                               std::stop_token stop = {}) {
    return AcquireOperation(*this, cost, to_fine(max_wait), std::move(stop));
  }

  /// Blocks the calling thread until `cost` is taken. Refuses at once with
  /// `not_now` when the wait would exceed `max_wait`; finishes `cancelled`
  /// when `stop` is requested. The thread is woken by the bucket's scheduler.
  template <class Rep = std::int64_t, class Period = std::nano>
  AcquireResult acquire_blocking(double cost = 1,
                                 std::chrono::duration<Rep, Period> max_wait =
                                     std::chrono::duration<Rep, Period>::max(),
                                 std::stop_token stop = {}) {
    struct Blocking : detail::Waiter {
      std::mutex m;
      std::condition_variable cv;
      bool done = false;
    } w;
    if (stop.stop_requested()) return cancelled_result();
    w.cost = cost;
    w.on_complete = [](detail::Waiter* p) noexcept {
      auto* b = static_cast<Blocking*>(p);
      std::lock_guard l(b->m);
      b->done = true;
      b->cv.notify_one();
    };
    const Begin b = begin(cost, to_fine(max_wait), [&]() -> detail::Waiter& { return w; });
    if (!b.queued) return b.result;
    {
      std::stop_callback on_stop(stop, [&] { cancel(w); });
      std::unique_lock l(w.m);
      w.cv.wait(l, [&] { return w.done; });
    }
    return result_of(w);
  }

  /// Unreserved tokens now: what a `try_acquire` could take, in [0, capacity].
  double available() const { return available_at(clock_.now()); }
  double available_at(time_point now) const {
    const detail::fine_t t = rel(now);
    std::lock_guard lock(mutex_);
    return core_.available(t);
  }

  /// Gives back `cost` tokens (an acquisition that was not used), never
  /// filling above capacity; queued waiters benefit first. Returns the amount
  /// credited. Throws `std::invalid_argument` for a negative, NaN or infinite cost.
  double refund(double cost) { return refund_at(clock_.now(), cost); }
  double refund_at(time_point now, double cost) {
    if (!(cost >= 0) || std::isinf(cost)) throw_bad("refund", "cost", cost);
    const detail::fine_t t = rel(now);
    detail::WaiterList done;
    double credited;
    {
      std::lock_guard lock(mutex_);
      credited = core_.refund(t, cost);
      core_.take_ready(done);
      sync_timer();
    }
    detail::complete_all(done);
    return credited;
  }

  /// Takes `cost` even if it is not there, leaving the bucket in debt: for an
  /// overrun already spent upstream (an LLM answer longer than estimated).
  /// The debt is never dropped; it delays every later acquisition, queued
  /// waiters included. Throws `std::invalid_argument` for a negative, NaN or
  /// infinite cost, and `std::overflow_error` for a debt beyond the clock's range.
  void charge(double cost) {
    if (!(cost >= 0) || std::isinf(cost)) throw_bad("charge", "cost", cost);
    const detail::fine_t t = rel(clock_.now());
    std::lock_guard lock(mutex_);
    if (!core_.charge(t, cost)) throw std::overflow_error("TokenBucket::charge: debt beyond the clock's range");
    sync_timer();
  }

  /// Corrects the bucket downwards to what the upstream reports is left (an
  /// `x-ratelimit-remaining-*` or `anthropic-ratelimit-*-remaining` header):
  /// the unreserved tokens become at most `remaining`, never more than they
  /// were. Throws `std::invalid_argument` for a negative or NaN `remaining`.
  void limit_remaining(double remaining) {
    if (!(remaining >= 0)) throw_bad("limit_remaining", "remaining", remaining);
    const detail::fine_t t = rel(clock_.now());
    std::lock_guard lock(mutex_);
    core_.limit_remaining(t, remaining);
  }

  /// An acquisition whose real cost is known only afterwards: it holds the
  /// estimate taken, and `settle(actual)` refunds the surplus or charges the
  /// overrun (as a debt). A permit destroyed unsettled keeps the estimate as
  /// the cost: nothing is refunded, nothing more is charged. Move-only; not
  /// thread-safe itself (the bucket is).
  ///
  ///     if (co_await bucket.acquire(estimate)) {
  ///       TokenBucket<>::Permit permit(bucket, estimate);
  ///       auto response = co_await call_llm(...);
  ///       permit.settle(response.usage.total_tokens);
  ///     }
  class Permit {
   public:
    /// Adopts an acquisition of `estimate` already made on `bucket`.
    Permit(TokenBucket& bucket, double estimate) noexcept : bucket_(&bucket), estimate_(estimate) {}
    Permit(Permit&& o) noexcept : bucket_(std::exchange(o.bucket_, nullptr)), estimate_(o.estimate_) {}
    Permit& operator=(Permit&& o) noexcept {
      bucket_ = std::exchange(o.bucket_, nullptr);
      estimate_ = o.estimate_;
      return *this;
    }
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;

    double estimate() const noexcept { return estimate_; }
    bool settled() const noexcept { return bucket_ == nullptr; }

    /// Settles at the real cost: refunds `estimate - actual` (never above
    /// capacity) or charges `actual - estimate` as a debt. Once only: throws
    /// `std::logic_error` if already settled (or moved from), and
    /// `std::invalid_argument` for a negative, NaN or infinite `actual`.
    void settle(double actual) {
      if (!bucket_) throw std::logic_error("TokenBucket::Permit::settle: already settled");
      if (!(actual >= 0) || std::isinf(actual)) throw_bad("Permit::settle", "actual", actual);
      TokenBucket* b = std::exchange(bucket_, nullptr);
      if (actual < estimate_) (void)b->refund(estimate_ - actual);
      else if (actual > estimate_) b->charge(actual - estimate_);
    }

   private:
    TokenBucket* bucket_;
    double estimate_;
  };

  /// Changes the refill rate: settles the tokens accrued so far at the old
  /// rate, then re-times the queued waiters (a higher rate wakes them sooner).
  void set_rate(double rate) {
    Limit::check_positive("TokenBucket::set_rate", "rate", rate);
    set_limit(Limit{limit().capacity, rate}, "TokenBucket::set_rate");
  }

  /// Changes the capacity: settles first (tokens above the new capacity are
  /// dropped), then re-times the queued waiters; a waiter whose cost now
  /// exceeds the capacity finishes `never`.
  void set_capacity(double capacity) {
    Limit::check_positive("TokenBucket::set_capacity", "capacity", capacity);
    set_limit(Limit{capacity, limit().rate}, "TokenBucket::set_capacity");
  }

  /// Changes both at once, as `set_rate` and `set_capacity` describe.
  void set_limit(Limit limit, const char* who = "TokenBucket::set_limit") {
    limit.validate(who);
    detail::WaiterList finished;
    {
      const detail::fine_t t = rel(clock_.now());
      std::lock_guard lock(mutex_);
      core_.reconfigure(t, limit, finished);
      core_.take_ready(finished);
      sync_timer();
    }
    detail::complete_all(finished);
  }

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
    const detail::fine_t f = to_fine(d);
    if (f > 0) pause(std::min(f, kFar), true);
  }

  Limit limit() const {
    std::lock_guard lock(mutex_);
    return core_.limit();
  }

  /// How many waiters are queued and not yet due.
  std::size_t waiters() const {
    std::lock_guard lock(mutex_);
    return core_.waiters();
  }

  /// True when this bucket is indistinguishable from a new one: full, nobody waiting.
  bool is_fresh_at(time_point now) const {
    const detail::fine_t t = rel(now);
    std::lock_guard lock(mutex_);
    return core_.is_fresh(t);
  }

  const Clock& clock() const noexcept { return clock_; }

  /// The awaitable returned by `acquire` and `acquire_for`. It carries the
  /// queue node itself (built only if it has to wait): waiting allocates nothing.
  class AcquireOperation {
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
    bool await_ready() noexcept {
      if (stop_.stop_requested()) {
        result_ = cancelled_result();
        return true;
      }
      const Begin b = bucket_.begin(cost_, max_wait_, [this]() -> detail::Waiter& {
        build_node();
        return node_;
      });
      if (b.queued) {
        queued_ = true;
        return false;
      }
      if (b.result.ok()) [[likely]] {
        // Only a flag goes through the coroutine frame on the hot path: a
        // 16-byte result stored and reloaded there stalls store forwarding.
        acquired_ = true;
        return true;
      }
      result_ = b.result;
      return true;
    }

    /// Already queued by await_ready: records the handle, registers the stop
    /// callback, and hands off with the completion (whoever comes second resumes).
    bool await_suspend(std::coroutine_handle<> handle) {
      node_.handle = handle;
      if (stop_.stop_possible()) node_.stop_callback.emplace(stop_, Canceller{&bucket_, &node_});
      return !node_.handoff.exchange(true, std::memory_order_acq_rel);
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
    friend class TokenBucket;

    struct Node;
    struct Canceller {
      TokenBucket* bucket;
      Node* node;
      void operator()() const noexcept { bucket->cancel(*node); }
    };
    struct Node : detail::Waiter {
      std::coroutine_handle<> handle{};
      std::atomic<bool> handoff{false};
      std::optional<std::stop_callback<Canceller>> stop_callback;
    };

    AcquireOperation(TokenBucket& bucket, double cost, detail::fine_t max_wait, std::stop_token stop) noexcept
        : bucket_(bucket), cost_(cost), max_wait_(max_wait), stop_(std::move(stop)) {}

    void build_node() noexcept {
      ::new (static_cast<void*>(&node_)) Node();
      built_ = true;
      node_.cost = cost_;
      node_.on_complete = &AcquireOperation::complete_thunk;
    }

    static void complete_thunk(detail::Waiter* w) noexcept {
      auto* node = static_cast<Node*>(w);
      // Usually await_suspend finished long ago: a load then suffices.
      if (node->handoff.load(std::memory_order_acquire) || node->handoff.exchange(true, std::memory_order_acq_rel))
        node->handle.resume();
    }

    TokenBucket& bucket_;
    double cost_;
    detail::fine_t max_wait_;
    std::stop_token stop_;
    AcquireResult result_{};
    bool built_ = false;
    bool queued_ = false;
    bool acquired_ = false;
    union {
      Node node_;  // constructed in await_suspend only
    };
  };

 private:
  template <class, class, class, class, class>
  friend class BucketRegistry;

  // Farther than any instant a bucket can reach, with room to add a `now`.
  static constexpr detail::fine_t kFar = detail::fine_max / 4;

  // A pause until `v` (bucket-relative), or for `v` from now if `relative`.
  void pause(detail::fine_t v, bool relative) {
    detail::WaiterList finished;
    {
      const detail::fine_t t = rel(clock_.now());
      std::lock_guard lock(mutex_);
      core_.pause_until(t, relative ? t + v : v, finished);
      core_.take_ready(finished);
      sync_timer();
    }
    detail::complete_all(finished);
  }

  // For BucketRegistry: this bucket's paid-up-to instant, in fine units since
  // `epoch` (another origin), if no waiter is queued.
  bool export_state(time_point epoch, detail::fine_t& tat) const {
    std::lock_guard lock(mutex_);
    if (!core_.idle()) return false;
    tat = core_.tat() + offset_from(epoch);
    return true;
  }
  void import_state(time_point epoch, detail::fine_t tat) {
    std::lock_guard lock(mutex_);
    core_.set_tat(tat - offset_from(epoch));
  }
  detail::fine_t offset_from(time_point epoch) const noexcept {
    return detail::fine_from_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(origin_ - epoch).count());
  }

  static const Limit& checked(const Limit& limit) {
    limit.validate("TokenBucket::TokenBucket");
    return limit;
  }

  [[noreturn]] static void throw_bad(const char* fn, const char* what, double value) {
    std::ostringstream os;
    os << "TokenBucket::" << fn << ": " << what << " must be finite and >= 0, got " << value;
    throw std::invalid_argument(os.str());
  }

  static AcquireResult cancelled_result() noexcept {
    return AcquireResult::failed(Status::cancelled, Reason::stop_requested);
  }

  template <class Rep, class Period>
  static detail::fine_t to_fine(std::chrono::duration<Rep, Period> d) noexcept {
    using ns = std::chrono::nanoseconds;
    if (!(d > std::chrono::duration<Rep, Period>::zero())) return 0;  // also NaN: waits nothing
    if (d >= std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(ns::max()))
      return detail::fine_max;
    return detail::fine_from_ns(std::chrono::ceil<ns>(d).count());
  }

  static detail::fine_t horizon_of(time_point origin) noexcept {
    using ns = std::chrono::nanoseconds;
    if (origin.time_since_epoch() < duration::zero()) return detail::fine_from_ns(ns::max().count());
    const duration room = time_point::max() - origin;
    if (room >= std::chrono::duration_cast<duration>(ns::max()))
      return detail::fine_from_ns(ns::max().count());
    return detail::fine_from_ns(std::chrono::floor<ns>(room).count());
  }

  detail::fine_t rel(time_point now) const noexcept {
    return detail::fine_from_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(now - origin_).count());
  }

  time_point at(detail::fine_t t) const noexcept {
    return origin_ + std::chrono::ceil<duration>(
                         std::chrono::nanoseconds(static_cast<std::int64_t>(detail::ceil_ns(t))));
  }

  scheduler_type* scheduler() noexcept {
    if (scheduler_) return scheduler_;
    if constexpr (Clock::is_steady)  // a real monotonic clock: a background timer thread
      return scheduler_ = &TimerThreadScheduler<Clock>::shared();
    return nullptr;
  }

  struct Begin {
    AcquireResult result;
    bool queued;
  };

  // Every waiting front-end starts here: takes `cost` at once, fails for
  // good, or queues the node `make_node()` returns (called only then, so the
  // awaiter builds its node only when it must wait), under one lock acquisition.
  template <class MakeNode>
  Begin begin(double cost, detail::fine_t max_wait, MakeNode make_node) {
    const bool can_wait = scheduler() != nullptr;
    const detail::fine_t t = rel(clock_.now());
    detail::WaiterList done;  // earlier waiters found due on the way
    detail::Admission a;
    {
      std::lock_guard lock(mutex_);
      const AcquireResult r = core_.try_acquire(t, cost);
      if (r.status() != Status::not_now) [[likely]]
        return {r, false};
      if (!can_wait) return {AcquireResult::failed(Status::invalid, Reason::no_scheduler, cost), false};
      a = core_.admit(t, make_node(), max_wait);
      core_.take_ready(done);
      sync_timer();
    }
    detail::complete_all(done);
    return {a.result, a.queued};
  }

  // Stop-token cancellation: completes `w` as cancelled unless already granted.
  void cancel(detail::Waiter& w) noexcept {
    detail::WaiterList done;
    bool removed;
    {
      const detail::fine_t t = rel(clock_.now());
      std::lock_guard lock(mutex_);
      removed = core_.remove(t, w, false) == detail::Removal::removed;
      if (removed) {
        w.outcome = Status::cancelled;
        w.reason = Reason::stop_requested;
      }
      core_.take_ready(done);  // later waiters that moved up and are due now
      sync_timer();
    }
    if (removed) w.complete();
    detail::complete_all(done);
  }

  // The waiter's owner is gone (coroutine destroyed): unlink, give back.
  void abandon(detail::Waiter& w) noexcept {
    detail::WaiterList done;
    {
      const detail::fine_t t = rel(clock_.now());
      std::lock_guard lock(mutex_);
      core_.remove(t, w, true);
      core_.take_ready(done);
      sync_timer();
    }
    detail::complete_all(done);
  }

  static AcquireResult result_of(const detail::Waiter& w) noexcept {
    if (w.outcome == Status::acquired) return AcquireResult::acquired();
    return AcquireResult::failed(w.outcome, w.reason, w.cost);
  }

  // Arms the bucket's single timer for the earliest instant a waiter is due.
  // Called with the lock held; Scheduler::arm never calls back into the bucket.
  void sync_timer() {
    const detail::fine_t want = core_.next_wake();
    if (want == detail::fine_max || want == armed_at_) return;
    scheduler_type* s = scheduler();
    if (!s) return;
    s->arm(timer_, at(want));
    timer_owner_ = s;
    armed_at_ = want;
  }

  static void fire_thunk(void* self) noexcept { static_cast<TokenBucket*>(self)->on_timer(); }

  // The scheduler's callback: grant what is due, re-arm, then resume the
  // granted waiters in FIFO order with no lock held.
  void on_timer() noexcept {
    detail::WaiterList done;
    {
      const detail::fine_t t = rel(clock_.now());
      std::lock_guard lock(mutex_);
      armed_at_ = detail::fine_max;
      core_.observe(t);
      core_.take_ready(done);
      sync_timer();
    }
    detail::complete_all(done);
  }

  Clock clock_;
  time_point origin_{};
  time_point horizon_tp_{};  // the last instant the bucket can represent
  scheduler_type* scheduler_;
  scheduler_type* timer_owner_ = nullptr;
  mutable Mutex mutex_;
  mutable detail::BucketCore core_;  // mutable: reads also advance "latest time seen"
  TimerNode<Clock> timer_;
  detail::fine_t armed_at_ = detail::fine_max;
};

}  // namespace tollgate
