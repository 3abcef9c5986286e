#pragma once
// KeyRecords: the per-key records of a SharedLimitSet or KeyedLimitSets
// shard. A record is [the key][KeySlot][one paid-up-to instant per
// dimension], contiguous and cache-line aligned (a multiple of 64 bytes past
// 64), so a lookup that compared the key has the key's state in the same
// line or the next; records live in chunks and never move (KeyedCosts and
// waiters point at their KeySlot), and freed ones are reused.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>

#include "../keyed_costs.hpp"
#include "fine_time.hpp"

namespace tollgate::detail {

class KeyRecords {
 public:
  static constexpr std::uint32_t none = ~std::uint32_t{0};

  /// Records for `dims` dimensions and a key of `key_size` bytes aligned to `key_align`.
  KeyRecords(std::size_t dims, std::size_t key_size, std::size_t key_align) noexcept {
    (void)key_align;  // the record is 64-byte aligned: any key alignment up to 64 holds
    slot_at_ = round_up(key_size, alignof(KeySlot) > alignof(fine_t) ? alignof(KeySlot) : alignof(fine_t));
    starts_at_ = round_up(slot_at_ + sizeof(KeySlot), alignof(fine_t));
    const std::size_t size = starts_at_ + dims * sizeof(fine_t);
    stride_ = size <= 64 ? round_up(size, alignof(fine_t)) : round_up(size, 64);
  }
  KeyRecords(const KeyRecords&) = delete;
  KeyRecords& operator=(const KeyRecords&) = delete;

  /// A record not in use (a freed one, or a new one), now marked in use.
  /// Throws std::bad_alloc.
  KeySlot& make() {
    std::uint32_t id = free_;
    if (id != none) {
      free_ = at(id).next_free;
    } else {
      if (count_ == chunks_.size() * kChunk) {
        bases_.reserve(chunks_.size() + 1);
        chunks_.push_back(std::make_unique<std::byte[]>(kChunk * stride_ + 64));
        bases_.push_back(reinterpret_cast<std::byte*>(round_up(reinterpret_cast<std::uintptr_t>(chunks_.back().get()), 64)));
      }
      id = count_++;
      ::new (static_cast<void*>(address(id) + slot_at_)) KeySlot;
      at(id).id = id;
    }
    KeySlot& k = at(id);
    k.in_use = true;
    return k;
  }
  /// Gives a record back (its key already destroyed).
  void release(KeySlot& k) noexcept {
    k.in_use = false;
    k.next_free = free_;
    free_ = k.id;
  }

  KeySlot& at(std::uint32_t id) noexcept { return *std::launder(reinterpret_cast<KeySlot*>(address(id) + slot_at_)); }
  /// Records made so far (in use or free): ids are 0 .. count() - 1.
  std::uint32_t count() const noexcept { return count_; }
  fine_t* starts(const KeySlot& k) const noexcept {
    return reinterpret_cast<fine_t*>(reinterpret_cast<std::uintptr_t>(&k) - slot_at_ + starts_at_);
  }
  void* key(KeySlot& k) const noexcept { return reinterpret_cast<std::byte*>(&k) - slot_at_; }
  /// Bytes per record.
  std::size_t stride() const noexcept { return stride_; }

 private:
  static constexpr std::uint32_t kChunk = 1024;

  static std::size_t round_up(std::size_t n, std::size_t a) noexcept { return (n + a - 1) / a * a; }
  // Record `id`: its chunk's storage, aligned up to 64 bytes (each chunk has 64 to spare).
  std::byte* address(std::uint32_t id) const noexcept { return bases_[id / kChunk] + (id % kChunk) * stride_; }

  std::vector<std::unique_ptr<std::byte[]>> chunks_;
  std::vector<std::byte*> bases_;  // each chunk's storage, aligned up to 64 bytes
  std::size_t slot_at_ = 0, starts_at_ = 0, stride_ = 0;
  std::uint32_t count_ = 0;
  std::uint32_t free_ = none;
};

}  // namespace tollgate::detail
