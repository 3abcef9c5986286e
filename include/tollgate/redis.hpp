#pragma once
// redis::RedisLimitSet: a limit set (one or more token buckets taken all or
// nothing) whose state lives in Redis, shared by every process and host that
// names the same key. Optional: CMake target `tollgate::redis` (hiredis).
//
//     redis::Connection redis({.host = "127.0.0.1", .port = 6379});
//     redis::RedisLimitSet<> upstream(redis, "openai:org-1",
//         {{"requests", Limit::per_minute(500)}, {"tokens", Limit::per_minute(90'000)}});
//     AcquireResult r = co_await upstream.acquire({1, prompt + max_tokens}, 5s);

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <coroutine>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include "stop_token.hpp"
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "costs.hpp"
#include "limit.hpp"
#include "limit_set.hpp"
#include "redis_connection.hpp"
#include "result.hpp"
#include "scheduler.hpp"
#include "timer_thread_scheduler.hpp"

namespace tollgate::redis {

/// What an acquisition does when Redis cannot be reached or does not answer
/// within the connection's timeouts.
enum class OnFailure : std::uint8_t {
  fail_closed,     ///< refuse: `Status::unavailable`, the reason naming the failure
  fail_open,       ///< admit (the upstream's own limits are the last line)
  local_fallback,  ///< decide with an in-process LimitSet at `fallback_share` of each limit
};

/// What a RedisLimitSet reads when its key is missing (see RedisLimitOptions).
enum class MissingKey : std::uint8_t { full, empty };

/// How a RedisLimitSet behaves beyond its limits.
struct RedisLimitOptions {
  OnFailure on_failure = OnFailure::fail_closed;
  /// For `local_fallback`: this process's share of every limit while Redis is
  /// away (e.g. 1/replicas), in (0, 1].
  double fallback_share = 0.5;
  /// Leasing (off when empty): when this process finds no local tokens, it
  /// takes up to `lease[i]` of dimension `i` from Redis in the same round
  /// trip as the request and spends them locally for at most
  /// `lease_lifetime`; what is left is handed back on the next round trip.
  Costs lease{};
  std::chrono::milliseconds lease_lifetime{1000};
  /// The most debt a charge (or a settle's overrun) may leave per dimension,
  /// in tokens; empty: one capacity each (as LimitSet::set_max_debt).
  Costs max_debt{};
  /// What a missing key means. `full` (the default): a fresh set, and keys
  /// expire once full again, so idle sets cost nothing; but state lost by a
  /// FLUSHALL, a restart without persistence or a failover to a replica that
  /// lacks the key then reads as a full bucket: one extra burst per loss.
  /// `empty`: a missing key reads as empty at the current server time (under-
  /// rather than over-admission after a loss), and keys never expire (delete
  /// a retired set's key yourself).
  MissingKey missing_key = MissingKey::full;
  /// Tests and replays only: the instant (ns since the Unix epoch) every call
  /// sends instead of letting the script read the server's TIME. Keys then
  /// expire no sooner than 10 minutes (expiry runs on the server's clock).
  std::function<std::chrono::nanoseconds()> time_override{};
};

/// Where a decision came from.
enum class Source : std::uint8_t {
  store,      ///< the Redis script
  lease,      ///< this process's lease (no round trip)
  fallback,   ///< the local fallback set (Redis unavailable)
  fail_open,  ///< admitted without a decision (Redis unavailable, fail_open)
};

/// An AcquireResult with what only a distributed set knows.
struct Decision {
  AcquireResult result = AcquireResult::failed(Status::invalid, Reason::none);
  /// For `Source::store`: the server's instant of the grant (a reservation's
  /// due instant) or of the refusal, in ns since the Unix epoch.
  std::int64_t server_time_ns = 0;
  Source source = Source::store;
  explicit operator bool() const noexcept { return result.ok(); }
};

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
class RedisLimitSet {
 public:
  using time_point = typename Clock::time_point;
  using scheduler_type = Scheduler<Clock>;

  /// Throws `std::invalid_argument` for bad dimensions (as LimitSet), an empty
  /// key, a refill window (capacity / rate) beyond 2^51 ns (26 days; the
  /// script's integers must stay exact), a bad fallback share, or a lease
  /// that does not fit (see README, "Redis": with leasing every capacity is
  /// lowered by rate * lease_lifetime).
  RedisLimitSet(Connection& connection, std::string key, std::vector<Dimension> dimensions,
                RedisLimitOptions options = {}, scheduler_type* scheduler = nullptr, Clock clock = Clock{})
      : connection_(connection),
        key_(std::move(key)),
        dims_(std::move(dimensions)),
        options_(std::move(options)),
        clock_(std::move(clock)),
        scheduler_(scheduler) {
    validate();
    if (!scheduler_) {
      if constexpr (Clock::is_steady) scheduler_ = &TimerThreadScheduler<Clock>::shared();
    }
    if (options_.on_failure == OnFailure::local_fallback) {
      std::vector<Dimension> local = dims_;
      for (auto& d : local) d.limit = {d.limit.capacity * options_.fallback_share, d.limit.rate * options_.fallback_share};
      fallback_.emplace(std::move(local), clock_, scheduler_);
    }
  }
  RedisLimitSet(const RedisLimitSet&) = delete;
  RedisLimitSet& operator=(const RedisLimitSet&) = delete;

  /// Hands an unused lease back (one round trip, bounded by the timeouts).
  /// Operations still in flight must have completed.
  ~RedisLimitSet() {
    if (!leasing()) return;
    std::array<std::int64_t, max_dimensions> left{};
    if (!take_lease_leftover(left)) return;
    auto args = header("refund");
    for (std::size_t d = 0; d < dims_.size(); ++d) args.push_back(std::to_string(left[d]));
    (void)connection_.script(key_, std::move(args));
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
  /// A single-dimension set's `try_acquire(cost)`.
  AcquireResult try_acquire(double cost) { return try_acquire(Costs{cost}); }
  Decision try_acquire_detailed(const Costs& costs) {
    Request q;
    if (auto bad = prepare(costs, q)) return {*bad};
    if (leasing()) {
      if (spend_lease(q)) return {AcquireResult::acquired(), 0, Source::lease};
      return lease_round_trip(q);
    }
    auto args = header("take");
    append(args, q.iv);
    const Reply r = connection_.script(key_, std::move(args));
    if (!r || r.values.size() < 5) return on_failure(r, costs);
    return decode(r);
  }

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
    start(costs, to_ns(max_wait), std::move(stop), std::move(done));
  }

  class [[nodiscard]] AcquireOperation;

  /// `co_await set.acquire(costs, max_wait, stop)` yields an AcquireResult;
  /// the coroutine resumes on the scheduler's thread (at once, without
  /// suspending, when a lease covers it). Destroying the suspended coroutine
  /// cancels the reservation.
  template <class Rep = std::int64_t, class Period = std::nano>
  AcquireOperation acquire(const Costs& costs,
                           std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max(),
                           ::tollgate::stop_token stop = {}) {
    return AcquireOperation(*this, costs, to_ns(max_wait), std::move(stop));
  }

  /// Blocks the calling thread until the decision (for thread-per-request code).
  template <class Rep = std::int64_t, class Period = std::nano>
  Decision acquire_blocking(const Costs& costs,
                            std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max(),
                            ::tollgate::stop_token stop = {}) {
    std::promise<Decision> promise;
    auto future = promise.get_future();
    start(costs, to_ns(max_wait), std::move(stop), [&promise](Decision d) { promise.set_value(d); });
    return future.get();
  }

  // ---- Settling, feedback ------------------------------------------------------

  /// Gives `costs` back, never above capacity; credited only while no
  /// reservation is pending (see the class comment). Returns what was
  /// credited per dimension (all zero when Redis failed). Throws
  /// `std::invalid_argument` for a wrong length or a bad value.
  Costs refund(const Costs& costs) {
    const Reply r = amounts_call("refund", "RedisLimitSet::refund", costs);
    Costs credited = Costs::zeros(dims_.size());
    if (!r || r.values.size() < 5 + dims_.size()) return credited;
    for (std::size_t d = 0; d < dims_.size(); ++d)
      credited[d] = std::min(costs[d], static_cast<double>(r.values[5 + d]) * dims_[d].limit.rate / 1e9);
    return credited;
  }

  /// Takes `costs` even where they are not there: a debt for usage already
  /// spent upstream, delaying every later acquisition; at most
  /// `RedisLimitOptions::max_debt` of it per dimension. Returns false when
  /// Redis failed (or the debt would pass 2^52 ns); with a local fallback the
  /// debt is charged there then.
  bool charge(const Costs& costs) {
    Request q;
    check_amounts("RedisLimitSet::charge", costs, q);
    auto args = header("charge");
    append(args, q.iv);
    append(args, max_debt_ns_);
    const Reply r = connection_.script(key_, std::move(args));
    if (!r || r.values.empty()) {
      if (fallback_) fallback_->charge(costs);
      return false;
    }
    return r.values[0] == 0;
  }

  /// Refunds `estimate - actual` or charges `actual - estimate`, per dimension.
  bool settle(const Costs& estimate, const Costs& actual) {
    Request a, b;
    check_amounts("RedisLimitSet::settle", estimate, a);
    check_amounts("RedisLimitSet::settle", actual, b);
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
  bool pause_for(std::chrono::nanoseconds d) {
    if (d < std::chrono::nanoseconds::zero()) d = std::chrono::nanoseconds::zero();
    d = std::min<std::chrono::nanoseconds>(d, std::chrono::hours(24));
    auto args = header("pause");
    args.push_back(std::to_string(d.count()));
    const Reply r = connection_.script(key_, std::move(args));
    if (!r) {
      if (fallback_) fallback_->pause_for(d);
      return false;
    }
    return true;
  }

  /// Lowers dimension `i`'s unreserved tokens to at most `remaining` (an
  /// upstream's remaining count), never raises them. Returns false when Redis
  /// failed. Throws `std::out_of_range` / `std::invalid_argument` for bad input.
  bool limit_remaining(std::size_t i, double remaining) {
    if (i >= dims_.size()) throw std::out_of_range("RedisLimitSet::limit_remaining: dimension out of range");
    tollgate::detail::check_amount("RedisLimitSet::limit_remaining", "remaining", remaining);
    if (remaining >= dims_[i].limit.capacity) return true;
    auto args = header("remaining");
    args.push_back(std::to_string(i));
    args.push_back(std::to_string(floor_ns(remaining, dims_[i].limit.rate)));
    return bool(connection_.script(key_, std::move(args)));
  }

  /// Unreserved tokens per dimension in Redis now (0 while a reservation is
  /// pending or the set is paused); nullopt when Redis failed.
  std::optional<Costs> available() {
    const Reply r = connection_.script(key_, header("peek"));
    if (!r || r.values.size() < 5 + dims_.size()) return std::nullopt;
    Costs c = Costs::zeros(dims_.size());
    for (std::size_t d = 0; d < dims_.size(); ++d)
      c[d] = std::min(dims_[d].limit.capacity, static_cast<double>(r.values[5 + d]) * dims_[d].limit.rate / 1e9);
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
    return {lease_hits_.load(std::memory_order_relaxed), fallbacks_.load(std::memory_order_relaxed),
            returned_cancels_.load(std::memory_order_relaxed), unreturned_cancels_.load(std::memory_order_relaxed)};
  }

 private:
  using ns_array = std::array<std::int64_t, max_dimensions>;
  static constexpr std::int64_t max_tau_ns = std::int64_t{1} << 51;
  static constexpr std::int64_t max_debt_limit_ns = std::int64_t{1} << 52;

  struct Request {
    Costs costs;
    ns_array iv{};
  };

  // ---- The asynchronous operation ------------------------------------------
  //
  // Shared by the I/O thread (replies), the scheduler (the wake-up) and the
  // stop callback. States: sent -> (reserved) waiting -> done, or any ->
  // finishing (a result to deliver on the scheduler) -> done; a stop turns
  // sent into cancel_requested (the reply then cancels) and waiting into
  // cancelling (a cancel call decides).
  enum class OpState : int { sent, cancel_requested, waiting, cancelling, retry_wait, finishing, done };

  struct Op : std::enable_shared_from_this<Op> {
    RedisLimitSet* set = nullptr;
    Request q;
    std::int64_t max_wait_ns = 0;
    time_point deadline{};
    bool bounded = false;
    std::atomic<OpState> state{OpState::sent};
    TimerNode<Clock> timer;
    std::mutex armed_mutex;          // armed_self is set, taken and reset from several threads
    std::shared_ptr<Op> armed_self;  // keeps the op alive while its timer is armed
    Decision result;
    std::int64_t epoch = 0, grant = 0, f_old = 0;
    ns_array t_old{}, t_new{};
    std::mutex sink_mutex;
    std::function<void(Decision)> sink;
    std::optional<::tollgate::stop_callback<std::function<void()>>> stop_cb;

    bool cas(OpState from, OpState to) { return state.compare_exchange_strong(from, to, std::memory_order_acq_rel); }

    // Arms the timer while the state is still `expected` (a stop may have
    // moved it on since: then nothing is armed). Under armed_mutex, which the
    // firing also takes; never held while disarming (disarm may wait for a
    // firing in progress).
    void arm(time_point due, OpState expected) {
      std::lock_guard lock(armed_mutex);
      if (state.load(std::memory_order_acquire) != expected) return;
      armed_self = this->shared_from_this();
      set->scheduler_->arm(timer, due);
    }
    // The result is decided: deliver it on the scheduler's thread.
    void finish(Decision d) {
      result = d;
      state.store(OpState::finishing, std::memory_order_release);
      arm(set->clock_.now(), OpState::finishing);
    }
    void deliver() {
      std::function<void(Decision)> f;
      {
        std::lock_guard lock(sink_mutex);
        f = std::move(sink);
        sink = nullptr;
      }
      if (f) f(result);
    }
    static void fire(void* context) noexcept {
      Op* op = static_cast<Op*>(context);
      std::shared_ptr<Op> self;
      {
        std::lock_guard lock(op->armed_mutex);
        self = std::move(op->armed_self);
      }
      switch (op->state.load(std::memory_order_acquire)) {
        case OpState::waiting:
          if (!op->cas(OpState::waiting, OpState::done)) return;  // a stop won
          op->result = {AcquireResult::acquired(), op->epoch * 1'000'000'000 + op->grant, Source::store};
          op->deliver();
          return;
        case OpState::finishing:
          op->state.store(OpState::done, std::memory_order_release);
          op->deliver();
          return;
        case OpState::retry_wait:
          if (!op->cas(OpState::retry_wait, OpState::sent)) return;
          op->set->send_reserve(*op);
          return;
        default: return;
      }
    }
    // A stop request or an abandoned awaitable.
    void cancel() {
      for (;;) {
        OpState s = state.load(std::memory_order_acquire);
        if (s == OpState::sent) {
          if (cas(s, OpState::cancel_requested)) return;  // the reply will cancel
        } else if (s == OpState::waiting || s == OpState::retry_wait) {
          if (!cas(s, OpState::cancelling)) continue;
          set->scheduler_->disarm(timer);  // the wake-up will not run (or ran and saw cancelling)
          auto self = this->shared_from_this();
          {
            std::lock_guard lock(armed_mutex);
            armed_self.reset();
          }
          if (s == OpState::waiting) set->send_cancel(std::move(self));
          else finish({AcquireResult::failed(Status::cancelled, Reason::stop_requested)});
          return;
        } else {
          return;  // already cancelling, finishing or done
        }
      }
    }
  };

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
    launch(make_op(std::move(done)), costs, max_wait_ns, std::move(stop));
  }

  void launch(const std::shared_ptr<Op>& op, const Costs& costs, std::int64_t max_wait_ns, ::tollgate::stop_token stop) {
    op->max_wait_ns = max_wait_ns;
    if (auto bad = prepare(costs, op->q)) return op->finish({*bad});
    if (stop.stop_requested())
      return op->finish({AcquireResult::failed(Status::cancelled, Reason::stop_requested)});
    if (leasing() && spend_lease(op->q)) return op->finish({AcquireResult::acquired(), 0, Source::lease});
    const auto now = clock_.now();
    op->bounded = max_wait_ns < std::int64_t{1} << 62 && now.time_since_epoch() <
                  time_point::duration::max() - std::chrono::duration_cast<typename time_point::duration>(std::chrono::nanoseconds(max_wait_ns));
    if (op->bounded) op->deadline = now + std::chrono::duration_cast<typename time_point::duration>(std::chrono::nanoseconds(max_wait_ns));
    if (stop.stop_possible()) {
      Op* raw = op.get();
      op->stop_cb.emplace(std::move(stop), std::function<void()>([raw] { raw->cancel(); }));
    }
    if (op->state.load() == OpState::cancel_requested)  // stopped while registering
      return op->finish({AcquireResult::failed(Status::cancelled, Reason::stop_requested)});
    send_reserve(*op);
  }

  void send_reserve(Op& op) {
    std::int64_t wait = op.max_wait_ns;
    if (op.bounded) {
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(op.deadline - clock_.now()).count();
      wait = std::max<std::int64_t>(0, left);
    }
    auto args = header("reserve");
    append(args, op.q.iv);
    args.push_back(std::to_string(std::min<std::int64_t>(wait, std::int64_t{1} << 52)));
    connection_.script_async(key_, std::move(args),
                             [self = op.shared_from_this()](Reply&& r) { self->set->on_reserved(*self, r); });
  }

  void on_reserved(Op& op, const Reply& r) {
    const bool stopped = op.state.load(std::memory_order_acquire) == OpState::cancel_requested;
    if (!r || r.values.size() < 5) {
      Decision d = on_failure(r, op.q.costs);
      if (d.result.status() == Status::not_now && !stopped && op.bounded &&
          clock_.now() + d.result.retry_after() <= op.deadline && op.cas(OpState::sent, OpState::retry_wait)) {
        op.arm(clock_.now() + std::chrono::duration_cast<typename time_point::duration>(d.result.retry_after()),
               OpState::retry_wait);
        return;
      }
      if (stopped && !d) d = {AcquireResult::failed(Status::cancelled, Reason::stop_requested)};
      return op.finish(d);
    }
    store_answered();
    if (r.values[0] != 0) {  // refused: the wait would exceed max_wait
      if (stopped) return op.finish({AcquireResult::failed(Status::cancelled, Reason::stop_requested)});
      return op.finish(decode(r));
    }
    const std::size_t n = dims_.size();
    op.epoch = r.values[3];
    op.grant = r.values[4];
    const std::int64_t wait = r.values[1];
    if (r.values.size() >= 6 + 2 * n) {
      op.f_old = r.values[5];
      for (std::size_t d = 0; d < n; ++d) {
        op.t_old[d] = r.values[6 + d];
        op.t_new[d] = r.values[6 + n + d];
      }
    }
    if (wait <= 0)  // granted now: a stop that came meanwhile is too late
      return op.finish({AcquireResult::acquired(), op.epoch * 1'000'000'000 + op.grant, Source::store});
    if (stopped) {
      op.state.store(OpState::cancelling, std::memory_order_release);
      return send_cancel(op.shared_from_this());
    }
    if (!op.cas(OpState::sent, OpState::waiting)) {  // a stop slipped in since `stopped` was read
      op.state.store(OpState::cancelling, std::memory_order_release);
      return send_cancel(op.shared_from_this());
    }
    op.arm(clock_.now() + std::chrono::duration_cast<typename time_point::duration>(std::chrono::nanoseconds(wait)),
           OpState::waiting);
  }

  void send_cancel(std::shared_ptr<Op> op) {
    auto args = header("cancel");
    args.push_back(std::to_string(op->epoch));
    args.push_back(std::to_string(op->grant));
    args.push_back(std::to_string(op->f_old));
    append(args, op->t_old);
    append(args, op->t_new);
    connection_.script_async(key_, std::move(args), [op](Reply&& r) {
      RedisLimitSet& s = *op->set;
      if (r && !r.values.empty() && r.values[0] == 2)  // granted before the cancel arrived
        return op->finish({AcquireResult::acquired(), op->epoch * 1'000'000'000 + op->grant, Source::store});
      if (r && !r.values.empty() && r.values[0] == 0) s.returned_cancels_.fetch_add(1, std::memory_order_relaxed);
      else s.unreturned_cancels_.fetch_add(1, std::memory_order_relaxed);
      op->finish({AcquireResult::failed(Status::cancelled, Reason::stop_requested)});
    });
  }

 public:
  /// The awaitable of `acquire`.
  class [[nodiscard]] AcquireOperation {
   public:
    AcquireOperation(const AcquireOperation&) = delete;
    AcquireOperation& operator=(const AcquireOperation&) = delete;
    ~AcquireOperation() {
      if (auto op = op_.lock()) {
        {
          std::lock_guard lock(op->sink_mutex);
          op->sink = nullptr;  // the coroutine is gone: resume nothing
        }
        op->cancel();
      }
    }
    bool await_ready() {
      Request q;
      if (auto bad = set_.prepare(costs_, q)) {
        result_ = *bad;
        return true;
      }
      if (set_.leasing() && set_.spend_lease(q)) {
        result_ = AcquireResult::acquired();
        return true;
      }
      return false;
    }
    bool await_suspend(std::coroutine_handle<> h) {
      if (!set_.scheduler_) {
        result_ = AcquireResult::failed(Status::invalid, Reason::no_scheduler);
        return false;
      }
      auto op = set_.make_op([this, h](Decision d) {
        result_ = d.result;
        h.resume();
      });
      op_ = op;  // before launching: the op may complete on another thread at once
      set_.launch(op, costs_, max_wait_ns_, std::move(stop_));
      return true;
    }
    AcquireResult await_resume() const noexcept { return result_; }

   private:
    friend class RedisLimitSet;
    AcquireOperation(RedisLimitSet& set, const Costs& costs, std::int64_t max_wait_ns, ::tollgate::stop_token stop)
        : set_(set), costs_(costs), max_wait_ns_(max_wait_ns), stop_(std::move(stop)) {}
    RedisLimitSet& set_;
    Costs costs_;
    std::int64_t max_wait_ns_;
    ::tollgate::stop_token stop_;
    std::weak_ptr<Op> op_;
    AcquireResult result_;
  };

 private:
  // ---- Arguments -------------------------------------------------------------

  std::vector<std::string> header(const char* op) const {
    std::vector<std::string> args;
    args.reserve(5 + 3 * dims_.size());
    args.emplace_back(op);
    if (options_.time_override) {
      const std::int64_t t = options_.time_override().count();
      args.push_back(std::to_string(t / 1'000'000'000));
      args.push_back(std::to_string(t % 1'000'000'000));
    } else {
      args.emplace_back();
      args.emplace_back();
    }
    args.push_back(std::to_string(dims_.size()));
    for (std::size_t d = 0; d < dims_.size(); ++d) args.push_back(std::to_string(tau_[d]));
    args.emplace_back(options_.missing_key == MissingKey::empty ? "E" : "");
    return args;
  }
  void append(std::vector<std::string>& args, const ns_array& v) const {
    for (std::size_t d = 0; d < dims_.size(); ++d) args.push_back(std::to_string(v[d]));
  }

  // Refill times in whole ns, saturating at 2^62 (callers cap them lower):
  // an absurd cost never converts an out-of-range double to an integer.
  static std::int64_t saturate_ns(double ns) noexcept {
    constexpr double top = 4611686018427387904.0;  // 2^62
    if (!(ns < top)) return std::int64_t{1} << 62;
    return ns > 0 ? static_cast<std::int64_t>(ns) : 0;
  }
  static std::int64_t ceil_ns(double cost, double rate) noexcept { return saturate_ns(std::ceil(cost * 1e9 / rate)); }
  static std::int64_t floor_ns(double cost, double rate) noexcept { return saturate_ns(std::floor(cost * 1e9 / rate)); }
  template <class Rep, class Period>
  static std::int64_t to_ns(std::chrono::duration<Rep, Period> d) {
    if (d <= std::chrono::duration<Rep, Period>::zero()) return 0;
    if (d >= std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(std::chrono::nanoseconds(std::int64_t{1} << 62)))
      return std::int64_t{1} << 62;
    return std::chrono::ceil<std::chrono::nanoseconds>(d).count();
  }

  // Checks a cost vector; fills `q` and returns nothing when usable.
  std::optional<AcquireResult> prepare(const Costs& costs, Request& q) const {
    if (costs.size() != dims_.size())
      return AcquireResult::failed(Status::invalid, Reason::wrong_dimension_count, double(costs.size()));
    for (std::size_t d = 0; d < dims_.size(); ++d) {
      const double c = costs[d];
      AcquireResult chk = tollgate::detail::check_cost(c, capacity_[d]);
      if (!chk)
        return AcquireResult::failed(chk.status(), chk.reason_code(), c, static_cast<std::uint8_t>(d));
      q.iv[d] = std::min(ceil_ns(c, dims_[d].limit.rate), tau_[d]);
    }
    q.costs = costs;
    return std::nullopt;
  }
  // One script call `op` with `costs` (checked as amounts, named for `who`).
  Reply amounts_call(const char* op, const char* who, const Costs& costs) {
    Request q;
    check_amounts(who, costs, q);
    auto args = header(op);
    append(args, q.iv);
    return connection_.script(key_, std::move(args));
  }
  void check_amounts(const char* who, const Costs& costs, Request& q) const {
    if (costs.size() != dims_.size()) {
      std::ostringstream os;
      os << who << ": " << costs.size() << " costs for " << dims_.size() << " dimensions";
      throw std::invalid_argument(os.str());
    }
    for (std::size_t d = 0; d < dims_.size(); ++d) {
      tollgate::detail::check_amount(who, "costs", costs[d]);
      q.iv[d] = std::min(ceil_ns(costs[d], dims_[d].limit.rate), max_tau_ns);
    }
    q.costs = costs;
  }

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

  Decision decode(const Reply& r) {
    store_answered();
    const std::int64_t at = r.values[3] * 1'000'000'000 + r.values[4];
    if (r.values[0] == 0) return {AcquireResult::acquired(), at, Source::store};
    return {AcquireResult::not_now(std::chrono::nanoseconds(r.values[1])), at, Source::store};
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

  // ---- Leasing -------------------------------------------------------------------

  bool leasing() const noexcept { return options_.lease.size() != 0; }

  bool spend_lease(const Request& q) {
    std::lock_guard lock(lease_mutex_);
    if (!(clock_.now() < lease_expiry_)) return false;
    for (std::size_t d = 0; d < dims_.size(); ++d)
      if (lease_left_[d] < q.iv[d]) return false;
    for (std::size_t d = 0; d < dims_.size(); ++d) lease_left_[d] -= q.iv[d];
    lease_hits_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  bool take_lease_leftover(ns_array& left) {
    std::lock_guard lock(lease_mutex_);
    left = lease_left_;
    lease_left_ = {};
    return std::any_of(left.begin(), left.end(), [](std::int64_t v) { return v > 0; });
  }

  Decision lease_round_trip(const Request& q) {
    ns_array back{};
    take_lease_leftover(back);  // expired or not, unspent tokens go back first
    const time_point sent = clock_.now();
    auto args = header("lease");
    append(args, back);
    append(args, lease_iv_);
    append(args, q.iv);
    const Reply r = connection_.script(key_, std::move(args));
    if (!r || r.values.size() < 5) return on_failure(r, q.costs);
    Decision d = decode(r);
    if (!d || r.values.size() < 5 + dims_.size()) return d;
    std::lock_guard lock(lease_mutex_);
    const time_point expiry = sent + std::chrono::duration_cast<typename time_point::duration>(options_.lease_lifetime);
    const bool had = std::any_of(lease_left_.begin(), lease_left_.end(), [](std::int64_t v) { return v > 0; });
    for (std::size_t d2 = 0; d2 < dims_.size(); ++d2) lease_left_[d2] += r.values[5 + d2] - q.iv[d2];
    lease_expiry_ = had ? std::min(lease_expiry_, expiry) : expiry;
    return d;
  }

  // ---- Configuration -------------------------------------------------------------

  void validate() {
    if (key_.empty()) throw std::invalid_argument("RedisLimitSet: the key is empty");
    (void)LimitSet<Clock>(dims_, clock_, nullptr);  // names, count and limits, as LimitSet checks them
    if (options_.on_failure == OnFailure::local_fallback &&
        !(options_.fallback_share > 0 && options_.fallback_share <= 1)) {
      std::ostringstream os;
      os << "RedisLimitSet: fallback_share must be in (0, 1], got " << options_.fallback_share;
      throw std::invalid_argument(os.str());
    }
    if (leasing()) {
      if (options_.lease.size() != dims_.size()) {
        std::ostringstream os;
        os << "RedisLimitSet: lease has " << options_.lease.size() << " amounts for " << dims_.size() << " dimensions";
        throw std::invalid_argument(os.str());
      }
      if (options_.lease_lifetime <= std::chrono::milliseconds::zero())
        throw std::invalid_argument("RedisLimitSet: lease_lifetime must be > 0");
    }
    const double lifetime_s = leasing() ? std::chrono::duration<double>(options_.lease_lifetime).count() : 0.0;
    for (std::size_t d = 0; d < dims_.size(); ++d) {
      const Limit& l = dims_[d].limit;
      const double cap = l.capacity - l.rate * lifetime_s;
      if (leasing()) {
        const double lease = options_.lease[d];
        if (!(cap > 0) || !(lease >= 0 && lease <= cap)) {
          std::ostringstream os;
          os << "RedisLimitSet: dimension \"" << dims_[d].name << "\": with a lease lifetime of " << lifetime_s
             << " s the capacity " << l.capacity << " leaves " << cap << " (capacity - rate * lifetime) for leases of "
             << lease << "; shorten the lifetime or lower the lease";
          throw std::invalid_argument(os.str());
        }
        lease_iv_[d] = floor_ns(lease, l.rate);
      }
      capacity_[d] = cap;
      const double tau = std::ceil(cap * 1e9 / l.rate);
      if (!(tau <= double(max_tau_ns))) {
        std::ostringstream os;
        os << "RedisLimitSet: dimension \"" << dims_[d].name << "\": capacity / rate = " << cap / l.rate
           << " s exceeds the Redis backend's longest refill window (2^51 ns, about 26 days)";
        throw std::invalid_argument(os.str());
      }
      tau_[d] = static_cast<std::int64_t>(tau);
      if (options_.max_debt.size() != 0) {
        if (options_.max_debt.size() != dims_.size())
          throw std::invalid_argument("RedisLimitSet: max_debt has " + std::to_string(options_.max_debt.size()) +
                                      " values for " + std::to_string(dims_.size()) + " dimensions");
        tollgate::detail::check_amount("RedisLimitSet", "max_debt", options_.max_debt[d]);
        max_debt_ns_[d] = std::min(ceil_ns(options_.max_debt[d], l.rate), max_debt_limit_ns);  // the script's range
      } else {
        max_debt_ns_[d] = tau_[d];
      }
    }
  }

  Connection& connection_;
  std::string key_;
  std::vector<Dimension> dims_;
  RedisLimitOptions options_;
  Clock clock_;
  scheduler_type* scheduler_;
  std::array<double, max_dimensions> capacity_{};  // what one acquisition may take (lowered by leasing)
  ns_array tau_{};                                 // refill time of a full dimension, ns
  ns_array lease_iv_{};
  ns_array max_debt_ns_{};                         // the most debt a charge may leave, ns
  std::optional<LimitSet<Clock, std::mutex>> fallback_;
  std::atomic<bool> in_fallback_{false};           // the fallback decided since Redis last answered
  std::mutex lease_mutex_;
  ns_array lease_left_{};
  time_point lease_expiry_{};
  std::atomic<std::uint64_t> lease_hits_{0}, fallbacks_{0}, returned_cancels_{0}, unreturned_cancels_{0};
};

}  // namespace tollgate::redis
