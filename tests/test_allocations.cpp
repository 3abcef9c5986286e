// Allocation counts, with a replaced global operator new. Its own executable,
// not built under sanitizers (which replace operator new themselves).

#include <cstdlib>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include <tollgate/bucket_registry.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"
#include "test_support.hpp"

namespace {
thread_local bool g_counting = false;
thread_local long g_allocs = 0;

struct Counting {
  Counting() {
    g_allocs = 0;
    g_counting = true;
  }
  ~Counting() { g_counting = false; }
};
}  // namespace

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // GCC 12 flags the replacement itself
#endif
void* operator new(std::size_t n) {
  if (g_counting) ++g_allocs;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

using namespace tgtest;
using tollgate::Limit;
using tollgate::testing::ManualScheduler;

TEST_CASE("allocations: registry lookup by string_view allocates nothing", "[alloc]") {
  ManualClock clock;
  tollgate::BucketRegistry<std::string, ManualClock> reg({.default_limit = Limit{1000, 1}}, clock);
  const std::string_view key = "tenant:0123456789abcdef";  // longer than the SSO buffer
  REQUIRE(reg.try_acquire(std::string(key)).ok());
  bool ok = true;
  {
    Counting c;
    for (int i = 0; i < 100; ++i) ok = ok && reg.try_acquire(key).ok();
  }
  CHECK(ok);
  CHECK(g_allocs == 0);
  {
    Counting c;
    (void)reg.try_acquire(std::string_view("tenant:a-new-key-not-seen-before"));
  }
  CHECK(g_allocs > 0);  // the counter does count: a new key allocates its node
}

TEST_CASE("allocations: waiting on a bucket allocates nothing", "[alloc]") {
  ManualClock clock;
  ManualScheduler sched(clock);
  tollgate::TokenBucket<ManualClock> bucket(Limit{1, 1000}, clock, &sched);
  std::vector<std::int64_t> resumed;
  resumed.reserve(2000);
  auto loop = [](tollgate::TokenBucket<ManualClock>& b, std::vector<std::int64_t>& out,
                 const ManualClock& c) -> Task {
    for (int i = 0; i < 2000; ++i) {
      auto r = co_await b.acquire(1);
      if (r) out.push_back(ns_of(c.now()));
    }
  };
  Task t = loop(bucket, resumed, clock);  // frame allocated here, outside the count
  clock.advance(1ms);                      // warm-up: the scheduler's heap gets its slot
  {
    Counting c;
    for (int i = 0; i < 1500; ++i) clock.advance(1ms);
  }
  CHECK(g_allocs == 0);
  CHECK(resumed.size() == 1502);  // one immediately, then one per millisecond
}
