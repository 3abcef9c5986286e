// LimitSet: several dimensions taken all or nothing, FIFO, waiting for the
// latest dimension, exact cancellation, permits, pauses, reconfiguration;
// and a seeded comparison, event by event, with an independent tick model.

#include <algorithm>
#include <limits>
#include <map>
#include <random>
#include <stdexcept>
#include <tollgate/stop_token.hpp>
#include <string>
#include <vector>

#include <tollgate/limit_set.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::AcquireResult;
using tollgate::Costs;
using tollgate::Limit;
using tollgate::Reason;
using tollgate::Status;
using tollgate::testing::ManualScheduler;

namespace {

using Set = tollgate::LimitSet<ManualClock>;

struct Done {
  int id;
  std::int64_t t_ns;
  Status status;
  friend bool operator==(const Done&, const Done&) = default;
};

Task waiter(Set& s, Costs c, int id, std::vector<Done>& log, const ManualClock& clock, tollgate::stop_token stop = {}) {
  AcquireResult r = co_await s.acquire(c, std::move(stop));
  log.push_back({id, ns_of(clock.now()), r.status()});
}

Task waiter_for(Set& s, Costs c, std::chrono::nanoseconds max_wait, int id, std::vector<Done>& log,
                const ManualClock& clock) {
  AcquireResult r = co_await s.acquire_for(c, max_wait);
  log.push_back({id, ns_of(clock.now()), r.status()});
}

// requests: 10 per second, burst 10; tokens: 100 per second, burst 1,000.
struct Fixture {
  ManualClock clock;
  ManualScheduler sched{clock};
  Set set{{{"requests", Limit{10, 10}}, {"tokens", Limit{1000, 100}}}, clock, &sched};
  std::vector<Done> log;
  std::vector<Task> tasks;
};

}  // namespace

TEST_CASE("limit set: all or nothing; a cost above a dimension's capacity is never, naming it", "[limitset]") {
  Fixture f;
  AcquireResult r = f.set.try_acquire({1, 1001});
  CHECK(r.status() == Status::never);
  CHECK(r.dimension() == 1);
  CHECK(f.set.message(r) == "never: cost exceeds capacity (cost 1001 in tokens)");
  CHECK(r.message() == "never: cost exceeds capacity (cost 1001 in dimension 1)");
  CHECK(f.set.available(0) == 10);  // nothing was taken from requests

  REQUIRE(f.set.try_acquire({1, 900}));
  r = f.set.try_acquire({1, 200});  // requests has 9, tokens only 100: neither is taken
  CHECK(r.status() == Status::not_now);
  CHECK(r.retry_after() == 1s);  // tokens: 100 more at 100/s
  CHECK(f.set.available(0) == 9);
  CHECK(f.set.available(1) == 100);
}

TEST_CASE("limit set: a waiter completes when its latest dimension has the tokens", "[limitset]") {
  Fixture f;
  REQUIRE(f.set.try_acquire({10, 0}));    // requests empty: 1 back every 100 ms
  REQUIRE(f.set.try_acquire({0, 1000}));  // tokens empty: 100 back every second
  f.tasks.push_back(waiter(f.set, {1, 250}, 1, f.log, f.clock));  // tokens: due at 2.5 s
  f.tasks.push_back(waiter(f.set, {5, 0}, 2, f.log, f.clock));    // FIFO: not before 2.5 s
  f.clock.advance(2499ms);
  CHECK(f.log.empty());
  f.clock.advance(1ms);
  REQUIRE(f.log.size() == 2);
  CHECK(f.log[0] == Done{1, 2'500'000'000, Status::acquired});
  // The second waiter's 5 requests were there long before; FIFO kept it behind.
  CHECK(f.log[1] == Done{2, 2'500'000'000, Status::acquired});
  // Requests refilled to 10 by 1 s and could hold no more: 10 - 1 - 5 = 4 left.
  CHECK(f.set.available(0) == 4);
  CHECK(f.set.available(1) == 0);
}

TEST_CASE("limit set: a newcomer never jumps the queue, in any dimension", "[limitset]") {
  Fixture f;
  REQUIRE(f.set.try_acquire({0, 1000}));
  f.tasks.push_back(waiter(f.set, {1, 500}, 1, f.log, f.clock));  // due at 5 s
  AcquireResult r = f.set.try_acquire({1, 0});  // would fit now, but the queue is ahead
  CHECK(r.status() == Status::not_now);
  CHECK(r.retry_after() == 5s);
  f.clock.advance(5s);
  CHECK(f.log.size() == 1);
  CHECK(f.set.try_acquire({1, 0}));
}

TEST_CASE("limit set: cancelling a waiter is exact in every dimension", "[limitset]") {
  // Run the same arrivals twice: once with a waiter that is cancelled before
  // its turn, once without it. Everyone else completes at the same instants.
  auto run = [](bool with_cancelled) {
    Fixture f;
    tollgate::stop_source stop;
    REQUIRE(f.set.try_acquire({10, 1000}));
    f.tasks.push_back(waiter(f.set, {2, 300}, 1, f.log, f.clock));
    if (with_cancelled) f.tasks.push_back(waiter(f.set, {8, 400}, 2, f.log, f.clock, stop.get_token()));
    f.tasks.push_back(waiter(f.set, {3, 200}, 3, f.log, f.clock));
    f.clock.advance(1s);
    if (with_cancelled) stop.request_stop();
    f.clock.advance(10s);
    std::vector<Done> others;
    for (const Done& d : f.log)
      if (d.id != 2) others.push_back(d);
    if (with_cancelled) CHECK(std::count(f.log.begin(), f.log.end(), Done{2, 1'000'000'000, Status::cancelled}) == 1);
    return std::pair(others, std::pair(f.set.available(0), f.set.available(1)));
  };
  const auto with = run(true);
  const auto without = run(false);
  CHECK(with.first == without.first);
  CHECK(with.second == without.second);
  REQUIRE(with.first.size() == 2);
  CHECK(with.first[1] == Done{3, 5'000'000'000, Status::acquired});
}

TEST_CASE("limit set: destroying a waiting coroutine gives its cost back", "[limitset]") {
  Fixture f;
  REQUIRE(f.set.try_acquire({0, 1000}));
  f.tasks.push_back(waiter(f.set, {1, 100}, 1, f.log, f.clock));
  f.tasks.push_back(waiter(f.set, {1, 100}, 2, f.log, f.clock));
  CHECK(f.set.waiters() == 2);
  f.tasks[0].reset();  // the first waiter's coroutine is destroyed
  CHECK(f.set.waiters() == 1);
  f.clock.advance(1s);  // the second now goes first, at 1 s
  REQUIRE(f.log.size() == 1);
  CHECK(f.log[0] == Done{2, 1'000'000'000, Status::acquired});
}

TEST_CASE("limit set: permits settle per dimension; release gives everything back", "[limitset][permit]") {
  Fixture f;
  {
    Set::Permit p = f.set.try_acquire_permit({1, 800});
    REQUIRE(p);
    p.settle({1, 300});  // 500 tokens were not used
    CHECK(p.settled());
    CHECK(f.set.available(1) == 700);
    CHECK_THROWS_AS(p.settle({1, 300}), std::logic_error);
  }
  {
    Set::Permit p = f.set.try_acquire_permit({1, 700});
    REQUIRE(p);
    p.settle({1, 900});  // 200 more than estimated: a debt of 200 tokens
    CHECK(f.set.try_acquire({0, 1}).retry_after() == 2s + 10ms);
  }
  {
    Set::Permit p = f.set.try_acquire_permit({1, 5000});
    CHECK_FALSE(p);
    CHECK(p.result().status() == Status::never);
    CHECK_THROWS_AS(p.settle({1, 1}), std::logic_error);
  }
  f.clock.advance(20s);
  {
    Set::Permit p = f.set.try_acquire_permit({1, 50});
    REQUIRE(p);
    CHECK_THROWS_AS(p.settle({1}), std::invalid_argument);  // wrong length
    CHECK_THROWS_AS(p.settle({1, -1}), std::invalid_argument);
    CHECK_FALSE(p.settled());
    p.release();
    CHECK(f.set.available(0) == 10);
    CHECK(f.set.available(1) == 1000);
  }
}

TEST_CASE("limit set: settle without a permit, as a Permit would", "[limitset][permit]") {
  Fixture f;
  Fixture g;  // the same operations through a Permit
  REQUIRE(f.set.try_acquire({1, 800}));
  Set::Permit p = g.set.try_acquire_permit({1, 800});
  REQUIRE(p);
  f.set.settle({1, 800}, {1, 300});
  p.settle({1, 300});
  CHECK(f.set.available(1) == 700);
  CHECK(f.set.available(1) == g.set.available(1));
  REQUIRE(f.set.try_acquire({1, 700}));
  f.set.settle({1, 700}, {1, 900});  // a debt of 200 tokens
  CHECK(f.set.try_acquire({0, 1}).retry_after() == 2s + 10ms);
  CHECK_THROWS_AS(f.set.settle({1}, {1, 1}), std::invalid_argument);
  CHECK_THROWS_AS(f.set.settle({1, 1}, {1, -1}), std::invalid_argument);
}

TEST_CASE("limit set: a per-key set and a shared set compose; a refusal by the second takes nothing from the first",
          "[limitset][permit]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Set key({{"requests", Limit{5, 1}}, {"tokens", Limit{2000, 100}}}, clock, &sched);
  Set shared({{"requests", Limit{100, 10}}, {"tokens", Limit{1500, 100}}}, clock, &sched);
  REQUIRE(shared.try_acquire({0, 1000}));  // another key used most of the upstream
  const Costs cost{1, 800};
  Set::Permit from_key = key.try_acquire_permit(cost);
  REQUIRE(from_key);
  Set::Permit from_shared = shared.try_acquire_permit(cost);
  CHECK(from_shared.result().status() == Status::not_now);
  from_key.release();
  CHECK(key.available(0) == 5);
  CHECK(key.available(1) == 2000);
}

TEST_CASE("limit set: a pause holds every waiter, in order, until it ends", "[limitset][pause]") {
  Fixture f;
  f.set.pause_for(3s);  // an upstream 429 said "retry after 3 s"
  CHECK(f.set.try_acquire({1, 1}).retry_after() == 3s);
  f.tasks.push_back(waiter(f.set, {1, 10}, 1, f.log, f.clock));
  f.tasks.push_back(waiter(f.set, {1, 10}, 2, f.log, f.clock));
  f.tasks.push_back(waiter_for(f.set, {1, 10}, 1s, 3, f.log, f.clock));  // refuses: the pause is longer
  REQUIRE(f.log.size() == 1);
  CHECK(f.log[0] == Done{3, 0, Status::not_now});
  f.clock.advance(2999ms);
  CHECK(f.log.size() == 1);
  f.clock.advance(1ms);
  REQUIRE(f.log.size() == 3);
  CHECK(f.log[1] == Done{1, 3'000'000'000, Status::acquired});
  CHECK(f.log[2] == Done{2, 3'000'000'000, Status::acquired});
}

TEST_CASE("limit set: set_limit re-times the queue and names the dimension a waiter no longer fits", "[limitset]") {
  Fixture f;
  REQUIRE(f.set.try_acquire({0, 1000}));
  f.tasks.push_back(waiter(f.set, {1, 600}, 1, f.log, f.clock));  // due at 6 s
  f.tasks.push_back(waiter(f.set, {1, 100}, 2, f.log, f.clock));  // due at 7 s
  f.clock.advance(1s);
  f.set.set_limit(1, Limit{500, 200});  // tokens: smaller burst, faster refill
  // 100 tokens were there at 1 s (settled under the old limit): waiter 2,
  // now first in line, fits at once.
  REQUIRE(f.log.size() == 2);
  CHECK(f.log[0] == Done{1, 1'000'000'000, Status::never});
  CHECK(f.log[1] == Done{2, 1'000'000'000, Status::acquired});
  CHECK(f.set.limit(1) == Limit{500, 200});
}

TEST_CASE("limit set: limit_remaining corrects one dimension downwards only", "[limitset]") {
  Fixture f;
  f.set.limit_remaining(1, 250);
  CHECK(f.set.available(1) == 250);
  f.set.limit_remaining(1, 900);  // never upwards
  CHECK(f.set.available(1) == 250);
  CHECK(f.set.available(0) == 10);
  CHECK_THROWS_AS(f.set.limit_remaining(2, 1), std::out_of_range);
  CHECK_THROWS_AS(f.set.limit_remaining(1, -1), std::invalid_argument);
}

TEST_CASE("limit set: bad configuration and bad costs are named", "[limitset][hostile]") {
  ManualClock clock;
  auto what = [&](auto make) -> std::string {
    try {
      make();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "no exception";
  };
  CHECK(what([&] { Set s({}, clock); }) == "LimitSet::LimitSet: 0 dimensions; between 1 and 8 allowed");
  CHECK(what([&] { Set s({{"a", Limit{1, 1}}, {"a", Limit{1, 1}}}, clock); }) ==
        "LimitSet::LimitSet: two dimensions named \"a\"");
  CHECK(what([&] { Set s({{"", Limit{1, 1}}}, clock); }) == "LimitSet::LimitSet: dimension 0 has no name");
  CHECK(what([&] { Set s({{"tokens", Limit{-1, 1}}}, clock); }).find("dimension \"tokens\"") != std::string::npos);
  CHECK(what([&] { Costs c{1, 2, 3, 4, 5, 6, 7, 8, 9}; }) ==
        "Costs: 9 values; a LimitSet has at most 8 dimensions");

  Set s({{"requests", Limit{10, 1}}, {"tokens", Limit{100, 10}}}, clock);
  CHECK(s.try_acquire({1}).reason_code() == Reason::wrong_dimension_count);
  AcquireResult r = s.try_acquire({1, std::numeric_limits<double>::quiet_NaN()});
  CHECK(r.status() == Status::invalid);
  CHECK(r.reason_code() == Reason::cost_is_nan);
  CHECK(r.dimension() == 1);
  CHECK(s.try_acquire({-1, 1}).dimension() == 0);
  CHECK(s.try_acquire({1, std::numeric_limits<double>::infinity()}).reason_code() == Reason::cost_is_infinite);
  CHECK(what([&] { s.refund({1, -2}); }) == "LimitSet::refund: costs[1] must be finite and >= 0, got -2");
  CHECK(what([&] { s.charge({1}); }) == "LimitSet::charge: costs has 1 values, expected 2");
  CHECK(what([&] { (void)s.index("bytes"); }) == "LimitSet::index: no dimension named \"bytes\"");
  CHECK(s.index("tokens") == 1);
  // No scheduler on a manual clock: a wait cannot happen and says so.
  REQUIRE(s.try_acquire({10, 0}));
  CHECK(s.acquire_blocking({1, 0}).reason_code() == Reason::no_scheduler);
}

// ---- The tick model -------------------------------------------------------
//
// An independent model of the same contract in integers: time in whole
// milliseconds, each dimension's level counted in "milliseconds of refill"
// (a dimension refilling 1000/m units per second gains 1 per ms and a unit
// costs m), refilled one tick at a time and capped at capacity; a FIFO queue
// whose head is granted, at a tick, when every dimension holds its cost.

namespace {

struct TickModel {
  std::vector<std::int64_t> cap, per_unit, level;
  struct W {
    int id;
    std::vector<std::int64_t> cost;
  };
  std::vector<W> queue;
  std::int64_t now = 0, paused_until = 0;
  std::vector<Done> log;

  bool fits(const std::vector<std::int64_t>& c) const {
    for (std::size_t d = 0; d < c.size(); ++d)
      if (level[d] < c[d] * per_unit[d]) return false;
    return true;
  }
  void take(const std::vector<std::int64_t>& c) {
    for (std::size_t d = 0; d < c.size(); ++d) level[d] -= c[d] * per_unit[d];
  }
  void grant() {
    if (now < paused_until) return;
    while (!queue.empty() && fits(queue.front().cost)) {
      take(queue.front().cost);
      log.push_back({queue.front().id, now * 1'000'000, Status::acquired});
      queue.erase(queue.begin());
    }
  }
  void tick() {
    ++now;
    for (std::size_t d = 0; d < cap.size(); ++d) level[d] = std::min(cap[d] * per_unit[d], level[d] + 1);
    grant();
  }
  bool try_take(const std::vector<std::int64_t>& c) {
    if (!queue.empty() || now < paused_until || !fits(c)) return false;
    take(c);
    return true;
  }
};

}  // namespace

TEST_CASE("limit set: seeded random operations match the tick model event by event", "[limitset][model]") {
  for (int seed = 1; seed <= 150; ++seed) {
    CAPTURE(seed);
    std::mt19937_64 rng(seed);
    auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    const std::size_t dims = static_cast<std::size_t>(pick(1, 4));
    TickModel m;
    std::vector<tollgate::Dimension> config;
    for (std::size_t d = 0; d < dims; ++d) {
      const int per_unit = 1 << pick(0, 2);  // 1000, 500 or 250 units per second
      const int cap = pick(3, 30);
      m.cap.push_back(cap);
      m.per_unit.push_back(per_unit);
      m.level.push_back(std::int64_t{cap} * per_unit);
      std::string name = "d";  // not "d" + to_string: g++ 12 -O3 warns (-Wrestrict, a known false positive)
      name += std::to_string(d);
      config.push_back({name, Limit{double(cap), 1000.0 / per_unit}});
    }
    ManualClock clock;
    ManualScheduler sched(clock);
    Set set(config, clock, &sched);
    std::vector<Done> log;
    std::vector<Task> tasks;
    std::map<int, tollgate::stop_source> stops;
    int next_id = 0;
    auto random_cost = [&](bool fitting) {
      std::vector<std::int64_t> c;
      Costs costs = Costs::zeros(dims);
      for (std::size_t d = 0; d < dims; ++d) {
        c.push_back(fitting ? pick(0, static_cast<int>(m.cap[d])) : pick(0, 3));
        costs[d] = double(c.back());
      }
      return std::pair(c, costs);
    };
    for (int step = 0; step < 300; ++step) {
      const int op = pick(0, 99);
      if (op < 30) {  // time passes, one millisecond at a time
        for (int k = pick(1, 20); k > 0; --k) {
          m.tick();
          clock.advance(1ms);
        }
      } else if (op < 45) {
        auto [c, costs] = random_cost(true);
        const bool model_ok = m.try_take(c);
        REQUIRE(set.try_acquire(costs).ok() == model_ok);
      } else if (op < 75) {
        auto [c, costs] = random_cost(true);
        const int id = next_id++;
        m.queue.push_back({id, c});
        m.grant();  // a waiter that fits at once completes at once
        tasks.push_back(waiter(set, costs, id, log, clock, stops[id].get_token()));
      } else if (op < 83) {
        if (m.queue.empty()) continue;
        const std::size_t k = static_cast<std::size_t>(pick(0, static_cast<int>(m.queue.size()) - 1));
        const int id = m.queue[k].id;
        m.queue.erase(m.queue.begin() + static_cast<std::ptrdiff_t>(k));
        m.log.push_back({id, m.now * 1'000'000, Status::cancelled});
        m.grant();  // the waiters behind it move up
        stops[id].request_stop();
      } else if (op < 88) {
        auto [c, costs] = random_cost(false);
        for (std::size_t d = 0; d < dims; ++d) m.level[d] = std::min(m.cap[d] * m.per_unit[d], m.level[d] + c[d] * m.per_unit[d]);
        m.grant();
        set.refund(costs);
      } else if (op < 93) {
        auto [c, costs] = random_cost(false);
        m.take(c);  // a debt
        set.charge(costs);
      } else if (op < 96) {
        const std::size_t d = static_cast<std::size_t>(pick(0, static_cast<int>(dims) - 1));
        const int remaining = pick(0, static_cast<int>(m.cap[d]));
        m.level[d] = std::min(m.level[d], std::int64_t{remaining} * m.per_unit[d]);
        set.limit_remaining(d, remaining);
      } else {
        const int ms = pick(1, 40);
        m.paused_until = std::max(m.paused_until, m.now + ms);
        set.pause_for(std::chrono::milliseconds(ms));
      }
      REQUIRE(log == m.log);
    }
  }
}

TEST_CASE("limit set: every dimension conforms under a random load with waiting", "[limitset][conformance]") {
  for (int seed = 1; seed <= 40; ++seed) {
    CAPTURE(seed);
    std::mt19937_64 rng(seed);
    auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    ManualClock clock;
    ManualScheduler sched(clock);
    // Rates that do not divide a millisecond: completions fall between ticks.
    Set set({{"requests", Limit{7, 3}}, {"tokens", Limit{900, 77}}, {"output", Limit{400, 31}}}, clock, &sched);
    std::vector<std::vector<Admission>> per_dim(3);
    struct Logger {
      static Task run(Set& s, Costs c, const ManualClock& clock, std::vector<std::vector<Admission>>& out) {
        // Not `if (co_await ...)`: GCC 12 miscompiles a co_await in an if
        // condition (the frame is corrupted on resumption; see README).
        const AcquireResult r = co_await s.acquire(c);
        if (r)
          for (std::size_t d = 0; d < 3; ++d) out[d].push_back({ns_of(clock.now()), std::int64_t(c[d])});
      }
    };
    std::vector<Task> tasks;
    for (int i = 0; i < 200; ++i) {
      const Costs c{double(pick(0, 2)), double(pick(0, 300)), double(pick(0, 150))};
      if (pick(0, 3) == 0) {
        if (set.try_acquire(c))
          for (std::size_t d = 0; d < 3; ++d) per_dim[d].push_back({ns_of(clock.now()), std::int64_t(c[d])});
      } else {
        tasks.push_back(Logger::run(set, c, clock, per_dim));
      }
      clock.advance(std::chrono::microseconds(pick(0, 400'000)));
    }
    clock.advance(std::chrono::hours(1));
    CHECK(set.waiters() == 0);
    CHECK(check_conformance(per_dim[0], 7, 3) == "");
    CHECK(check_conformance(per_dim[1], 900, 77) == "");
    CHECK(check_conformance(per_dim[2], 400, 31) == "");
  }
}
