#pragma once
// redis::RedisLimitSet: a limit set (one or more token buckets taken all or
// nothing) whose state lives in Redis, shared by every process and host that
// names the same key. Optional: CMake target `tollgate::redis` (hiredis).
//
//     redis::Connection redis({.host = "127.0.0.1", .port = 6379});
//     redis::RedisLimitSet<> upstream({{"requests", Limit::per_minute(500)},
//                                      {"tokens", Limit::per_minute(90'000)}},
//                                     redis, "openai:org-1");
//     AcquireResult r = co_await upstream.acquire_for({1, prompt + max_tokens}, 5s);

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../costs.hpp"
#include "../limit.hpp"
#include "../limit_set.hpp"
#include "../limit_set_like.hpp"
#include "../permit.hpp"
#include "../redis_connection.hpp"
#include "../result.hpp"
#include "../scheduler.hpp"
#include "../stop_token.hpp"
#include "../timer_thread_scheduler.hpp"
#include "config.hpp"
#include "lease.hpp"
#include "operation.hpp"
#include "options.hpp"
#include "script_codec.hpp"

namespace tollgate::redis {

/// A limit set (see tollgate::LimitSet) whose state lives in one Redis hash
/// and changes only inside one server-side Lua script that reads the server's
/// TIME, never a client's clock. Every process that names the same `key` with
/// the same dimensions shares the same limits.
///
/// Semantics, as LimitSet's where they can be: all or nothing across
/// dimensions; `not_now` carries a retry-after rounded up; a cost above a
/// capacity is `never` naming the dimension; bad costs are `invalid`.
/// Waiting (`acquire`) reserves in Redis: the script books the cost at the
/// earliest instant every dimension has it, after every earlier reservation
/// (FIFO across processes), and the caller sleeps locally until then: one
/// round trip, no polling. Refill times are whole nanoseconds, rounded up.
///
/// Where a distributed set must differ from an in-process one (README,
/// "Redis"): a cancelled reservation gives its tokens back exactly when it is
/// the latest one; behind it, other processes' reservations are already
/// promised their instants, and handing the tokens back would let a newcomer
/// overtake them and break the limit, so they are not returned (counted in
/// `stats().unreturned_cancels`). Likewise a refund is credited only while no
/// reservation is pending. A pause holds new admissions; reservations made
/// before it keep their instants.
///
/// Each call is one script run (pipelined with other callers' by the
/// Connection). Failures follow `RedisLimitOptions::on_failure`.
template <class Clock = std::chrono::steady_clock>
class RedisLimitSet : public tollgate::detail::PermitIssuer<Costs> {
 public:
  using clock_type = Clock;
  using time_point = typename Clock::time_point;
  using scheduler_type = Scheduler<Clock>;
  using AcquireOperation = redis::AcquireOperation<RedisLimitSet>;
  using PermitOperation = redis::PermitOperation<RedisLimitSet>;
  using Permit = tollgate::Permit<Costs>;

  /// The same order as LimitSet's (dimensions, ..., clock, scheduler), with
  /// the store between. Throws `std::invalid_argument` for bad dimensions (as
  /// LimitSet), an empty key, a refill window (capacity / rate) beyond 2^51
  /// ns (26 days; the script's integers must stay exact), a bad fallback
  /// share, or a lease that does not fit (with leasing every capacity is
  /// lowered by rate * lease_lifetime).
  RedisLimitSet(std::vector<Dimension> dimensions, Connection& connection, std::string key,
                RedisLimitOptions options = {}, Clock clock = Clock{}, scheduler_type* scheduler = nullptr)
      : PermitIssuer<Costs>(kSettling),
        connection_(connection),
        key_(std::move(key)),
        dims_(std::move(dimensions)),
        options_(std::move(options)),
        clock_(std::move(clock)),
        scheduler_(scheduler),
        config_(detail::Config::of(key_, dims_, options_)) {
    if (!scheduler_) {
      if constexpr (Clock::is_steady) scheduler_ = &TimerThreadScheduler<Clock>::shared();
    }
    if (options_.on_failure == OnFailure::local_fallback) {
      std::vector<Dimension> local = dims_;
      for (auto& d : local) d.limit = {d.limit.capacity * options_.fallback_share, d.limit.rate * options_.fallback_share};
      fallback_.emplace(std::move(local), clock_, scheduler_);
    }
    if (leasing()) lease_.emplace(dims_.size());
  }
  RedisLimitSet(const RedisLimitSet&) = delete;
  RedisLimitSet& operator=(const RedisLimitSet&) = delete;

  /// Hands an unused lease back (one round trip, bounded by the timeouts).
  /// Operations still in flight must have completed.
  ~RedisLimitSet() {
    detail::ns_array left{};
    if (!lease_ || !lease_->take_leftover(left)) return;
    (void)call(args("refund").add(left));
  }

  const std::string& key() const noexcept { return key_; }
  std::size_t size() const noexcept { return dims_.size(); }
  const std::string& name(std::size_t i) const { return dims_.at(i).name; }
  Limit limit(std::size_t i) const { return dims_.at(i).limit; }
  std::string message(const AcquireResult& r) const {
    return r.message(r.dimension() < dims_.size() ? std::string_view(dims_[r.dimension()].name) : std::string_view());
  }

  // ---- Taking without waiting --------------------------------------------

  /// Takes `costs` if every dimension has them now and no reservation is
  /// pending (from a lease without a round trip when leasing). Blocks the
  /// calling thread for one round trip at most (bounded by the timeouts).
  AcquireResult try_acquire(const Costs& costs) { return try_acquire_detailed(costs).result; }
  /// `try_acquire`, with where the decision came from and the server's instant.
  Decision try_acquire_detailed(const Costs& costs) {
    detail::ns_array iv{};
    if (auto bad = prepare(costs, iv)) return {*bad};
    if (lease_) {
      if (lease_->spend(iv, clock_.now())) return {AcquireResult::acquired(), 0, Source::lease};
      return lease_round_trip(costs, iv);
    }
    const Reply r = call(args("take").add(iv));
    const detail::ScriptReply reply(r, dims_.size());
    if (!reply.answered()) return on_failure(r, costs);
    return decode(reply);
  }
  /// `try_acquire` that returns a Permit holding `estimate` (empty when refused).
  Permit try_acquire_permit(const Costs& estimate) { return Permit(*this, estimate, try_acquire(estimate)); }

  // ---- Waiting -------------------------------------------------------------

  /// Waits (reserving in Redis, then sleeping on the scheduler) until every
  /// dimension has `costs`; `not_now` at once when the wait would exceed
  /// `max_wait`. `done` runs once, on the scheduler's thread, with the
  /// decision. A stop request cancels (see the class comment for what a
  /// cancellation gives back).
  template <class Rep = std::int64_t, class Period = std::nano>
  void async_acquire(const Costs& costs, std::function<void(Decision)> done,
                     std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max(),
                     ::tollgate::stop_token stop = {}) {
    start(costs, detail::wait_ns(max_wait), std::move(stop), std::move(done));
  }

  /// `co_await set.acquire(costs, stop)` yields an AcquireResult, as
  /// LimitSet's (see AcquireOperation for where the coroutine resumes).
  AcquireOperation acquire(const Costs& costs, ::tollgate::stop_token stop = {}) {
    return AcquireOperation(*this, costs, std::int64_t{1} << 62, std::move(stop));
  }
  /// Refuses at once (`not_now`, nothing taken) when the wait would exceed `max_wait`.
  template <class Rep, class Period>
  AcquireOperation acquire_for(const Costs& costs, std::chrono::duration<Rep, Period> max_wait,
                               ::tollgate::stop_token stop = {}) {
    return AcquireOperation(*this, costs, detail::wait_ns(max_wait), std::move(stop));
  }
  /// Like `acquire_for`, but `co_await` yields a Permit holding `estimate`.
  template <class Rep = std::int64_t, class Period = std::nano>
  PermitOperation acquire_permit(const Costs& estimate, std::chrono::duration<Rep, Period> max_wait =
                                                            std::chrono::duration<Rep, Period>::max(),
                                 ::tollgate::stop_token stop = {}) {
    return PermitOperation(*this, estimate, detail::wait_ns(max_wait), std::move(stop));
  }

  /// Blocks the calling thread until the decision (for thread-per-request code).
  template <class Rep = std::int64_t, class Period = std::nano>
  AcquireResult acquire_blocking(const Costs& costs,
                                 std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max(),
                                 ::tollgate::stop_token stop = {}) {
    return acquire_blocking_detailed(costs, max_wait, std::move(stop)).result;
  }
  /// `acquire_blocking`, with where the decision came from.
  template <class Rep = std::int64_t, class Period = std::nano>
  Decision acquire_blocking_detailed(const Costs& costs,
                                     std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max(),
                                     ::tollgate::stop_token stop = {}) {
    std::promise<Decision> promise;
    auto future = promise.get_future();
    start(costs, detail::wait_ns(max_wait), std::move(stop), [&promise](Decision d) { promise.set_value(d); });
    return future.get();
  }

  // ---- Settling, feedback ------------------------------------------------------

  /// Gives `costs` back, never above capacity; credited only while no
  /// reservation is pending (see the class comment). Returns what was
  /// credited per dimension (all zero when Redis failed). Throws
  /// `std::invalid_argument` for a wrong length or a bad value.
  Costs refund(const Costs& costs) {
    const Reply r = call(args("refund").add(amounts("RedisLimitSet::refund", costs)));
    const detail::ScriptReply reply(r, dims_.size());
    Costs credited = Costs::zeros(dims_.size());
    if (!reply.has_amounts()) return credited;
    for (std::size_t d = 0; d < dims_.size(); ++d)
      credited[d] = std::min(costs[d], static_cast<double>(reply.amount(d)) * dims_[d].limit.rate / 1e9);
    return credited;
  }

  /// Takes `costs` even where they are not there: a debt for usage already
  /// spent upstream, delaying every later acquisition; at most
  /// `RedisLimitOptions::max_debt` of it per dimension. Returns false when
  /// Redis failed (or the debt would pass 2^52 ns); with a local fallback the
  /// debt is charged there then.
  bool charge(const Costs& costs) {
    const Reply r = call(args("charge").add(amounts("RedisLimitSet::charge", costs)).add(config_.max_debt_ns));
    if (!r || r.values.empty()) {
      if (fallback_) fallback_->charge(costs);
      return false;
    }
    return detail::ScriptReply(r, dims_.size()).code() == 0;
  }

  /// Refunds `estimate - actual` or charges `actual - estimate`, per dimension.
  bool settle(const Costs& estimate, const Costs& actual) {
    (void)amounts("RedisLimitSet::settle", estimate);
    (void)amounts("RedisLimitSet::settle", actual);
    Costs back = Costs::zeros(dims_.size()), more = Costs::zeros(dims_.size());
    for (std::size_t d = 0; d < dims_.size(); ++d) {
      if (actual[d] < estimate[d]) back[d] = estimate[d] - actual[d];
      else more[d] = actual[d] - estimate[d];
    }
    bool ok = true;
    if (std::any_of(back.begin(), back.end(), [](double v) { return v > 0; })) (void)refund(back);
    if (std::any_of(more.begin(), more.end(), [](double v) { return v > 0; })) ok = charge(more);
    return ok;
  }

  /// An upstream said "retry after `d`": no new admission before then (server
  /// time), for every process. Capped at 24 h. Returns false when Redis failed
  /// (the local fallback, if any, is paused instead).
  template <class Rep, class Period>
  bool pause_for(std::chrono::duration<Rep, Period> pause) {
    const std::int64_t d = std::min(detail::wait_ns(pause), std::int64_t{86'400} * 1'000'000'000);
    if (call(args("pause").add(d))) return true;
    if (fallback_) fallback_->pause_for(std::chrono::nanoseconds(d));
    return false;
  }

  /// Lowers dimension `i`'s unreserved tokens to at most `remaining` (an
  /// upstream's remaining count), never raises them. Returns false when Redis
  /// failed. Throws `std::out_of_range` / `std::invalid_argument` for bad input.
  bool limit_remaining(std::size_t i, double remaining) {
    if (i >= dims_.size()) throw std::out_of_range("RedisLimitSet::limit_remaining: dimension out of range");
    tollgate::detail::check_amount("RedisLimitSet::limit_remaining", "remaining", remaining);
    if (remaining >= dims_[i].limit.capacity) return true;
    return bool(call(args("remaining").add(static_cast<std::int64_t>(i)).add(
        detail::refill_ns_down(remaining, dims_[i].limit.rate))));
  }

  /// Unreserved tokens per dimension in Redis now (0 while a reservation is
  /// pending or the set is paused); nullopt when Redis failed.
  std::optional<Costs> available() {
    const Reply r = call(args("peek"));
    const detail::ScriptReply reply(r, dims_.size());
    if (!reply.has_amounts()) return std::nullopt;
    Costs c = Costs::zeros(dims_.size());
    for (std::size_t d = 0; d < dims_.size(); ++d)
      c[d] = std::min(dims_[d].limit.capacity, static_cast<double>(reply.amount(d)) * dims_[d].limit.rate / 1e9);
    return c;
  }

  /// Counters since construction.
  struct Stats {
    std::uint64_t lease_hits = 0;          ///< acquisitions served by the lease, no round trip
    std::uint64_t fallbacks = 0;           ///< decisions made without Redis (fallback or fail_open/closed)
    std::uint64_t returned_cancels = 0;    ///< cancelled reservations whose tokens went back exactly
    std::uint64_t unreturned_cancels = 0;  ///< cancelled reservations behind others (tokens not returned)
  };
  Stats stats() const noexcept {
    return {lease_ ? lease_->hits() : 0, fallbacks_.load(std::memory_order_relaxed),
            returned_cancels_.load(std::memory_order_relaxed), unreturned_cancels_.load(std::memory_order_relaxed)};
  }

 private:
  friend struct detail::ReserveOp<RedisLimitSet>;
  friend class redis::AcquireOperation<RedisLimitSet>;
  using Op = detail::ReserveOp<RedisLimitSet>;
  using OpState = detail::OpState;
  static constexpr std::int64_t max_tau_ns = detail::Config::max_tau_ns;

  static constexpr typename PermitIssuer<Costs>::Settling kSettling{
      [](const PermitIssuer<Costs>& self, const Costs& estimate, const Costs& actual) {
        const auto& s = static_cast<const RedisLimitSet&>(self);
        (void)s.amounts("Permit::settle", estimate);
        (void)s.amounts("Permit::settle", actual);
      },
      [](PermitIssuer<Costs>& self, const Costs& estimate, const Costs& actual) {
        (void)static_cast<RedisLimitSet&>(self).settle(estimate, actual);
      }};

  // ---- Driving the asynchronous operation (operation.hpp) ----------------------

  std::shared_ptr<Op> make_op(std::function<void(Decision)> done) {
    auto op = std::make_shared<Op>();
    op->set = this;
    op->timer.fire = &Op::fire;
    op->timer.context = op.get();
    op->sink = std::move(done);
    return op;
  }

  void start(const Costs& costs, std::int64_t max_wait_ns, ::tollgate::stop_token stop, std::function<void(Decision)> done) {
    if (!scheduler_) return done({AcquireResult::failed(Status::invalid, Reason::no_scheduler)});
    Op::launch(make_op(std::move(done)), costs, max_wait_ns, std::move(stop));
  }

  // ---- Arguments -------------------------------------------------------------

  detail::ScriptArgs args(const char* op) const { return detail::ScriptArgs(op, dims_.size(), config_.tau, options_); }
  template <class Args>
  Reply call(Args&& a) {
    return connection_.script(key_, a.take());
  }

  // Checks a cost vector; fills `iv` and returns nothing when usable.
  std::optional<AcquireResult> prepare(const Costs& costs, detail::ns_array& iv) const {
    if (costs.size() != dims_.size())
      return AcquireResult::failed(Status::invalid, Reason::wrong_dimension_count, double(costs.size()));
    for (std::size_t d = 0; d < dims_.size(); ++d) {
      const double c = costs[d];
      AcquireResult chk = tollgate::detail::check_cost(c, config_.capacity[d]);
      if (!chk) return AcquireResult::failed(chk.status(), chk.reason_code(), c, static_cast<std::uint8_t>(d));
      iv[d] = std::min(detail::refill_ns_up(c, dims_[d].limit.rate), config_.tau[d]);
    }
    return std::nullopt;
  }
  // Checks amounts to give back or charge (named for `who`): their refill times.
  detail::ns_array amounts(const char* who, const Costs& costs) const {
    if (costs.size() != dims_.size()) {
      std::ostringstream os;
      os << who << ": " << costs.size() << " costs for " << dims_.size() << " dimensions";
      throw std::invalid_argument(os.str());
    }
    detail::ns_array iv{};
    for (std::size_t d = 0; d < dims_.size(); ++d) {
      tollgate::detail::check_amount(who, "costs", costs[d]);
      iv[d] = std::min(detail::refill_ns_up(costs[d], dims_[d].limit.rate), max_tau_ns);
    }
    return iv;
  }

  // ---- Decisions ----------------------------------------------------------------

  // The local fallback decides: the first time after Redis answered, it
  // starts empty (it cannot know what the other processes took meanwhile;
  // starting full admitted a burst too many when Redis went away).
  AcquireResult fallback_try(const Costs& costs) {
    if (!in_fallback_.exchange(true, std::memory_order_acq_rel))
      for (std::size_t d = 0; d < dims_.size(); ++d) fallback_->limit_remaining(d, 0);
    return fallback_->try_acquire(costs);
  }
  // Redis answered: the next failure starts the fallback afresh (empty).
  void store_answered() noexcept {
    if (fallback_) in_fallback_.store(false, std::memory_order_relaxed);
  }

  Decision decode(const detail::ScriptReply& reply) {
    store_answered();
    if (reply.code() == 0) return {AcquireResult::acquired(), reply.server_time_ns(), Source::store};
    return {AcquireResult::not_now(std::chrono::nanoseconds(reply.wait())), reply.server_time_ns(), Source::store};
  }

  Decision on_failure(const Reply& r, const Costs& costs) {
    fallbacks_.fetch_add(1, std::memory_order_relaxed);
    const Reason why = r.status == ReplyStatus::timeout ? Reason::store_timeout
                       : r.status == ReplyStatus::error || r.status == ReplyStatus::ok ? Reason::store_error  // ok: a malformed answer
                       : r.status == ReplyStatus::closed ? Reason::store_closed
                                                        : Reason::store_unreachable;
    switch (options_.on_failure) {
      case OnFailure::fail_open: return {AcquireResult::acquired(), 0, Source::fail_open};
      case OnFailure::local_fallback: return {fallback_try(costs), 0, Source::fallback};
      case OnFailure::fail_closed: break;
    }
    return {AcquireResult::failed(Status::unavailable, why), 0, Source::store};
  }

  // ---- Leasing (lease.hpp) ---------------------------------------------------------

  bool leasing() const noexcept { return options_.lease.size() != 0; }

  Decision lease_round_trip(const Costs& costs, const detail::ns_array& iv) {
    detail::ns_array back{};
    lease_->take_leftover(back);  // expired or not, unspent tokens go back first
    const time_point sent = clock_.now();
    const Reply r = call(args("lease").add(back).add(config_.lease_iv).add(iv));
    const detail::ScriptReply reply(r, dims_.size());
    if (!reply.answered()) return on_failure(r, costs);
    Decision d = decode(reply);
    if (!d || !reply.has_amounts()) return d;
    lease_->add(reply, iv, sent + std::chrono::duration_cast<typename time_point::duration>(options_.lease_lifetime));
    return d;
  }

  Connection& connection_;
  std::string key_;
  std::vector<Dimension> dims_;
  RedisLimitOptions options_;
  Clock clock_;
  scheduler_type* scheduler_;
  detail::Config config_;
  std::optional<LimitSet<Clock, std::mutex>> fallback_;
  std::atomic<bool> in_fallback_{false};           // the fallback decided since Redis last answered
  std::optional<detail::Lease<Clock>> lease_;
  std::atomic<std::uint64_t> fallbacks_{0}, returned_cancels_{0}, unreturned_cancels_{0};
};

static_assert(limit_set_like<RedisLimitSet<>>);

}  // namespace tollgate::redis
