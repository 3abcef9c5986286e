#pragma once
// Waiter: the intrusive FIFO node every waiting front-end embeds.

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "../result.hpp"
#include "fine_time.hpp"

namespace tollgate::detail {

enum class WaiterPlace : std::uint8_t { none, pending, ready };

/// One queued acquisition. The awaiter (or blocking-wait frame) *is* the node,
/// so waiting allocates nothing. All fields but `on_complete` are guarded by the
/// owning bucket's lock. `on_complete` runs outside every bucket lock, once.
/// `interval` and `deadline` are set when the node is queued.
struct Waiter {
  Waiter* prev = nullptr;
  Waiter* next = nullptr;
  double cost = 0;
  fine_t interval;  // cost in fine time at the current rate
  fine_t deadline;  // latest acceptable completion (fine, bucket-relative)
  fine_t queued_at = 0;  // when it was queued (fine, bucket-relative): a listener's `waited`
  WaiterPlace place = WaiterPlace::none;
  Status outcome = Status::acquired;
  Reason reason = Reason::none;
  std::uint8_t dimension = no_dimension;  // the dimension a failure concerns (limit sets)
  void (*on_complete)(Waiter*) noexcept = nullptr;

  void complete() noexcept { on_complete(this); }
};

/// A doubly linked FIFO of Waiters. Does not own its nodes.
class WaiterList {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  Waiter* front() const noexcept { return head_; }
  Waiter* back() const noexcept { return tail_; }
  std::size_t size() const noexcept { return size_; }

  void push_back(Waiter& w) noexcept {
    w.next = nullptr;
    w.prev = tail_;
    if (tail_) tail_->next = &w;
    else head_ = &w;
    tail_ = &w;
    ++size_;
  }

  void remove(Waiter& w) noexcept {
    if (w.prev) w.prev->next = w.next;
    else head_ = w.next;
    if (w.next) w.next->prev = w.prev;
    else tail_ = w.prev;
    w.prev = w.next = nullptr;
    --size_;
  }

  Waiter* pop_front() noexcept {
    Waiter* w = head_;
    if (w) remove(*w);
    return w;
  }

  /// Moves every node of `other` to the back of this list, in order.
  void splice_back(WaiterList& other) noexcept {
    if (other.empty()) return;
    if (tail_) {
      tail_->next = other.head_;
      other.head_->prev = tail_;
    } else {
      head_ = other.head_;
    }
    tail_ = other.tail_;
    size_ += other.size_;
    other.head_ = other.tail_ = nullptr;
    other.size_ = 0;
  }

 private:
  Waiter* head_ = nullptr;
  Waiter* tail_ = nullptr;
  std::size_t size_ = 0;
};

/// What a completed waiter got.
inline AcquireResult waiter_result(const Waiter& w) noexcept {
  if (w.outcome == Status::acquired) return AcquireResult::acquired();
  return AcquireResult::failed(w.outcome, w.reason, w.cost, w.dimension);
}

/// What a core's `admit` did with a request.
struct Admission {
  AcquireResult result;  // acquired / not_now / never / invalid, or ...
  bool queued = false;   // ... true: the waiter was queued; result is unused
  fine_t due = 0;        // when queued: the instant it is due, as of now
};

/// What a core's `remove` found.
enum class Removal {
  removed,     // it was queued; its cost is back in the bucket (or refunded)
  granted,     // it was already granted; the timer side will complete it
  not_queued,  // it was never queued, or already completed
};

/// A core's waiters: `pending` (queued, not yet due, FIFO), `ready` (granted,
/// not yet completed) and `finished` (finished by the core on its own: a
/// re-timing pushed them past their deadline). The lock holder moves `ready`
/// and `finished` out with `take_ready` and completes them after unlocking.
struct WaiterQueue {
  WaiterList pending;
  WaiterList ready;
  WaiterList finished;

  bool idle() const noexcept { return pending.empty() && ready.empty() && finished.empty(); }
  /// True when some waiter is granted or finished but not yet completed.
  bool has_done() const noexcept { return !ready.empty() || !finished.empty(); }

  void enqueue(Waiter& w) noexcept {
    w.place = WaiterPlace::pending;
    pending.push_back(w);
  }
  /// A pending waiter is granted.
  void grant(Waiter& w) noexcept {
    pending.remove(w);
    w.place = WaiterPlace::ready;
    w.outcome = Status::acquired;
    ready.push_back(w);
  }
  /// A pending waiter leaves the queue finished with `s`, appended to `out`.
  static void finish(WaiterList& from, Waiter& w, Status s, Reason r, WaiterList& out) noexcept {
    from.remove(w);
    w.place = WaiterPlace::none;
    w.outcome = s;
    w.reason = r;
    out.push_back(w);
  }

  /// Takes `w` out: a pending one through `on_pending(w)` (the core gives its
  /// cost back), a granted one through `on_abandon(w)` only when `abandon`.
  template <class OnPending, class OnAbandon>
  Removal remove(Waiter& w, bool abandon, OnPending&& on_pending, OnAbandon&& on_abandon) noexcept {
    switch (w.place) {
      case WaiterPlace::pending:
        pending.remove(w);
        w.place = WaiterPlace::none;
        on_pending(w);
        return Removal::removed;
      case WaiterPlace::ready:
        if (!abandon) return Removal::granted;
        ready.remove(w);
        w.place = WaiterPlace::none;
        on_abandon(w);
        return Removal::removed;
      case WaiterPlace::none:
        break;
    }
    return Removal::not_queued;
  }

  /// Moves the granted waiters, then those the core finished, to `out`.
  void take_ready(WaiterList& out) noexcept {
    for (Waiter* w = ready.front(); w; w = w->next) w->place = WaiterPlace::none;
    out.splice_back(ready);
    out.splice_back(finished);
  }

  /// Teardown: pending waiters finish `cancelled`, granted ones keep
  /// `acquired`; all are appended to `out`.
  void cancel_all(WaiterList& out) noexcept {
    for (WaiterList* l : {&pending, &ready}) {
      while (Waiter* w = l->pop_front()) {
        if (w->place == WaiterPlace::pending) {
          w->outcome = Status::cancelled;
          w->reason = Reason::bucket_destroyed;
        }
        w->place = WaiterPlace::none;
        out.push_back(*w);
      }
    }
    out.splice_back(finished);
  }
};

/// Completes every node of `list` (outside any lock), in FIFO order.
///
/// A completion may resume a coroutine that, before it suspends again, makes
/// more waiters due (it releases a permit, refunds, starts another acquire),
/// whose completion would resume the next coroutine inside the first, and so
/// on: a million waiters would nest a million frames deep. So completions
/// never nest: while one thread is completing, the lists it meets again are
/// appended to the one it is running, and the outermost call runs them all in
/// a loop. A coroutine resumed from here therefore sees the waiters it made
/// due resume after it suspends or returns, not inside its call.
inline void complete_all(WaiterList& list) noexcept {
  thread_local WaiterList* running = nullptr;
  if (running) {
    running->splice_back(list);
    return;
  }
  WaiterList mine;
  mine.splice_back(list);
  running = &mine;
  while (Waiter* w = mine.pop_front()) w->complete();
  running = nullptr;
}

}  // namespace tollgate::detail
