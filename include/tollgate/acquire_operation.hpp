#pragma once
// AcquireOperation<Bucket> and PermitOperation<Bucket>: the awaitables that
// `co_await bucket.acquire(...)` and `co_await bucket.acquire_permit(...)`
// evaluate, for Bucket = TokenBucket<Clock, Mutex> or LimitSet<Clock, Mutex>.

#include <atomic>
#include <coroutine>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>

#include "detail/waiting_bucket.hpp"
#include "mutex_traits.hpp"
#include "permit.hpp"
#include "result.hpp"
#include "stop_token.hpp"

namespace tollgate {

/// The awaitable returned by `acquire` and `acquire_for`: `co_await` yields
/// an AcquireResult. It carries the queue node itself (built only if it has
/// to wait), so waiting allocates nothing. Not copyable or movable: co_await
/// it where it is made. Destroying it while suspended (the coroutine was
/// destroyed) takes its node out of the queue exactly.
template <class Bucket>
class [[nodiscard]] AcquireOperation {
  using Waiting = detail::waiting_base_t<Bucket>;
  using cost_type = typename Waiting::cost_type;
  using Mutex = typename Waiting::mutex_type;

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
      result_ = Waiting::cancelled_result();
      return true;
    }
    const AcquireResult r = bucket_.take_or_queue(
        cost_, max_wait_,
        [this]() -> auto& {
          build_node();
          return static_cast<typename Waiting::waiter_type&>(node_);
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
      result_ = Waiting::result_of(node_);
    }
    return result_;
  }

 private:
  friend Bucket;
  template <class>
  friend class PermitOperation;

  struct Node;
  struct Canceller {
    Waiting* bucket;
    Node* node;
    void operator()() const noexcept { bucket->cancel(*node); }
  };
  struct Node : Waiting::waiter_type {
    std::coroutine_handle<> handle{};
    std::atomic<bool> handoff{false};
    std::optional<::tollgate::stop_callback<Canceller>> stop_callback;
  };

  AcquireOperation(Waiting& bucket, const cost_type& cost, detail::fine_t max_wait, stop_token stop) noexcept
      : bucket_(bucket), cost_(cost), max_wait_(max_wait), stop_(std::move(stop)) {}

  void build_node() noexcept {
    ::new (static_cast<void*>(&node_)) Node;  // default-init: every field has its initializer
    built_ = true;
    Waiting::core_type::set_cost(node_, cost_);
    node_.on_complete = &AcquireOperation::complete_thunk;
  }

  static void complete_thunk(detail::Waiter* w) noexcept {
    auto* node = static_cast<Node*>(w);
    // Usually await_suspend finished long ago: a load then suffices.
    if (node->handoff.load(std::memory_order_acquire) || node->handoff.exchange(true, std::memory_order_acq_rel))
      node->handle.resume();
  }

  Waiting& bucket_;
  cost_type cost_;
  detail::fine_t max_wait_;
  stop_token stop_;
  AcquireResult result_{};
  bool built_ = false;
  bool queued_ = false;
  bool acquired_ = false;
  union {
    Node node_;  // constructed in await_ready, only when the fast path did not take the cost
  };
};

/// The awaitable returned by `acquire_permit`: an AcquireOperation whose
/// `co_await` yields a `Permit<cost_type>` (see Permit).
template <class Bucket>
class [[nodiscard]] PermitOperation {
  using Waiting = detail::waiting_base_t<Bucket>;
  using cost_type = typename Waiting::cost_type;

 public:
  bool await_ready() noexcept { return op_.await_ready(); }
  bool await_suspend(std::coroutine_handle<> h) { return op_.await_suspend(h); }
  Permit<cost_type> await_resume() noexcept { return Permit<cost_type>(bucket_, op_.cost_, op_.await_resume()); }

 private:
  friend Bucket;
  PermitOperation(Waiting& bucket, const cost_type& cost, detail::fine_t max_wait, stop_token stop) noexcept
      : bucket_(bucket), op_(bucket, cost, max_wait, std::move(stop)) {}
  Waiting& bucket_;
  AcquireOperation<Bucket> op_;
};

}  // namespace tollgate
