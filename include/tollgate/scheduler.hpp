#pragma once
// Scheduler: the injectable source of timed wake-ups that resumes waiters.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace tollgate {

/// A one-shot timer slot owned by its user (a bucket owns one). While armed it
/// sits in one scheduler's queue; when due, the scheduler disarms it and calls
/// `fire(context)` with no scheduler lock held.
template <class Clock>
struct TimerNode {
  using time_point = typename Clock::time_point;

  void (*fire)(void* context) noexcept = nullptr;
  void* context = nullptr;

  // Owned by the scheduler that armed it.
  time_point due{};
  std::uint64_t sequence = 0;
  std::size_t heap_index = npos;

  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();
  bool armed() const noexcept { return heap_index != npos; }
};

/// The interface a bucket uses to be woken at an instant of its clock.
///
/// `arm(node, t)` (re)arms `node` to fire at `t` (fire as soon as possible if
/// `t` has passed). It may be called with the bucket's lock held, so an
/// implementation must never call back into a bucket from `arm`.
/// `disarm(node)` removes it; on return the node's `fire` is not running and
/// will not run (unless disarm is called from inside that `fire`).
/// Timers with equal due instants fire in the order they were armed.
///
/// Implementations: `testing::ManualScheduler` (tests: fires on the thread
/// that advances the manual clock), `TimerThreadScheduler` (a background
/// thread), and the Asio adapter in `tollgate/asio.hpp`.
template <class Clock>
class Scheduler {
 public:
  using time_point = typename Clock::time_point;
  virtual void arm(TimerNode<Clock>& node, time_point due) = 0;
  virtual void disarm(TimerNode<Clock>& node) = 0;

 protected:
  Scheduler() = default;
  Scheduler(const Scheduler&) = default;
  Scheduler& operator=(const Scheduler&) = default;
  ~Scheduler() = default;
};

namespace detail {

/// A binary min-heap of armed TimerNodes ordered by (due, sequence). Each node
/// knows its index, so re-arming and disarming are O(log n) and allocate only
/// when the heap's vector grows.
template <class Clock>
class TimerHeap {
 public:
  using Node = TimerNode<Clock>;
  using time_point = typename Clock::time_point;

  TimerHeap() { heap_.reserve(64); }  // arming the first timers allocates nothing

  bool empty() const noexcept { return heap_.empty(); }
  std::size_t size() const noexcept { return heap_.size(); }
  Node* top() const noexcept { return heap_.empty() ? nullptr : heap_.front(); }

  void arm(Node& n, time_point due) {
    if (n.armed()) erase(n);
    n.due = due;
    n.sequence = next_sequence_++;
    n.heap_index = heap_.size();
    heap_.push_back(&n);
    sift_up(n.heap_index);
  }

  void erase(Node& n) noexcept {
    if (!n.armed()) return;
    const std::size_t i = n.heap_index;
    const std::size_t last = heap_.size() - 1;
    if (i != last) {
      swap_at(i, last);
    }
    heap_.pop_back();
    n.heap_index = Node::npos;
    if (i != last) {
      sift_down(i);
      sift_up(i);
    }
  }

  Node* pop() noexcept {
    Node* n = top();
    if (n) erase(*n);
    return n;
  }

 private:
  static bool less(const Node* a, const Node* b) noexcept {
    if (a->due != b->due) return a->due < b->due;
    return a->sequence < b->sequence;
  }
  void swap_at(std::size_t i, std::size_t j) noexcept {
    std::swap(heap_[i], heap_[j]);
    heap_[i]->heap_index = i;
    heap_[j]->heap_index = j;
  }
  void sift_up(std::size_t i) noexcept {
    while (i > 0) {
      std::size_t p = (i - 1) / 2;
      if (!less(heap_[i], heap_[p])) break;
      swap_at(i, p);
      i = p;
    }
  }
  void sift_down(std::size_t i) noexcept {
    for (;;) {
      std::size_t l = 2 * i + 1, r = l + 1, m = i;
      if (l < heap_.size() && less(heap_[l], heap_[m])) m = l;
      if (r < heap_.size() && less(heap_[r], heap_[m])) m = r;
      if (m == i) break;
      swap_at(i, m);
      i = m;
    }
  }

  std::vector<Node*> heap_;
  std::uint64_t next_sequence_ = 0;
};

}  // namespace detail
}  // namespace tollgate
