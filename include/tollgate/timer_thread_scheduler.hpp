#pragma once
// TimerThreadScheduler: a background thread that fires timers on a real clock.

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#if defined(__linux__)
#if defined(__linux__)
#include <sys/prctl.h>
#endif
#endif

#include "detail/timer_queue.hpp"
#include "scheduler.hpp"

namespace tollgate {

/// A Scheduler that owns one background thread. The thread sleeps until the
/// earliest armed timer is due (by `Clock`), then fires every due timer, in
/// due order. Waiters of plain coroutine code therefore resume **on this
/// thread**: keep the code after `co_await bucket.acquire()` short, or hop to
/// your own executor.
///
/// `TokenBucket<std::chrono::steady_clock>` uses `TimerThreadScheduler<>::shared()`
/// unless given another scheduler. The destructor stops and joins the thread;
/// timers still armed then never fire, so destroy the buckets using a
/// scheduler before the scheduler.
///
/// Thread safety: all members may be called from any thread.
template <class Clock = std::chrono::steady_clock>
class TimerThreadScheduler final : public Scheduler<Clock> {
 public:
  using time_point = typename Clock::time_point;

  explicit TimerThreadScheduler(Clock clock = Clock{})
      : clock_(std::move(clock)), thread_([this] { run(); }) {}

  ~TimerThreadScheduler() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_cv_.notify_one();
    thread_.join();
  }

  TimerThreadScheduler(const TimerThreadScheduler&) = delete;
  TimerThreadScheduler& operator=(const TimerThreadScheduler&) = delete;

  /// The process-wide instance, started on first use. It is never destroyed
  /// (its thread ends with the process), so buckets with static storage
  /// duration can still disarm their timers during static destruction.
  static TimerThreadScheduler& shared() {
    static TimerThreadScheduler* const instance = new TimerThreadScheduler();
    return *instance;
  }

  void arm(TimerNode<Clock>& node, time_point due) override {
    if (!queue_.arm(node, due)) return;  // not the earliest: no need to wake
    {
      std::lock_guard lock(mutex_);
      woken_ = true;
    }
    wake_cv_.notify_one();
  }

  void disarm(TimerNode<Clock>& node) override { queue_.disarm(node); }

  /// How many timers are armed.
  std::size_t armed() const { return queue_.size(); }

 private:
  void run() {
#if defined(__linux__)
    // Wake within ~1 us of the due instant rather than the default 50 us slack.
    ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
#endif
    std::unique_lock lock(mutex_);
    while (!stop_) {
      woken_ = false;
      time_point due;
      if (!queue_.earliest(due)) {
        wake_cv_.wait(lock, [&] { return stop_ || woken_; });
        continue;
      }
      if (due > clock_.now()) {
        wake_cv_.wait_until(lock, due, [&] { return stop_ || woken_; });
        continue;
      }
      lock.unlock();
      queue_.fire_due(clock_.now(), [](time_point) {});
      lock.lock();
    }
  }

  Clock clock_;
  detail::TimerQueue<Clock> queue_;
  std::mutex mutex_;
  std::condition_variable wake_cv_;
  bool stop_ = false;
  bool woken_ = false;
  std::thread thread_;  // last: starts after everything above is constructed
};

}  // namespace tollgate
