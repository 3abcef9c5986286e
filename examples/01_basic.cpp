// 01_basic: try_acquire in a request handler that answers 429 itself.
//
// A bucket of 10 requests with 2 per second sustained (a typical free
// tier). Twelve requests arrive at once: ten pass, two get a 429
// with a Retry-After rounded up to whole seconds, as HTTP wants it.
#include <tollgate/tollgate.hpp>

#include <chrono>
#include <cstdio>

// [handler]
tollgate::TokenBucket<> bucket(tollgate::Limit{.capacity = 10, .rate = 2.0});

int handle_request(double cost) {
  auto r = bucket.try_acquire(cost);
  if (r) return 200;  // forward to the upstream
  if (r.status() == tollgate::Status::never) return 413;  // can never fit: don't retry
  auto secs = std::chrono::ceil<std::chrono::seconds>(r.retry_after());
  std::printf("  429 Too Many Requests, Retry-After: %lld\n", static_cast<long long>(secs.count()));
  return 429;
}
// [handler]

int main() {
  int ok = 0, limited = 0;
  for (int i = 0; i < 12; ++i) (handle_request(1) == 200 ? ok : limited)++;
  std::printf("12 requests at once: %d passed, %d limited\n", ok, limited);
  std::printf("a request costing 11 (> capacity 10): HTTP %d\n", handle_request(11));
  return ok == 10 && limited == 2 ? 0 : 1;
}
