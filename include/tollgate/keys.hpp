#pragma once
// What the keyed containers (BucketRegistry, SharedLimitSet) share: the
// transparent string hash and the policy at the key cap.

#include <cstddef>
#include <functional>
#include <string_view>

namespace tollgate {

/// A transparent hash for string keys: a `std::string_view` or `const char*`
/// finds a `std::string` key without allocating.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

/// What a BucketRegistry or SharedLimitSet does with a new key once it holds `max_keys` keys
/// (after trying to evict fresh keys). Existing keys are never affected.
enum class OverflowPolicy {
  shared_bucket,  ///< new keys share one overflow bucket (`overflow_limit`)
  reject,         ///< new keys are refused: `Status::rejected`, or a null handle
};

}  // namespace tollgate
