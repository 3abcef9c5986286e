#pragma once
// NullMutex: a Mutex that does nothing, for buckets used from one thread only.

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

}  // namespace tollgate
