// Listener: every decision of a bucket or a set is reported once, with the
// cost, the result and the time in the queue, on the manual clock; none
// once the listener is removed.

#include <string>
#include <vector>

#include <tollgate/limit_set.hpp>
#include <tollgate/listener.hpp>
#include <tollgate/shared_limit_set.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::AcquireResult;
using tollgate::BucketEvent;
using tollgate::BucketEventKind;
using tollgate::Costs;
using tollgate::KeyedCosts;
using tollgate::Limit;
using tollgate::Status;
using tollgate::testing::ManualScheduler;
using Kind = BucketEventKind;

namespace {

struct Seen {
  Kind kind;
  double cost;  // the first dimension's, for sets; -1 for none
  Status status;
  std::int64_t waited_ns;
};

template <class Cost>
double first(const Cost* c) {
  if (!c) return -1;
  if constexpr (std::is_same_v<Cost, double>) return *c;
  else if constexpr (std::is_same_v<Cost, Costs>) return (*c)[0];
  else return c->costs()[0];
}

template <class Cost>
struct Recorder final : tollgate::Listener<Cost> {
  std::vector<Seen> seen;
  void on_event(const BucketEvent<Cost>& e) noexcept override {
    seen.push_back({e.kind, first(e.cost), e.result.status(), e.waited.count()});
  }
};

template <class Bucket, class Cost>
Task take(Bucket& b, Cost c, AcquireResult& out, tollgate::stop_token stop = {}) {
  out = co_await b.acquire(c, std::move(stop));
}
template <class Bucket, class Cost>
Task take_for(Bucket& b, Cost c, std::chrono::nanoseconds max_wait, AcquireResult& out) {
  out = co_await b.acquire_for(c, max_wait);
}

template <class Set>
Task take_keyed(Set& s, std::string key, Costs c, AcquireResult& out) {
  out = co_await s.acquire(key, c);
}

}  // namespace

TEMPLATE_TEST_CASE("listener: a bucket's admissions, refusals, waits, cancellations and pauses, each once",
                   "[listener]", tollgate::SpinMutex, std::mutex, tollgate::NullMutex) {
  ManualClock clock;
  ManualScheduler sched{clock};
  tollgate::TokenBucket<ManualClock, TestType> bucket(Limit{2, 1}, clock, &sched);  // 2 of burst, 1 a second
  Recorder<double> heard;
  bucket.set_listener(&heard);
  CHECK(bucket.listener() == &heard);

  CHECK(bucket.try_acquire(1));
  CHECK(bucket.try_acquire(1));
  CHECK_FALSE(bucket.try_acquire(1));  // not now: 1 s
  CHECK(bucket.try_acquire(-1).status() == Status::invalid);
  CHECK(bucket.try_acquire(5).status() == Status::never);
  REQUIRE(heard.seen.size() == 5);
  CHECK(heard.seen[0].kind == Kind::admitted);
  CHECK(heard.seen[0].cost == 1);
  CHECK(heard.seen[1].kind == Kind::admitted);
  CHECK(heard.seen[2].kind == Kind::refused);
  CHECK(heard.seen[2].status == Status::not_now);
  CHECK(heard.seen[3].status == Status::invalid);
  CHECK(heard.seen[4].status == Status::never);
  CHECK(heard.seen[4].cost == 5);

  // Two waiters: the first is granted after 1 s in the queue, the second is
  // cancelled after 500 ms.
  AcquireResult a, b, c;
  tollgate::stop_source stop;
  Task ta = take(bucket, 1.0, a);
  Task tb = take(bucket, 1.0, b, stop.get_token());
  CHECK(heard.seen.size() == 5);  // queued: nothing yet
  clock.advance(500ms);
  stop.request_stop();
  REQUIRE(heard.seen.size() == 6);
  CHECK(heard.seen[5].kind == Kind::cancelled);
  CHECK(heard.seen[5].waited_ns == 500'000'000);
  clock.advance(500ms);
  REQUIRE(heard.seen.size() == 7);
  CHECK(heard.seen[6].kind == Kind::waited);
  CHECK(heard.seen[6].status == Status::acquired);
  CHECK(heard.seen[6].waited_ns == 1'000'000'000);
  CHECK(a);

  // An acquire that needs no wait is admitted at once.
  clock.advance(2s);
  Task tc = take(bucket, 2.0, c);
  REQUIRE(heard.seen.size() == 8);
  CHECK(heard.seen[7].kind == Kind::admitted);
  CHECK(heard.seen[7].cost == 2);

  // A pause; a queued acquire_for whose max_wait it overruns is refused
  // (timed out) after its time in the queue.
  AcquireResult d;
  Task td = take_for(bucket, 1.0, 2s, d);  // due in 1 s
  clock.advance(250ms);
  bucket.pause_for(3s);
  REQUIRE(heard.seen.size() == 10);
  CHECK(heard.seen[8].kind == Kind::refused);
  CHECK(heard.seen[8].status == Status::timed_out);
  CHECK(heard.seen[8].waited_ns == 250'000'000);
  CHECK(heard.seen[9].kind == Kind::paused);
  CHECK(heard.seen[9].cost == -1);
  CHECK(heard.seen[9].waited_ns == 3'000'000'000);
  CHECK(d.status() == Status::timed_out);

  // Removed: nothing more.
  bucket.set_listener(nullptr);
  clock.advance(10s);
  CHECK(bucket.try_acquire(1));
  CHECK_FALSE(bucket.try_acquire(100));
  CHECK(heard.seen.size() == 10);
}

TEST_CASE("listener: the listener may call its bucket; blocking acquires are heard too", "[listener]") {
  ManualClock clock;
  ManualScheduler sched{clock};
  tollgate::TokenBucket<ManualClock> bucket(Limit{1, 1}, clock, &sched);
  struct Reader final : tollgate::Listener<double> {
    tollgate::TokenBucket<ManualClock>* b = nullptr;
    std::vector<double> levels;
    void on_event(const BucketEvent<double>&) noexcept override { levels.push_back(b->available()); }
  } reader;
  reader.b = &bucket;
  bucket.set_listener(&reader);
  CHECK(bucket.acquire_blocking(1));  // no lock is held while the listener runs
  CHECK_FALSE(bucket.try_acquire(1));
  REQUIRE(reader.levels.size() == 2);
  CHECK(reader.levels[0] == 0);
}

TEST_CASE("listener: a limit set's and a shared set's events carry their cost vectors", "[listener]") {
  ManualClock clock;
  ManualScheduler sched{clock};
  tollgate::LimitSet<ManualClock> set({{"requests", Limit{1, 1}}, {"tokens", Limit{100, 100}}}, clock, &sched);
  Recorder<Costs> heard;
  set.set_listener(&heard);
  CHECK(set.try_acquire({1, 40}));
  AcquireResult r;
  Task t = take(set, Costs{1, 10}, r);
  clock.advance(1s);
  CHECK(r);
  REQUIRE(heard.seen.size() == 2);
  CHECK(heard.seen[0].kind == Kind::admitted);
  CHECK(heard.seen[1].kind == Kind::waited);
  CHECK(heard.seen[1].waited_ns == 1'000'000'000);

  using Shared = tollgate::SharedLimitSet<std::string, ManualClock>;
  Shared shared(std::vector<tollgate::Dimension>{{"requests", Limit{1, 1}}}, Shared::Options{}, clock, &sched);
  Recorder<KeyedCosts> keyed;
  shared.set_listener(&keyed);
  CHECK(shared.try_acquire(std::string("alice"), Costs{1}));
  CHECK_FALSE(shared.try_acquire(std::string("bob"), Costs{1}));
  AcquireResult s;
  Task ts = take_keyed(shared, std::string("carol"), Costs{1}, s);
  clock.advance(1s);
  CHECK(s);
  REQUIRE(keyed.seen.size() == 3);
  CHECK(keyed.seen[0].kind == Kind::admitted);
  CHECK(keyed.seen[0].cost == 1);
  CHECK(keyed.seen[1].kind == Kind::refused);
  CHECK(keyed.seen[2].kind == Kind::waited);
  CHECK(keyed.seen[2].waited_ns == 1'000'000'000);
  shared.pause_for(2s);
  REQUIRE(keyed.seen.size() == 4);
  CHECK(keyed.seen[3].kind == Kind::paused);
}
