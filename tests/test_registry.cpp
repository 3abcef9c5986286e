// BucketRegistry: per-key isolation, tiers, heterogeneous lookup, eviction of
// fresh buckets only, and the key cap.

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <tollgate/bucket_registry.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::Limit;
using tollgate::OverflowPolicy;
using tollgate::Status;
using tollgate::testing::ManualScheduler;
using Registry = tollgate::BucketRegistry<std::string, ManualClock>;

TEST_CASE("registry: a noisy key drains only its own bucket", "[registry]") {
  ManualClock clock;
  Registry reg({.default_limit = Limit{5, 1}}, clock);
  int noisy_ok = 0;
  for (int i = 0; i < 100; ++i) noisy_ok += reg.try_acquire("noisy", 1).ok();
  CHECK(noisy_ok == 5);
  for (int k = 0; k < 10; ++k) CHECK(reg.try_acquire("quiet" + std::to_string(k), 5).ok());
  CHECK(reg.try_acquire("noisy", 1).retry_after() == 1s);
  CHECK(reg.size() == 11);
}

TEST_CASE("registry: a per-key policy gives tiers", "[registry]") {
  ManualClock clock;
  Registry reg({.default_limit = Limit{1, 1},
                .policy = [](const std::string& key) {
                  return key.starts_with("gold:") ? Limit{100, 10} : Limit{1, 1};
                }},
               clock);
  CHECK(reg.try_acquire("gold:alice", 100).ok());
  CHECK(reg.try_acquire("free:bob", 2).status() == Status::never);
  CHECK(reg.get("gold:alice")->limit() == Limit{100, 10});
}

TEST_CASE("registry: only fresh, unheld, waiter-less buckets are evicted", "[registry][evict]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Registry reg({.default_limit = Limit{2, 1}, .shards = 1, .sweep_per_insert = 4}, clock, &sched);
  REQUIRE(reg.try_acquire("drained", 2).ok());  // not full until t = 2 s
  auto held = reg.get("held");                   // full, but held
  REQUIRE(reg.try_acquire("waiting", 2).ok());
  std::vector<Task> tasks;
  Status waited = Status::invalid;
  tasks.push_back([](Registry& r, Status& out) -> Task {
    out = (co_await r.acquire("waiting", 2)).status();
  }(reg, waited));
  REQUIRE(reg.try_acquire("idle", 0).ok());  // full, not held: fresh
  CHECK(reg.size() == 4);

  CHECK(reg.try_acquire("new1").ok());  // this insertion sweeps the others
  CHECK(reg.size() == 4);               // "idle" went, nothing else
  CHECK(reg.get("drained")->available() == 0);  // still its own, still drained

  clock.advance(2s);  // "drained" full again; "waiting" granted at 2 s
  CHECK(waited == Status::acquired);
  CHECK(reg.sweep(100) == 2);  // drained and new1; waiting is not full, held is held
  CHECK(reg.size() == 2);
  held = {};
  clock.advance(2s);
  CHECK(reg.sweep(100) == 2);
  CHECK(reg.size() == 0);
}

TEST_CASE("registry: over the cap, new keys share the overflow bucket and nobody is reset",
          "[registry][cap]") {
  ManualClock clock;
  Registry reg({.default_limit = Limit{10, 1}, .max_keys = 3, .overflow_limit = Limit{2, 1}}, clock);
  for (const char* k : {"a", "b", "c"}) REQUIRE(reg.try_acquire(k, 9).ok());  // mid-limit, not fresh
  int overflow_ok = 0;
  for (int i = 0; i < 1000; ++i) overflow_ok += reg.try_acquire("flood" + std::to_string(i)).ok();
  CHECK(overflow_ok == 2);  // all new keys share one 2-token bucket
  CHECK(reg.size() == 3);
  for (const char* k : {"a", "b", "c"}) {
    INFO(k);
    CHECK(reg.get(k)->available() == 1);  // not handed a fresh bucket
  }
  clock.advance(10s);  // a, b, c full again: evictable, so new keys get their own
  CHECK(reg.try_acquire("late", 10).ok());
  CHECK(reg.get("late")->limit() == Limit{10, 1});
}

TEST_CASE("registry: over the cap with reject, new keys are refused", "[registry][cap]") {
  ManualClock clock;
  Registry reg({.default_limit = Limit{10, 1}, .max_keys = 2, .overflow = OverflowPolicy::reject}, clock);
  REQUIRE(reg.try_acquire("a", 1).ok());
  REQUIRE(reg.try_acquire("b", 1).ok());
  auto r = reg.try_acquire("c", 1);
  CHECK(r.status() == Status::rejected);
  CHECK(r.reason() == "key cap reached; new keys are refused");
  CHECK_FALSE(reg.get("c"));
  CHECK(reg.try_acquire("a", 1).ok());  // existing keys unaffected
}

TEST_CASE("registry: bad options throw", "[registry][config]") {
  ManualClock clock;
  CHECK_THROWS_AS(Registry({.default_limit = Limit{0, 1}}, clock), std::invalid_argument);
  CHECK_THROWS_AS(Registry({.default_limit = Limit{1, 1}, .max_keys = 0}, clock), std::invalid_argument);
  CHECK_THROWS_AS(Registry({.default_limit = Limit{1, 1}, .overflow_limit = Limit{1, -1}}, clock),
                  std::invalid_argument);
}

TEST_CASE("registry: a full bucket folds back into the compact form without losing state", "[registry][evict]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Registry reg({.default_limit = Limit{10, 1}, .shards = 1}, clock, &sched);
  REQUIRE(reg.try_acquire("k", 7).ok());
  {
    auto h = reg.get("k");  // promoted to a full TokenBucket
    CHECK(h->available() == 3);
    CHECK(h->try_acquire(1).ok());
  }
  CHECK(reg.sweep(10) == 0);                  // folded back, not evicted: not full
  CHECK(reg.size() == 1);
  CHECK(reg.try_acquire("k", 3).status() == Status::not_now);  // 2 left, not a fresh 10
  CHECK(reg.try_acquire("k", 2).ok());
  clock.advance(10s);
  CHECK(reg.sweep(10) == 1);
  CHECK(reg.size() == 0);
}

TEST_CASE("registry: eviction is unobservable (randomized, against independent buckets)", "[registry][evict]") {
  // Every key's answers must equal those of its own never-evicted bucket,
  // however the registry sweeps, grows its index, and moves entries around.
  ManualClock clock;
  ManualScheduler sched(clock);
  Registry reg({.default_limit = Limit{5, 2}, .shards = 2, .sweep_per_insert = 3}, clock, &sched);
  std::map<std::string, std::unique_ptr<tollgate::TokenBucket<ManualClock>>> model;
  std::mt19937 rng(7);
  std::size_t max_size = 0;
  for (int step = 0; step < 20000; ++step) {
    const unsigned op = rng() % 100;
    if (op < 70) {
      const std::string key = "key-" + std::to_string(rng() % 3000);
      const double cost = double(rng() % 6);
      auto& m = model[key];
      if (!m) m = std::make_unique<tollgate::TokenBucket<ManualClock>>(Limit{5, 2}, clock);
      const auto want = m->try_acquire(cost);
      const auto got = reg.try_acquire(key, cost);
      if (!(got == want)) FAIL("step " << step << " key " << key << ": " << got.message() << " vs " << want.message());
    } else if (op < 97) {
      clock.advance(std::chrono::milliseconds(rng() % 400));
    } else if (op < 99) {
      (void)reg.sweep(rng() % 200);
    } else {
      const std::string key = "key-" + std::to_string(rng() % 3000);
      auto h = reg.get(key);  // promote, then fold back on a later sweep
      auto& m = model[key];
      if (!m) m = std::make_unique<tollgate::TokenBucket<ManualClock>>(Limit{5, 2}, clock);
      CHECK(h->available() == m->available());
    }
    max_size = std::max(max_size, reg.size());
  }
  CHECK(max_size < 3000);  // eviction kept up: not every key ever seen is held
}
