#pragma once
// KeyedCosts: a cost vector charged to one key of a SharedLimitSet, holding
// the key's state in place while it exists.

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "costs.hpp"

namespace tollgate {

template <class Key, class Clock, class Mutex, class Hash, class KeyEqual>
class SharedLimitSet;

namespace detail {

class FairCore;

/// A key's state in a SharedLimitSet (its paid-up-to instants live beside
/// it, in the set). Never moves once made; `pins` counts the KeyedCosts
/// that refer to it, and a pinned key is never evicted.
struct KeySlot {
  std::atomic<std::uint32_t> pins{0};
  std::uint32_t id = 0;                      // its record's id
  std::uint32_t tier = 0;                    // index into the set's tiers
  std::uint32_t active = ~std::uint32_t{0};  // its queue's record, while it has waiters
  double finish = 0;                         // virtual finish tag of its latest queued request
  std::uint32_t next_free = ~std::uint32_t{0};  // while not in use: the next free record
  bool in_use = false;
};

}  // namespace detail

/// A cost vector (one value per dimension, as LimitSet's Costs) charged to
/// one key of a SharedLimitSet: what `SharedLimitSet::keyed(key, costs)`
/// returns, what its awaitables carry and what its Permit holds. While one
/// exists, the key's state is kept (not evicted), so settling a Permit
/// always charges or refunds the key that acquired.
///
/// A KeyedCosts made from plain Costs has no key: it is what
/// `Permit::settle` takes (the permit knows its key); acquiring with it is
/// refused `invalid` ("no key").
class KeyedCosts {
 public:
  KeyedCosts() = default;
  /// Plain costs, no key (for `Permit<KeyedCosts>::settle`).
  KeyedCosts(const Costs& costs) noexcept : costs_(costs) {}  // NOLINT: implicit on purpose
  KeyedCosts(std::initializer_list<double> costs) : costs_(costs) {}
  KeyedCosts(const KeyedCosts& o) noexcept : key_(o.key_), costs_(o.costs_), refusal_(o.refusal_) { pin(); }
  KeyedCosts(KeyedCosts&& o) noexcept
      : key_(std::exchange(o.key_, nullptr)), costs_(o.costs_), refusal_(o.refusal_) {}
  KeyedCosts& operator=(KeyedCosts o) noexcept {
    std::swap(key_, o.key_);
    costs_ = o.costs_;
    refusal_ = o.refusal_;
    return *this;
  }
  ~KeyedCosts() {
    if (key_) key_->pins.fetch_sub(1, std::memory_order_release);
  }

  const Costs& costs() const noexcept { return costs_; }
  std::size_t size() const noexcept { return costs_.size(); }
  double operator[](std::size_t i) const noexcept { return costs_[i]; }
  /// True when it refers to a key (it came from `SharedLimitSet::keyed`).
  bool has_key() const noexcept { return key_ != nullptr; }

  /// The same key with every cost zero (what `Permit::release` settles at).
  KeyedCosts zeroed() const noexcept {
    KeyedCosts z(*this);
    z.costs_ = Costs::zeros(costs_.size());
    return z;
  }

 private:
  template <class, class, class, class, class>
  friend class SharedLimitSet;
  friend class detail::FairCore;

  enum class Refusal : std::uint8_t { none, key_cap, key_too_long };

  KeyedCosts(detail::KeySlot* key, const Costs& costs) noexcept : key_(key), costs_(costs) { pin(); }
  void pin() noexcept {
    if (key_) key_->pins.fetch_add(1, std::memory_order_relaxed);
  }

  detail::KeySlot* key_ = nullptr;
  Costs costs_{};
  Refusal refusal_ = Refusal::none;
};

}  // namespace tollgate
