#pragma once
// The simulators' event loop: tollgate's manual clock plus timed coroutine
// resumptions, a self-freeing coroutine type, and a percentile.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <optional>
#include <queue>
#include <vector>

#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>

namespace sim {

using tollgate::testing::ManualClock;
using tollgate::testing::ManualScheduler;
using Seconds = std::chrono::duration<double>;

class Sim {
 public:
  ManualClock clock;
  ManualScheduler sched{clock};

  double now() const { return Seconds(clock.now().time_since_epoch()).count(); }

  void at(double t, std::coroutine_handle<> h) { events_.push({t, seq_++, h}); }

  struct Sleep {
    Sim& sim;
    double until;
    bool await_ready() const noexcept { return until <= sim.now(); }
    void await_suspend(std::coroutine_handle<> h) { sim.at(until, h); }
    void await_resume() const noexcept {}
  };
  Sleep sleep_until(double t) { return {*this, t}; }
  Sleep sleep_for(double d) { return {*this, now() + d}; }

  // Runs every event, advancing the manual clock (which fires the buckets'
  // timers at their instants) to each event's time.
  // With no event left, the limiters' own timers (waiters due later) still run.
  void run() {
    for (;;) {
      if (events_.empty()) {
        const std::optional<ManualClock::time_point> due = sched.next_due();
        if (!due) return;
        clock.advance_to(std::max(*due, clock.now()));
        continue;
      }
      Event e = events_.top();
      events_.pop();
      const auto target = ManualClock::time_point(std::chrono::nanoseconds(std::llround(e.t * 1e9)));
      if (target > clock.now()) clock.advance_to(target);
      e.h.resume();
    }
  }

 private:
  struct Event {
    double t;
    std::uint64_t seq;
    std::coroutine_handle<> h;
    bool operator>(const Event& o) const { return t != o.t ? t > o.t : seq > o.seq; }
  };
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events_;
  std::uint64_t seq_ = 0;
};

// A fire-and-forget coroutine whose frame frees itself at the end.
struct Detached {
  struct promise_type {
    Detached get_return_object() { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

inline double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(std::min<double>(v.size() - 1, std::floor(q * (v.size() - 1) + 0.5)))];
}

}  // namespace sim
