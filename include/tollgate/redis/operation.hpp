#pragma once
// The asynchronous side of a redis::RedisLimitSet: ReserveOp (one waiting
// acquisition, shared by the I/O thread, the scheduler and a stop callback),
// and the awaitables AcquireOperation and PermitOperation.

#include <atomic>
#include <coroutine>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "../permit.hpp"
#include "../result.hpp"
#include "../scheduler.hpp"
#include "../stop_token.hpp"
#include "options.hpp"
#include "script_codec.hpp"

namespace tollgate::redis {
namespace detail {

// The asynchronous operation of acquire / async_acquire / acquire_blocking.
//
// Shared by the I/O thread (replies), the scheduler (the wake-up) and the
// stop callback. States: sent -> (reserved) waiting -> done, or any ->
// finishing (a result to deliver on the scheduler) -> done; a stop turns
// sent into cancel_requested (the reply then cancels) and waiting into
// cancelling (a cancel call decides).
enum class OpState : int { sent, cancel_requested, waiting, cancelling, retry_wait, finishing, done };

template <class Set>
struct ReserveOp : std::enable_shared_from_this<ReserveOp<Set>> {
  using Op = ReserveOp;
  using time_point = typename Set::time_point;
  Set* set = nullptr;
  Costs costs;
  ns_array iv{};
  std::int64_t max_wait_ns = 0;
  time_point deadline{};
  bool bounded = false;
  std::atomic<OpState> state{OpState::sent};
  TimerNode<typename Set::clock_type> timer;
  std::mutex armed_mutex;          // armed_self is set, taken and reset from several threads
  std::shared_ptr<Op> armed_self;  // keeps the op alive while its timer is armed
  Decision result;
  std::int64_t epoch = 0, grant = 0, f_old = 0;
  ns_array t_old{}, t_new{};
  std::mutex sink_mutex;
  std::function<void(Decision)> sink;
  std::optional<::tollgate::stop_callback<std::function<void()>>> stop_cb;

  Decision granted() const noexcept { return {AcquireResult::acquired(), epoch * 1'000'000'000 + grant, Source::store}; }
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
        op->result = op->granted();
        op->deliver();
        return;
      case OpState::finishing:
        op->state.store(OpState::done, std::memory_order_release);
        op->deliver();
        return;
      case OpState::retry_wait:
        if (!op->cas(OpState::retry_wait, OpState::sent)) return;
        op->send_reserve();
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
        if (s == OpState::waiting) send_cancel(std::move(self));
        else finish({AcquireResult::failed(Status::cancelled, Reason::stop_requested)});
        return;
      } else {
        return;  // already cancelling, finishing or done
      }
    }
  }

  // ---- Driving it against the store ----------------------------------------

  static void launch(const std::shared_ptr<Op>& op, const Costs& costs, std::int64_t max_wait_ns, ::tollgate::stop_token stop) {
    Set& s = *op->set;
    op->max_wait_ns = max_wait_ns;
    op->costs = costs;
    if (auto bad = s.prepare(costs, op->iv)) return op->finish({*bad});
    if (stop.stop_requested())
      return op->finish({AcquireResult::failed(Status::cancelled, Reason::stop_requested)});
    if (s.lease_ && s.lease_->spend(op->iv, s.clock_.now())) return op->finish({AcquireResult::acquired(), 0, Source::lease});
    const auto now = s.clock_.now();
    const auto wait = std::chrono::duration_cast<typename time_point::duration>(std::chrono::nanoseconds(max_wait_ns));
    op->bounded = max_wait_ns < std::int64_t{1} << 62 && now.time_since_epoch() < time_point::duration::max() - wait;
    if (op->bounded) op->deadline = now + wait;
    if (stop.stop_possible()) {
      Op* raw = op.get();
      op->stop_cb.emplace(std::move(stop), std::function<void()>([raw] { raw->cancel(); }));
    }
    if (op->state.load() == OpState::cancel_requested)  // stopped while registering
      return op->finish({AcquireResult::failed(Status::cancelled, Reason::stop_requested)});
    op->send_reserve();
  }

  void send_reserve() {
    Op& op = *this;
    Set& s = *set;
    std::int64_t wait = op.max_wait_ns;
    if (op.bounded) {
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(op.deadline - s.clock_.now()).count();
      wait = std::max<std::int64_t>(0, left);
    }
    s.connection_.script_async(s.key_, s.args("reserve").add(op.iv).add(std::min<std::int64_t>(wait, std::int64_t{1} << 52)).take(),
                               [self = op.shared_from_this()](Reply&& r) { self->on_reserved(r); });
  }

  void on_reserved(const Reply& r) {
    Op& op = *this;
    Set& s = *set;
    const bool stopped = op.state.load(std::memory_order_acquire) == OpState::cancel_requested;
    const ScriptReply reply(r, s.dims_.size());
    if (!reply.answered()) {
      Decision d = s.on_failure(r, op.costs);
      if (d.result.status() == Status::not_now && !stopped && op.bounded &&
          s.clock_.now() + d.result.retry_after() <= op.deadline && op.cas(OpState::sent, OpState::retry_wait)) {
        op.arm(s.clock_.now() + std::chrono::duration_cast<typename time_point::duration>(d.result.retry_after()),
               OpState::retry_wait);
        return;
      }
      if (stopped && !d) d = {AcquireResult::failed(Status::cancelled, Reason::stop_requested)};
      return op.finish(d);
    }
    s.store_answered();
    if (reply.code() != 0) {  // refused: the wait would exceed max_wait
      if (stopped) return op.finish({AcquireResult::failed(Status::cancelled, Reason::stop_requested)});
      return op.finish(s.decode(reply));
    }
    op.epoch = reply.epoch();
    op.grant = reply.instant();
    if (reply.has_undo()) {
      op.f_old = reply.grant_before();
      for (std::size_t d = 0; d < s.dims_.size(); ++d) {
        op.t_old[d] = reply.paid_before(d);
        op.t_new[d] = reply.paid_after(d);
      }
    }
    if (reply.wait() <= 0) return op.finish(op.granted());  // granted now: a stop that came meanwhile is too late
    if (stopped || !op.cas(OpState::sent, OpState::waiting)) {  // a stop came (perhaps since `stopped` was read)
      op.state.store(OpState::cancelling, std::memory_order_release);
      return send_cancel(op.shared_from_this());
    }
    op.arm(s.clock_.now() + std::chrono::duration_cast<typename time_point::duration>(std::chrono::nanoseconds(reply.wait())),
           OpState::waiting);
  }

  static void send_cancel(std::shared_ptr<Op> op) {
    Set& set = *op->set;
    auto a = set.args("cancel").add(op->epoch).add(op->grant).add(op->f_old).add(op->t_old).add(op->t_new);
    set.connection_.script_async(set.key_, a.take(), [op](Reply&& r) {
      Set& s = *op->set;
      const std::int64_t code = r && !r.values.empty() ? r.values[0] : -1;
      if (code == 2) return op->finish(op->granted());  // granted before the cancel arrived
      (code == 0 ? s.returned_cancels_ : s.unreturned_cancels_).fetch_add(1, std::memory_order_relaxed);
      op->finish({AcquireResult::failed(Status::cancelled, Reason::stop_requested)});
    });
  }
};

}  // namespace detail

/// The awaitable of RedisLimitSet's `acquire` and `acquire_for`: `co_await`
/// yields an AcquireResult; the coroutine resumes on the set's scheduler
/// thread (at once, without suspending, when a lease covers it or the costs
/// are refused). Destroying the suspended coroutine cancels the reservation.
template <class Set>
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
    detail::ns_array iv{};
    if (auto bad = set_.prepare(costs_, iv)) {
      result_ = *bad;
      return true;
    }
    if (set_.lease_ && set_.lease_->spend(iv, set_.clock_.now())) {
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
    detail::ReserveOp<Set>::launch(op, costs_, max_wait_ns_, std::move(stop_));
    return true;
  }
  AcquireResult await_resume() const noexcept { return result_; }

 private:
  friend Set;
  template <class>
  friend class PermitOperation;
  AcquireOperation(Set& set, const Costs& costs, std::int64_t max_wait_ns, ::tollgate::stop_token stop)
      : set_(set), costs_(costs), max_wait_ns_(max_wait_ns), stop_(std::move(stop)) {}
  Set& set_;
  Costs costs_;
  std::int64_t max_wait_ns_;
  ::tollgate::stop_token stop_;
  std::weak_ptr<detail::ReserveOp<Set>> op_;
  AcquireResult result_;
};


/// The awaitable of RedisLimitSet's `acquire_permit`: `co_await` yields a
/// `tollgate::Permit<Costs>`, the same type a LimitSet's yields.
template <class Set>
class [[nodiscard]] PermitOperation {
 public:
  bool await_ready() { return op_.await_ready(); }
  bool await_suspend(std::coroutine_handle<> h) { return op_.await_suspend(h); }
  Permit<Costs> await_resume() noexcept { return Permit<Costs>(set_, op_.costs_, op_.await_resume()); }

 private:
  friend Set;
  PermitOperation(Set& set, const Costs& costs, std::int64_t max_wait_ns, ::tollgate::stop_token stop)
      : set_(set), op_(set, costs, max_wait_ns, std::move(stop)) {}
  Set& set_;
  AcquireOperation<Set> op_;
};

}  // namespace tollgate::redis
