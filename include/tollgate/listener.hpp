#pragma once
// Listener: an optional observer of a bucket's or a set's decisions (what a
// metrics exporter or a log needs), at no cost when none is set.

#include <chrono>
#include <cstdint>

#include "result.hpp"

namespace tollgate {

/// What happened to a request (or to the bucket).
enum class BucketEventKind : std::uint8_t {
  admitted,   ///< took its cost at once (try_acquire, or an acquire that did not wait)
  waited,     ///< took its cost after waiting in the queue (`waited` says how long)
  refused,    ///< failed: at once (`try_acquire`'s not_now, never, invalid, ...), or a
              ///< queued request whose max_wait a pause overran (`timed_out`)
  cancelled,  ///< a queued request left without its cost (stop token, Asio cancellation)
  paused,     ///< `pause_until` / `pause_for` (an upstream's 429): `waited` is the pause's length
};

/// One decision. `cost` is the request's (null for `paused`); `result` is
/// what the caller got (status, reason, retry-after, dimension).
template <class Cost>
struct BucketEvent {
  BucketEventKind kind;
  const Cost* cost = nullptr;
  AcquireResult result = AcquireResult::acquired();
  /// `waited`, `refused` or `cancelled` after queueing: the time in the
  /// queue, rounded up to whole ns; `paused`: the pause from now on; else 0.
  std::chrono::nanoseconds waited{0};
};

/// Receives a bucket's or a set's events (`set_listener`). `on_event` runs on
/// the thread that made the decision (a caller of try_acquire, the timer
/// that granted a waiter, a canceller), with no lock of the bucket held,
/// before the waiter it reports resumes; it may run on several threads at
/// once, and may call the bucket. It must not throw. The listener must
/// outlive its use: remove it (`set_listener(nullptr)`) before destroying it.
///
/// `Cost` is the bucket's `cost_type`: double (TokenBucket), Costs
/// (LimitSet), KeyedCosts (SharedLimitSet; for `try_acquire(key, costs)` the
/// event's KeyedCosts holds the costs without the key).
template <class Cost>
class Listener {
 public:
  virtual void on_event(const BucketEvent<Cost>& event) noexcept = 0;

 protected:
  Listener() = default;
  Listener(const Listener&) = default;
  Listener& operator=(const Listener&) = default;
  ~Listener() = default;
};

}  // namespace tollgate
