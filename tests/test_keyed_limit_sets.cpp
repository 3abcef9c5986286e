// KeyedLimitSets: a multi-dimension limit set per key, from its tier; keys
// isolated from each other; every front-end per key; compact, evictable state.

#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <tollgate/keyed_limit_sets.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::AcquireResult;
using tollgate::Costs;
using tollgate::KeyTier;
using tollgate::Limit;
using tollgate::Reason;
using tollgate::Status;
using tollgate::testing::ManualScheduler;

namespace {

using Keyed = tollgate::KeyedLimitSets<std::string, ManualClock>;

// "free" keys: 2 requests per second (burst 2) and 1,000 output tokens per
// second (burst 1,000); "paid-" keys: 10 requests per second, output unlimited.
Keyed::Options tiers(std::size_t shards = 4) {
  Keyed::Options o;
  o.tiers = {KeyTier{"free", 1, {{"requests", Limit{2, 2}}, {"output_tokens", Limit{1'000, 1'000}}}},
             KeyTier{"paid", 1, {{"requests", Limit{10, 10}}}}};
  o.tier_of = [](const std::string& k) -> std::size_t { return k.rfind("paid-", 0) == 0 ? 1 : 0; };
  o.shards = shards;
  return o;
}

struct Rig {
  explicit Rig(Keyed::Options o = tiers()) : keys({"requests", "input_tokens", "output_tokens"}, std::move(o), clock, &sched) {}
  ManualClock clock;
  ManualScheduler sched{clock};
  Keyed keys;
  std::vector<std::pair<std::string, std::int64_t>> log;
  std::vector<Task> tasks;
};

Task waiter(Keyed& k, std::string key, Costs c, std::vector<std::pair<std::string, std::int64_t>>& log,
            const ManualClock& clock, tollgate::stop_token stop = {}) {
  const AcquireResult r = co_await k.acquire(key, c, std::move(stop));
  log.push_back({key + (r ? "" : ":" + std::string(tollgate::to_string(r.status()))), ns_of(clock.now())});
}

}  // namespace

TEST_CASE("KeyedLimitSets: each key has its tier's limits, isolated from every other key") {
  Rig r;
  const Costs one{1, 500, 100};
  CHECK(r.keys.try_acquire("alice", one));
  CHECK(r.keys.try_acquire("alice", one));
  const AcquireResult third = r.keys.try_acquire("alice", one);
  CHECK(third.status() == Status::not_now);
  CHECK(third.retry_after() == std::chrono::milliseconds(500));  // requests: 2 per second
  CHECK(r.keys.try_acquire("bob", one));  // bob is untouched by alice
  for (int i = 0; i < 10; ++i) CHECK(r.keys.try_acquire("paid-carol", {1, 1e6, 1e6}));  // output not limited
  CHECK(!r.keys.try_acquire("paid-carol", one));
  CHECK(r.keys.available("alice", 0) == 0);
  CHECK(r.keys.available("alice", 2) == 800);
  CHECK(r.keys.available("paid-carol", 2) == std::numeric_limits<double>::infinity());
  CHECK(r.keys.available("nobody", 0) == 2);  // a key never seen: its tier's capacity, not created
  const AcquireResult big = r.keys.try_acquire("bob", {1, 0, 5'000});
  CHECK(big.status() == Status::never);
  CHECK(big.reason_code() == Reason::cost_exceeds_key_capacity);
  CHECK(r.keys.message(big) == "never: cost exceeds the key's own capacity (its tier's limit) (cost 5000 in output_tokens)");
  CHECK(r.keys.try_acquire("bob", r.keys.costs({{"output_tokens", 1'000}})).status() == Status::not_now);
}

TEST_CASE("KeyedLimitSets: co_await waits FIFO within a key; keys never wait for each other; cancel is exact") {
  Rig r;
  const Costs one{1, 0, 0};
  tollgate::stop_source stop;
  for (int i = 0; i < 3; ++i) r.tasks.push_back(waiter(r.keys, "alice", one, r.log, r.clock));
  r.tasks.push_back(waiter(r.keys, "alice", one, r.log, r.clock, stop.get_token()));
  r.tasks.push_back(waiter(r.keys, "alice", one, r.log, r.clock));
  r.tasks.push_back(waiter(r.keys, "bob", one, r.log, r.clock));  // alice's queue does not delay bob
  using L = std::vector<std::pair<std::string, std::int64_t>>;
  CHECK(r.log == L{{"alice", 0}, {"alice", 0}, {"bob", 0}});
  r.clock.advance(std::chrono::milliseconds(100));
  stop.request_stop();  // alice's fourth leaves; the fifth moves up to 1 s
  r.clock.advance(std::chrono::seconds(2));
  CHECK(r.log == L{{"alice", 0}, {"alice", 0}, {"bob", 0}, {"alice:cancelled", 100'000'000},
                   {"alice", 500'000'000}, {"alice", 1'000'000'000}});
}

TEST_CASE("KeyedLimitSets: acquire_for refuses at once; permits settle per dimension; the blocking form") {
  Rig r;
  const Costs c{1, 100, 800};
  auto p = r.keys.try_acquire_permit("alice", c);
  REQUIRE(p);
  CHECK(r.keys.available("alice", 2) == 200);
  p.settle({1, 100, 300});  // 500 output tokens back
  CHECK(r.keys.available("alice", 2) == 700);
  CHECK(r.keys.acquire_blocking("alice", Costs{1, 0, 700}, std::chrono::nanoseconds(0)));
  const AcquireResult refused = r.keys.acquire_blocking("alice", Costs{1, 0, 0}, std::chrono::milliseconds(10));
  CHECK(refused.status() == Status::not_now);
  CHECK(refused.retry_after() == std::chrono::milliseconds(500));
  std::vector<AcquireResult> got;
  auto body = [&]() -> Task {  // named: a coroutine lambda's captures live in the lambda object
    const Costs one{1, 0, 0};
    got.push_back(co_await r.keys.acquire_for("alice", one, std::chrono::milliseconds(400)));
    tollgate::Permit<tollgate::KeyedCosts> q = co_await r.keys.acquire_permit("alice", one, std::chrono::seconds(1));
    got.push_back(q.result());
    q.release();
  };
  Task t = body();
  REQUIRE(got.size() == 1);
  CHECK(got[0].status() == Status::not_now);  // 500 ms > 400 ms: refused at once
  r.clock.advance(std::chrono::milliseconds(500));
  REQUIRE(got.size() == 2);
  CHECK(got[1].ok());
  CHECK(r.keys.available("alice", 0) == 1);  // released: the request is back
}

TEST_CASE("KeyedLimitSets: keys are evicted only when fresh, the cap refuses, and a flood costs nothing lasting") {
  Keyed::Options o = tiers(1);
  o.max_keys = 100;
  Rig r(o);
  // Keys built by appending: g++ 12 -O3 warns falsely (-Wrestrict) on "literal" + std::string.
  auto key = [](const char* prefix, int i) {
    std::string k = prefix;
    k += std::to_string(i);
    return k;
  };
  for (int i = 0; i < 100; ++i) CHECK(r.keys.try_acquire(key("k", i), {1, 0, 0}));
  CHECK(r.keys.keys() == 100);
  // At the cap, nothing fresh yet: new keys are refused, existing keys unaffected.
  CHECK(r.keys.try_acquire("new", {1, 0, 0}).reason_code() == Reason::key_cap_reached);
  CHECK(r.keys.try_acquire("k5", {1, 0, 0}));
  r.clock.advance(std::chrono::seconds(1));  // everything refilled: all fresh
  for (int i = 0; i < 10'000; ++i) CHECK(r.keys.try_acquire(key("flood", i), {0, 0, 0}));
  CHECK(r.keys.keys() <= 100);
  r.keys.sweep(1'000);
  CHECK(r.keys.keys() == 0);
  CHECK(r.keys.bytes_per_key() <= 160);
}

TEST_CASE("KeyedLimitSets: bad configuration is named") {
  ManualClock clock;
  auto what = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  };
  Keyed::Options o;
  o.tiers = {KeyTier{"t", 1, {{"bytes", Limit{1, 1}}}}};
  CHECK(what([&] { Keyed k({"requests"}, o, clock); }) ==
        "KeyedLimitSets::KeyedLimitSets: tier \"t\" limits \"bytes\", which is not a dimension of the set");
  CHECK(what([&] { Keyed k({"a", "a"}, {}, clock); }) == "KeyedLimitSets::KeyedLimitSets: two dimensions named \"a\"");
  o = {};
  o.max_keys = 0;
  CHECK(what([&] { Keyed k({"requests"}, o, clock); }) == "KeyedLimitSets::KeyedLimitSets: max_keys must be > 0, got 0");
}
