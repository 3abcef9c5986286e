// fuzz_registry: bytes decode into operations on a capped BucketRegistry
// (OverflowPolicy::reject) and the manual clock: try_acquire on a small key
// space, advance, sweep, get-and-release. Every answer for a key must equal
// that of the key's own never-evicted bucket (eviction is unobservable, no
// limit is ever reset while not full); a key is refused only when every held
// key is mid-limit; the registry never holds more than its cap.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include <tollgate/bucket_registry.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>

#include "fuzz_support.hpp"
#include "test_support.hpp"

namespace {

using tgtest::ManualClock;
using Bucket = tollgate::TokenBucket<ManualClock, tollgate::NullMutex>;

using tgfuzz::fail;
using tgfuzz::Reader;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Reader in{data, size};
  const std::size_t cap = 1 + in.byte() % 16;
  const std::size_t shards = std::size_t{1} << (in.byte() % 3);
  const std::size_t sweep_per_insert = in.byte() % 4;
  const tollgate::Limit limit{double(1 + in.byte() % 8), double(1 + in.byte() % 4)};

  ManualClock clock;
  tollgate::testing::ManualScheduler sched(clock);
  tollgate::BucketRegistry<std::string, ManualClock> reg(
      {.default_limit = limit,
       .max_keys = cap,
       .overflow = tollgate::OverflowPolicy::reject,
       .shards = shards,
       .sweep_per_insert = sweep_per_insert},
      clock, &sched);
  std::map<std::string, std::unique_ptr<Bucket>> model;  // every key ever admitted
  auto mid_limit = [&](Bucket& b) { return b.available() < limit.capacity; };
  auto held_mid_limit = [&] {
    std::size_t n = 0;
    for (auto& [k, b] : model) n += mid_limit(*b);
    return n;
  };

  for (int step = 0; step < 2000 && in.n > 0; ++step) {
    const std::uint8_t op = in.byte() % 8;
    if (op < 5) {
      const std::string key = "key-" + std::to_string(in.byte() % 48);
      const double cost = double(in.byte() % 10);
      const tollgate::AcquireResult got = reg.try_acquire(key, cost);
      auto it = model.find(key);
      if (got.status() == tollgate::Status::rejected) {
        if (it != model.end() && mid_limit(*it->second)) fail("a mid-limit key was refused");
        if (held_mid_limit() < cap)
          fail("refused although a fresh key could have been evicted", long(held_mid_limit()), long(reg.size()));
        continue;
      }
      if (it == model.end()) it = model.emplace(key, std::make_unique<Bucket>(limit, clock)).first;
      const tollgate::AcquireResult want = it->second->try_acquire(cost);
      if (!(got == want)) fail("answer differs from the key's own bucket", long(got.status()), long(want.status()));
    } else if (op < 7) {
      clock.advance(std::chrono::milliseconds(in.byte() * 20));
    } else if (in.byte() % 2) {
      (void)reg.sweep(in.byte());
    } else {
      const std::string key = "key-" + std::to_string(in.byte() % 48);
      auto h = reg.get(key);
      auto it = model.find(key);
      if (!h) {
        if (held_mid_limit() < cap) fail("get refused although a fresh key could have been evicted");
        continue;
      }
      if (it == model.end()) it = model.emplace(key, std::make_unique<Bucket>(limit, clock)).first;
      if (h->available() != it->second->available()) fail("a held bucket differs from the key's own bucket");
    }
    if (reg.size() > cap) fail("more keys than the cap", long(reg.size()), long(cap));
  }
  return 0;
}
