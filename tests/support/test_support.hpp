#pragma once
// Shared test helpers: an eager coroutine type, time shorthands, and the exact
// conformance checker.

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include <tollgate/testing/manual_clock.hpp>

namespace tgtest {

using namespace std::chrono_literals;
using tollgate::testing::ManualClock;
using ns = std::chrono::nanoseconds;

/// A coroutine that starts at once and keeps its frame until the Task is
/// destroyed (destroying a suspended Task destroys the coroutine).
class Task {
 public:
  struct promise_type {
    Task get_return_object() { return Task(std::coroutine_handle<promise_type>::from_promise(*this)); }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
  Task() = default;
  explicit Task(std::coroutine_handle<promise_type> h) : h_(h) {}
  Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Task& operator=(Task&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  ~Task() { reset(); }
  bool done() const { return h_ && h_.done(); }
  void reset() {
    if (h_) h_.destroy();
    h_ = {};
  }

 private:
  std::coroutine_handle<promise_type> h_;
};

/// Nanoseconds since the manual clock's epoch.
inline std::int64_t ns_of(ManualClock::time_point t) { return t.time_since_epoch().count(); }

/// One completed acquisition: when (ns) and how much (whole cost units).
struct Admission {
  std::int64_t t_ns;
  std::int64_t cost;
};

/// Checks the conformance property exactly, in integers: for every window
/// [s, t] (s, t admission instants, both ends inclusive), the cost admitted
/// inside it is at most capacity + rate * (t - s). `rate` is in whole units
/// per second. A negative cost is a refund (net accounting). Admissions must
/// be sorted by time. Returns "" or a description of the first violation.
inline std::string check_conformance(const std::vector<Admission>& a, std::int64_t capacity,
                                     std::int64_t rate) {
  // Sum each instant's costs first: a window holds all or none of them.
  std::vector<Admission> at;
  for (std::size_t j = 0; j < a.size(); ++j) {
    if (j > 0 && a[j].t_ns < a[j - 1].t_ns) return "admissions not sorted at index " + std::to_string(j);
    if (!at.empty() && at.back().t_ns == a[j].t_ns) at.back().cost += a[j].cost;
    else at.push_back(a[j]);
  }
  // Scaled by 10^9: sum(c)*1e9 <= B*1e9 + r*(t-s) [ns]. With prefix sums P,
  // window i..j conforms iff (P[j+1]*1e9 - r*t_j) - (P[i]*1e9 - r*t_i) <= B*1e9.
  __extension__ typedef __int128 i128;
  i128 prefix = 0;
  i128 best_start = 0;  // min over i <= j of P[i]*1e9 - r*t_i
  for (std::size_t j = 0; j < at.size(); ++j) {
    const i128 start_j = prefix * 1000000000 - i128(rate) * at[j].t_ns;
    if (j == 0 || start_j < best_start) best_start = start_j;
    prefix += at[j].cost;
    const i128 end_j = prefix * 1000000000 - i128(rate) * at[j].t_ns;
    if (end_j - best_start > i128(capacity) * 1000000000)
      return "window ending at t=" + std::to_string(at[j].t_ns) + " ns exceeds capacity + rate*(t-s)";
  }
  return "";
}

}  // namespace tgtest
