// BiasedMutex (an option for a bucket one thread owns): who holds the bias, when it is
// revoked, and that two threads racing through the biased entry and the lock
// never take a token twice. The template tests of the other files run every
// single-threaded scenario over BiasedMutex too.

#include <atomic>
#include <optional>
#include <thread>
#include <vector>

#include <tollgate/biased_mutex.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/token_bucket.hpp>

#include "catch.hpp"
#include "test_support.hpp"

using namespace tgtest;
using tollgate::BiasedMutex;
using tollgate::Limit;

namespace {
bool can_bias() {
  if (tollgate::detail::heavy_barrier_available()) return true;
  WARN("membarrier is not available here: BiasedMutex never biases (it is a SpinMutex)");
  return false;
}
}  // namespace

TEST_CASE("biased mutex: the first user owns it, a second thread revokes it for good", "[biased]") {
  BiasedMutex m;
  CHECK_FALSE(m.biased());
  CHECK_FALSE(m.try_enter_biased());  // the first call claims
  if (!can_bias()) {
    CHECK_FALSE(m.biased());
    CHECK_FALSE(m.try_enter_biased());
    return;
  }
  REQUIRE(m.biased());
  REQUIRE(m.try_enter_biased());
  m.leave_biased();

  m.lock();  // the owner's own lock keeps the bias
  m.unlock();
  CHECK(m.biased());

  bool other_entered = true;
  std::thread other([&] {
    other_entered = m.try_enter_biased();  // not the owner: refused, no claim
    m.lock();                              // revokes
    m.unlock();
  });
  other.join();
  CHECK_FALSE(other_entered);
  CHECK_FALSE(m.biased());
  CHECK_FALSE(m.try_enter_biased());  // the former owner now takes the lock
  CHECK_FALSE(m.biased());            // and never claims again
}

TEST_CASE("biased mutex: a bucket's owner takes tokens without the lock, then a second thread joins",
          "[biased]") {
  // Time stands still (and rate 1 makes every interval exact in fixed
  // point), so exactly `capacity` tokens exist: the owner takes
  // some on its biased path, then both threads race for the rest, one of
  // them revoking the bias while the other may be inside. Every token is
  // taken exactly once, whatever the interleaving.
  constexpr int kCapacity = 30000;
  ManualClock clock;
  tollgate::TokenBucket<ManualClock, BiasedMutex> bucket(Limit{double(kCapacity), 1}, clock);
  int owner_taken = 0;
  for (int i = 0; i < 1000; ++i) owner_taken += bucket.try_acquire(1).ok();
  REQUIRE(owner_taken == 1000);

  std::atomic<bool> go{false};
  int other_taken = 0;
  std::thread other([&] {
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    for (int i = 0; i < kCapacity; ++i) other_taken += bucket.try_acquire(1).ok();
  });
  go.store(true, std::memory_order_release);
  for (int i = 0; i < kCapacity; ++i) owner_taken += bucket.try_acquire(1).ok();
  other.join();
  CHECK(owner_taken + other_taken == kCapacity);
  CHECK(bucket.available() == 0);
  CHECK_FALSE(bucket.try_acquire(1));
}

TEST_CASE("biased mutex: two threads race from the first call", "[biased]") {
  constexpr int kCapacity = 20000;
  ManualClock clock;
  tollgate::TokenBucket<ManualClock> bucket(Limit{double(kCapacity), 1}, clock);  // the default Mutex
  std::atomic<int> ready{0};
  int taken[2] = {0, 0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < 2) std::this_thread::yield();
      for (int i = 0; i < kCapacity; ++i) taken[t] += bucket.try_acquire(1).ok();
    });
  for (auto& th : threads) th.join();
  CHECK(taken[0] + taken[1] == kCapacity);
  CHECK(bucket.available() == 0);
}

TEST_CASE("biased mutex: refunds on another thread reach the owner's biased path", "[biased]") {
  // The other thread's refund revokes the bias, and the owner sees what it
  // gave back: nothing is lost between the two paths.
  ManualClock clock;
  tollgate::TokenBucket<ManualClock, BiasedMutex> bucket(Limit{10, 1}, clock);
  for (int i = 0; i < 10; ++i) REQUIRE(bucket.try_acquire(1));
  REQUIRE_FALSE(bucket.try_acquire(1));
  std::thread([&] { CHECK(bucket.refund(4) == 4); }).join();
  for (int i = 0; i < 4; ++i) CHECK(bucket.try_acquire(1));
  CHECK_FALSE(bucket.try_acquire(1));
}

TEST_CASE("biased mutex: a bucket destroyed on another thread than its owner's is not revoked", "[biased]") {
  // Destruction needs no barrier (nobody may use a bucket being destroyed):
  // the destructor ends the bias before it takes the lock.
  tollgate::BiasedMutex m;
  (void)m.try_enter_biased();
  if (!can_bias()) return;
  REQUIRE(m.biased());
  std::thread([&] {
    m.end_bias_for_teardown();
    m.lock();  // no revocation: nothing to wait for
    m.unlock();
  }).join();
  CHECK_FALSE(m.biased());
  auto* bucket = new tollgate::TokenBucket<ManualClock, BiasedMutex>(Limit{5, 1}, ManualClock{});
  REQUIRE(bucket->try_acquire(2));
  std::thread([&] { delete bucket; }).join();  // a clean teardown under TSan and ASan
}

namespace {
// A user's own mutex with a lock-free way in, told to the bucket through
// mutex_traits: the bucket must use it (and fall back to the lock when it
// says no), and call the teardown hook once. Single-threaded test: plain
// counters shared by every GateMutex.
struct GateCounts {
  bool open = true;  // what the way in answers
  int entered = 0, left = 0, locks = 0, teardowns = 0;
};
GateCounts gate;
struct GateMutex {
  std::atomic<bool> locked{false};
  void lock() noexcept {
    while (locked.exchange(true, std::memory_order_acquire)) {
    }
    ++gate.locks;
  }
  bool try_lock() noexcept { return !locked.exchange(true, std::memory_order_acquire); }
  void unlock() noexcept { locked.store(false, std::memory_order_release); }
};
}  // namespace

template <>
struct tollgate::mutex_traits<GateMutex> {
  [[maybe_unused]] static constexpr bool single_threaded = false;
  static bool try_enter_fast(GateMutex&) noexcept {
    if (!gate.open) return false;
    ++gate.entered;
    return true;
  }
  static void leave_fast(GateMutex&) noexcept { ++gate.left; }
  static void before_teardown(GateMutex&) noexcept { ++gate.teardowns; }
};

TEST_CASE("mutex_traits: a user's mutex with a way in is used through the one hook", "[biased][traits]") {
  gate = {};
  ManualClock clock;
  std::optional<tollgate::TokenBucket<ManualClock, GateMutex>> bucket(std::in_place, Limit{2, 1}, clock);
  REQUIRE(bucket->try_acquire(1));
  CHECK(gate.entered == 1);
  CHECK(gate.left == 1);
  CHECK(gate.locks == 0);  // the way in sufficed
  gate.open = false;
  REQUIRE(bucket->try_acquire(1));
  CHECK(gate.entered == 1);
  CHECK(gate.locks == 1);  // the way in said no: the lock
  CHECK_FALSE(bucket->try_acquire(1));
  bucket.reset();
  CHECK(gate.teardowns == 1);
}
