// The manual clock as a user's test would use it (the region below is shown
// in docs/testing.md): code that co_awaits a bucket, driven to exact instants
// with no sleep and no real clock.
#include <chrono>
#include <coroutine>
#include <exception>
#include <vector>

#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"

// [manual_clock_test]
namespace {

// A fire-and-forget coroutine type (any coroutine type works).
struct Detached {
  struct promise_type {
    Detached get_return_object() { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() {}
    void unhandled_exception() { std::terminate(); }
  };
};

// The code under test: fetches pages, one request each, at the pace the
// bucket allows. It takes the bucket and the clock as parameters, so a test
// can hand it a manual clock.
template <class Bucket, class Clock>
Detached crawl(Bucket& limit, Clock clock, int pages, std::vector<typename Clock::time_point>& fetched) {
  for (int i = 0; i < pages; ++i) {
    if (!co_await limit.acquire(1)) co_return;
    fetched.push_back(clock.now());
  }
}

}  // namespace

TEST_CASE("manual clock: a crawler takes its burst of 3, then 2 pages per second, at exact instants") {
  using tollgate::testing::ManualClock;
  ManualClock clock;                                 // copies share one time
  tollgate::testing::ManualScheduler timers(clock);  // fires the bucket's timer when the clock advances
  tollgate::TokenBucket<ManualClock> limit(tollgate::Limit{.capacity = 3, .rate = 2}, clock, &timers);
  std::vector<ManualClock::time_point> fetched;
  const ManualClock::time_point t0 = clock.now();

  crawl(limit, clock, 5, fetched);
  CHECK(fetched.size() == 3);  // the burst, at once; the crawler now waits
  clock.advance(std::chrono::milliseconds(499));
  CHECK(fetched.size() == 3);  // not a nanosecond early
  clock.advance(std::chrono::milliseconds(1));
  CHECK(fetched.size() == 4);
  clock.advance(std::chrono::seconds(10));  // resumes each waiter at its own instant, in order
  REQUIRE(fetched.size() == 5);
  CHECK(fetched[3] - t0 == std::chrono::milliseconds(500));
  CHECK(fetched[4] - t0 == std::chrono::seconds(1));
}
// [manual_clock_test]
