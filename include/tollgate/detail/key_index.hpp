#pragma once
// KeyTable: an open-addressing index from keys (held elsewhere) to 32-bit
// ids; KeyIndex: a registry shard's dense entries indexed by one.

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

/// An open-addressing table of 64-bit slots (32 bits of hash and an id + 1;
/// 0 is empty), linear probing, backward-shift deletion, at most half full.
/// It holds ids only: the caller keeps the keys and says, through `key_of(id)`,
/// which key an id has (so a key is compared where it is stored).
class KeyTable {
 public:
  /// The id whose key equals `key` (hash `h`), or -1.
  template <class K, class KeyOf, class Eq>
  std::int64_t find(std::size_t h, const K& key, KeyOf&& key_of, Eq&& eq) const noexcept {
    if (slots_.empty()) return -1;
    const std::size_t mask = slots_.size() - 1;
    const std::uint64_t tag = std::uint64_t{hash32(h)} << 32;
    for (std::size_t i = hash32(h) & mask;; i = (i + 1) & mask) {
      const std::uint64_t slot = slots_[i];
      if (slot == 0) return -1;
      if ((slot & 0xffffffff00000000u) == tag) {
        const std::uint32_t id = static_cast<std::uint32_t>(slot) - 1;
        if (eq(key_of(id), key)) return id;
      }
    }
  }

  /// Adds `id` under hash `h`; `count` ids are held, and `hash_of(id)`
  /// rehashes them when the table grows.
  template <class HashOf>
  void insert(std::size_t h, std::uint32_t id, std::size_t count, HashOf&& hash_of) {
    if ((count + 1) * 2 > slots_.size()) grow(hash_of);
    place(h, id);
  }

  /// Removes `id` (under hash `h`).
  void erase(std::size_t h, std::uint32_t id) noexcept {
    const std::size_t mask = slots_.size() - 1;
    std::size_t i = slot_of(h, id);
    slots_[i] = 0;
    for (std::size_t j = (i + 1) & mask; slots_[j] != 0; j = (j + 1) & mask) {
      const std::size_t home = (slots_[j] >> 32) & mask;
      if (((j - home) & mask) >= ((j - i) & mask)) {
        slots_[i] = slots_[j];
        slots_[j] = 0;
        i = j;
      }
    }
  }

  /// The entry of `from` (under hash `h`) now names `to`.
  void repoint(std::size_t h, std::uint32_t from, std::uint32_t to) noexcept {
    std::uint64_t& slot = slots_[slot_of(h, from)];
    slot = (slot & 0xffffffff00000000u) | (std::uint64_t{to} + 1);
  }

  std::size_t capacity() const noexcept { return slots_.size(); }

 private:
  static std::uint32_t hash32(std::size_t h) noexcept { return static_cast<std::uint32_t>(h); }

  void place(std::size_t h, std::uint32_t id) noexcept {
    const std::size_t mask = slots_.size() - 1;
    std::size_t i = hash32(h) & mask;
    while (slots_[i] != 0) i = (i + 1) & mask;
    slots_[i] = (std::uint64_t{hash32(h)} << 32) | (std::uint64_t{id} + 1);
  }

  template <class HashOf>
  void grow(HashOf& hash_of) {
    std::vector<std::uint64_t> old(slots_.empty() ? 16 : slots_.size() * 2, 0);
    slots_.swap(old);
    for (std::uint64_t slot : old)
      if (slot != 0) {
        const auto id = static_cast<std::uint32_t>(slot) - 1;
        place(hash_of(id), id);
      }
  }

  // The slot holding `id`, searched from the home of hash `h`.
  std::size_t slot_of(std::size_t h, std::uint32_t id) const noexcept {
    const std::size_t mask = slots_.size() - 1;
    std::size_t i = hash32(h) & mask;
    while (static_cast<std::uint32_t>(slots_[i]) != id + 1) i = (i + 1) & mask;
    return i;
  }

  std::vector<std::uint64_t> slots_;
};

/// A registry shard's keyed entries: a dense vector (cheap to sweep) indexed
/// by a KeyTable (ids are positions in the vector).
template <class Entry, class Hash, class KeyEqual>
class KeyIndex {
 public:
  std::vector<Entry> entries;  // dense; erasing moves the last entry into the hole

  /// The entry whose key equals `key` (hash `h`), or null.
  template <class K>
  Entry* find(std::size_t h, const K& key) noexcept {
    const std::int64_t id = table_.find(h, key, [&](std::uint32_t i) -> const auto& { return entries[i].key; }, KeyEqual{});
    return id < 0 ? nullptr : &entries[static_cast<std::size_t>(id)];
  }

  /// Appends `e` (whose key hashes to `h` and is not present); returns it.
  Entry& insert(std::size_t h, Entry e) {
    const auto id = static_cast<std::uint32_t>(entries.size());
    entries.push_back(std::move(e));
    try {
      table_.insert(h, id, id, [&](std::uint32_t i) { return Hash{}(entries[i].key); });
    } catch (...) {
      entries.pop_back();
      throw;
    }
    return entries.back();
  }

  /// Removes entry `index`; the last entry moves into its place.
  void erase(std::size_t index) noexcept {
    const auto i = static_cast<std::uint32_t>(index);
    table_.erase(Hash{}(entries[index].key), i);
    const auto last = static_cast<std::uint32_t>(entries.size() - 1);
    if (i != last) {
      table_.repoint(Hash{}(entries[last].key), last, i);
      entries[index] = std::move(entries[last]);
    }
    entries.pop_back();
  }

 private:
  KeyTable table_;
};

}  // namespace tollgate::detail
