#pragma once
// ManualScheduler: fires timers when a ManualClock is advanced.

#include <cstddef>
#include <optional>

#include "../detail/timer_queue.hpp"
#include "../scheduler.hpp"
#include "manual_clock.hpp"

namespace tollgate::testing {

/// A Scheduler for tests, driven by a ManualClock. `clock.advance(d)` fires the
/// armed timers that fall due within `d`, in due order, each with the clock
/// set to its due instant; so coroutines waiting on a bucket resume exactly at
/// their due instant, one after another, on the thread that called `advance`.
/// `run_due()` fires what is due at the clock's current time (for timers armed
/// at an instant that has already passed).
///
/// Thread safety: arm/disarm from any thread; advance from one thread at a time.
class ManualScheduler final : public Scheduler<ManualClock>, private ManualClock::Listener {
 public:
  explicit ManualScheduler(ManualClock clock) : clock_(std::move(clock)) { clock_.attach(*this); }
  ~ManualScheduler() { clock_.detach(*this); }
  ManualScheduler(const ManualScheduler&) = delete;
  ManualScheduler& operator=(const ManualScheduler&) = delete;

  void arm(TimerNode<ManualClock>& node, time_point due) override { queue_.arm(node, due); }
  void disarm(TimerNode<ManualClock>& node) override { queue_.disarm(node); }

  /// Fires every timer due at the clock's current time. Returns how many fired.
  std::size_t run_due() { return run_to(clock_.now()); }

  /// How many timers are armed.
  std::size_t armed() const { return queue_.size(); }

  /// The earliest armed timer's due instant (for event-driven simulations:
  /// advance the clock straight to it); nullopt when nothing is armed.
  std::optional<time_point> next_due() const {
    time_point t;
    if (queue_.earliest(t)) return t;
    return std::nullopt;
  }

  /// How many timers have fired since construction.
  std::size_t fired() const noexcept { return fired_; }

  const ManualClock& clock() const noexcept { return clock_; }

 private:
  void run_until(time_point target) override { run_to(target); }

  std::size_t run_to(time_point target) {
    const std::size_t n = queue_.fire_due(target, [&](time_point due) {
      if (due > clock_.now()) clock_.set(due);
    });
    fired_ += n;
    return n;
  }

  ManualClock clock_;
  detail::TimerQueue<ManualClock> queue_;
  std::size_t fired_ = 0;
};

}  // namespace tollgate::testing
