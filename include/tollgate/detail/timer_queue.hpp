#pragma once
// TimerQueue: the thread-safe armed-timer set shared by the schedulers.

#include <atomic>
#include <limits>
#include <type_traits>
#include <mutex>
#include <thread>

#include "../scheduler.hpp"
#include "../spin_mutex.hpp"

namespace tollgate::detail {

/// A lock-guarded TimerHeap that fires one timer at a time with no lock held,
/// and whose `disarm` waits for a firing in progress on another thread. The
/// lock is a SpinMutex: it only ever guards heap operations.
template <class Clock>
class TimerQueue {
 public:
  using Node = TimerNode<Clock>;
  using time_point = typename Clock::time_point;

  /// Arms `n` at `due`. Returns true when `n` became the earliest timer.
  bool arm(Node& n, time_point due) {
    std::lock_guard lock(mutex_);
    heap_.arm(n, due);
    publish_earliest();
    return heap_.top() == &n;
  }

  void disarm(Node& n) {
    std::unique_lock lock(mutex_);
    heap_.erase(n);
    publish_earliest();
    if (firing_.load(std::memory_order_acquire) != &n) return;
    if (firing_thread_ == std::this_thread::get_id()) return;  // from inside its own callback
    lock.unlock();
    while (firing_.load(std::memory_order_acquire) == &n) std::this_thread::yield();  // rare race
    lock.lock();
    heap_.erase(n);  // the callback may have re-armed it
    publish_earliest();
  }

  /// The earliest due instant, or nullopt-like `false` when nothing is armed.
  bool earliest(time_point& out) const {
    std::lock_guard lock(mutex_);
    if (heap_.empty()) return false;
    out = heap_.top()->due;
    return true;
  }

  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return heap_.size();
  }

  /// Fires, one at a time and in (due, arming) order, every timer due at
  /// `limit` or before, including timers armed by the callbacks themselves.
  /// `before(due)` runs under the lock just before each fire; the callback
  /// itself runs with no lock held. Returns how many fired. One lock
  /// acquisition per timer fired: after a fire, the earliest due instant is
  /// read without the lock (the heap publishes it on every change), and the
  /// lock is taken again only when another timer is due.
  template <class Before>
  std::size_t fire_due(time_point limit, Before before) {
    std::size_t fired = 0;
    const std::thread::id self = std::this_thread::get_id();
    for (;;) {
      Node* n;
      {
        std::lock_guard lock(mutex_);
        n = heap_.top();
        if (!n || n->due > limit) break;
        heap_.pop();
        publish_earliest();
        before(n->due);
        firing_thread_ = self;
        firing_.store(n, std::memory_order_relaxed);
      }
      n->fire(n->context);
      firing_.store(nullptr, std::memory_order_release);
      ++fired;
      // A timer armed on another thread meanwhile may be missed here; it is
      // then fired by the next call, as if it had been armed just after this one.
      if (earliest_.load(std::memory_order_acquire) > limit.time_since_epoch().count()) break;
    }
    return fired;
  }

 private:
  using rep = typename Clock::duration::rep;
  static_assert(std::is_integral_v<rep>, "tollgate: a Clock's rep must be an integer");

  // Called under the lock after every change of the heap.
  void publish_earliest() noexcept {
    earliest_.store(heap_.empty() ? std::numeric_limits<rep>::max() : heap_.top()->due.time_since_epoch().count(),
                    std::memory_order_release);
  }

  mutable SpinMutex mutex_;
  TimerHeap<Clock> heap_;
  std::atomic<rep> earliest_{std::numeric_limits<rep>::max()};  // top's due, or max when empty
  std::atomic<Node*> firing_{nullptr};
  std::thread::id firing_thread_{};
};

}  // namespace tollgate::detail
