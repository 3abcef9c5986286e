#pragma once
// LimitSet<Clock, Mutex>: several token buckets ("dimensions": requests,
// tokens, input tokens, ...) taken all or nothing, with one FIFO queue.

#include <array>
#include <chrono>
#include <initializer_list>
#include <mutex>
#include <span>
#include <sstream>
#include <stdexcept>
#include "stop_token.hpp"
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "costs.hpp"
#include "detail/dimension_names.hpp"
#include "detail/set_core.hpp"
#include "detail/waiting_bucket.hpp"
#include "acquire_operation.hpp"
#include "permit.hpp"
#include "reservation.hpp"
#include "limit.hpp"
#include "limit_set_like.hpp"
#include "result.hpp"
#include "scheduler.hpp"
#include "spin_mutex.hpp"

namespace tollgate {

/// Several token buckets over named dimensions, acquired together: what an
/// LLM provider meters (OpenAI: requests and tokens per minute; Anthropic:
/// requests, input tokens and output tokens).
///
///     LimitSet<> upstream({{"requests", Limit::per_minute(500)},
///                          {"tokens", Limit::per_minute(30'000)}});
///     auto permit = co_await upstream.acquire_permit({1, prompt + max_tokens});
///
/// Guarantees, per dimension, as TokenBucket's: the cost completed in any
/// [s, t] never exceeds `capacity + rate * (t - s)` in that dimension. An
/// acquisition takes its whole cost vector at one instant or nothing (all or
/// nothing, under one lock); waiters complete in arrival order, each at the
/// earliest instant its latest dimension has the tokens. Tokens a dimension
/// cannot hold while a waiter waits for another dimension are lost, as in a
/// real bucket. A cost above any dimension's capacity is refused at once with
/// `never`, and `AcquireResult::dimension()` names the dimension (see `name`
/// and `message`). Cancelling a waiter gives its cost back in every
/// dimension and moves later waiters up.
///
/// Costs: removing a waiter from the middle of the queue, a refund, a charge,
/// a corrected remaining count, a pause or a reconfiguration re-times the
/// queue once, in O(waiters), the next time a newcomer needs it; admission
/// and grants are O(dimensions).
///
/// Thread safety and waiting: as TokenBucket (the same scheduler rules and
/// front-ends: `acquire`, `acquire_for`, `acquire_blocking`, `acquire_permit`).
template <class Clock = std::chrono::steady_clock, class Mutex = SpinMutex>
class LimitSet : public detail::WaitingBucket<detail::SetCore, Clock, Mutex> {
  using Base = detail::WaitingBucket<detail::SetCore, Clock, Mutex>;
  using Core = detail::SetCore;
  using fine_t = detail::fine_t;

 public:
  using typename Base::scheduler_type;
  using typename Base::time_point;
  using Permit = tollgate::Permit<Costs>;
  using AcquireOperation = tollgate::AcquireOperation<LimitSet>;
  using PermitOperation = tollgate::PermitOperation<LimitSet>;
  using Reservation = tollgate::Reservation<LimitSet>;

  /// A full set. Throws `std::invalid_argument` for no dimensions, more than
  /// `max_dimensions`, an empty or repeated name, or an invalid limit.
  explicit LimitSet(std::vector<Dimension> dimensions, Clock clock = Clock{}, scheduler_type* scheduler = nullptr)
      : LimitSet(detail::DimensionNames(std::move(dimensions), "LimitSet::LimitSet"), std::move(clock), scheduler) {}
  LimitSet(std::initializer_list<Dimension> dimensions, Clock clock = Clock{}, scheduler_type* scheduler = nullptr)
      : LimitSet(std::vector<Dimension>(dimensions), std::move(clock), scheduler) {}

  /// How many dimensions; `name(i)` and `limit(i)` describe dimension `i`.
  std::size_t size() const noexcept { return dims_.size(); }
  const std::string& name(std::size_t i) const { return dims_.name(i); }
  /// The index of the dimension called `name`; throws `std::out_of_range` naming it.
  std::size_t index(std::string_view name) const { return dims_.index(name, "LimitSet::index"); }
  Limit limit(std::size_t i) const {
    check_index("LimitSet::limit", i);
    std::lock_guard lock(mutex_);
    return core_.limit(i);
  }

  /// A cost vector given by dimension name, e.g. `set.costs({{"tokens", 800},
  /// {"requests", 1}})`; dimensions not named cost 0. Throws
  /// `std::out_of_range` for an unknown name and `std::invalid_argument` for a
  /// name given twice.
  Costs costs(std::initializer_list<std::pair<std::string_view, double>> named) const {
    return dims_.costs(named, "LimitSet::costs");
  }

  /// `r.message()` with the dimension named, e.g.
  /// "never: cost exceeds capacity (cost 50000 in tokens)".
  std::string message(const AcquireResult& r) const { return dims_.message(r); }

  /// Takes `costs` now if every dimension has them and nobody is queued;
  /// never waits. `not_now` carries the wait until the latest dimension (and
  /// the queue ahead) would allow it; `never`/`invalid` name the dimension.
  AcquireResult try_acquire(const Costs& costs) { return try_acquire_at(clock_.now(), costs); }
  AcquireResult try_acquire_at(time_point now, const Costs& costs) {
    // Through mutate: waiters found due on the way are completed too.
    return this->told(costs, this->mutate_at(rel(now), [&](Core& core, fine_t t, detail::WaiterList&) {
      return core.try_acquire(t, costs);
    }));
  }

  /// Waits (FIFO, without blocking a thread) until every dimension has its
  /// cost, then takes them all at once. See TokenBucket::acquire for which
  /// thread resumes the coroutine.
  AcquireOperation acquire(const Costs& costs, ::tollgate::stop_token stop = {}) {
    return AcquireOperation(*this, costs, detail::fine_max, std::move(stop));
  }
  /// Refuses at once (`not_now`, nothing taken) when the wait would exceed `max_wait`.
  template <class Rep, class Period>
  AcquireOperation acquire_for(const Costs& costs, std::chrono::duration<Rep, Period> max_wait,
                               ::tollgate::stop_token stop = {}) {
    return AcquireOperation(*this, costs, Base::to_fine(max_wait), std::move(stop));
  }
  /// Blocks the calling thread; as TokenBucket::acquire_blocking.
  template <class Rep = std::int64_t, class Period = std::nano>
  AcquireResult acquire_blocking(const Costs& costs,
                                 std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max(),
                                 ::tollgate::stop_token stop = {}) {
    return this->block(costs, Base::to_fine(max_wait), std::move(stop));
  }
  /// Like `acquire_for`, but `co_await` yields a Permit holding `estimate`,
  /// to be settled at the real cost (see Permit).
  template <class Rep = std::int64_t, class Period = std::nano>
  PermitOperation acquire_permit(const Costs& estimate, std::chrono::duration<Rep, Period> max_wait =
                                                            std::chrono::duration<Rep, Period>::max(),
                                 ::tollgate::stop_token stop = {}) {
    return PermitOperation(*this, estimate, Base::to_fine(max_wait), std::move(stop));
  }
  /// `try_acquire` that returns a Permit holding `estimate` (empty when refused).
  Permit try_acquire_permit(const Costs& estimate) { return Permit(*this, estimate, try_acquire(estimate)); }

  /// Takes `costs` for the earliest instant it can be granted (FIFO behind
  /// every waiter), without waiting for it: the Reservation says when to act,
  /// and can be cancelled exactly until then (see Reservation). Refused
  /// (nothing taken) with `not_now` when that instant is more than
  /// `max_wait` away, and with `never` / `invalid` as `try_acquire`.
  template <class Rep = std::int64_t, class Period = std::nano>
  Reservation reserve(const Costs& costs, std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max()) {
    return Reservation(*this, costs, Base::to_fine(max_wait));
  }

  /// Gives `costs` back (an acquisition not used), never above capacity in
  /// any dimension; queued waiters benefit first. Throws `std::invalid_argument`
  /// for a wrong length or a negative, NaN or infinite value.
  void refund(const Costs& costs) {
    Core::check_amount("LimitSet::refund", "costs", costs, &zeros());
    this->mutate([&](Core& core, fine_t t, detail::WaiterList&) { core.refund(t, costs); });
  }

  /// Takes `costs` even where they are not there (a debt, never dropped; it
  /// delays every later acquisition, queued waiters included, and is bounded
  /// per dimension by `max_debt`): for usage already spent upstream. Throws as `refund`, and `std::overflow_error`
  /// (taking nothing) for a debt beyond the clock's range.
  void charge(const Costs& costs) {
    Core::check_amount("LimitSet::charge", "costs", costs, &zeros());
    this->mutate([&](Core& core, fine_t t, detail::WaiterList&) {
      if (!core.charge(t, costs)) throw std::overflow_error("LimitSet::charge: debt beyond the clock's range");
    });
  }

  /// Per dimension, refunds `estimate - actual` or charges `actual - estimate`
  /// (under one lock): what `Permit::settle` does, for an acquisition made
  /// without a Permit (e.g. through tollgate/asio.hpp). Throws as `charge`.
  void settle(const Costs& estimate, const Costs& actual) {
    Core::check_amount("LimitSet::settle", "estimate", estimate, &zeros());
    Core::check_amount("LimitSet::settle", "actual", actual, &zeros());
    Base::settle(estimate, actual);
  }

  /// The most debt `charge` or `settle` may leave in dimension `i`, in
  /// tokens (default: the dimension's capacity): an overrun beyond it is not
  /// taken, so one absurd usage figure cannot lock the set for years. Throws
  /// `std::invalid_argument` unless finite and >= 0.
  void set_max_debt(std::size_t i, double tokens) {
    check_index("LimitSet::set_max_debt", i);
    detail::check_amount("LimitSet::set_max_debt", "tokens", tokens);
    std::lock_guard lock(mutex_);
    core_.set_max_debt(i, tokens);
  }
  double max_debt(std::size_t i) const {
    check_index("LimitSet::max_debt", i);
    std::lock_guard lock(mutex_);
    return core_.max_debt(i);
  }

  /// Corrects dimension `i` downwards to what the upstream says is left
  /// (`x-ratelimit-remaining-tokens`, ...): its unreserved tokens become at
  /// most `remaining`, never more than they were; queued waiters are delayed
  /// accordingly. Throws `std::invalid_argument` for a negative, NaN or
  /// infinite value and `std::out_of_range` for a bad index.
  void limit_remaining(std::size_t i, double remaining) {
    check_index("LimitSet::limit_remaining", i);
    detail::check_amount("LimitSet::limit_remaining", "remaining", remaining);
    this->mutate([&](Core& core, fine_t t, detail::WaiterList&) { core.limit_remaining(t, i, remaining); });
  }

  /// `limit_remaining`, and holds dimension `i` there for `hold_for`: a
  /// provider's `remaining` count taken as authoritative until its reset.
  /// Until then grants take at most `remaining` in `i` in all, whatever its
  /// refill would allow; from then on its refill alone counts (a hold caps,
  /// never adds). A newer hold replaces an older one, except that one ending
  /// at the same instant (the same window) keeps the lower count. A zero or
  /// negative `hold_for` lowers and ends any hold.
  ///
  /// A windowed provider: with `window` > 0 (its windows' length), the hold
  /// goes on from its end for one more window at what a window was learned
  /// to hold (the least of each count plus what was granted in its window
  /// before it), so that the reset releases at most a window's worth, not
  /// all the refill gathered meanwhile; the first count there takes over.
  template <class Rep, class Period>
  void limit_remaining(std::size_t i, double remaining, std::chrono::duration<Rep, Period> hold_for,
                       std::chrono::nanoseconds window = {}) {
    check_index("LimitSet::limit_remaining", i);
    detail::check_amount("LimitSet::limit_remaining", "remaining", remaining);
    const fine_t f = std::min(Base::to_fine(hold_for), Base::kFar);
    const fine_t w = std::min(Base::to_fine(window), Base::kFar);
    this->mutate([&](Core& core, fine_t t, detail::WaiterList&) { core.hold(t, i, remaining, t + f, std::max<fine_t>(w, 0)); });
  }
  /// When dimension `i`'s hold ends, if one holds it now.
  std::optional<time_point> held_until(std::size_t i) {
    check_index("LimitSet::held_until", i);
    const fine_t t = rel(clock_.now());
    std::lock_guard lock(mutex_);
    const std::optional<fine_t> u = core_.held_until(t, i);
    if (!u) return std::nullopt;
    return Base::at(*u);
  }

  /// Unreserved tokens of dimension `i` now (0 while paused or while waiters are queued).
  double available(std::size_t i) const { return available_at(clock_.now(), i); }
  double available_at(time_point now, std::size_t i) const {
    check_index("LimitSet::available", i);
    const fine_t t = rel(now);
    std::lock_guard lock(mutex_);
    return core_.available(t, i);
  }

  /// Changes dimension `i`'s limit: settles its tokens first, then re-times
  /// the queue (a waiter whose cost now exceeds the capacity finishes
  /// `never`; one pushed past its `max_wait`, `timed_out`).
  void set_limit(std::size_t i, Limit limit) {
    check_index("LimitSet::set_limit", i);
    limit.validate("LimitSet::set_limit");
    this->mutate([&](Core& core, fine_t t, detail::WaiterList& finished) { core.reconfigure(t, i, limit, finished); });
  }

 private:
  using Base::clock_;
  using Base::core_;
  using Base::mutex_;
  using Base::rel;

  LimitSet(detail::DimensionNames dims, Clock clock, scheduler_type* scheduler)
      : Base(std::move(clock), scheduler, std::span<const Limit>(dims.limits())), dims_(std::move(dims)) {}

  void check_index(const char* who, std::size_t i) const { dims_.check_index(who, i); }
  const Costs& zeros() const noexcept { return dims_.zeros(); }

  detail::DimensionNames dims_;
};

static_assert(limit_set_like<LimitSet<>>);

}  // namespace tollgate
