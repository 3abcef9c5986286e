// Compiled by CTest with -Werror: with DISCARD=n, case n discards what
// tollgate hands out, which must not compile ([[nodiscard]]); without it the
// same calls keep their results and must compile.
#include <tollgate/bucket_registry.hpp>
#include <tollgate/limit_set.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/token_bucket.hpp>

#ifndef DISCARD
#define DISCARD 0
#endif

using Clock = tollgate::testing::ManualClock;

void use(tollgate::TokenBucket<Clock>& b, tollgate::LimitSet<Clock>& s,
         tollgate::BucketRegistry<std::string, Clock>& r) {
#if DISCARD == 1
  b.acquire(5);
#elif DISCARD == 2
  b.acquire_permit(5.0);
#elif DISCARD == 3
  b.try_acquire_permit(5);
#elif DISCARD == 4
  r.acquire("key", 1);
#elif DISCARD == 5
  s.acquire({1, 2});
#elif DISCARD == 6
  b.try_acquire(1);
#else
  auto a = b.acquire(5);
  auto p = b.acquire_permit(5.0);
  auto q = b.try_acquire_permit(5);
  auto k = r.acquire("key", 1);
  auto m = s.acquire({1, 2});
  auto t = b.try_acquire(1);
  (void)a, (void)p, (void)q, (void)k, (void)m, (void)t;
#endif
}
