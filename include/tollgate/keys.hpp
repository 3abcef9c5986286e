#pragma once
// What the keyed containers (BucketRegistry, SharedLimitSet) share: the
// transparent string hash and the policy at the key cap.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string_view>

namespace tollgate {

/// A transparent hash for string keys: a `std::string_view` or `const char*`
/// finds a `std::string` key without allocating. Inline (no library call):
/// 8 bytes at a time, each mixed with a 64 x 64 -> 128-bit multiply (the
/// wyhash construction), so short keys such as API keys hash in a few cycles.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    constexpr std::uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull, k2 = 0x8ebc6af09c88c6e3ull;
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    std::size_t n = s.size();
    std::uint64_t h = k0 ^ (n * k2);
    while (n >= 16) {
      h = mix(load8(p) ^ k1, load8(p + 8) ^ h);
      p += 16;
      n -= 16;
    }
    std::uint64_t a = 0, b = 0;
    if (n >= 8) {
      a = load8(p);
      b = load8(p + n - 8);
    } else if (n >= 4) {
      a = load4(p);
      b = load4(p + n - 4);
    } else if (n > 0) {
      a = (std::uint64_t{p[0]} << 16) | (std::uint64_t{p[n / 2]} << 8) | p[n - 1];
    }
    return static_cast<std::size_t>(mix(a ^ k1 ^ n, b ^ h) ^ k2);
  }

 private:
  static std::uint64_t load8(const unsigned char* p) noexcept {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
  }
  static std::uint64_t load4(const unsigned char* p) noexcept {
    std::uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
  }
  static std::uint64_t mix(std::uint64_t a, std::uint64_t b) noexcept {
#if defined(__SIZEOF_INT128__)
    __extension__ const unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
    return static_cast<std::uint64_t>(r) ^ static_cast<std::uint64_t>(r >> 64);
#else  // MSVC: the 64 x 64 product's halves, portably
    const std::uint64_t lo = a * b;
    const std::uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = b & 0xffffffffu, b1 = b >> 32;
    const std::uint64_t mid = (a0 * b0 >> 32) + (a1 * b0 & 0xffffffffu) + a0 * b1;
    return lo ^ (a1 * b1 + (a1 * b0 >> 32) + (mid >> 32));
#endif
  }
};

/// What a BucketRegistry or SharedLimitSet does with a new key once it holds `max_keys` keys
/// (after trying to evict fresh keys). Existing keys are never affected.
enum class OverflowPolicy {
  shared_bucket,  ///< new keys share one overflow bucket (`overflow_limit`)
  reject,         ///< new keys are refused: `Status::rejected`, or a null handle
};

}  // namespace tollgate
