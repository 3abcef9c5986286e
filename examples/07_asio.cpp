// 07_asio: a LimitSet on a Boost.Asio event loop.
//
// Requests and tokens are limited together; every wait happens on the
// io_context (a TimerScheduler on its executor: no extra thread), each
// coroutine co_awaits async_acquire, and one of them gives up when a timer
// wins an `||` race: its place in the queue is given back exactly.
// Exits 1 if what it printed is not what the limits allow.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <tollgate/boost_asio.hpp>
#include <tollgate/limit_set.hpp>

#include <chrono>
#include <cstdio>
#include <variant>

namespace net = boost::asio;
using namespace std::chrono_literals;
using namespace net::experimental::awaitable_operators;

int admitted = 0, gave_up = 0;

// [asio]
using Clock = std::chrono::steady_clock;

// Requests and LLM tokens, taken all or nothing: 2 requests of burst then 10/s,
// 3,000 tokens of burst then 20,000/s.
tollgate::LimitSet<> make_limits(tollgate::boost_asio::TimerScheduler<>& timers) {
  return tollgate::LimitSet<>({{"requests", tollgate::Limit{2, 10}}, {"tokens", tollgate::Limit{3000, 20000}}},
                              Clock{}, &timers);
}

net::awaitable<void> call_llm(tollgate::LimitSet<>& limits, int id, double tokens) {
  const tollgate::Costs cost{1, tokens};
  // Any completion token works (a callback, use_awaitable, deferred, use_future, as_tuple);
  // max_wait 2 s: a wait predicted longer is refused at once.
  tollgate::AcquireResult r = co_await tollgate::boost_asio::async_acquire(limits, cost, 2s, net::use_awaitable);
  if (r) {
    ++admitted;
    std::printf("call %d: admitted\n", id);
  }
  co_return;
}

net::awaitable<void> impatient_call(tollgate::LimitSet<>& limits, int id) {
  net::steady_timer deadline(co_await net::this_coro::executor, 50ms);
  const tollgate::Costs cost{1, 500};
  // Whichever finishes first cancels the other: a cancelled acquire leaves the
  // queue and gives back its place exactly; those behind it move up.
  auto first = co_await (tollgate::boost_asio::async_acquire(limits, cost, net::use_awaitable) ||
                         deadline.async_wait(net::use_awaitable));
  if (first.index() == 1) {
    ++gave_up;
    std::printf("call %d: gave up after 50 ms\n", id);
  }
}

int main() {
  net::io_context io;
  tollgate::boost_asio::TimerScheduler<> timers(io.get_executor());
  tollgate::LimitSet<> limits = make_limits(timers);
  for (int id = 0; id < 4; ++id) net::co_spawn(io, call_llm(limits, id, 1000), net::detached);
  net::co_spawn(io, impatient_call(limits, 4), net::detached);
  net::co_spawn(io, call_llm(limits, 5, 1000), net::detached);
  io.run();  // returns when every call is done: nothing else keeps it busy
// [asio]
  std::printf("%d admitted, %d gave up\n", admitted, gave_up);
  return admitted == 5 && gave_up == 1 ? 0 : 1;
}
