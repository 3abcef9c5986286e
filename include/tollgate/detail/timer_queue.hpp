#pragma once
// TimerQueue: the thread-safe armed-timer set shared by the schedulers.

#include <condition_variable>
#include <mutex>
#include <thread>

#include "../scheduler.hpp"

namespace tollgate::detail {

/// A mutex-guarded TimerHeap that fires one timer at a time with no lock held,
/// and whose `disarm` waits for a firing in progress on another thread.
template <class Clock>
class TimerQueue {
 public:
  using Node = TimerNode<Clock>;
  using time_point = typename Clock::time_point;

  /// Arms `n` at `due`. Returns true when `n` became the earliest timer.
  bool arm(Node& n, time_point due) {
    std::lock_guard lock(mutex_);
    heap_.arm(n, due);
    return heap_.top() == &n;
  }

  void disarm(Node& n) {
    std::unique_lock lock(mutex_);
    heap_.erase(n);
    if (firing_ == &n && firing_thread_ != std::this_thread::get_id()) {
      idle_.wait(lock, [&] { return firing_ != &n; });
      heap_.erase(n);  // the callback may have re-armed it
    }
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

  /// Pops the earliest timer if it is due at `limit` or before, calls
  /// `before(due)` (still under the lock), then fires it with no lock held.
  /// Returns false when nothing was due.
  template <class Before>
  bool fire_one(time_point limit, Before before) {
    Node* n;
    {
      std::lock_guard lock(mutex_);
      n = heap_.top();
      if (!n || n->due > limit) return false;
      heap_.pop();
      before(n->due);
      firing_ = n;
      firing_thread_ = std::this_thread::get_id();
    }
    n->fire(n->context);
    {
      std::lock_guard lock(mutex_);
      firing_ = nullptr;
    }
    idle_.notify_all();
    return true;
  }

  std::mutex& mutex() const { return mutex_; }

 private:
  mutable std::mutex mutex_;
  std::condition_variable idle_;
  TimerHeap<Clock> heap_;
  Node* firing_ = nullptr;
  std::thread::id firing_thread_{};
};

}  // namespace tollgate::detail
