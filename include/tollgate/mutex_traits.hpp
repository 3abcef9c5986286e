#pragma once
// mutex_traits<Mutex>: the one place where a bucket asks what its lock can do
// beyond lock/unlock. Specialise it for a mutex of your own.

namespace tollgate {

/// What a bucket may ask of its `Mutex` beyond `lock`, `try_lock` and
/// `unlock`. The primary template describes an ordinary mutex; `NullMutex`
/// and `BiasedMutex` specialise it, and so may a user's own mutex type.
template <class Mutex>
struct mutex_traits {
  /// True when the mutex does not exclude anything (one thread only): the
  /// awaitable then hands a waiter over with a plain load and store.
  static constexpr bool single_threaded = false;

  /// An optional way in that needs no lock (an owner's bias): returns true
  /// when the caller may touch the guarded state, and must then call
  /// `leave_fast` with nothing in between that can block or re-enter. The
  /// primary template has none; a constant false costs nothing.
  static constexpr bool try_enter_fast(Mutex&) noexcept { return false; }
  static constexpr void leave_fast(Mutex&) noexcept {}

  /// True when a TokenBucket guarded by this mutex may admit without taking
  /// it while nobody waits (one compare-and-swap on its state, where the
  /// target has a 16-byte one): what a mutex shared by threads wants. False
  /// for a mutex that is already free on its owner's path, and for a
  /// specialisation that does not say (it was written for its own way in).
  static constexpr bool lock_free_admission = true;

  /// Called by the guarded object's destructor, when by contract no other
  /// thread uses it any more, before it takes the lock a last time.
  static constexpr void before_teardown(Mutex&) noexcept {}
};

namespace detail {
/// `mutex_traits<M>::lock_free_admission`; false where a specialisation
/// does not say (it keeps the way in it was written for).
template <class M>
constexpr bool lock_free_admission_v() noexcept {
  if constexpr (requires { mutex_traits<M>::lock_free_admission; })
    return bool(mutex_traits<M>::lock_free_admission);
  else
    return false;
}
}  // namespace detail

}  // namespace tollgate
