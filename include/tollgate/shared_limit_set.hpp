#pragma once
// SharedLimitSet: one upstream's quota (several dimensions) shared by many
// keys, each capped by its tier's own limits, served in weighted fair order.

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <new>
#include <span>
#include <sstream>
#include <stdexcept>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "acquire_operation.hpp"
#include "costs.hpp"
#include "detail/dimension_names.hpp"
#include "detail/fair_core.hpp"
#include "detail/key_index.hpp"
#include "detail/waiting_bucket.hpp"
#include "keyed_costs.hpp"
#include "keys.hpp"
#include "limit.hpp"
#include "permit.hpp"
#include "result.hpp"
#include "scheduler.hpp"
#include "spin_mutex.hpp"
#include "stop_token.hpp"

namespace tollgate {

/// A class of keys: its share of the upstream and its per-key limits.
struct KeyTier {
  std::string name;
  /// Share of the upstream when it is the bottleneck (> 0): keys with
  /// waiting requests are served in proportion to their tiers' weights.
  double weight = 1;
  /// Each key's own limits, by dimension name (a subset of the set's
  /// dimensions); a dimension not named is not capped per key.
  std::vector<Dimension> limits{};
};

/// How a SharedLimitSet orders the requests of different keys.
enum class Sharing {
  weighted_fair,  ///< by weight: start-time fair queueing on the dominant share
  fifo,           ///< by arrival, whatever the key
};

/// An upstream quota over named dimensions (requests, input tokens, output
/// tokens, ...) shared by many keys (users, tenants, API keys):
///
///     SharedLimitSet<> upstream({{"requests", Limit::per_minute(4'000)},
///                                {"input_tokens", Limit::per_minute(400'000)},
///                                {"output_tokens", Limit::per_minute(80'000)}},
///                               {.tiers = {{"free", 1, {{"requests", Limit::per_minute(20)}}},
///                                          {"paid", 4, {}}},
///                                .tier_of = [](const std::string& k) { return k.starts_with("sk-paid") ? 1u : 0u; }});
///     auto permit = co_await upstream.acquire_permit(api_key, {1, prompt, max_out}, 10s);
///
/// One operation takes a request's cost from the shared dimensions and from
/// its key's own capped dimensions at one instant, or nothing: a waiting
/// request holds no tokens anywhere, a refusal leaves both untouched, one
/// `max_wait` covers both, and cancelling is exact in both. Both stay
/// conformant (`capacity + rate * t` in every window, per dimension).
///
/// Order: within a key, FIFO. Between keys, with `Sharing::weighted_fair`,
/// when the shared set is the bottleneck keys with waiting requests are
/// served in proportion to their weights, not their arrival rates: each
/// request's cost counts as its dominant share of the upstream (the largest
/// of its refill times over the dimensions, so a request that needs 2% of the
/// output-token rate and 0.1% of the request rate counts as 2%), and the
/// next grant goes to the key furthest behind its share. It is
/// work-conserving: quota a quiet key leaves unused, or that a key cannot take
/// because its own limits hold it back, goes to the others at once. A
/// request whose predicted wait exceeds its `max_wait` is refused at once with
/// the retry-after; a key with a smaller share arriving later can still go
/// first (that is the fairness), and a waiter it pushes past its `max_wait`
/// finishes `timed_out` at that instant (`Reason::wait_grew_past_max_wait`).
/// With `Sharing::fifo` the order is arrival, whatever the key.
///
/// Keys: created on first use, stored compactly (see `bytes_per_key`),
/// evicted when indistinguishable from new (every capped dimension full,
/// nothing waiting, no KeyedCosts or Permit referring to it), never more than
/// `max_keys` (then `overflow` decides). Costs: O(1) per acquisition without
/// waiters; with waiters, O(keys with waiters) per grant and per newcomer.
///
/// Thread safety: all members may be called concurrently (one lock: every
/// acquisition meets the shared quota anyway). Waiting front-ends and their
/// resumption are as LimitSet's. The set must outlive its operations, permits
/// and KeyedCosts.
template <class Key = std::string, class Clock = std::chrono::steady_clock, class Mutex = SpinMutex,
          class Hash = StringHash, class KeyEqual = std::equal_to<>>
class SharedLimitSet : public detail::WaitingBucket<detail::FairCore, Clock, Mutex> {
  using Base = detail::WaitingBucket<detail::FairCore, Clock, Mutex>;
  using Core = detail::FairCore;
  using fine_t = detail::fine_t;

 public:
  using typename Base::scheduler_type;
  using typename Base::time_point;
  using key_type = Key;
  using Permit = tollgate::Permit<KeyedCosts>;
  using AcquireOperation = tollgate::AcquireOperation<SharedLimitSet>;
  using PermitOperation = tollgate::PermitOperation<SharedLimitSet>;

  struct Options {
    /// The tiers; a key's tier is `tier_of(key)` (an index), or 0 without it.
    std::vector<KeyTier> tiers = {KeyTier{"default", 1, {}}};
    std::function<std::size_t(const Key&)> tier_of{};
    Sharing sharing = Sharing::weighted_fair;
    /// Hard cap on the number of keys held.
    std::size_t max_keys = 100'000;
    /// Longest key accepted, in bytes (as BucketRegistry's).
    std::size_t max_key_bytes = 256;
    /// Past `max_keys`: refuse new keys (`rejected`), or let them share one
    /// overflow key of tier `overflow_tier`.
    OverflowPolicy overflow = OverflowPolicy::reject;
    std::size_t overflow_tier = 0;
    /// Keys examined for eviction per new key (and at the cap, 16 more).
    std::size_t sweep_per_insert = 2;
  };

  /// A full set. Throws `std::invalid_argument` for bad dimensions (as
  /// LimitSet's), no tiers, a weight that is not finite and > 0, a tier
  /// limit on an unknown dimension (naming both), an invalid tier limit,
  /// `max_keys == 0` or an `overflow_tier` out of range.
  SharedLimitSet(std::vector<Dimension> upstream, Options options = {}, Clock clock = Clock{},
                 scheduler_type* scheduler = nullptr)
      : SharedLimitSet(detail::DimensionNames(std::move(upstream), "SharedLimitSet::SharedLimitSet"),
                       std::move(options), std::move(clock), scheduler, true, "SharedLimitSet::SharedLimitSet") {}

  /// How many dimensions; `name(i)`, `index(name)`, `limit(i)` describe them.
  std::size_t size() const noexcept { return dims_.size(); }
  const std::string& name(std::size_t i) const { return dims_.name(i); }
  std::size_t index(std::string_view name) const { return dims_.index(name, "SharedLimitSet::index"); }
  Limit limit(std::size_t i) const {
    dims_.check_index("SharedLimitSet::limit", i);
    std::lock_guard lock(mutex_);
    return core_.limit(i);
  }
  /// A cost vector by dimension name (as LimitSet::costs).
  Costs costs(std::initializer_list<std::pair<std::string_view, double>> named) const {
    return dims_.costs(named, "SharedLimitSet::costs");
  }
  /// `r.message()` with the dimension named.
  std::string message(const AcquireResult& r) const { return dims_.message(r); }

  /// `costs` charged to `key`, which is created if new: what the awaitables,
  /// the Asio `async_acquire` and permits carry. Holds the key's state while
  /// it exists. For a key over `max_key_bytes`, or a new key refused at the
  /// cap, the result carries that refusal (acquiring with it fails
  /// `invalid` / `rejected`).
  template <class K>
  KeyedCosts keyed(const K& key, const Costs& costs) {
    return keyed_hashed(Hash{}(key), key, costs);
  }

  /// Takes `costs` from the shared set and `key`'s own limits now, if both
  /// have them and nobody waits; never waits. `not_now` carries the predicted
  /// wait; `never` names the dimension (`cost_exceeds_key_capacity` for the
  /// key's own limit); `rejected` for a new key at the cap; `invalid` for a
  /// key over `max_key_bytes` or a bad cost vector. One lock, no allocation
  /// once the key exists.
  template <class K>
  AcquireResult try_acquire(const K& key, const Costs& costs) {
    return try_acquire_hashed(Hash{}(key), key, costs);
  }
  AcquireResult try_acquire(const KeyedCosts& c) {
    return this->told(c, this->mutate([&](Core& core, fine_t now, detail::WaiterList&) { return core.try_acquire(now, c); }));
  }

  /// Waits (without blocking a thread) for the key's turn and the tokens.
  template <class K>
  AcquireOperation acquire(const K& key, const Costs& costs, ::tollgate::stop_token stop = {}) {
    return acquire(keyed(key, costs), std::move(stop));
  }
  AcquireOperation acquire(const KeyedCosts& c, ::tollgate::stop_token stop = {}) {
    return AcquireOperation(*this, c, detail::fine_max, std::move(stop));
  }
  /// Refuses at once (`not_now`, nothing taken) when the predicted wait exceeds `max_wait`.
  template <class K, class Rep, class Period>
  AcquireOperation acquire_for(const K& key, const Costs& costs, std::chrono::duration<Rep, Period> max_wait,
                               ::tollgate::stop_token stop = {}) {
    return AcquireOperation(*this, keyed(key, costs), Base::to_fine(max_wait), std::move(stop));
  }
  /// Blocks the calling thread (as LimitSet::acquire_blocking).
  template <class K, class Rep = std::int64_t, class Period = std::nano>
  AcquireResult acquire_blocking(const K& key, const Costs& costs,
                                 std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max(),
                                 ::tollgate::stop_token stop = {}) {
    return this->block(keyed(key, costs), Base::to_fine(max_wait), std::move(stop));
  }
  /// `co_await` yields a Permit holding `estimate` for `key`, to be settled at
  /// the real cost (per dimension, in the shared set and the key's limits).
  template <class K, class Rep = std::int64_t, class Period = std::nano>
  PermitOperation acquire_permit(const K& key, const Costs& estimate,
                                 std::chrono::duration<Rep, Period> max_wait = std::chrono::duration<Rep, Period>::max(),
                                 ::tollgate::stop_token stop = {}) {
    return PermitOperation(*this, keyed(key, estimate), Base::to_fine(max_wait), std::move(stop));
  }
  /// `try_acquire` that returns a Permit (empty when refused).
  template <class K>
  Permit try_acquire_permit(const K& key, const Costs& estimate) {
    KeyedCosts c = keyed(key, estimate);
    const AcquireResult r = try_acquire(c);
    return Permit(*this, c, r);
  }

  /// Gives `c` back to the shared set and its key (never above capacity).
  void refund(const KeyedCosts& c) { settle(c, c.zeroed()); }
  /// Takes `c` unconditionally (a debt, at most `max_debt` per dimension).
  void charge(const KeyedCosts& c) {
    KeyedCosts zero = c.zeroed();
    settle(zero, c);
  }
  /// Per dimension, refunds `estimate - actual` or charges `actual - estimate`,
  /// in the shared set and in `estimate`'s key (what `Permit::settle` does).
  void settle(const KeyedCosts& estimate, const KeyedCosts& actual) {
    detail::SetCore::check_amount("SharedLimitSet::settle", "estimate", estimate.costs(), &dims_.zeros());
    Core::check_amount("SharedLimitSet::settle", "actual", actual, &estimate);
    Base::settle(estimate, actual);
  }

  /// The most debt a charge or settle may leave in shared dimension `i`.
  void set_max_debt(std::size_t i, double tokens) {
    dims_.check_index("SharedLimitSet::set_max_debt", i);
    detail::check_amount("SharedLimitSet::set_max_debt", "tokens", tokens);
    std::lock_guard lock(mutex_);
    core_.set_max_debt(i, tokens);
  }

  /// Corrects shared dimension `i` down to what the upstream says is left.
  void limit_remaining(std::size_t i, double remaining) {
    dims_.check_index("SharedLimitSet::limit_remaining", i);
    detail::check_amount("SharedLimitSet::limit_remaining", "remaining", remaining);
    this->mutate([&](Core& core, fine_t t, detail::WaiterList&) { core.limit_remaining(t, i, remaining); });
  }
  /// ... and holds it there for `hold_for` (as LimitSet::limit_remaining).
  template <class Rep, class Period>
  void limit_remaining(std::size_t i, double remaining, std::chrono::duration<Rep, Period> hold_for,
                       std::chrono::nanoseconds window = {}) {
    dims_.check_index("SharedLimitSet::limit_remaining", i);
    detail::check_amount("SharedLimitSet::limit_remaining", "remaining", remaining);
    const fine_t f = std::min(Base::to_fine(hold_for), Base::kFar);
    const fine_t w = std::min(Base::to_fine(window), Base::kFar);
    this->mutate([&](Core& core, fine_t t, detail::WaiterList&) { core.hold(t, i, remaining, t + f, std::max<fine_t>(w, 0)); });
  }
  /// When shared dimension `i`'s hold ends, if one holds it now.
  std::optional<time_point> held_until(std::size_t i) {
    dims_.check_index("SharedLimitSet::held_until", i);
    const fine_t t = rel(clock_.now());
    std::lock_guard lock(mutex_);
    const std::optional<fine_t> u = core_.held_until(t, i);
    if (!u) return std::nullopt;
    return Base::at(*u);
  }
  /// Changes shared dimension `i`'s limit (tokens settled, never created).
  void set_limit(std::size_t i, Limit limit) {
    dims_.check_index("SharedLimitSet::set_limit", i);
    limit.validate("SharedLimitSet::set_limit");
    this->mutate([&](Core& core, fine_t t, detail::WaiterList& finished) { core.reconfigure(t, i, limit, finished); });
  }

  /// Replaces the tiers and `tier_of` (a reloaded configuration) without
  /// resetting any key: every key held takes the tier `tier_of` now gives it
  /// (the overflow key: `overflow_tier`); its own limits keep its tokens,
  /// capped at the new capacity (a dimension newly capped starts full); its
  /// queued requests are re-timed under the new caps, and one whose cost
  /// exceeds its key's new capacity finishes `never`
  /// (`cost_exceeds_new_capacity`). New weights apply to requests queued from
  /// now on. Throws `std::invalid_argument` (as the constructor) for bad
  /// tiers, an `overflow_tier` out of range, or a `tier_of` that answers out
  /// of range for a key held; the set is then unchanged.
  void set_tiers(std::vector<KeyTier> tiers, std::function<std::size_t(const Key&)> tier_of) {
    Options next = options_;
    next.tiers = std::move(tiers);
    next.tier_of = std::move(tier_of);
    std::vector<detail::FairTier> fair = tiers_of(dims_, next, "SharedLimitSet::set_tiers");
    if (next.overflow_tier >= next.tiers.size())
      throw std::invalid_argument("SharedLimitSet::set_tiers: overflow_tier " + std::to_string(next.overflow_tier) +
                                  " out of range (" + std::to_string(next.tiers.size()) + " tiers)");
    this->mutate([&](Core& core, fine_t t, detail::WaiterList& finished) {
      // Every key's new tier first (tier_of may throw: nothing has changed yet).
      std::vector<std::uint32_t> tier_of_slot(core.slot_count(), 0);
      for (std::uint32_t id = 0; id < core.slot_count(); ++id) {
        detail::KeySlot& k = core.slot(id);
        if (!k.in_use) continue;
        const std::size_t to = &k == overflow_ ? next.overflow_tier : next.tier_of ? next.tier_of(key_at(id)) : 0;
        if (to >= next.tiers.size())
          throw std::invalid_argument("SharedLimitSet::set_tiers: tier_of returned " + std::to_string(to) + "; there are " +
                                      std::to_string(next.tiers.size()) + " tiers");
        tier_of_slot[id] = static_cast<std::uint32_t>(to);
      }
      core.retier(t, std::move(fair), [&](const detail::KeySlot& k) { return tier_of_slot[k.id]; }, finished);
      options_.tiers = std::move(next.tiers);  // under the lock: new keys read tier_of there
      options_.tier_of = std::move(next.tier_of);
    });
  }

  /// Unreserved tokens of shared dimension `i` (0 while paused or while waiters are queued).
  double available(std::size_t i) const {
    dims_.check_index("SharedLimitSet::available", i);
    const fine_t t = rel(clock_.now());
    std::lock_guard lock(mutex_);
    return core_.available(t, i);
  }
  /// Unreserved tokens of `key`'s own limit in dimension `i`: infinity when
  /// its tier does not cap `i`, 0 while it has waiters. Does not create the key.
  template <class K>
  double key_available(const K& key, std::size_t i) {
    dims_.check_index("SharedLimitSet::key_available", i);
    const fine_t t = rel(clock_.now());
    std::lock_guard lock(mutex_);
    if (detail::KeySlot* k = find(Hash{}(key), key)) return core_.key_available(t, *k, i);
    const detail::FairTier& tier = core_.tier(tier_index(Key(key)));
    return tier.capped[i] ? tier.cap[i].limit.capacity : std::numeric_limits<double>::infinity();
  }

  /// Keys held now.
  std::size_t keys() const {
    std::lock_guard lock(mutex_);
    return count_;
  }
  /// Bytes of state per key held, beyond the key's own (its `Key` object and
  /// what that allocates): its record (slot and paid-up-to instants; the key
  /// object lives in it too) and two index slots (the table stays at most half full).
  std::size_t bytes_per_key() const noexcept {
    return core_.bytes_per_slot() - sizeof(Key) + 2 * sizeof(std::uint64_t);
  }
  /// Examines up to `n` keys and evicts those indistinguishable from new.
  /// Returns the number evicted.
  std::size_t sweep(std::size_t n) {
    const fine_t now = rel(clock_.now());
    std::lock_guard lock(mutex_);
    return sweep_locked(now, n);
  }

 private:
  using Base::clock_;
  using Base::core_;
  using Base::mutex_;
  using Base::rel;

  const Key& key_at(std::uint32_t id) noexcept {
    return *std::launder(reinterpret_cast<Key*>(core_.key_storage(core_.slot(id))));
  }
  template <class K>
  detail::KeySlot* find(std::size_t h, const K& key) noexcept {
    const std::int64_t id = table_.find(
        h, key, [this](std::uint32_t i) -> const Key& { return key_at(i); },
        [](const Key& stored, const K& k) noexcept { return equal(stored, k); });
    return id < 0 ? nullptr : &core_.slot(static_cast<std::uint32_t>(id));
  }
  // KeyEqual; for string keys compared with std::equal_to<>, short keys (up
  // to 16 bytes, most API keys' prefixes) are compared inline, without a call.
  template <class K>
  static bool equal(const Key& stored, const K& key) noexcept {
    if constexpr (std::is_same_v<Key, std::string> && std::is_same_v<KeyEqual, std::equal_to<>> &&
                  std::is_convertible_v<const K&, std::string_view>) {
      const std::string_view a(stored), b(key);
      if (a.size() != b.size()) return false;
      if (a.size() >= 8 && a.size() <= 16) {
        std::uint64_t x[2], y[2];
        std::memcpy(&x[0], a.data(), 8);
        std::memcpy(&y[0], b.data(), 8);
        std::memcpy(&x[1], a.data() + a.size() - 8, 8);
        std::memcpy(&y[1], b.data() + b.size() - 8, 8);
        return ((x[0] ^ y[0]) | (x[1] ^ y[1])) == 0;
      }
      return a == b;
    } else {
      return KeyEqual{}(stored, key);
    }
  }

  template <class K>
  KeyedCosts keyed_hashed(std::size_t h, const K& key, const Costs& costs) {
    if (detail::key_bytes(key) > options_.max_key_bytes) [[unlikely]]
      return refused(KeyedCosts::Refusal::key_too_long, costs);
    std::lock_guard lock(mutex_);
    detail::KeySlot* k = find_or_insert(h, key, -detail::fine_max);  // reads the clock only to insert
    if (!k) return refused(KeyedCosts::Refusal::key_cap, costs);
    return KeyedCosts(k, costs);
  }

  template <class K>
  AcquireResult try_acquire_hashed(std::size_t h, const K& key, const Costs& costs) {
    const AcquireResult r = try_acquire_unheard(h, key, costs);
    if (this->listener()) [[unlikely]]
      (void)this->told(KeyedCosts(costs), r);
    return r;
  }
  template <class K>
  AcquireResult try_acquire_unheard(std::size_t h, const K& key, const Costs& costs) {
    if (detail::key_bytes(key) > options_.max_key_bytes) [[unlikely]]
      return too_long(key);
    const fine_t t = rel(clock_.now());
    {
      // Nobody waits anywhere (the common case): nothing to complete and no
      // timer to move, so no more than the lock and the arithmetic.
      std::lock_guard lock(mutex_);
      if (core_.idle()) [[likely]] {
        detail::KeySlot* k = find_or_insert(h, key, t);
        if (!k) [[unlikely]]
          return AcquireResult::failed(Status::rejected, Reason::key_cap_reached);
        return core_.try_acquire(t, *k, costs);
      }
    }
    return this->mutate_at(t, [&](Core& core, fine_t now, detail::WaiterList&) {
      detail::KeySlot* k = find_or_insert(h, key, now);
      if (!k) [[unlikely]]
        return AcquireResult::failed(Status::rejected, Reason::key_cap_reached);
      return core.try_acquire(now, *k, costs);
    });
  }

  template <class, class, class, class, class>
  friend class KeyedLimitSets;

  // `has_shared == false`: a shard of KeyedLimitSets (the keys' own limits
  // only; `dims`' limits are unused). `who` prefixes error messages.
  SharedLimitSet(detail::DimensionNames dims, Options options, Clock clock, scheduler_type* scheduler,
                 bool has_shared, const char* who)
      : Base(std::move(clock), scheduler, std::span<const Limit>(dims.limits()), tiers_of(dims, options, who),
             options.sharing == Sharing::weighted_fair, has_shared, sizeof(Key), alignof(Key)),
        dims_(std::move(dims)),
        options_(std::move(options)) {
    if (options_.max_keys == 0) throw std::invalid_argument(std::string(who) + ": max_keys must be > 0, got 0");
    if (options_.overflow_tier >= options_.tiers.size())
      throw std::invalid_argument(std::string(who) + ": overflow_tier " +
                                  std::to_string(options_.overflow_tier) + " out of range (" +
                                  std::to_string(options_.tiers.size()) + " tiers)");
    if (options_.overflow == OverflowPolicy::shared_bucket)
      overflow_ = &core_.new_slot(static_cast<std::uint32_t>(options_.overflow_tier), rel(clock_.now()));
  }

  static std::vector<detail::FairTier> tiers_of(const detail::DimensionNames& dims, const Options& o, const char* who) {
    if (o.tiers.empty()) throw std::invalid_argument(std::string(who) + ": no tiers");
    std::vector<detail::FairTier> out;
    for (const KeyTier& t : o.tiers) {
      if (!(t.weight > 0) || std::isinf(t.weight)) {
        std::ostringstream os;
        os << who << ": tier \"" << t.name << "\" has weight " << t.weight << "; it must be finite and > 0";
        throw std::invalid_argument(os.str());
      }
      detail::FairTier f;
      f.weight = t.weight;
      for (const Dimension& l : t.limits) {
        std::size_t d = 0;
        while (d < dims.size() && dims.name(d) != l.name) ++d;
        if (d == dims.size())
          throw std::invalid_argument(std::string(who) + ": tier \"" + t.name + "\" limits \"" + l.name +
                                      "\", which is not a dimension of the set");
        if (f.capped[d])
          throw std::invalid_argument(std::string(who) + ": tier \"" + t.name + "\" limits \"" + l.name + "\" twice");
        l.limit.validate((std::string(who) + " (tier \"" + t.name + "\", dimension \"" + l.name + "\")").c_str());
        f.cap[d].apply(l.limit);
        f.capped[d] = true;
      }
      out.push_back(f);
    }
    return out;
  }

  static KeyedCosts refused(KeyedCosts::Refusal why, const Costs& costs) noexcept {
    KeyedCosts c(costs);
    c.refusal_ = why;
    return c;
  }
  template <class K>
  static AcquireResult too_long(const K& key) noexcept {
    return AcquireResult::failed(Status::invalid, Reason::key_too_long, static_cast<double>(detail::key_bytes(key)));
  }

  std::uint32_t tier_index(const Key& key) const {
    if (!options_.tier_of) return 0;
    const std::size_t t = options_.tier_of(key);
    if (t >= options_.tiers.size())
      throw std::out_of_range("SharedLimitSet: tier_of returned " + std::to_string(t) + "; there are " +
                              std::to_string(options_.tiers.size()) + " tiers");
    return static_cast<std::uint32_t>(t);
  }

  // With the lock held: the key's slot, created if new; null at the cap
  // (under OverflowPolicy::reject). `now` of -fine_max: read the clock if needed.
  template <class K>
  [[gnu::always_inline]] detail::KeySlot* find_or_insert(std::size_t h, const K& key, fine_t now) {
    if (detail::KeySlot* k = find(h, key)) [[likely]]
      return k;
    return insert(h, key, now);
  }

  // The key is new: evicts a little, then inserts it (or refuses it at the cap).
  template <class K>
  [[gnu::noinline]] detail::KeySlot* insert(std::size_t h, const K& key, fine_t now) {
    if (now == -detail::fine_max) now = rel(clock_.now());
    sweep_locked(now, options_.sweep_per_insert);
    if (count_ >= options_.max_keys && sweep_locked(now, 16) == 0)
      return overflow_;  // null under OverflowPolicy::reject
    Key k(key);
    const std::uint32_t tier = tier_index(k);
    detail::KeySlot& slot = core_.new_slot(tier, now);
    Key* stored = ::new (core_.key_storage(slot)) Key(std::move(k));
    try {
      table_.insert(h, slot.id, count_, [this](std::uint32_t i) { return Hash{}(key_at(i)); });
    } catch (...) {
      stored->~Key();
      core_.free_slot(slot);
      throw;
    }
    ++count_;
    return &slot;
  }

  // Examines up to `n` records from the cursor; evicts the fresh keys.
  std::size_t sweep_locked(fine_t now, std::size_t n) {
    std::size_t evicted = 0;
    const std::uint32_t made = core_.slot_count();
    for (std::size_t i = 0; i < n && count_ != 0; ++i) {
      if (cursor_ >= made) cursor_ = 0;
      detail::KeySlot& k = core_.slot(cursor_++);
      if (!k.in_use || &k == overflow_ || !core_.fresh(k, now)) continue;
      const Key& key = key_at(k.id);
      table_.erase(Hash{}(key), k.id);
      key.~Key();
      core_.free_slot(k);
      --count_;
      ++evicted;
    }
    return evicted;
  }

 public:
  ~SharedLimitSet() {
    for (std::uint32_t id = 0; id < core_.slot_count(); ++id) {
      detail::KeySlot& k = core_.slot(id);
      if (k.in_use && &k != overflow_) key_at(id).~Key();
    }
  }

 private:
  detail::DimensionNames dims_;
  Options options_;
  detail::KeyTable table_;  // key -> record id
  std::size_t count_ = 0;   // keys held
  std::uint32_t cursor_ = 0;
  detail::KeySlot* overflow_ = nullptr;
};

}  // namespace tollgate
