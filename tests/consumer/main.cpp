// A downstream program: compiles against the umbrella header and checks one
// admission and one refusal. Exit code 0 means the package works.
#include <tollgate/tollgate.hpp>

#include <cstdio>

int main() {
  tollgate::TokenBucket<> bucket(tollgate::Limit{2, 1});
  const bool ok = bucket.try_acquire(2).ok() && bucket.try_acquire(1).status() == tollgate::Status::not_now &&
                  bucket.try_acquire(3).status() == tollgate::Status::never;
  std::puts(ok ? "consumer ok" : "consumer FAILED");
  return ok ? 0 : 1;
}
