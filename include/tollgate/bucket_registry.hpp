#pragma once
// BucketRegistry: one token bucket per key (user, API key, tenant), created on
// first use, evicted when indistinguishable from a fresh one, capped in number.

#include <atomic>
#include <bit>
#include <chrono>
#include <cstddef>
#include <algorithm>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stop_token>
#include <coroutine>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "limit.hpp"
#include "result.hpp"
#include "token_bucket.hpp"

namespace tollgate {

/// A transparent hash for string keys: a `std::string_view` or `const char*`
/// finds a `std::string` key without allocating.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

/// What a BucketRegistry does with a new key once it holds `max_keys` keys
/// (after trying to evict fresh buckets). Existing keys are never affected.
enum class OverflowPolicy {
  shared_bucket,  ///< new keys share one overflow bucket (`overflow_limit`)
  reject,         ///< new keys are refused: `Status::rejected`, or a null handle
};

/// Per-key token buckets.
///
/// `get(key)` returns a Handle to the key's bucket, creating it (full, with
/// the key's Limit) on first use. While any Handle to a bucket exists, or it
/// has waiters, or it is not full, it is kept. Every insertion sweeps a few
/// other buckets of its shard and evicts those that are fresh (full, no
/// waiters, no Handle): dropping such a bucket is unobservable, since a new
/// one for the same key would be identical. Memory is thus bounded by the
/// number of keys that are actually limited right now, and never more than
/// `max_keys`, beyond which `overflow` decides (an existing key's limit is
/// never reset).
///
/// Thread safety: all members may be called concurrently. Keys are spread
/// over `shards` shards, each with its own lock, so different keys rarely
/// contend. Handles are cheap to copy and may outlive nothing but the registry.
template <class Key = std::string, class Clock = std::chrono::steady_clock,
          class Mutex = SpinMutex, class Hash = StringHash, class KeyEqual = std::equal_to<>>
class BucketRegistry {
 public:
  using bucket_type = TokenBucket<Clock, Mutex>;
  using time_point = typename Clock::time_point;

  struct Options {
    /// The limit of a key the policy does not cover.
    Limit default_limit{};
    /// Per-key limits (tiers): called once, when a key's bucket is created.
    std::function<Limit(const Key&)> policy{};
    /// Hard cap on the number of keys held (each has its own bucket).
    std::size_t max_keys = 1'000'000;
    OverflowPolicy overflow = OverflowPolicy::shared_bucket;
    /// The overflow bucket's limit (for `shared_bucket`); default: `default_limit`.
    std::optional<Limit> overflow_limit{};
    /// Number of shards, rounded up to a power of two.
    std::size_t shards = 16;
    /// Buckets examined for eviction per insertion.
    std::size_t sweep_per_insert = 2;
  };

  class Handle;

 private:
  struct Node;

 public:
  explicit BucketRegistry(Options options, Clock clock = Clock{},
                          Scheduler<Clock>* scheduler = nullptr)
      : options_(std::move(options)),
        clock_(clock),
        scheduler_(scheduler),
        shards_(std::bit_ceil(options_.shards == 0 ? std::size_t{1} : options_.shards)) {
    options_.default_limit.validate("BucketRegistry::BucketRegistry (default_limit)");
    if (options_.max_keys == 0)
      throw std::invalid_argument("BucketRegistry::BucketRegistry: max_keys must be > 0, got 0");
    if (options_.overflow == OverflowPolicy::shared_bucket) {
      const Limit l = options_.overflow_limit.value_or(options_.default_limit);
      l.validate("BucketRegistry::BucketRegistry (overflow_limit)");
      overflow_ = std::make_unique<Node>(l, clock_, scheduler_);
      overflow_->pins.store(1);  // never evicted
    }
  }

  BucketRegistry(const BucketRegistry&) = delete;
  BucketRegistry& operator=(const BucketRegistry&) = delete;

  /// Returns a Handle to `key`'s bucket, creating it on first use. Over the
  /// key cap: the overflow bucket, or a null Handle under `OverflowPolicy::reject`.
  /// `key` may be anything `Hash` and `KeyEqual` accept with `Key` (for
  /// string keys: std::string_view, const char*) - found without allocating.
  template <class K>
  Handle get(const K& key) {
    const std::size_t h = Hash{}(key);
    Shard& shard = shards_[h & (shards_.size() - 1)];
    for (int attempt = 0;; ++attempt) {
      {
        std::lock_guard lock(shard.mutex);
        if (auto it = shard.map.find(key); it != shard.map.end()) return Handle(&it->second);
        sweep(shard, clock_.now(), options_.sweep_per_insert);
        if (reserve_slot()) return insert(shard, key);
      }
      if (attempt == 1) return overflow_ ? Handle(overflow_.get()) : Handle();
      // At the cap: evict every fresh bucket (all shards, one lock at a time), retry once.
      sweep(std::numeric_limits<std::size_t>::max());
    }
  }

  /// `get(key)->try_acquire(cost)`; `Status::rejected` when the key was refused.
  template <class K>
  AcquireResult try_acquire(const K& key, double cost = 1) {
    Handle h = get(key);
    if (!h) return rejected();
    return h->try_acquire(cost);
  }

  /// The awaitable of `get(key)->acquire(cost, stop)`; it holds the Handle
  /// while waiting, so the key's bucket stays. See TokenBucket::acquire.
  class AcquireOperation {
   public:
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
      if (!op_) {
        result_ = rejected();
        return false;
      }
      return op_->await_suspend(h);
    }
    AcquireResult await_resume() noexcept { return op_ ? op_->await_resume() : result_; }

    AcquireOperation(const AcquireOperation&) = delete;
    AcquireOperation& operator=(const AcquireOperation&) = delete;
    ~AcquireOperation() {
      if (op_) op_->~Op();
    }

   private:
    friend class BucketRegistry;
    using Op = typename bucket_type::AcquireOperation;
    AcquireOperation(Handle h, double cost, std::stop_token stop) : handle_(std::move(h)) {
      if (handle_) op_ = ::new (static_cast<void*>(storage_)) Op(handle_->acquire(cost, std::move(stop)));
    }
    Handle handle_;
    alignas(Op) unsigned char storage_[sizeof(Op)];
    Op* op_ = nullptr;
    AcquireResult result_{};
  };

  template <class K>
  AcquireOperation acquire(const K& key, double cost = 1, std::stop_token stop = {}) {
    return AcquireOperation(get(key), cost, std::move(stop));
  }

  /// Number of keys that currently have their own bucket.
  std::size_t size() const noexcept { return size_.load(std::memory_order_relaxed); }

  /// Examines up to `n` buckets of every shard and evicts the fresh ones.
  /// Insertions already do this a little at a time; call it to shrink an idle
  /// registry sooner. Returns the number evicted.
  std::size_t sweep(std::size_t n) {
    std::size_t evicted = 0;
    const time_point now = clock_.now();
    for (Shard& s : shards_) {
      std::lock_guard lock(s.mutex);
      evicted += sweep(s, now, n);
    }
    return evicted;
  }

  /// A counted reference to a bucket; the bucket is not evicted while one exists.
  class Handle {
   public:
    Handle() noexcept = default;
    Handle(const Handle& o) noexcept : node_(o.node_) { pin(); }
    Handle(Handle&& o) noexcept : node_(std::exchange(o.node_, nullptr)) {}
    Handle& operator=(Handle o) noexcept {
      std::swap(node_, o.node_);
      return *this;
    }
    ~Handle() {
      if (node_) node_->pins.fetch_sub(1, std::memory_order_release);
    }
    explicit operator bool() const noexcept { return node_ != nullptr; }
    bucket_type* get() const noexcept { return node_ ? &node_->bucket : nullptr; }
    bucket_type* operator->() const noexcept { return get(); }
    bucket_type& operator*() const noexcept { return *get(); }

   private:
    friend class BucketRegistry;
    explicit Handle(typename BucketRegistry::Node* n) noexcept : node_(n) { pin(); }
    void pin() noexcept {
      if (node_) node_->pins.fetch_add(1, std::memory_order_relaxed);
    }
    typename BucketRegistry::Node* node_ = nullptr;
  };

 private:
  struct Node {
    Node(const Limit& limit, const Clock& clock, Scheduler<Clock>* scheduler)
        : bucket(limit, clock, scheduler) {}
    bucket_type bucket;
    std::atomic<std::uint32_t> pins{0};
    const Key* key = nullptr;
    std::size_t order_index = 0;
  };

  struct Shard {
    std::mutex mutex;
    std::unordered_map<Key, Node, Hash, KeyEqual> map;
    std::vector<Node*> order;  // for sweeping; order_index is each node's slot
    std::size_t cursor = 0;
  };

  static AcquireResult rejected() noexcept {
    return AcquireResult::failed(Status::rejected, Reason::key_cap_reached);
  }

  template <class K>
  Handle insert(Shard& shard, const K& key) {
    Key k(key);
    const Limit limit = options_.policy ? options_.policy(k) : options_.default_limit;
    auto [it, inserted] = shard.map.try_emplace(std::move(k), limit, clock_, scheduler_);
    (void)inserted;
    Node& node = it->second;
    node.key = &it->first;
    node.order_index = shard.order.size();
    shard.order.push_back(&node);
    return Handle(&node);
  }

  bool reserve_slot() noexcept {
    std::size_t n = size_.load(std::memory_order_relaxed);
    while (n < options_.max_keys) {
      if (size_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) return true;
    }
    return false;
  }

  // Examines up to `n` nodes from the shard's cursor; evicts fresh, unpinned ones.
  std::size_t sweep(Shard& s, time_point now, std::size_t n) {
    std::size_t evicted = 0;
    n = std::min(n, s.order.size());
    for (std::size_t i = 0; i < n && !s.order.empty(); ++i) {
      if (s.cursor >= s.order.size()) s.cursor = 0;
      Node* node = s.order[s.cursor];
      if (node->pins.load(std::memory_order_acquire) == 0 && node->bucket.is_fresh_at(now)) {
        Node* last = s.order.back();
        s.order[node->order_index] = last;
        last->order_index = node->order_index;
        s.order.pop_back();
        s.map.erase(*node->key);
        size_.fetch_sub(1, std::memory_order_relaxed);
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
  std::vector<Shard> shards_;
  std::unique_ptr<Node> overflow_;
  std::atomic<std::size_t> size_{0};
};

}  // namespace tollgate
