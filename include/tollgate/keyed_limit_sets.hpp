#pragma once
// KeyedLimitSets: a multi-dimension limit set per key (user, API key,
// tenant), its limits from the key's tier, created on first use and evicted
// when indistinguishable from new.

#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "keyed_costs.hpp"
#include "keys.hpp"
#include "shared_limit_set.hpp"
#include "spin_mutex.hpp"

namespace tollgate {

/// Per-key limit sets: each key has its own requests / input tokens / output
/// tokens / ... limits, taken from its tier (`KeyTier::limits`, by dimension
/// name; a dimension a tier does not name is not limited for its keys).
///
///     KeyedLimitSets<> keys({"requests", "input_tokens", "output_tokens"},
///                           {.tiers = {{"free", 1, {{"requests", Limit::per_minute(20)},
///                                                   {"output_tokens", Limit::per_minute(10'000)}}},
///                                      {"paid", 1, {{"requests", Limit::per_minute(600)}}}},
///                            .tier_of = [](const std::string& k) { return k.starts_with("paid-") ? 1u : 0u; }});
///     if (!keys.try_acquire(api_key, {1, prompt, max_out})) reply_429();
///
/// Every front-end of a LimitSet, per key: `try_acquire`, `co_await acquire` /
/// `acquire_for` / `acquire_permit` (a Permit settles per dimension), the
/// blocking form, and the Asio `async_acquire` on `set_for(key)` with
/// `keyed(key, costs)`. Within a key, waiters are served FIFO; keys never
/// wait for each other.
///
/// State: a key is stored compactly (its slot and one paid-up-to instant per
/// dimension; see `bytes_per_key`), held while anything refers to it (a
/// waiter, a Permit, a KeyedCosts) and evicted only when indistinguishable
/// from a new key (every limited dimension full). Keys are spread over
/// `shards` shards (high bits of the hash), each with its own lock and at
/// most `ceil(max_keys / shards)` keys; past that, `overflow` decides for
/// the shard's new keys (existing keys are never affected). A flood of
/// distinct keys costs O(1) per key (each insertion examines a bounded number
/// of keys for eviction).
///
/// Thread safety: all members may be called concurrently. The object must
/// outlive its operations, permits and KeyedCosts.
template <class Key = std::string, class Clock = std::chrono::steady_clock, class Mutex = SpinMutex,
          class Hash = StringHash, class KeyEqual = std::equal_to<>>
class KeyedLimitSets {
 public:
  /// One shard: what `set_for(key)` returns (for the Asio `async_acquire`).
  using set_type = SharedLimitSet<Key, Clock, Mutex, Hash, KeyEqual>;
  using scheduler_type = typename set_type::scheduler_type;
  using Permit = typename set_type::Permit;
  using AcquireOperation = typename set_type::AcquireOperation;
  using PermitOperation = typename set_type::PermitOperation;

  struct Options {
    /// The tiers (their weights are unused here); a key's tier is
    /// `tier_of(key)` (an index), or 0 without it.
    std::vector<KeyTier> tiers = {KeyTier{"default", 1, {}}};
    std::function<std::size_t(const Key&)> tier_of{};
    std::size_t max_keys = 1'000'000;
    std::size_t max_key_bytes = 256;
    /// Past a shard's share of `max_keys`: refuse its new keys (`rejected`),
    /// or let them share one overflow key of tier `overflow_tier`.
    OverflowPolicy overflow = OverflowPolicy::reject;
    std::size_t overflow_tier = 0;
    /// Number of shards, rounded up to a power of two.
    std::size_t shards = 16;
    std::size_t sweep_per_insert = 2;
  };

  /// Throws `std::invalid_argument` for bad dimension names (none, more than
  /// `max_dimensions`, empty, repeated), a tier limit on an unknown dimension,
  /// an invalid limit, `max_keys == 0` or an `overflow_tier` out of range.
  KeyedLimitSets(std::vector<std::string> dimensions, Options options = {}, Clock clock = Clock{},
                 scheduler_type* scheduler = nullptr) {
    const std::size_t n = std::bit_ceil(options.shards == 0 ? std::size_t{1} : options.shards);
    typename set_type::Options per;
    per.tiers = options.tiers;
    per.tier_of = options.tier_of;
    per.sharing = Sharing::fifo;
    per.max_keys = options.max_keys == 0 ? 0 : (options.max_keys + n - 1) / n;
    per.max_key_bytes = options.max_key_bytes;
    per.overflow = options.overflow;
    per.overflow_tier = options.overflow_tier;
    per.sweep_per_insert = options.sweep_per_insert;
    std::vector<Dimension> dims;
    for (std::string& name : dimensions) dims.push_back({std::move(name), Limit{1, 1}});  // limits unused
    shards_.reserve(n);
    for (std::size_t i = 0; i < n; ++i)
      shards_.push_back(std::unique_ptr<set_type>(new set_type(
          detail::DimensionNames(dims, "KeyedLimitSets::KeyedLimitSets"), per, clock, scheduler, false,
          "KeyedLimitSets::KeyedLimitSets")));
  }

  /// How many dimensions; `name(i)`, `index(name)`, `costs({{name, v}})` and
  /// `message(r)` as LimitSet's.
  std::size_t size() const noexcept { return shards_[0]->size(); }
  const std::string& name(std::size_t i) const { return shards_[0]->name(i); }
  std::size_t index(std::string_view name) const { return shards_[0]->index(name); }
  Costs costs(std::initializer_list<std::pair<std::string_view, double>> named) const {
    return shards_[0]->costs(named);
  }
  std::string message(const AcquireResult& r) const { return shards_[0]->message(r); }

  /// The shard that holds `key`.
  template <class K>
  set_type& set_for(const K& key) noexcept {
    return shard(Hash{}(key));
  }
  /// `costs` charged to `key` (created if new), holding the key's state: for
  /// `asio::async_acquire(set_for(key), keyed(key, costs), token)`.
  template <class K>
  KeyedCosts keyed(const K& key, const Costs& costs) {
    const std::size_t h = Hash{}(key);
    return shard(h).keyed_hashed(h, key, costs);
  }

  /// Takes `costs` from `key`'s limits now if they are there; never waits.
  /// `never` (`cost_exceeds_key_capacity`) names the dimension; `rejected`
  /// for a new key at the cap; `invalid` for a bad key or cost vector. One
  /// shard lock, one hash, no allocation once the key exists.
  template <class K>
  AcquireResult try_acquire(const K& key, const Costs& costs) {
    const std::size_t h = Hash{}(key);
    return shard(h).try_acquire_hashed(h, key, costs);
  }
  /// Waits (FIFO within the key, without blocking a thread) for the tokens.
  template <class K>
  AcquireOperation acquire(const K& key, const Costs& costs, ::tollgate::stop_token stop = {}) {
    const std::size_t h = Hash{}(key);
    set_type& s = shard(h);
    return s.acquire(s.keyed_hashed(h, key, costs), std::move(stop));
  }
  /// Refuses at once (`not_now`, nothing taken) when the wait would exceed `max_wait`.
  template <class K, class Rep, class Period>
  AcquireOperation acquire_for(const K& key, const Costs& costs, std::chrono::duration<Rep, Period> max_wait,
                               ::tollgate::stop_token stop = {}) {
    return set_for(key).acquire_for(key, costs, max_wait, std::move(stop));
  }
  /// Blocks the calling thread (as LimitSet::acquire_blocking).
  template <class K, class Rep = std::int64_t, class Period = std::nano>
  AcquireResult acquire_blocking(const K& key, const Costs& costs,
                                 std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max(),
                                 ::tollgate::stop_token stop = {}) {
    return set_for(key).acquire_blocking(key, costs, max_wait, std::move(stop));
  }
  /// `co_await` yields a Permit holding `estimate` for `key`, settled per dimension.
  template <class K, class Rep = std::int64_t, class Period = std::nano>
  PermitOperation acquire_permit(const K& key, const Costs& estimate,
                                 std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max(),
                                 ::tollgate::stop_token stop = {}) {
    return set_for(key).acquire_permit(key, estimate, max_wait, std::move(stop));
  }
  /// `try_acquire` that returns a Permit (empty when refused).
  template <class K>
  Permit try_acquire_permit(const K& key, const Costs& estimate) {
    return set_for(key).try_acquire_permit(key, estimate);
  }

  /// Unreserved tokens of `key`'s dimension `i` (infinity when its tier does
  /// not limit `i`; 0 while it has waiters). Does not create the key.
  template <class K>
  double available(const K& key, std::size_t i) {
    return set_for(key).key_available(key, i);
  }

  /// Keys held now, over every shard.
  std::size_t keys() const {
    std::size_t n = 0;
    for (const auto& s : shards_) n += s->keys();
    return n;
  }
  /// Bytes of state per key held, beyond the key's own (see SharedLimitSet::bytes_per_key).
  std::size_t bytes_per_key() const noexcept { return shards_[0]->bytes_per_key(); }
  /// Examines up to `n` keys of every shard; evicts those indistinguishable
  /// from new. Returns the number evicted.
  std::size_t sweep(std::size_t n) {
    std::size_t evicted = 0;
    for (auto& s : shards_) evicted += s->sweep(n);
    return evicted;
  }

 private:
  set_type& shard(std::size_t h) noexcept { return *shards_[(h >> 48) & (shards_.size() - 1)]; }

  std::vector<std::unique_ptr<set_type>> shards_;
};

}  // namespace tollgate
