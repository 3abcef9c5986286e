// The Asio binding, written once for standalone Asio and Boost.Asio: included
// by tollgate/asio.hpp (TOLLGATE_NET = ::asio, namespace tollgate::asio) and
// tollgate/boost_asio.hpp (TOLLGATE_NET = ::boost::asio, namespace
// tollgate::boost_asio). No include guard: each includer has its own.
//
// Requires TOLLGATE_NET and TOLLGATE_NET_BINDING to be defined.

#include <atomic>
#include <chrono>
#include <memory>
#include <type_traits>
#include <utility>

#include "../result.hpp"
#include "../scheduler.hpp"
#include "../stop_token.hpp"
#include "timer_queue.hpp"
#include "waiting_bucket.hpp"
#include "waiter.hpp"

namespace tollgate::TOLLGATE_NET_BINDING {

/// A Scheduler whose timer is an Asio timer on an executor: a bucket built
/// with it waits on the application's own event loop (no extra thread), and
/// its wake-ups run there (serialized by a strand, so a multi-threaded
/// `io_context` is fine).
///
///     asio::io_context io;
///     tollgate::asio::TimerScheduler<> timers(io.get_executor());
///     tollgate::TokenBucket<> bucket(Limit::per_second(100), {}, &timers);
///
/// Destroy the buckets using it first; then the scheduler, before its
/// execution context.
template <class Clock = std::chrono::steady_clock>
class TimerScheduler final : public tollgate::Scheduler<Clock> {
 public:
  using time_point = typename Clock::time_point;
  using executor_type = TOLLGATE_NET::any_io_executor;

  explicit TimerScheduler(executor_type ex) : impl_(std::make_shared<Impl>(std::move(ex))) {}
  TimerScheduler(const TimerScheduler&) = delete;
  TimerScheduler& operator=(const TimerScheduler&) = delete;
  ~TimerScheduler() {
    impl_->stopped.store(true, std::memory_order_release);
    TOLLGATE_NET::post(impl_->strand, [impl = impl_] { impl->timer.cancel(); });
  }

  void arm(TimerNode<Clock>& node, time_point due) override {
    if (impl_->queue.arm(node, due)) impl_->kick();
  }
  void disarm(TimerNode<Clock>& node) override { impl_->queue.disarm(node); }

  /// How many timers are armed.
  std::size_t armed() const { return impl_->queue.size(); }

 private:
  struct Impl : std::enable_shared_from_this<Impl> {
    explicit Impl(executor_type ex) : strand(TOLLGATE_NET::make_strand(std::move(ex))), timer(strand) {}

    // The earliest due instant changed: re-aim the timer, on the strand.
    void kick() {
      TOLLGATE_NET::post(strand, [self = this->shared_from_this()] { self->aim(); });
    }
    void aim() {
      if (stopped.load(std::memory_order_acquire)) return;
      time_point next;
      if (!queue.earliest(next)) return;
      if (waiting && next == aimed_at) return;
      timer.expires_at(next);  // cancels a wait in progress (it sees operation_aborted)
      aimed_at = next;
      waiting = true;
      timer.async_wait([self = this->shared_from_this()](const auto& ec) {
        if (ec == TOLLGATE_NET::error::operation_aborted) return;
        self->waiting = false;
        self->queue.fire_due(Clock::now(), [](time_point) {});
        self->aim();
      });
    }

    TOLLGATE_NET::strand<executor_type> strand;
    TOLLGATE_NET::basic_waitable_timer<Clock> timer;
    tollgate::detail::TimerQueue<Clock> queue;
    std::atomic<bool> stopped{false};
    time_point aimed_at{};  // strand only
    bool waiting = false;   // strand only
  };
  std::shared_ptr<Impl> impl_;
};

namespace detail {

// Terminal, partial and total cancellation all take a waiter out.
inline bool takes_out(TOLLGATE_NET::cancellation_type type) noexcept {
  return (type & (TOLLGATE_NET::cancellation_type::terminal | TOLLGATE_NET::cancellation_type::partial |
                  TOLLGATE_NET::cancellation_type::total)) != TOLLGATE_NET::cancellation_type::none;
}

// A completion handler and the outstanding work it keeps on its associated
// executor (the system executor if it has none) while the operation runs.
template <class Handler>
struct HandlerWork {
  using handler_executor = TOLLGATE_NET::associated_executor_t<Handler, TOLLGATE_NET::system_executor>;
  using work_executor = std::decay_t<decltype(TOLLGATE_NET::prefer(
      std::declval<handler_executor>(), TOLLGATE_NET::execution::outstanding_work.tracked))>;

  explicit HandlerWork(Handler&& h)
      : handler(std::move(h)),
        work(TOLLGATE_NET::prefer(TOLLGATE_NET::get_associated_executor(handler, TOLLGATE_NET::system_executor()),
                                  TOLLGATE_NET::execution::outstanding_work.tracked)) {}

  // On the handler's executor, when the operation completes: disconnects the
  // cancellation handler and hands the completion handler over.
  Handler take() {
    auto slot = TOLLGATE_NET::get_associated_cancellation_slot(handler);
    if (slot.is_connected()) slot.clear();
    return Handler(std::move(handler));
  }

  Handler handler;
  work_executor work;
};

// One waiting async_acquire: the bucket's queue node, the handler, and the
// outstanding work on the handler's executor. Deleted on that executor, just
// before the handler runs.
template <class Bucket, class Handler>
struct AcquireOp final : ::tollgate::detail::waiting_base_t<Bucket>::waiter_type, HandlerWork<Handler> {
  AcquireOp(Bucket& b, Handler&& h) : HandlerWork<Handler>(std::move(h)), bucket(b) {
    this->on_complete = &AcquireOp::completed;
  }

  // The bucket granted or cancelled it (any thread, no lock held).
  static void completed(tollgate::detail::Waiter* w) noexcept {
    auto* op = static_cast<AcquireOp*>(w);
    op->finish(::tollgate::detail::WaitAccess::result(*op));
  }

  // Runs the handler with `r` on its executor (never inline in the initiating call).
  void finish(AcquireResult r) noexcept {
    result = r;
    TOLLGATE_NET::post(this->work, [this] {
      Handler h = this->take();
      const AcquireResult res = result;
      delete this;  // releases the work before the handler may finish the loop
      std::move(h)(res);
    });
  }

  // Installed in the handler's cancellation slot: any cancellation type takes
  // the waiter out of the queue (a grant that won the race stands).
  struct Canceller {
    explicit Canceller(AcquireOp* o) noexcept : op(o) {}
    AcquireOp* op;
    void operator()(TOLLGATE_NET::cancellation_type type) const noexcept {
      if (takes_out(type)) ::tollgate::detail::WaitAccess::cancel(op->bucket, *op);
    }
  };

  Bucket& bucket;
  AcquireResult result{};
};

template <class Bucket>
struct InitiateAcquire {
  Bucket* bucket;
  template <class Handler>
  void operator()(Handler&& handler, typename Bucket::cost_type cost, std::chrono::nanoseconds max_wait) const {
    using Op = AcquireOp<Bucket, std::decay_t<Handler>>;
    auto* op = new Op(*bucket, std::forward<Handler>(handler));
    // Installed before the waiter is queued: once queued, it may complete (and
    // its completion clear the slot and delete it) on another thread at once.
    // A signal before queueing finds nothing to remove.
    auto slot = TOLLGATE_NET::get_associated_cancellation_slot(op->handler);
    if (slot.is_connected()) slot.template emplace<typename Op::Canceller>(op);
    const auto [result, queued] = ::tollgate::detail::WaitAccess::start(*bucket, *op, cost, max_wait);
    if (!queued) op->finish(result);
  }
};

// A set that waits through a callback (redis::RedisLimitSet): its
// `async_acquire(cost, callback, max_wait, stop_token)` runs the callback once
// with a decision that has `.result`; cancellation requests a stop.
template <class Set, class Cost>
concept CallbackAcquirer = requires(Set& s, const Cost& c, std::chrono::nanoseconds w, ::tollgate::stop_token st) {
  s.async_acquire(c, [](auto) {}, w, st);
};

template <class Handler>
struct CallbackOp : HandlerWork<Handler> {
  using HandlerWork<Handler>::HandlerWork;

  struct Canceller {
    explicit Canceller(::tollgate::stop_source* s) noexcept : stop(s) {}
    ::tollgate::stop_source* stop;
    void operator()(TOLLGATE_NET::cancellation_type type) const noexcept {
      if (takes_out(type)) stop->request_stop();
    }
  };

  ::tollgate::stop_source stop;
};

template <class Set>
struct InitiateCallbackAcquire {
  Set* set;
  template <class Handler, class Cost>
  void operator()(Handler&& handler, const Cost& cost, std::chrono::nanoseconds max_wait) const {
    using Op = CallbackOp<std::decay_t<Handler>>;
    auto op = std::make_shared<Op>(std::forward<Handler>(handler));
    auto slot = TOLLGATE_NET::get_associated_cancellation_slot(op->handler);
    if (slot.is_connected()) slot.template emplace<typename Op::Canceller>(&op->stop);
    set->async_acquire(
        cost,
        [op](auto decision) {
          const AcquireResult r = decision.result;
          TOLLGATE_NET::post(op->work, [op, r] {
            auto h = op->take();
            std::move(h)(r);
          });
        },
        max_wait, op->stop.get_token());
  }
};

}  // namespace detail

/// Waits, on the caller's executor and without blocking a thread, until
/// `bucket` (a TokenBucket or a LimitSet) has `cost`, then completes with
/// the AcquireResult (signature `void(tollgate::AcquireResult)`), with any
/// completion token: a callback, `use_awaitable`, `deferred`, `use_future`.
///
/// FIFO with every other waiter of the bucket; the completion runs on the
/// handler's associated executor (the system executor if it has none), never
/// inside this call. A wait beyond `max_wait` completes at once with
/// `not_now` (nothing queued). Per-operation cancellation (a cancellation
/// slot, the `||` of awaitable operators, a cancelled `co_spawn`) takes the
/// waiter out of the queue with exact accounting — later waiters move up —
/// and completes with `cancelled`; one already granted completes `acquired`.
///
/// The bucket's own timer decides when waiters are due: give it a
/// `TimerScheduler` on the application's executor to keep everything on the
/// event loop (otherwise a steady-clock bucket uses tollgate's timer thread,
/// and the completion is still posted to the handler's executor).
template <class Bucket, class CompletionToken>
auto async_acquire(Bucket& bucket, const typename Bucket::cost_type& cost,
                   std::chrono::nanoseconds max_wait, CompletionToken&& token) {
  return TOLLGATE_NET::async_initiate<CompletionToken, void(AcquireResult)>(
      detail::InitiateAcquire<Bucket>{&bucket}, token, cost, max_wait);
}

/// `async_acquire` for a set that waits through a callback, such as
/// `redis::RedisLimitSet`: the same completion (`void(AcquireResult)`, on the
/// handler's executor) and the same cancellation paths, which become the
/// set's stop request (a Redis reservation is then cancelled; see redis.hpp).
template <class Set, class Cost, class CompletionToken>
  requires detail::CallbackAcquirer<Set, Cost>
auto async_acquire(Set& set, const Cost& cost, std::chrono::nanoseconds max_wait, CompletionToken&& token) {
  return TOLLGATE_NET::async_initiate<CompletionToken, void(AcquireResult)>(
      detail::InitiateCallbackAcquire<Set>{&set}, token, cost, max_wait);
}
template <class Set, class Cost, class CompletionToken>
  requires detail::CallbackAcquirer<Set, Cost>
auto async_acquire(Set& set, const Cost& cost, CompletionToken&& token) {
  return async_acquire(set, cost, std::chrono::nanoseconds::max(), std::forward<CompletionToken>(token));
}

/// `async_acquire` without a bound on the wait.
template <class Bucket, class CompletionToken>
auto async_acquire(Bucket& bucket, const typename Bucket::cost_type& cost, CompletionToken&& token) {
  return async_acquire(bucket, cost, std::chrono::nanoseconds::max(), std::forward<CompletionToken>(token));
}

}  // namespace tollgate::TOLLGATE_NET_BINDING
