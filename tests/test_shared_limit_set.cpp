// SharedLimitSet: keys sharing one upstream quota by weight, each capped by
// its tier; key and upstream taken as one operation; exact cancellation;
// conformance of the shared set and of every key in every window.

#include <cmath>
#include <functional>
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <tollgate/shared_limit_set.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::AcquireResult;
using tollgate::Costs;
using tollgate::KeyedCosts;
using tollgate::KeyTier;
using tollgate::Limit;
using tollgate::Reason;
using tollgate::Sharing;
using tollgate::Status;
using tollgate::testing::ManualScheduler;

namespace {

using Shared = tollgate::SharedLimitSet<std::string, ManualClock>;

struct Grant {
  std::string key;
  int id;
  std::int64_t t_ns;
  Status status;
};

Task client(Shared& s, std::string key, Costs c, int id, std::vector<Grant>& log, const ManualClock& clock,
            tollgate::stop_token stop = {}) {
  AcquireResult r = co_await s.acquire(key, c, std::move(stop));
  log.push_back({key, id, ns_of(clock.now()), r.status()});
}

Task client_for(Shared& s, std::string key, Costs c, std::chrono::nanoseconds max_wait, int id,
                std::vector<Grant>& log, const ManualClock& clock) {
  AcquireResult r = co_await s.acquire_for(key, c, max_wait);
  log.push_back({key, id, ns_of(clock.now()), r.status()});
}

// Tiers: 0 "light" (weight 1), 1 "heavy" (weight 3); keys "a*" are tier 0,
// "b*" tier 1, "c*" tier 2 (weight 1, at most 2 requests per second of its own).
Shared::Options two_tiers(Sharing sharing = Sharing::weighted_fair) {
  Shared::Options o;
  o.tiers = {KeyTier{"light", 1, {}}, KeyTier{"heavy", 3, {}},
             KeyTier{"capped", 1, {{"requests", Limit{1, 2}}}}};
  o.tier_of = [](const std::string& k) -> std::size_t { return k[0] == 'b' ? 1 : k[0] == 'c' ? 2 : 0; };
  o.sharing = sharing;
  return o;
}

struct Rig {
  explicit Rig(Shared::Options o = two_tiers(), Limit requests = Limit{1, 10}) : set(dims(requests), std::move(o), clock, &sched) {}
  static std::vector<tollgate::Dimension> dims(Limit requests) {
    return {{"requests", requests}, {"tokens", Limit{10'000, 10'000}}};
  }
  ManualClock clock;
  ManualScheduler sched{clock};
  Shared set;
  std::vector<Grant> log;
  std::vector<Task> tasks;

  void flood(const std::string& key, int n, Costs c = {1, 0}) {
    for (int i = 0; i < n; ++i) tasks.push_back(client(set, key, c, i, log, clock));
  }
  int granted(const std::string& key, std::int64_t until_ns) const {
    return static_cast<int>(std::count_if(log.begin(), log.end(), [&](const Grant& g) {
      return g.key == key && g.status == Status::acquired && g.t_ns <= until_ns;
    }));
  }
};

}  // namespace

TEST_CASE("SharedLimitSet: two keys of weights 1 and 3 saturating the shared set receive 1:3 of it") {
  Rig r;  // 10 requests per second shared: one grant every 100 ms
  r.flood("a", 100);
  r.flood("b", 100);
  r.clock.advance(std::chrono::seconds(8));
  // 8 s: the burst of 1 and 80 more grants, one every 100 ms exactly.
  REQUIRE(r.log.size() == 81);
  for (std::size_t i = 1; i < r.log.size(); ++i) CHECK(r.log[i].t_ns == static_cast<std::int64_t>(i) * 100'000'000);
  const int a = r.granted("a", 8'000'000'000), b = r.granted("b", 8'000'000'000);
  CHECK(a + b == 81);
  // Weighted fair: a's first took the burst at once; of the 80 queued
  // grants, exactly 20 went to a and 60 to b.
  CHECK(a == 21);
  CHECK(b == 60);
  // FIFO within a key: ids in order.
  std::map<std::string, int> last;
  for (const Grant& g : r.log) {
    auto [it, fresh] = last.try_emplace(g.key, g.id);
    if (!fresh) CHECK(g.id == it->second + 1);
    it->second = g.id;
  }
}

TEST_CASE("SharedLimitSet: with FIFO sharing, service follows arrival, not weight") {
  Rig r(two_tiers(Sharing::fifo));
  r.flood("a", 40);  // all of a's arrive first
  r.flood("b", 40);
  r.clock.advance(std::chrono::seconds(3));
  CHECK(r.granted("a", 3'000'000'000) == 31);  // the burst of 1 and 30 more, all a's
  CHECK(r.granted("b", 3'000'000'000) == 0);
}

TEST_CASE("SharedLimitSet: a quiet key's share goes to the busy key at once, with no idle gap") {
  Rig r;
  r.flood("a", 30);
  r.clock.advance(std::chrono::seconds(1));  // a alone: every slot is a's
  CHECK(r.granted("a", 1'000'000'000) == 11);
  r.flood("b", 3);  // b: three requests, then quiet
  r.clock.advance(std::chrono::seconds(1));
  // b's three go first (it is behind its share), then a's resume in the next slot.
  const std::int64_t s = 1'000'000'000;
  int b_count = 0;
  std::int64_t prev = 0;
  for (const Grant& g : r.log) {
    if (g.t_ns > s && g.t_ns <= 2 * s) {
      if (g.key == "b") ++b_count;
      CHECK(g.t_ns - prev == 100'000'000);  // no idle slot anywhere
    }
    prev = g.t_ns;
  }
  CHECK(b_count == 3);
  CHECK(r.granted("a", 2 * s) + b_count == 21);
}

TEST_CASE("SharedLimitSet: a key joining mid-run is served within one request's service time") {
  Rig r;
  r.flood("a", 50);
  r.flood("b", 50);
  r.clock.advance(std::chrono::milliseconds(2050));
  r.flood("a2", 1);  // a newcomer of weight 1 while a and b saturate the set
  r.clock.advance(std::chrono::milliseconds(200));
  auto it = std::find_if(r.log.begin(), r.log.end(), [](const Grant& g) { return g.key == "a2"; });
  REQUIRE(it != r.log.end());
  CHECK(it->t_ns == 2'100'000'000);  // the next slot
}

TEST_CASE("SharedLimitSet: a key's own limit caps it; the rest of the quota goes to the others") {
  Rig r;
  r.flood("c", 20);  // tier "capped": 2 requests per second of its own
  r.flood("a", 40);
  r.clock.advance(std::chrono::seconds(3));
  // c: its burst of 1, then one every 500 ms; a: every other slot.
  CHECK(r.granted("c", 3'000'000'000) == 7);
  CHECK(r.granted("a", 3'000'000'000) == 31 - 7);
  std::vector<Admission> c_grants;
  for (const Grant& g : r.log)
    if (g.key == "c") c_grants.push_back({g.t_ns, 1});
  CHECK(check_conformance(c_grants, 1, 2) == "");
}

TEST_CASE("SharedLimitSet: the shared set and each key conform in every window, under random load") {
  Rig r(two_tiers(), Limit{3, 10});
  std::uint64_t x = 88172645463325252ull;
  auto rnd = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  for (int step = 0; step < 300; ++step) {
    const char* keys[] = {"a1", "a2", "b1", "c1", "c2"};
    const std::string key = keys[rnd() % 5];
    r.tasks.push_back(client(r.set, key, {1, static_cast<double>(rnd() % 3000)}, step, r.log, r.clock));
    r.clock.advance(std::chrono::milliseconds(rnd() % 150));
  }
  r.clock.advance(std::chrono::seconds(120));
  std::vector<Admission> shared;
  std::map<std::string, std::vector<Admission>> per_key;
  for (const Grant& g : r.log) {
    REQUIRE(g.status == Status::acquired);
    shared.push_back({g.t_ns, 1});
    per_key[g.key].push_back({g.t_ns, 1});
  }
  CHECK(shared.size() == 300);
  CHECK(check_conformance(shared, 3, 10) == "");
  CHECK(check_conformance(per_key["c1"], 1, 2) == "");
  CHECK(check_conformance(per_key["c2"], 1, 2) == "");
}

TEST_CASE("SharedLimitSet: cancelling a waiter in any key's queue is exact") {
  auto run = [](bool cancel_middle) {
    Rig r;
    tollgate::stop_source stop;
    r.flood("a", 3);
    r.tasks.push_back(client(r.set, "b", {1, 0}, 0, r.log, r.clock));
    r.tasks.push_back(client(r.set, "b", {1, 0}, 1, r.log, r.clock, stop.get_token()));
    r.tasks.push_back(client(r.set, "b", {1, 0}, 2, r.log, r.clock));
    r.clock.advance(std::chrono::milliseconds(50));
    if (cancel_middle) stop.request_stop();
    r.clock.advance(std::chrono::seconds(2));
    std::vector<std::pair<std::string, std::int64_t>> out;
    for (const Grant& g : r.log)
      if (!(g.key == "b" && g.id == 1)) out.push_back({g.key + std::to_string(g.id), g.status == Status::acquired ? g.t_ns : -1});
    return std::make_pair(out, r.log);
  };
  const auto [with, log_with] = run(true);
  // The same schedule as if b1 had never asked, minus its slot: everyone
  // behind it moves up by one slot.
  auto it = std::find_if(log_with.begin(), log_with.end(), [](const Grant& g) { return g.key == "b" && g.id == 1; });
  REQUIRE(it != log_with.end());
  CHECK(it->status == Status::cancelled);
  CHECK(it->t_ns == 50'000'000);
  std::int64_t prev = -1;
  for (const auto& [name, t] : with) {
    CHECK(t >= 0);
    if (prev >= 0) CHECK(t - prev <= 100'000'000);  // no slot lost to the cancelled one
    prev = t;
  }
  CHECK(with.size() == 5);
  CHECK(with.back().second == 400'000'000);  // 5 grants: 0, 100, 200, 300, 400 ms
}

TEST_CASE("SharedLimitSet: a request whose predicted wait exceeds max_wait is refused at once, taking nothing") {
  Rig r;
  r.flood("a", 10);  // a: 1 now, 9 queued (900 ms of shared time)
  r.tasks.push_back(client_for(r.set, "a", {1, 0}, std::chrono::milliseconds(500), 99, r.log, r.clock));
  // a's own newcomer is behind a's 9: predicted 1 s > 500 ms: refused now.
  REQUIRE(r.log.size() == 2);
  CHECK(r.log.back().id == 99);
  CHECK(r.log.back().status == Status::not_now);
  // b's newcomer starts at the current virtual time: behind a's head (an
  // equal tag, earlier), ahead of a's other 8: due at 200 ms.
  r.tasks.push_back(client_for(r.set, "b", {1, 0}, std::chrono::milliseconds(150), 7, r.log, r.clock));
  CHECK(r.log.back().id == 7);
  CHECK(r.log.back().status == Status::not_now);
  r.tasks.push_back(client_for(r.set, "b", {1, 0}, std::chrono::milliseconds(200), 8, r.log, r.clock));
  CHECK(r.set.waiters() == 10);
  r.clock.advance(std::chrono::milliseconds(200));
  CHECK(r.log.back().key == "b");
  CHECK(r.log.back().t_ns == 200'000'000);
  // try_acquire with waiters queued: refused with the predicted wait.
  const AcquireResult t = r.set.try_acquire("a", {1, 0});
  CHECK(t.status() == Status::not_now);
  CHECK(t.retry_after() == std::chrono::milliseconds(900));
}

TEST_CASE("SharedLimitSet: permits settle per dimension in the shared set and the key") {
  Shared::Options o;
  o.tiers = {KeyTier{"t", 1, {{"tokens", Limit{1'000, 100}}}}};
  ManualClock clock;
  ManualScheduler sched{clock};
  Shared s({{"requests", Limit{100, 100}}, {"tokens", Limit{5'000, 5'000}}}, o, clock, &sched);
  auto p = s.try_acquire_permit("k", {1, 800});
  REQUIRE(p);
  CHECK(s.available(1) == 4'200);
  CHECK(s.key_available("k", 1) == 200);
  p.settle({1, 300});  // 500 back to both
  CHECK(s.available(1) == 4'700);
  CHECK(s.key_available("k", 1) == 700);
  auto q = s.try_acquire_permit("k", {1, 700});
  REQUIRE(q);
  CHECK(s.key_available("k", 1) == 0);
  q.settle({1, 900});  // 200 more: a debt in the key and the shared set
  CHECK(s.available(1) == 3'800);
  CHECK(s.try_acquire("k", {1, 1}).retry_after() == std::chrono::milliseconds(2010));
  auto rel = s.try_acquire_permit("other", {1, 500});
  REQUIRE(rel);
  rel.release();
  CHECK(s.available(1) == 3'800);
  CHECK(s.key_available("other", 1) == 1'000);
  // A failed permit holds the failure and the dimension.
  auto big = s.try_acquire_permit("k", {1, 2'000});
  CHECK(!big);
  CHECK(big.result().reason_code() == Reason::cost_exceeds_key_capacity);
  CHECK(s.message(big.result()) == "never: cost exceeds the key's own capacity (its tier's limit) (cost 2000 in tokens)");
}

TEST_CASE("SharedLimitSet: keys are evicted only when indistinguishable from new; the cap refuses or shares") {
  Shared::Options o = two_tiers();
  o.max_keys = 3;
  Rig r(o, Limit{10, 10});
  CHECK(r.set.try_acquire("c1", {1, 0}));
  CHECK(r.set.try_acquire("c2", {1, 0}));
  const KeyedCosts held = r.set.keyed("a1", {1, 0});
  CHECK(r.set.keys() == 3);
  // At the cap and nothing fresh: c1, c2 are empty (capped at 1 per 500 ms), a1 is held.
  const AcquireResult refused = r.set.try_acquire("a9", {0, 0});
  CHECK(refused.status() == Status::rejected);
  CHECK(refused.reason_code() == Reason::key_cap_reached);
  r.clock.advance(std::chrono::milliseconds(500));  // c1 and c2 are full again: fresh
  CHECK(r.set.try_acquire("a9", {0, 0}));
  CHECK(r.set.keys() <= 3);
  CHECK(r.set.sweep(10) >= 1);
  // a1 stays while held: its KeyedCosts still charges it.
  CHECK(r.set.try_acquire(held));

  Shared::Options shared = two_tiers();
  shared.max_keys = 1;
  shared.overflow = tollgate::OverflowPolicy::shared_bucket;
  shared.overflow_tier = 2;  // overflow keys share one "capped" key: 1 per 500 ms
  Rig s(shared);
  const KeyedCosts pin = s.set.keyed("first", {1, 0});
  CHECK(s.set.try_acquire("x", {1, 0}));
  CHECK(s.set.try_acquire("y", {1, 0}).status() == Status::not_now);  // the same overflow key
  CHECK(s.set.keys() == 1);
}

TEST_CASE("SharedLimitSet: bad configuration and bad requests are named") {
  auto what = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  };
  ManualClock clock;
  const std::vector<tollgate::Dimension> dims = {{"requests", Limit{1, 1}}};
  Shared::Options o;
  o.tiers = {KeyTier{"x", 0, {}}};
  CHECK(what([&] { Shared s(dims, o, clock); }) ==
        "SharedLimitSet::SharedLimitSet: tier \"x\" has weight 0; it must be finite and > 0");
  o.tiers = {KeyTier{"x", 1, {{"tokens", Limit{1, 1}}}}};
  CHECK(what([&] { Shared s(dims, o, clock); }) ==
        "SharedLimitSet::SharedLimitSet: tier \"x\" limits \"tokens\", which is not a dimension of the set");
  o.tiers = {};
  CHECK(what([&] { Shared s(dims, o, clock); }) == "SharedLimitSet::SharedLimitSet: no tiers");
  o = {};
  o.tier_of = [](const std::string&) -> std::size_t { return 5; };
  Shared s(dims, o, clock);
  CHECK(what([&] { (void)s.try_acquire("k", {1}); }) == "SharedLimitSet: tier_of returned 5; there are 1 tiers");
  Shared ok(dims, {}, clock);
  CHECK(ok.try_acquire("k", {1, 2}).reason_code() == Reason::wrong_dimension_count);
  CHECK(ok.try_acquire(KeyedCosts{1}).reason_code() == Reason::key_missing);
  CHECK(ok.try_acquire(std::string(300, 'k'), {1}).reason_code() == Reason::key_too_long);
  CHECK(ok.try_acquire("k", {2}).reason_code() == Reason::cost_exceeds_capacity);
  CHECK(ok.try_acquire("k", {-1}).reason_code() == Reason::cost_is_negative);
}

TEST_CASE("SharedLimitSet: an idle key with three dimensions costs at most 160 bytes beyond its own") {
  ManualClock clock;
  tollgate::SharedLimitSet<std::string, ManualClock> s(
      {{"requests", Limit{1, 1}}, {"input_tokens", Limit{1, 1}}, {"output_tokens", Limit{1, 1}}}, {}, clock);
  CHECK(s.bytes_per_key() <= 160);
}

TEST_CASE("SharedLimitSet: two threads of keyed waiters, cancellations and try_acquire callers", "[stress]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  Shared set(Rig::dims(Limit{5, 1000}), two_tiers(), clock, &sched);
  constexpr int kPerThread = 3000;
  std::shared_mutex time_lock;  // time moves only under the exclusive lock
  std::atomic<int> finishes{0};
  struct Log {
    std::vector<Grant> grants;
    std::vector<tollgate::stop_source> stops;
    std::vector<Task> tasks;
  } logs[2];
  std::mutex grants_mutex;
  std::vector<Grant> all;
  auto waiter = [&](std::string key, std::int64_t tokens, tollgate::stop_token stop) -> Task {
    const Costs c{1, double(tokens)};
    const AcquireResult r = co_await set.acquire(key, c, std::move(stop));
    {
      std::lock_guard l(grants_mutex);
      all.push_back({key, int(tokens), ns_of(clock.now()), r.status()});
    }
    finishes.fetch_add(1);
  };
  auto body = [&](int t) {
    std::mt19937 rng(99 + t);
    const char* keys[] = {"a1", "a2", "b1", "c1", "c2"};
    Log& log = logs[t];
    log.stops.resize(kPerThread);
    log.tasks.reserve(kPerThread);
    for (int i = 0; i < kPerThread; ++i) {
      if (t == 0 && i % 6 == 0) {
        std::unique_lock lock(time_lock);
        clock.advance(ns(rng() % 4'000'000));
      }
      std::shared_lock lock(time_lock);
      log.tasks.push_back(waiter(keys[rng() % 5], rng() % 100, log.stops[i].get_token()));
      if (rng() % 4 == 0) {
        const std::string key = keys[rng() % 5];
        const std::int64_t now = ns_of(clock.now());
        if (set.try_acquire(key, {1, 10})) log.grants.push_back({key, 10, now, Status::acquired});
      }
      if (rng() % 5 == 0) log.stops[rng() % (i + 1)].request_stop();
    }
  };
  std::thread other(body, 1);
  body(0);
  other.join();
  clock.advance(std::chrono::hours(1));

  REQUIRE(finishes.load() == 2 * kPerThread);
  for (const Log& l : logs) all.insert(all.end(), l.grants.begin(), l.grants.end());
  std::stable_sort(all.begin(), all.end(), [](const Grant& a, const Grant& b) { return a.t_ns < b.t_ns; });
  std::vector<Admission> requests, tokens;
  std::map<std::string, std::vector<Admission>> capped;
  int cancelled = 0;
  for (const Grant& g : all) {
    if (g.status != Status::acquired) {
      CHECK(g.status == Status::cancelled);
      ++cancelled;
      continue;
    }
    requests.push_back({g.t_ns, 1});
    tokens.push_back({g.t_ns, g.id});
    if (g.key[0] == 'c') capped[g.key].push_back({g.t_ns, 1});
  }
  CHECK(cancelled > 0);
  CHECK(check_conformance(requests, 5, 1000) == "");
  CHECK(check_conformance(tokens, 10'000, 10'000) == "");
  for (const auto& [key, grants] : capped) CHECK(check_conformance(grants, 1, 2) == "");
  CHECK(set.waiters() == 0);
  CHECK(set.available(0) == 5);
  for (Log& l : logs) l.tasks.clear();
  set.sweep(100);
  CHECK(set.keys() == 0);  // everything refilled and nothing holds a key: all evicted
}

// set_tiers: a reloaded configuration keeps every key's state.
namespace {
Shared::Options reloaded(double light_weight, double heavy_weight, Limit cap,
                         std::function<std::size_t(const std::string&)> tier_of = {}) {
  Shared::Options o = two_tiers();
  o.tiers = {KeyTier{"light", light_weight, {}}, KeyTier{"heavy", heavy_weight, {}},
             KeyTier{"capped", 1, {{"requests", cap}}}};
  if (tier_of) o.tier_of = std::move(tier_of);
  return o;
}
}  // namespace

TEST_CASE("SharedLimitSet: set_tiers carries each key's level to its new limits and re-times its waiters") {
  Rig r(two_tiers(), Limit{1000, 1000});  // the shared set never binds here
  REQUIRE(r.set.try_acquire(std::string("c1"), Costs{1, 0}));  // c1's own limit (1 of burst, 2/s): empty
  r.flood("c1", 1);                                            // due at 0.5 s under 2/s
  Shared::Options o = reloaded(1, 3, Limit{4, 1});             // capped: 4 of burst, 1/s
  r.set.set_tiers(o.tiers, o.tier_of);
  CHECK(r.set.key_available(std::string("c1"), 0) == 0);  // no token created
  r.clock.advance(std::chrono::milliseconds(600));
  CHECK(r.log.empty());  // re-timed: now due at 1 s (1/s)
  r.clock.advance(std::chrono::milliseconds(400));
  REQUIRE(r.log.size() == 1);
  CHECK(r.log[0].t_ns == 1'000'000'000);
  CHECK(r.log[0].status == Status::acquired);
}

TEST_CASE("SharedLimitSet: set_tiers moves keys between tiers; a newly capped key starts full, none gains tokens") {
  Rig r(two_tiers(), Limit{1000, 1000});
  REQUIRE(r.set.try_acquire(std::string("a1"), Costs{1, 0}));  // light: not capped
  REQUIRE(r.set.try_acquire(std::string("c2"), Costs{0.5, 0}));  // capped: 0.5 of its 1 left
  CHECK(std::isinf(r.set.key_available(std::string("a1"), 0)));
  auto tier_of = [](const std::string& k) -> std::size_t { return k == "a1" || k[0] == 'c' ? 2 : k[0] == 'b' ? 1 : 0; };
  Shared::Options o = reloaded(1, 3, Limit{4, 1}, tier_of);
  r.set.set_tiers(o.tiers, o.tier_of);
  CHECK(r.set.key_available(std::string("a1"), 0) == 4);    // newly capped: full
  CHECK(r.set.key_available(std::string("c2"), 0) == 0.5);  // kept, not raised to 4
  o = reloaded(1, 3, Limit{2, 1}, tier_of);                  // a smaller burst
  r.set.set_tiers(o.tiers, o.tier_of);
  CHECK(r.set.key_available(std::string("a1"), 0) == 2);  // capped at the new capacity
  CHECK(r.set.key_available(std::string("c2"), 0) == 0.5);
  CHECK(r.set.key_available(std::string("c-new"), 0) == 2);  // a new key: the new tier, full
  // A waiter whose cost exceeds its key's new capacity finishes never.
  r.flood("c2", 1, Costs{2, 0});
  o = reloaded(1, 3, Limit{1.5, 1}, tier_of);
  r.set.set_tiers(o.tiers, o.tier_of);
  REQUIRE(r.log.size() == 1);
  CHECK(r.log[0].status == Status::never);
}

TEST_CASE("SharedLimitSet: set_tiers' weights share what is queued after it") {
  Rig r;
  Shared::Options o = reloaded(3, 1, Limit{1, 2});  // light and heavy swap weights
  r.set.set_tiers(o.tiers, o.tier_of);
  r.flood("a", 100);
  r.flood("b", 100);
  r.clock.advance(std::chrono::seconds(8));
  CHECK(r.granted("a", 8'000'000'000) == 61);  // the burst and 60 of the 80 queued grants
  CHECK(r.granted("b", 8'000'000'000) == 20);
}

TEST_CASE("SharedLimitSet: a bad set_tiers is refused, naming what is wrong, and changes nothing") {
  Rig r(two_tiers(), Limit{1000, 1000});
  const auto refusal = [&](const Shared::Options& o) -> std::string {
    try {
      r.set.set_tiers(o.tiers, o.tier_of);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "(accepted)";
  };
  REQUIRE(r.set.try_acquire(std::string("c1"), Costs{1, 0}));
  Shared::Options bad = reloaded(1, 3, Limit{4, 1});
  bad.tiers[2].limits = {{"bogus", Limit{1, 1}}};
  CHECK(refusal(bad).find("\"bogus\", which is not a dimension") != std::string::npos);
  bad = reloaded(1, 3, Limit{4, 1}, [](const std::string&) -> std::size_t { return 7; });
  CHECK(refusal(bad).find("tier_of returned 7") != std::string::npos);
  bad = reloaded(0, 3, Limit{4, 1});
  CHECK(refusal(bad).find("has weight 0") != std::string::npos);
  // Unchanged: c1 still capped at 1 of burst, 2/s, and empty.
  CHECK(r.set.key_available(std::string("c1"), 0) == 0);
  r.clock.advance(std::chrono::milliseconds(500));
  CHECK(r.set.key_available(std::string("c1"), 0) == 1);
}
