#pragma once
// CoarseSteadyClock: a monotonic clock cheaper to read than steady_clock, at
// the kernel tick's resolution.

#include <chrono>
#include <ctime>

namespace tollgate {

/// A steady clock read from CLOCK_MONOTONIC_COARSE (Linux; elsewhere it is
/// `std::chrono::steady_clock`, with its cost and resolution): the kernel's tick
/// counter, read without touching the hardware counter. It costs a few
/// nanoseconds where `std::chrono::steady_clock::now()` costs about 20, but it
/// only advances once per kernel tick (`resolution()`, typically 1 to 4 ms).
///
/// What that does to conformance: a bucket only ever sees a time at or
/// *before* the true time, so it may admit later than it could, never
/// earlier; the conformance property holds unchanged. Bursts are unaffected;
/// the rate looks quantized to the tick, and a `retry_after` can be up to one
/// tick early relative to the true clock (the bucket will answer not_now again
/// if retried that early). Use it for hot-path `try_acquire` when a few
/// milliseconds of granularity are acceptable.
struct CoarseSteadyClock {
  using duration = std::chrono::nanoseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<CoarseSteadyClock, duration>;
  static constexpr bool is_steady = true;

#if defined(CLOCK_MONOTONIC_COARSE)
  static time_point now() noexcept {
    timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return time_point(duration(static_cast<rep>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec));
  }

  /// The tick: how far apart two distinct readings are at least.
  static duration resolution() noexcept {
    timespec ts;
    ::clock_getres(CLOCK_MONOTONIC_COARSE, &ts);
    return duration(static_cast<rep>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec);
  }
#else
  // No coarse clock here (not Linux): std::chrono::steady_clock, at its
  // cost and its resolution.
  static time_point now() noexcept {
    return time_point(std::chrono::duration_cast<duration>(std::chrono::steady_clock::now().time_since_epoch()));
  }
  static duration resolution() noexcept {
    return std::chrono::duration_cast<duration>(std::chrono::steady_clock::duration(1));
  }
#endif
};

}  // namespace tollgate
