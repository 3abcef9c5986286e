// fuzz_bucket: bytes decode into operations on one bucket and the manual clock
// (advance, try_acquire, acquire, stop, destroy, refund, pause, set_rate,
// set_capacity, charge). Built again as fuzz_deadlines
// (TOLLGATE_FUZZ_DEADLINES=1), where some waiters have a deadline
// (acquire_for) and half the charges are upstream remaining counts
// (limit_remaining) instead: re-timings that time waiters out. Two harnesses,
// so that fuzz_bucket's committed inputs (regressions among them) keep
// decoding as they did. Until the first reconfiguration or deadline waiter
// the bucket must agree with
// the integer reference model event by event (after one, the model's exact
// nanoseconds and the bucket's 2^-32 ns settling may round apart, so only the
// invariants below are checked). Always: every window conforms to the largest
// capacity and rate used (refunds counted as negative admissions), every
// waiter completed exactly once unless destroyed, none twice, acquired ones
// in arrival (FIFO) order.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <tollgate/stop_token.hpp>
#include <vector>

#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "reference_model.hpp"
#include "fuzz_support.hpp"
#include "test_support.hpp"

#ifndef TOLLGATE_FUZZ_DEADLINES
#define TOLLGATE_FUZZ_DEADLINES 0
#endif

namespace {

constexpr bool kDeadlines = TOLLGATE_FUZZ_DEADLINES;
using namespace tgtest;
using Bucket = tollgate::TokenBucket<ManualClock, tollgate::NullMutex>;

using tgfuzz::fail;
using tgfuzz::Reader;

Task waiter(Bucket& b, int id, std::int64_t cost, tollgate::stop_token stop, std::vector<Event>& out,
            const ManualClock& clock, std::vector<int>& completions, std::int64_t max_wait_ns = -1) {
  tollgate::AcquireResult r = max_wait_ns < 0 ? co_await b.acquire(double(cost), std::move(stop))
                                              : co_await b.acquire_for(double(cost), ns(max_wait_ns), std::move(stop));
  if (++completions[static_cast<std::size_t>(id)] > 1) fail("waiter resumed twice", id);
  out.push_back({id, ns_of(clock.now()), cost, r.status()});
}

constexpr std::size_t kMaxWaiters = 200;
constexpr int kMaxSteps = 600;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Reader in{data, size};
  static constexpr std::int64_t rates[] = {1, 2, 4, 5, 10, 1000};
  const std::int64_t capacity = 1 + in.byte() % 16;
  const std::int64_t rate = rates[in.byte() % 6];

  ManualClock clock;
  tollgate::testing::ManualScheduler sched(clock);
  std::vector<Event> got, want;
  std::vector<Admission> net;  // admissions (+) and refunds (-), for the window check
  std::vector<int> completions(kMaxWaiters, 0);
  std::vector<tollgate::stop_source> stops(kMaxWaiters);
  std::vector<bool> destroyed(kMaxWaiters, false);
  std::vector<Task> tasks;
  tasks.reserve(kMaxWaiters);
  std::int64_t capacity_bound = capacity, rate_bound = rate;
  {
    Bucket bucket(tollgate::Limit{double(capacity), double(rate)}, clock, &sched);
    Model model(capacity, rate);
    auto now = [&] { return ns_of(clock.now()); };

    bool exact = true;  // no reconfiguration yet: compare with the model
    std::int64_t max_capacity = capacity, max_rate = rate;
    for (int step = 0; step < kMaxSteps && in.n > 0; ++step) {
      switch (in.byte() % 10) {
        case 0: {  // advance by up to 6.5 s, in 0.1 ms steps
          const std::int64_t d = (std::int64_t{in.byte()} << 8 | in.byte()) * 100'000;
          clock.advance(ns(d));
          model.advance_to(now(), want);
          break;
        }
        case 1: {  // try_acquire, sometimes above capacity
          const std::int64_t cost = in.byte() % (capacity + 2);
          const bool ok = bucket.try_acquire(double(cost)).ok();
          if (ok != model.try_acquire(cost) && exact) fail("try_acquire disagrees with the model", cost, now());
          if (ok) net.push_back({now(), cost * 1'000'000'000});
          break;
        }
        case 2: {  // a waiter
          if (tasks.size() == kMaxWaiters) break;
          const int id = static_cast<int>(tasks.size());
          const std::int64_t cost = in.byte() % (capacity + 2);
          if (kDeadlines && in.byte() % 4 == 0) {  // with a deadline: re-timings may time it out (the model has none)
            exact = false;
            const std::int64_t max_wait = std::int64_t{in.byte()} * 50'000'000;
            tasks.push_back(waiter(bucket, id, cost, stops[static_cast<std::size_t>(id)].get_token(), got, clock,
                                   completions, max_wait));
            break;
          }
          if (cost > capacity) {
            want.push_back({id, now(), cost, tollgate::Status::never});
          } else {
            model.enqueue(id, cost);
            model.advance_to(now(), want);
          }
          tasks.push_back(waiter(bucket, id, cost, stops[static_cast<std::size_t>(id)].get_token(), got, clock,
                                 completions));
          break;
        }
        case 3: {  // stop one
          if (tasks.empty()) break;
          const std::size_t id = in.byte() % tasks.size();
          if (model.cancel(static_cast<int>(id))) want.push_back({static_cast<int>(id), now(), 0, tollgate::Status::cancelled});
          model.advance_to(now(), want);
          stops[id].request_stop();
          break;
        }
        case 4: {  // destroy one
          if (tasks.empty()) break;
          const std::size_t id = in.byte() % tasks.size();
          model.cancel(static_cast<int>(id));
          model.advance_to(now(), want);
          if (!tasks[id].done()) destroyed[id] = true;
          tasks[id].reset();
          break;
        }
        case 5: {  // refund
          const std::int64_t cost = in.byte() % (capacity + 1);
          const double credited = bucket.refund(double(cost));
          const std::int64_t model_credited = model.refund(cost);
          model.advance_to(now(), want);
          if (exact && std::llround(credited * 1e9) != model_credited)
            fail("refund credited differs from the model", std::llround(credited * 1e9), model_credited);
          if (credited > 0) net.push_back({now(), -std::llround(credited * 1e9)});
          break;
        }
        case 6: {  // an upstream 429: pause for up to 2.5 s
          const std::int64_t until = now() + std::int64_t{in.byte()} * 10'000'000;
          bucket.pause_until(ManualClock::time_point(ns(until)));
          model.pause_until(until);
          break;
        }
        case 7: {  // set_rate
          const std::int64_t r = rates[in.byte() % 6];
          bucket.set_rate(double(r));
          max_rate = std::max(max_rate, r);
          exact = false;
          break;
        }
        case 9: {  // an overrun settled as debt (not an admission: it was spent upstream)
          const std::int64_t cost = in.byte() % (capacity + 3);
          if (!kDeadlines || cost % 2) {
            bucket.charge(double(cost));
            model.charge(cost);
          } else {  // an upstream's remaining count, lowering the level
            bucket.limit_remaining(double(cost / 2));
            model.limit_remaining(cost / 2);
          }
          model.advance_to(now(), want);
          break;
        }
        case 8: {  // set_capacity
          const std::int64_t c = 1 + in.byte() % 16;
          bucket.set_capacity(double(c));
          max_capacity = std::max(max_capacity, c);
          exact = false;
          break;
        }
      }
      for (Event& e : got)
        if (e.status == tollgate::Status::cancelled) e.cost = 0;
      if (!exact) continue;
      if (got.size() != want.size()) fail("event count differs from the model", long(got.size()), long(want.size()));
      for (std::size_t i = 0; i < got.size(); ++i)
        if (!(got[i] == want[i])) fail("event differs from the model", got[i].id, want[i].id);
    }
    clock.advance(std::chrono::hours(48));
    model.advance_to(now(), want);
    for (Event& e : got)
      if (e.status == tollgate::Status::cancelled) e.cost = 0;
    if (exact) {
      if (got.size() != want.size()) fail("final event count differs", long(got.size()), long(want.size()));
      for (std::size_t i = 0; i < got.size(); ++i)
        if (!(got[i] == want[i])) fail("final event differs", got[i].id, want[i].id);
    }
    if (bucket.waiters() != 0) fail("waiters left after draining", long(bucket.waiters()));
    int last_acquired = -1;
    for (const Event& e : got) {
      if (e.status != tollgate::Status::acquired) continue;
      if (e.id <= last_acquired) fail("waiters completed out of arrival order", last_acquired, e.id);
      last_acquired = e.id;
    }
    capacity_bound = max_capacity;
    rate_bound = max_rate;
  }
  for (std::size_t id = 0; id < tasks.size(); ++id)
    if (!destroyed[id] && completions[id] != 1) fail("waiter not completed exactly once", long(id), completions[id]);
  for (const Event& e : got)
    if (e.status == tollgate::Status::acquired) net.push_back({e.t_ns, e.cost * 1'000'000'000});
  std::stable_sort(net.begin(), net.end(), [](auto& a, auto& b) { return a.t_ns < b.t_ns; });
  // Units are nano-tokens here: scale the bound to match.
  if (!check_conformance(net, capacity_bound * 1'000'000'000, rate_bound * 1'000'000'000).empty())
    fail("conformance: a window admitted more than capacity + rate * (t - s)");
  return 0;
}
