#pragma once
// ManualClock: a clock that moves only when a test tells it to.

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "../spin_mutex.hpp"

namespace tollgate::testing {

/// A clock whose time changes only through `advance`, `advance_to` and `set`.
/// Copies share one time, so a test keeps a copy and hands another to the bucket.
///
/// `advance` is how tests move time: every attached `ManualScheduler` is run
/// through the due timers in order, the clock standing at each timer's due
/// instant when it fires, so a waiter resumes exactly at the instant it became
/// due, on the advancing thread. `set` jumps (even backwards) and fires nothing.
///
/// Thread safety: `now()` may be called from any thread; advance/set from one
/// thread at a time.
class ManualClock {
 public:
  using rep = std::int64_t;
  using period = std::nano;
  using duration = std::chrono::nanoseconds;
  using time_point = std::chrono::time_point<ManualClock, duration>;
  static constexpr bool is_steady = false;  // `set` can move it backwards

  /// Something driven by this clock's advances (a ManualScheduler).
  class Listener {
   public:
    /// Fires everything due up to `target`, setting the clock as it goes.
    virtual void run_until(time_point target) = 0;

   protected:
    ~Listener() = default;
  };

  ManualClock() : ManualClock(time_point{}) {}
  explicit ManualClock(time_point start) : state_(std::make_shared<State>()) {
    state_->ns.store(start.time_since_epoch().count(), std::memory_order_relaxed);
  }

  time_point now() const noexcept {
    return time_point(duration(state_->ns.load(std::memory_order_acquire)));
  }

  /// Moves time forward by `d` (>= 0), firing due timers on this thread.
  void advance(duration d) {
    if (d < duration::zero()) throw std::invalid_argument(message("advance", "negative", d));
    const auto cur = now().time_since_epoch();
    if (cur > duration::max() - d) throw std::invalid_argument(message("advance", "overflowing", d));
    advance_to(time_point(cur + d));
  }

  /// Moves time forward to `t` (no-op if `t` has passed), firing due timers.
  void advance_to(time_point t) {
    const std::size_t n = state_->count.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) state_->listeners[i].load(std::memory_order_acquire)->run_until(t);
    if (t > now()) set(t);
  }

  /// Sets the time to `t`, forwards or backwards. Fires nothing.
  void set(time_point t) noexcept {
    state_->ns.store(t.time_since_epoch().count(), std::memory_order_release);
  }

  /// At most this many listeners (schedulers) per clock.
  static constexpr std::size_t kMaxListeners = 8;

  /// Attaches a scheduler. Not concurrently with advance().
  void attach(Listener& l) {
    std::lock_guard lock(state_->mutex);
    const std::size_t n = state_->count.load(std::memory_order_relaxed);
    if (n == kMaxListeners) throw std::length_error("ManualClock::attach: at most 8 schedulers per clock");
    state_->listeners[n].store(&l, std::memory_order_relaxed);
    state_->count.store(n + 1, std::memory_order_release);
  }
  /// Detaches a scheduler. Not concurrently with advance().
  void detach(Listener& l) {
    std::lock_guard lock(state_->mutex);
    const std::size_t n = state_->count.load(std::memory_order_relaxed);
    std::size_t j = 0;
    for (std::size_t i = 0; i < n; ++i) {
      Listener* x = state_->listeners[i].load(std::memory_order_relaxed);
      if (x != &l) state_->listeners[j++].store(x, std::memory_order_relaxed);
    }
    state_->count.store(j, std::memory_order_release);
  }

  /// The largest time point; clocks "near the top of their range" start close to it.
  static constexpr time_point max() noexcept { return time_point::max(); }

 private:
  struct State {
    std::atomic<std::int64_t> ns{0};
    SpinMutex mutex;  // serializes attach/detach
    std::array<std::atomic<Listener*>, kMaxListeners> listeners{};
    std::atomic<std::size_t> count{0};
  };

  static std::string message(const char* fn, const char* what, duration d) {
    std::ostringstream os;
    os << "ManualClock::" << fn << ": " << what << " duration " << d.count() << " ns";
    return os.str();
  }

  std::shared_ptr<State> state_;
};

}  // namespace tollgate::testing
