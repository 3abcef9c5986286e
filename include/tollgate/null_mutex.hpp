#pragma once
// NullMutex: a Mutex that does nothing, for buckets used from one thread only.

#include "mutex_traits.hpp"

namespace tollgate {

/// A Mutex policy that does no locking. Use it for a bucket that is only ever
/// touched from one thread (a single-threaded event loop): `TokenBucket<Clock,
/// NullMutex>` then costs no atomic instruction at all. Using such a bucket from
/// two threads at once is a data race.
struct NullMutex {
  constexpr void lock() noexcept {}
  constexpr bool try_lock() noexcept { return true; }
  constexpr void unlock() noexcept {}
};

/// Nothing can complete a waiter concurrently under a NullMutex.
template <>
struct mutex_traits<NullMutex> {
  static constexpr bool single_threaded = true;
  static constexpr bool lock_free_admission = false;
  static constexpr bool try_enter_fast(NullMutex&) noexcept { return false; }
  static constexpr void leave_fast(NullMutex&) noexcept {}
  static constexpr void before_teardown(NullMutex&) noexcept {}
};

}  // namespace tollgate
