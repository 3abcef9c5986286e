#pragma once
// KeyIndex: a registry shard's keyed entries: a dense vector (cheap to sweep)
// indexed by an open-addressing table of 64-bit slots (32 bits of hash and
// the entry's index + 1; 0 is empty), with backward-shift deletion.

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace tollgate::detail {

/// A key's size in bytes, for a registry's `max_key_bytes`: a string's
/// length; for other keys, `size() * sizeof(value_type)` or `sizeof(Key)`.
template <class K>
std::size_t key_bytes(const K& key) noexcept {
  if constexpr (std::is_convertible_v<const K&, std::string_view>) {
    return std::string_view(key).size();
  } else if constexpr (requires { key.size(); typename K::value_type; }) {
    return key.size() * sizeof(typename K::value_type);
  } else {
    return sizeof(K);
  }
}

template <class Entry, class Hash, class KeyEqual>
class KeyIndex {
 public:
  std::vector<Entry> entries;  // dense; erasing moves the last entry into the hole

  /// The entry whose key equals `key` (hash `h`), or null.
  template <class K>
  Entry* find(std::size_t h, const K& key) noexcept {
    if (slots_.empty()) return nullptr;
    const std::size_t mask = slots_.size() - 1;
    const std::uint64_t tag = std::uint64_t{hash32(h)} << 32;
    for (std::size_t i = hash32(h) & mask;; i = (i + 1) & mask) {
      const std::uint64_t slot = slots_[i];
      if (slot == 0) return nullptr;
      if ((slot & 0xffffffff00000000u) == tag) {
        Entry& e = entries[(slot & 0xffffffffu) - 1];
        if (KeyEqual{}(e.key, key)) return &e;
      }
    }
  }

  /// Appends `e` (whose key hashes to `h` and is not present); returns it.
  Entry& insert(std::size_t h, Entry e) {
    if ((entries.size() + 1) * 2 > slots_.size()) grow();
    entries.push_back(std::move(e));
    place(h, entries.size() - 1);
    return entries.back();
  }

  /// Removes entry `index`; the last entry moves into its place.
  void erase(std::size_t index) noexcept {
    const std::size_t mask = slots_.size() - 1;
    // 1. Empty its slot, shifting later members of the probe run back.
    std::size_t i = slot_of(Hash{}(entries[index].key), index);
    slots_[i] = 0;
    for (std::size_t j = (i + 1) & mask; slots_[j] != 0; j = (j + 1) & mask) {
      const std::size_t home = (slots_[j] >> 32) & mask;
      if (((j - home) & mask) >= ((j - i) & mask)) {
        slots_[i] = slots_[j];
        slots_[j] = 0;
        i = j;
      }
    }
    // 2. Move the last entry into the hole, and repoint its slot.
    const std::size_t last = entries.size() - 1;
    if (index != last) {
      std::uint64_t& moved = slots_[slot_of(Hash{}(entries[last].key), last)];
      moved = (moved & 0xffffffff00000000u) | (index + 1);
      entries[index] = std::move(entries[last]);
    }
    entries.pop_back();
  }

 private:
  static std::uint32_t hash32(std::size_t h) noexcept { return static_cast<std::uint32_t>(h); }

  void place(std::size_t h, std::size_t index) noexcept {
    const std::size_t mask = slots_.size() - 1;
    std::size_t i = hash32(h) & mask;
    while (slots_[i] != 0) i = (i + 1) & mask;
    slots_[i] = (std::uint64_t{hash32(h)} << 32) | (index + 1);
  }

  void grow() {
    std::vector<std::uint64_t> slots(slots_.empty() ? 16 : slots_.size() * 2, 0);
    slots_.swap(slots);
    for (std::size_t i = 0; i < entries.size(); ++i) place(Hash{}(entries[i].key), i);
  }

  // The slot holding `index`, searched from the home of hash `h`.
  std::size_t slot_of(std::size_t h, std::size_t index) const noexcept {
    const std::size_t mask = slots_.size() - 1;
    std::size_t i = hash32(h) & mask;
    while ((slots_[i] & 0xffffffffu) != index + 1) i = (i + 1) & mask;
    return i;
  }

  std::vector<std::uint64_t> slots_;
};

}  // namespace tollgate::detail
