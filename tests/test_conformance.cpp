// Randomized sequences checked against an independent reference model (tokens
// counted in nano-units with integer arithmetic, FIFO queue) and against the
// conformance property over every window. Seeded: fully deterministic.

#include <algorithm>
#include <deque>
#include <map>
#include <ostream>
#include <mutex>
#include <random>
#include <tollgate/stop_token.hpp>
#include <string>
#include <vector>

#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"
#include "reference_model.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tgtest::Event;
using tgtest::Model;
using tollgate::AcquireResult;
using tollgate::Limit;
using tollgate::NullMutex;
using tollgate::Status;
using tollgate::testing::ManualScheduler;

namespace {

template <class Bucket>
Task run_waiter(Bucket& b, int id, std::int64_t cost, tollgate::stop_token stop, std::vector<Event>& out,
                const ManualClock& clock) {
  AcquireResult r = co_await b.acquire(static_cast<double>(cost), std::move(stop));
  out.push_back({id, ns_of(clock.now()), cost, r.status()});
}

template <class Mutex>
void run_seed(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const std::int64_t rates[] = {1, 2, 4, 5, 10, 1000};
  const std::int64_t rate = rates[rng() % std::size(rates)];
  const std::int64_t capacity = 1 + static_cast<std::int64_t>(rng() % 20);
  INFO("seed " << seed << " capacity " << capacity << " rate " << rate);

  ManualClock clock;
  ManualScheduler sched(clock);
  tollgate::TokenBucket<ManualClock, Mutex> bucket(Limit{double(capacity), double(rate)}, clock, &sched);
  Model model(capacity, rate);

  std::vector<Event> got, want;
  std::map<int, Task> tasks;
  std::map<int, tollgate::stop_source> stops;
  std::vector<Admission> admitted;
  int next_id = 0;
  std::string trace;  // the operations so far, shown when a check fails

  for (int step = 0; step < 400; ++step) {
    INFO("step " << step << ", after:\n" << trace);
    const unsigned op = rng() % 10;
    if (op < 3) {  // advance by 0..1.5 s, at ns granularity
      const std::int64_t d = static_cast<std::int64_t>(rng() % 1'500'000'000);
      clock.advance(ns(d));
      trace += "advance " + std::to_string(d) + "\n";
      model.advance_to(ns_of(clock.now()), want);
    } else if (op < 5) {  // try_acquire
      const std::int64_t cost = static_cast<std::int64_t>(rng() % (capacity + 1));
      const bool ok = bucket.try_acquire(double(cost)).ok();
      trace += "try " + std::to_string(cost) + (ok ? " ok\n" : " no\n");
      REQUIRE(ok == model.try_acquire(cost));
      if (ok) admitted.push_back({ns_of(clock.now()), cost});
    } else if (op < 8) {  // a waiter (sometimes above capacity: never)
      const int id = next_id++;
      const std::int64_t cost = static_cast<std::int64_t>(rng() % (capacity + 2));
      stops[id] = tollgate::stop_source();
      trace += "wait id " + std::to_string(id) + " cost " + std::to_string(cost) + "\n";
      if (cost > capacity) {
        want.push_back({id, ns_of(clock.now()), cost, Status::never});
      } else {
        model.enqueue(id, cost);
        model.advance_to(ns_of(clock.now()), want);  // may complete at once
      }
      tasks[id] = run_waiter(bucket, id, cost, stops[id].get_token(), got, clock);
    } else if (op < 9 && next_id > 0) {  // cancel one by stop token
      const int id = static_cast<int>(rng() % next_id);
      trace += "stop id " + std::to_string(id) + "\n";
      if (model.cancel(id)) want.push_back({id, ns_of(clock.now()), 0, Status::cancelled});
      model.advance_to(ns_of(clock.now()), want);  // later waiters may be due now
      stops[id].request_stop();
    } else if (next_id > 0) {  // destroy one coroutine
      const int id = static_cast<int>(rng() % next_id);
      trace += "destroy id " + std::to_string(id) + "\n";
      model.cancel(id);
      model.advance_to(ns_of(clock.now()), want);
      tasks[id].reset();
    }
  }
  clock.advance(std::chrono::hours(24));
  model.advance_to(ns_of(clock.now()), want);
  INFO("after:\n" << trace);

  // Cancelled events carry no cost in `want`; align before comparing.
  for (Event& e : got)
    if (e.status == Status::cancelled) e.cost = 0;
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("event " << i << " id " << got[i].id);
    CHECK(got[i] == want[i]);
  }
  for (const Event& e : got)
    if (e.status == Status::acquired) admitted.push_back({e.t_ns, e.cost});
  std::stable_sort(admitted.begin(), admitted.end(), [](auto& a, auto& b) { return a.t_ns < b.t_ns; });
  CHECK(check_conformance(admitted, capacity, rate) == "");
}

}  // namespace

TEMPLATE_TEST_CASE("conformance: randomized sequences match the reference model", "[conformance]", std::mutex,
                   tollgate::SpinMutex, tollgate::BiasedMutex, NullMutex) {
  for (std::uint64_t seed = 1; seed <= 150; ++seed) run_seed<TestType>(seed);
}

TEST_CASE("conformance: the checker itself catches a violation", "[conformance]") {
  // capacity 2, rate 1/s: 3 units in 0.5 s is one too many; 3 in 1 s is fine.
  CHECK(check_conformance({{0, 2}, {500'000'000, 1}}, 2, 1) != "");
  CHECK(check_conformance({{0, 2}, {1'000'000'000, 1}}, 2, 1) == "");
  CHECK(check_conformance({{0, 1}, {0, 1}, {0, 1}}, 2, 1) != "");
}
