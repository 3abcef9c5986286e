#pragma once
// BucketRegistry: one token bucket per key (user, API key, tenant), created on
// first use, evicted when indistinguishable from a fresh one, capped in number.

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include "stop_token.hpp"
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/bucket_step.hpp"
#include "detail/fine_time.hpp"
#include "detail/key_index.hpp"
#include "keys.hpp"
#include "limit.hpp"
#include "result.hpp"
#include "spin_mutex.hpp"
#include "token_bucket.hpp"

namespace tollgate {

/// Per-key token buckets.
///
/// `try_acquire(key, cost)` is the hot path: one shard lock, one hash probe,
/// the bucket arithmetic, no allocation once the key exists. A key is stored
/// compactly (its key, one 128-bit instant and a tier index: about 100 bytes
/// with a 16-character key, see the README) until somebody needs the whole
/// bucket: `get(key)` returns a Handle to a full `TokenBucket` (for
/// `acquire`, `refund`, `available`, ...), built from the key's state and kept
/// while a Handle or a waiter holds it; afterwards it folds back into the
/// compact form.
///
/// Eviction: every insertion sweeps a few other keys of its shard and drops
/// those whose bucket is fresh (full, no waiters, no Handle). Dropping such a
/// key is unobservable: a new bucket for it would be identical. So memory
/// tracks the keys that are actually limited right now, with no call to
/// remember, and never exceeds `max_keys` keys; past the cap `overflow`
/// decides, and an existing key's limit is never reset.
///
/// Limits come from `default_limit` or `policy(key)` (tiers), decided once
/// when a key is created.
///
/// Thread safety: all members may be called concurrently. Keys are spread
/// over `shards` shards, each with its own lock, so different keys rarely
/// contend. A Handle must not outlive the registry.
template <class Key = std::string, class Clock = std::chrono::steady_clock, class Mutex = SpinMutex,
          class Hash = StringHash, class KeyEqual = std::equal_to<>>
class BucketRegistry {
 public:
  using bucket_type = TokenBucket<Clock, Mutex>;
  using time_point = typename Clock::time_point;

  struct Options {
    /// The limit of a key the policy does not cover.
    Limit default_limit{};
    /// Per-key limits (tiers): called once, when a key's bucket is created.
    std::function<Limit(const Key&)> policy{};
    /// Hard cap on the number of keys held.
    std::size_t max_keys = 1'000'000;
    /// Longest key accepted, in bytes (a string's length; for other keys,
    /// `size() * sizeof(value_type)` or `sizeof(Key)`). A longer key is
    /// refused: `Status::invalid`, `Reason::key_too_long`. With `max_keys`
    /// this bounds the registry's memory (see the README: "What bounds memory").
    std::size_t max_key_bytes = 256;
    OverflowPolicy overflow = OverflowPolicy::shared_bucket;
    /// The overflow bucket's limit (for `shared_bucket`); default: `default_limit`.
    std::optional<Limit> overflow_limit{};
    /// Number of shards, rounded up to a power of two.
    std::size_t shards = 16;
    /// Keys examined for eviction per insertion.
    std::size_t sweep_per_insert = 2;
  };

 private:
  struct FullBucket {
    FullBucket(const Limit& l, const Clock& c, Scheduler<Clock>* s) : bucket(l, c, s) {}
    bucket_type bucket;
    std::atomic<std::uint32_t> pins{0};
  };

 public:
  /// A counted reference to a key's full bucket; while one exists (or the
  /// bucket has waiters) the key is not evicted.
  class Handle {
   public:
    Handle() noexcept = default;
    Handle(const Handle& o) noexcept : full_(o.full_) { pin(); }
    Handle(Handle&& o) noexcept : full_(std::exchange(o.full_, nullptr)) {}
    Handle& operator=(Handle o) noexcept {
      std::swap(full_, o.full_);
      return *this;
    }
    ~Handle() {
      if (full_) full_->pins.fetch_sub(1, std::memory_order_release);
    }
    explicit operator bool() const noexcept { return full_ != nullptr; }
    bucket_type* get() const noexcept { return full_ ? &full_->bucket : nullptr; }
    bucket_type* operator->() const noexcept { return get(); }
    bucket_type& operator*() const noexcept { return *get(); }

   private:
    friend class BucketRegistry;
    explicit Handle(FullBucket* h) noexcept : full_(h) { pin(); }
    void pin() noexcept {
      if (full_) full_->pins.fetch_add(1, std::memory_order_relaxed);
    }
    FullBucket* full_ = nullptr;
  };

  explicit BucketRegistry(Options options, Clock clock = Clock{}, Scheduler<Clock>* scheduler = nullptr)
      : options_(std::move(options)),
        clock_(std::move(clock)),
        scheduler_(scheduler),
        epoch_(clock_.now()),
        shards_(std::bit_ceil(options_.shards == 0 ? std::size_t{1} : options_.shards)) {
    options_.default_limit.validate("BucketRegistry::BucketRegistry (default_limit)");
    if (options_.max_keys == 0)
      throw std::invalid_argument("BucketRegistry::BucketRegistry: max_keys must be > 0, got 0");
    if (options_.overflow == OverflowPolicy::shared_bucket) {
      const Limit l = options_.overflow_limit.value_or(options_.default_limit);
      l.validate("BucketRegistry::BucketRegistry (overflow_limit)");
      overflow_ = std::make_unique<FullBucket>(l, clock_, scheduler_);
    }
  }

  BucketRegistry(const BucketRegistry&) = delete;
  BucketRegistry& operator=(const BucketRegistry&) = delete;

  ~BucketRegistry() {
    for (Shard& s : shards_)
      for (Entry& e : s.index.entries) delete e.full;
  }

  /// Takes `cost` from `key`'s bucket now if the tokens are there; never
  /// blocks. As `TokenBucket::try_acquire`, plus `Status::rejected` for a new
  /// key refused at the cap. `key` may be anything `Hash` and `KeyEqual`
  /// accept with `Key` (for string keys: std::string_view, const char*).
  template <class K>
  AcquireResult try_acquire(const K& key, double cost = 1) {
    if (key_bytes(key) > options_.max_key_bytes) [[unlikely]]
      return too_long(key);
    const std::size_t h = Hash{}(key);
    Shard& shard = shard_of(h);
    const time_point now_tp = clock_.now();
    for (int attempt = 0;; ++attempt) {
      {
        std::lock_guard lock(shard.mutex);
        if (Entry* e = find_or_insert(shard, h, key, now_tp, attempt)) [[likely]] {
          if (e->full) return e->full->bucket.try_acquire_at(now_tp, cost);
          return shard.tiers[e->tier].try_take(e->tat, observe(shard, now_tp), cost);
        }
      }
      if (attempt == 1) return overflow_ ? overflow_->bucket.try_acquire_at(now_tp, cost) : rejected();
      sweep(std::numeric_limits<std::size_t>::max());  // at the cap: evict fresh keys everywhere, retry once
    }
  }

  /// Returns a Handle to `key`'s full bucket, creating the key on first use.
  /// Over the key cap: the overflow bucket, or a null Handle under
  /// `OverflowPolicy::reject`. Throws `std::invalid_argument` for a key
  /// longer than `max_key_bytes`.
  ///
  /// The Handle keeps the bucket; so does an unsettled Permit taken from it
  /// and a waiter queued on it. An awaitable made from it refers to the
  /// bucket, so co_await it in the same full expression as `get` (or use
  /// the registry's own `acquire`, which holds a Handle).
  template <class K>
  Handle get(const K& key) {
    if (key_bytes(key) > options_.max_key_bytes) [[unlikely]]
      throw std::invalid_argument("BucketRegistry::get: " + std::string(too_long(key).message()));
    const std::size_t h = Hash{}(key);
    Shard& shard = shard_of(h);
    const time_point now_tp = clock_.now();
    for (int attempt = 0;; ++attempt) {
      {
        std::lock_guard lock(shard.mutex);
        if (Entry* e = find_or_insert(shard, h, key, now_tp, attempt)) {
          if (!e->full) {
            auto full = std::make_unique<FullBucket>(shard.tiers[e->tier].limit, clock_, scheduler_);
            full->bucket.import_state(epoch_, e->tat);
            e->full = full.release();
            ++shard.full_count;
          }
          return Handle(e->full);
        }
      }
      if (attempt == 1) return overflow_ ? Handle(overflow_.get()) : Handle();
      sweep(std::numeric_limits<std::size_t>::max());
    }
  }

  /// The awaitable of `get(key)->acquire(cost, stop)`; it holds the Handle
  /// while waiting, so the key's bucket stays. See TokenBucket::acquire.
  class [[nodiscard]] AcquireOperation {
   public:
    bool await_ready() noexcept {
      if (!op_) return true;
      return op_->await_ready();
    }
    bool await_suspend(std::coroutine_handle<> h) { return op_->await_suspend(h); }
    AcquireResult await_resume() noexcept { return op_ ? op_->await_resume() : result_; }

    AcquireOperation(const AcquireOperation&) = delete;
    AcquireOperation& operator=(const AcquireOperation&) = delete;
    ~AcquireOperation() {
      if (op_) op_->~Op();
    }

   private:
    friend class BucketRegistry;
    using Op = typename bucket_type::AcquireOperation;
    AcquireOperation(Handle h, double cost, ::tollgate::stop_token stop) : handle_(std::move(h)) {
      if (handle_) op_ = ::new (static_cast<void*>(storage_)) Op(handle_->acquire(cost, std::move(stop)));
    }
    explicit AcquireOperation(AcquireResult failure) : result_(failure) {}
    Handle handle_;
    alignas(Op) unsigned char storage_[sizeof(Op)];
    Op* op_ = nullptr;
    AcquireResult result_ = rejected();
  };

  /// `co_await` waits for `cost` from `key`'s bucket (see TokenBucket::acquire),
  /// holding the key's Handle meanwhile; `rejected` at the key cap under
  /// `OverflowPolicy::reject`, `invalid` for a key longer than `max_key_bytes`.
  template <class K>
  AcquireOperation acquire(const K& key, double cost = 1, ::tollgate::stop_token stop = {}) {
    if (key_bytes(key) > options_.max_key_bytes) [[unlikely]]
      return AcquireOperation(too_long(key));
    return AcquireOperation(get(key), cost, std::move(stop));
  }

  /// Number of keys held.
  std::size_t size() const noexcept { return size_.load(std::memory_order_relaxed); }

  /// Examines up to `n` keys of every shard: evicts the fresh ones, and folds
  /// unheld full buckets back into the compact form. Insertions already do
  /// this a little at a time; call it to shrink an idle registry sooner.
  /// Returns the number of keys evicted.
  std::size_t sweep(std::size_t n) {
    std::size_t evicted = 0;
    const time_point now_tp = clock_.now();
    for (Shard& s : shards_) {
      std::lock_guard lock(s.mutex);
      evicted += sweep(s, observe(s, now_tp), n);
    }
    return evicted;
  }

 private:
  using Tier = detail::BucketStep;  // a distinct limit of a shard's keys

  struct Entry {
    Key key;
    detail::fine_t tat;      // compact state (registry-relative) while `full` is null
    FullBucket* full = nullptr;  // the full bucket, when one is in use (owned)
    std::uint32_t tier = 0;
  };

  struct Shard {
    SpinMutex mutex;
    detail::KeyIndex<Entry, Hash, KeyEqual> index;  // `cursor` sweeps its dense entries
    std::vector<Tier> tiers;           // distinct limits of this shard's keys
    detail::fine_t last_now = std::numeric_limits<std::int64_t>::min();
    std::size_t cursor = 0;
    std::size_t full_count = 0;  // entries with a full bucket
    // No compact entry can be fresh before this instant (set by full sweeps;
    // compact state only ever moves later, so it stays a valid lower bound).
    detail::fine_t fresh_not_before = std::numeric_limits<std::int64_t>::min();
  };

  static AcquireResult rejected() noexcept { return AcquireResult::failed(Status::rejected, Reason::key_cap_reached); }

  template <class K>
  static std::size_t key_bytes(const K& key) noexcept {
    return detail::key_bytes(key);
  }
  // The refusal of a key over `max_key_bytes`; its "cost" is the key's size.
  template <class K>
  static AcquireResult too_long(const K& key) noexcept {
    return AcquireResult::failed(Status::invalid, Reason::key_too_long, static_cast<double>(key_bytes(key)));
  }

  Shard& shard_of(std::size_t h) noexcept {
    return shards_[(h >> 48) & (shards_.size() - 1)];  // high bits: the index uses the low ones
  }

  detail::fine_t observe(Shard& s, time_point now_tp) const noexcept {
    const detail::fine_t now =
        detail::fine_from_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(now_tp - epoch_).count());
    if (now > s.last_now) s.last_now = now;
    return s.last_now;
  }


  // Removes entry `index` (its full bucket already dealt with).
  void erase(Shard& s, std::size_t index) noexcept {
    s.index.erase(index);
    size_.fetch_sub(1, std::memory_order_relaxed);
  }

  std::uint32_t tier_for(Shard& s, const Limit& limit) {
    for (std::size_t i = 0; i < s.tiers.size(); ++i)
      if (s.tiers[i].limit == limit) return static_cast<std::uint32_t>(i);
    limit.validate("BucketRegistry: policy");
    s.tiers.emplace_back(limit);
    return static_cast<std::uint32_t>(s.tiers.size() - 1);
  }

  bool reserve_key() noexcept {
    std::size_t n = size_.load(std::memory_order_relaxed);
    while (n < options_.max_keys)
      if (size_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) return true;
    return false;
  }

  // With the shard locked: the key's entry, inserted if new; null when the
  // key is new and the registry is at its cap.
  template <class K>
  Entry* find_or_insert(Shard& s, std::size_t h, const K& key, time_point now_tp, int attempt) {
    if (Entry* e = s.index.find(h, key)) [[likely]]
      return e;
    const detail::fine_t now = observe(s, now_tp);
    sweep(s, now, attempt == 0 ? options_.sweep_per_insert : 0);
    if (!reserve_key()) return nullptr;
    Key k(key);
    const Limit limit = options_.policy ? options_.policy(k) : options_.default_limit;
    const std::uint32_t tier = tier_for(s, limit);
    s.fresh_not_before = std::min(s.fresh_not_before, now);  // a new key is fresh
    return &s.index.insert(h, Entry{std::move(k), now - s.tiers[tier].tau, nullptr, tier});
  }

  // Folds an unheld full bucket back into the compact form if it is idle.
  // Returns false while the entry's full bucket is held or has waiters.
  bool fold(Shard& s, Entry& e) {
    if (!e.full) return true;
    detail::fine_t tat;
    if (e.full->pins.load(std::memory_order_acquire) != 0 || !e.full->bucket.export_state(epoch_, tat))
      return false;
    delete e.full;
    e.full = nullptr;
    e.tat = tat;
    --s.full_count;
    if (tat + s.tiers[e.tier].tau < s.fresh_not_before) s.fresh_not_before = tat + s.tiers[e.tier].tau;
    return true;
  }

  bool fresh(const Shard& s, const Entry& e, detail::fine_t now) const noexcept {
    return s.tiers[e.tier].full(e.tat, now);
  }

  // Examines up to `n` entries from the cursor: folds unheld full buckets back
  // into the compact form, and evicts keys whose bucket is fresh. With `n` at
  // least the shard's size, every entry is examined exactly once.
  std::size_t sweep(Shard& s, detail::fine_t now, std::size_t n) {
    std::size_t evicted = 0;
    if (n >= s.index.entries.size()) {
      // A full sweep. Nothing to find before the shard's bound (unless a full
      // bucket may fold back): at the key cap under a flood of new keys this
      // makes refusals O(1) instead of a scan per request.
      if (now < s.fresh_not_before && s.full_count == 0) return 0;
      detail::fine_t bound = detail::fine_max;
      // Backwards: erasing entry i moves the last one, already examined, into i.
      for (std::size_t i = s.index.entries.size(); i-- > 0;) {
        Entry& e = s.index.entries[i];
        if (fold(s, e) && fresh(s, e, now)) {
          erase(s, i);
          ++evicted;
        } else if (!e.full) {
          bound = std::min(bound, e.tat + s.tiers[e.tier].tau);
        }
      }
      s.fresh_not_before = s.full_count == 0 ? bound : now;
      s.cursor = 0;
      return evicted;
    }
    for (std::size_t k = 0; k < n && !s.index.entries.empty(); ++k) {
      if (s.cursor >= s.index.entries.size()) s.cursor = 0;
      Entry& e = s.index.entries[s.cursor];
      if (fold(s, e) && fresh(s, e, now)) {
        erase(s, s.cursor);
        ++evicted;
      } else {
        ++s.cursor;
      }
    }
    return evicted;
  }

  Options options_;
  Clock clock_;
  Scheduler<Clock>* scheduler_;
  time_point epoch_;
  std::vector<Shard> shards_;
  std::unique_ptr<FullBucket> overflow_;
  std::atomic<std::size_t> size_{0};
};

}  // namespace tollgate
