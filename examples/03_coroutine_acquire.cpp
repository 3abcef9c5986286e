// 03_coroutine_acquire: co_await bucket.acquire(cost) in coroutines, FIFO.
//
// A naive token-bucket loop never serves a cost-8 request queued behind a
// stream of cost-1 callers once the burst is spent. Here everyone waits in
// arrival order, and each is woken once, exactly when its tokens are there.
// The README's quick start is this whole program, as it is compiled.
// [coroutine]
#include <tollgate/tollgate.hpp>

#include <chrono>
#include <coroutine>
#include <cstdio>
#include <exception>
#include <latch>

using Clock = std::chrono::steady_clock;

// A minimal fire-and-forget coroutine type; any coroutine type works.
struct Spawn {
  struct promise_type {
    Spawn get_return_object() { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() {}
    void unhandled_exception() { std::terminate(); }
  };
};

const Clock::time_point start = Clock::now();

// 10 tokens of burst, 20 per second: think "LLM tokens per second".
tollgate::TokenBucket<> bucket(tollgate::Limit{.capacity = 10, .rate = 20});

Spawn call_llm(int id, double tokens, std::latch& done) {
  auto r = co_await bucket.acquire(tokens);  // suspends outside the lock; no thread blocked
  // Resumed on tollgate's timer thread (or inline, when no wait was needed).
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  std::printf("request %d (cost %4.1f): %-8s at %4lld ms\n", id, tokens, r ? "admitted" : "refused",
              static_cast<long long>(ms));
  done.count_down();
}

int main() {
  std::latch done(8);
  call_llm(0, 10, done);  // the whole burst
  call_llm(1, 8, done);   // a large request: waits 400 ms
  for (int i = 2; i < 7; ++i) call_llm(i, 1, done);  // small ones queue behind it, not ahead
  call_llm(7, 11, done);  // more than the capacity: refused at once, never a hang
  done.wait();
  return 0;
}
// [coroutine]
