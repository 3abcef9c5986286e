// tollgate's own stop_token (the fallback for standard libraries without
// <stop_token>), forced here so that every build tests it: the standard's
// semantics that tollgate's waiters rely on, alone and under a bucket.
#define TOLLGATE_FORCE_STOP_TOKEN_FALLBACK 1

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <thread>
#include <vector>

#include <tollgate/stop_token.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"
#include "test_support.hpp"

#if defined(TOLLGATE_STD_STOP_TOKEN)
#error "the fallback is what this file tests"
#endif

TEST_CASE("stop_token fallback: callbacks run once, on the requesting thread; late ones at once", "[stop_token]") {
  tollgate::stop_source src;
  tollgate::stop_token tok = src.get_token();
  CHECK(tok.stop_possible());
  CHECK_FALSE(tok.stop_requested());
  int a = 0, b = 0;
  tollgate::stop_callback ca(tok, [&] { ++a; });
  {
    tollgate::stop_callback cb(tok, [&] { ++b; });
  }  // deregistered: never runs
  CHECK(src.request_stop());
  CHECK_FALSE(src.request_stop());  // only once
  CHECK(a == 1);
  CHECK(b == 0);
  CHECK(tok.stop_requested());
  int late = 0;
  tollgate::stop_callback cl(tok, [&] { ++late; });  // after the request: runs in its constructor
  CHECK(late == 1);
  CHECK_FALSE(tollgate::stop_token().stop_possible());
  tollgate::stop_source none(tollgate::nostopstate);
  CHECK_FALSE(none.request_stop());
}

TEST_CASE("stop_token fallback: a callback may destroy itself; destruction waits for one running elsewhere",
          "[stop_token]") {
  tollgate::stop_source src;
  std::optional<tollgate::stop_callback<std::function<void()>>> self;
  int ran = 0;
  self.emplace(src.get_token(), [&] {
    ++ran;
    self.reset();  // from inside its own callback, on the requesting thread
  });
  src.request_stop();
  CHECK(ran == 1);
  CHECK_FALSE(self.has_value());

  for (int round = 0; round < 200; ++round) {
    tollgate::stop_source s;
    std::atomic<int> state{0};  // 1: the callback started; 2: it finished
    auto cb = std::make_unique<tollgate::stop_callback<std::function<void()>>>(s.get_token(), [&] {
      state = 1;
      for (int i = 0; i < 100; ++i) std::this_thread::yield();
      state = 2;
    });
    std::thread t([&] { s.request_stop(); });
    while (state.load() == 0 && !s.stop_requested()) std::this_thread::yield();
    cb.reset();  // returns only once the callback is not running
    const int after = state.load();
    t.join();
    CHECK(after != 1);
  }
}

TEST_CASE("stop_token fallback: a stopped waiter leaves the bucket exactly", "[stop_token]") {
  using namespace tgtest;
  ManualClock clock;
  tollgate::testing::ManualScheduler sched(clock);
  tollgate::TokenBucket<ManualClock> bucket(tollgate::Limit{2, 1}, clock, &sched);
  REQUIRE(bucket.try_acquire(2).ok());
  tollgate::stop_source stop;
  std::vector<tollgate::Status> got;
  auto wait = [&](double cost, tollgate::stop_token st) -> Task {
    got.push_back((co_await bucket.acquire(cost, st)).status());
  };
  Task first = wait(2, stop.get_token());
  Task second = wait(1, {});
  stop.request_stop();
  REQUIRE(got.size() == 1);
  CHECK(got[0] == tollgate::Status::cancelled);
  clock.advance(std::chrono::seconds(1));  // the second moved up: due at 1 s, not 3 s
  REQUIRE(got.size() == 2);
  CHECK(got[1] == tollgate::Status::acquired);
  // A blocking wait with the stop already requested returns at once.
  CHECK(bucket.acquire_blocking(1.0, std::chrono::seconds(10), stop.get_token()).status() == tollgate::Status::cancelled);
}
