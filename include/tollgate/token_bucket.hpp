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
#include "stop_token.hpp"
#include <type_traits>
#include <utility>

#include "biased_mutex.hpp"
#include "detail/bucket_core.hpp"
#include "detail/fine_time.hpp"
#include "detail/waiter.hpp"
#include "detail/waiting_bucket.hpp"
#include "acquire_operation.hpp"
#include "permit.hpp"
#include "reservation.hpp"
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
/// `Mutex` is a real mutex (the default `SpinMutex`, `std::mutex`, or
/// `BiasedMutex` for a bucket one thread owns and that never waits); with
/// `NullMutex`, from one thread only. `mutex_traits<Mutex>` says what else
/// the lock can do. The bucket must outlive its waiters' operations.
template <class Clock = std::chrono::steady_clock, class Mutex = SpinMutex>
class TokenBucket : public detail::WaitingBucket<detail::BucketCore, Clock, Mutex> {
  using Base = detail::WaitingBucket<detail::BucketCore, Clock, Mutex>;

 public:
  using AcquireOperation = tollgate::AcquireOperation<TokenBucket>;
  using PermitOperation = tollgate::PermitOperation<TokenBucket>;
  using Permit = tollgate::Permit<double>;
  using Reservation = tollgate::Reservation<TokenBucket>;
  using typename Base::clock_type;
  using typename Base::duration;
  using typename Base::mutex_type;
  using typename Base::scheduler_type;
  using typename Base::time_point;

  /// True when this bucket admits without taking its lock while nobody waits
  /// (`try_acquire`, and a `co_await` that needs no wait): one 16-byte
  /// compare-and-swap on its state. Needs a target with one (x86-64; not the
  /// portable build) and a mutex whose `mutex_traits` allow it (every
  /// ordinary mutex; not NullMutex or BiasedMutex). `TOLLGATE_NO_LOCK_FREE`
  /// turns it off. The results are the same either way.
  static constexpr bool lock_free_admission = Base::gate_type::enabled;

  /// Creates a full bucket. `scheduler` wakes waiters; when null, a bucket on
  /// a steady clock (`Clock::is_steady`, e.g. `std::chrono::steady_clock`)
  /// uses `TimerThreadScheduler<Clock>::shared()` (its thread starts on the
  /// first wait) and any other clock cannot wait (waits then finish
  /// `invalid`; try_acquire works). A fake clock needs its own scheduler. Throws `std::invalid_argument`
  /// for an invalid limit.
  explicit TokenBucket(Limit limit, Clock clock = Clock{}, scheduler_type* scheduler = nullptr)
      : Base(std::move(clock), scheduler, checked(limit)) {}

  /// Completes every remaining waiter with `cancelled` (or `acquired`, for one
  /// already granted). Their code must not touch this bucket any more.
  ~TokenBucket() = default;

  /// Takes `cost` now if the tokens are there and nobody is queued; never
  /// blocks or suspends. Otherwise `not_now` with the wait after which this
  /// request would succeed (rounded up), `never` if `cost > capacity`, or
  /// `invalid` for a negative, NaN or infinite cost.
  AcquireResult try_acquire(double cost = 1) { return try_acquire_at(clock_.now(), cost); }

  /// `try_acquire` at an explicit instant of this bucket's clock.
  AcquireResult try_acquire_at(time_point now, double cost = 1) {
    const detail::fine_t t = rel(now);
    if constexpr (Base::gate_type::enabled) {
      detail::fine_t wait;
      switch (gate_.try_take(t, cost, wait)) {
        case detail::FastOutcome::taken: return this->told(cost, AcquireResult::acquired());
        case detail::FastOutcome::refused: return this->told(cost, AcquireResult::not_now(detail::to_ns_ceil(wait)));
        case detail::FastOutcome::locked: break;
      }
    }
    if (mutex_traits<Mutex>::try_enter_fast(mutex_)) {
      const AcquireResult r = core_.try_acquire(t, cost);
      mutex_traits<Mutex>::leave_fast(mutex_);
      return this->told(cost, r);
    }
    return this->told(cost, this->locked([&] { return core_.try_acquire(t, cost); }));
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
  AcquireOperation acquire(double cost = 1, ::tollgate::stop_token stop = {}) {
    return AcquireOperation(*this, cost, detail::fine_max, std::move(stop));
  }

  /// Like `acquire`, but refuses at once with `not_now` (taking nothing) when
  /// the wait would exceed `max_wait`. If a later `set_rate`/`set_capacity`
  /// pushes the wait past `max_wait`, the waiter finishes `timed_out`.
  template <class Rep, class Period>
  AcquireOperation acquire_for(double cost, std::chrono::duration<Rep, Period> max_wait,
                               ::tollgate::stop_token stop = {}) {
    return AcquireOperation(*this, cost, Base::to_fine(max_wait), std::move(stop));
  }

  /// Blocks the calling thread until `cost` is taken. Refuses at once with
  /// `not_now` when the wait would exceed `max_wait`; finishes `cancelled`
  /// when `stop` is requested. The thread is woken by the bucket's scheduler.
  template <class Rep = std::int64_t, class Period = std::nano>
  AcquireResult acquire_blocking(double cost = 1,
                                 std::chrono::duration<Rep, Period> max_wait =
                                     std::chrono::duration<Rep, Period>::max(),
                                 ::tollgate::stop_token stop = {}) {
    return this->block(cost, Base::to_fine(max_wait), std::move(stop));
  }

  /// Like `acquire`, but `co_await` yields a Permit holding `estimate` (see
  /// Permit): for a cost known only afterwards, such as an LLM call's tokens.
  template <class Rep = std::int64_t, class Period = std::nano>
  PermitOperation acquire_permit(double estimate, std::chrono::duration<Rep, Period> max_wait =
                                                      std::chrono::duration<Rep, Period>::max(),
                                 ::tollgate::stop_token stop = {}) {
    return PermitOperation(*this, estimate, Base::to_fine(max_wait), std::move(stop));
  }

  /// `try_acquire` that returns a Permit holding `estimate` (empty when refused).
  Permit try_acquire_permit(double estimate) { return Permit(*this, estimate, try_acquire(estimate)); }

  /// Takes `cost` for the earliest instant it can be granted (FIFO behind
  /// every waiter), without waiting for it: the Reservation says when to act,
  /// and can be cancelled exactly until then (see Reservation). Refused
  /// (nothing taken) with `not_now` when that instant is more than
  /// `max_wait` away, and with `never` / `invalid` as `try_acquire`.
  template <class Rep = std::int64_t, class Period = std::nano>
  Reservation reserve(double cost = 1, std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max()) {
    return Reservation(*this, cost, Base::to_fine(max_wait));
  }

  /// Unreserved tokens now: what a `try_acquire` could take, in [0, capacity].
  double available() const { return available_at(clock_.now()); }
  double available_at(time_point now) const {
    const detail::fine_t t = rel(now);
    return this->locked([&] { return core_.available(t); });
  }

  /// Gives back `cost` tokens (an acquisition that was not used), never
  /// filling above capacity; queued waiters benefit first. Returns the amount
  /// credited. Throws `std::invalid_argument` for a negative, NaN or infinite cost.
  double refund(double cost) {
    detail::check_amount("TokenBucket::refund", "cost", cost);
    return this->mutate([&](detail::BucketCore& core, detail::fine_t t, detail::WaiterList&) { return core.refund(t, cost); });
  }

  /// Takes `cost` even if it is not there, leaving the bucket in debt: for an
  /// overrun already spent upstream (an LLM answer longer than estimated).
  /// The debt is never dropped; it delays every later acquisition, queued
  /// waiters included (one pushed past its `max_wait` finishes `timed_out`).
  /// The debt is bounded by `max_debt()` tokens (one capacity unless
  /// `set_max_debt` says otherwise): what a charge would add beyond that is
  /// not taken, so one absurd usage figure cannot lock the bucket for years.
  /// Throws `std::invalid_argument` for a negative, NaN or infinite cost,
  /// and `std::overflow_error` for a debt beyond the clock's range.
  void charge(double cost) {
    detail::check_amount("TokenBucket::charge", "cost", cost);
    this->mutate([&](detail::BucketCore& core, detail::fine_t t, detail::WaiterList&) {
      if (!core.charge(t, cost)) throw std::overflow_error("TokenBucket::charge: debt beyond the clock's range");
    });
  }

  /// The most debt `charge` (or a Permit's `settle`) may leave, in tokens:
  /// finite and >= 0 (0: overruns are never charged). Throws
  /// `std::invalid_argument` otherwise. Survives `set_limit`.
  void set_max_debt(double tokens) {
    detail::check_amount("TokenBucket::set_max_debt", "tokens", tokens);
    std::lock_guard lock(mutex_);
    core_.set_max_debt(tokens);
  }
  double max_debt() const {
    std::lock_guard lock(mutex_);
    return core_.max_debt();
  }

  /// Corrects the bucket downwards to what the upstream reports is left (an
  /// `x-ratelimit-remaining-*` or `anthropic-ratelimit-*-remaining` header):
  /// the unreserved tokens become at most `remaining`, never more than they
  /// were. Throws `std::invalid_argument` for a negative, NaN or infinite `remaining`.
  void limit_remaining(double remaining) {
    detail::check_amount("TokenBucket::limit_remaining", "remaining", remaining);
    this->mutate([&](detail::BucketCore& core, detail::fine_t t, detail::WaiterList&) { core.limit_remaining(t, remaining); });
  }

  /// Changes the refill rate: settles the tokens accrued so far at the old
  /// rate, then re-times the queued waiters (a higher rate wakes them sooner).
  void set_rate(double rate) {
    Limit::check_positive("TokenBucket::set_rate", "rate", rate);
    reconfigure(Limit{limit().capacity, rate}, "TokenBucket::set_rate");
  }

  /// Changes the capacity: settles first (tokens above the new capacity are
  /// dropped), then re-times the queued waiters; a waiter whose cost now
  /// exceeds the capacity finishes `never`.
  void set_capacity(double capacity) {
    Limit::check_positive("TokenBucket::set_capacity", "capacity", capacity);
    reconfigure(Limit{capacity, limit().rate}, "TokenBucket::set_capacity");
  }

  /// Changes both at once, as `set_rate` and `set_capacity` describe.
  void set_limit(Limit limit) { reconfigure(limit, "TokenBucket::set_limit"); }

  Limit limit() const {
    std::lock_guard lock(mutex_);
    return core_.limit();
  }

 private:
  template <class, class, class, class, class>
  friend class BucketRegistry;

  using Base::clock_;
  using Base::core_;
  using Base::gate_;
  using Base::mutex_;
  using Base::origin_;
  using Base::rel;

  // For BucketRegistry: this bucket's paid-up-to instant, in fine units since
  // `epoch` (another origin), if no waiter is queued.
  bool export_state(time_point epoch, detail::fine_t& tat) const {
    return this->locked([&] {
      if (!core_.idle() || this->has_permits()) return false;
      tat = core_.tat() + offset_from(epoch);
      return true;
    });
  }
  void import_state(time_point epoch, detail::fine_t tat) {
    this->locked([&] { core_.set_tat(tat - offset_from(epoch)); });
  }
  detail::fine_t offset_from(time_point epoch) const noexcept {
    return detail::fine_from_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(origin_ - epoch).count());
  }

  void reconfigure(const Limit& limit, const char* who) {
    limit.validate(who);
    this->mutate([&](detail::BucketCore& core, detail::fine_t t, detail::WaiterList& finished) {
      core.reconfigure(t, limit, finished);
    });
  }

  static const Limit& checked(const Limit& limit) {
    limit.validate("TokenBucket::TokenBucket");
    return limit;
  }
};

}  // namespace tollgate
