#pragma once
// Reservation<Bucket>: a cost taken now for an instant that may lie in the
// future, for callers that schedule their own work (x/time/rate's Reserve).

#include <atomic>
#include <utility>

#include "detail/waiting_bucket.hpp"
#include "result.hpp"

namespace tollgate {

/// What `bucket.reserve(cost, max_wait)` returns: the cost is taken (in FIFO
/// order with every waiter) for the instant `time_to_act()`, without waiting
/// for it; the caller acts at that instant, on its own schedule.
///
///     auto r = bucket.reserve(5);
///     if (!r) return refuse(r.result());        // never, invalid, or not_now past max_wait
///     timer.expires_at(r.time_to_act());       // act then, not before
///
/// `cancel()` before `time_to_act()` gives the cost back exactly (later
/// waiters move up, as if the reservation had never been made); at or after
/// it, nothing is given back: the tokens are spent. Destroying a reservation
/// keeps it (it does not cancel). `time_to_act()` is fixed when the
/// reservation is made; a later `set_limit`, `pause_*`, `charge` or
/// `limit_remaining` can move the real grant later, or end the reservation
/// (`done()` then tells, and `result()` says how). A reservation that must
/// wait costs one allocation; one granted at once costs none. Move-only; the
/// bucket must outlive every `cancel()` call (destroying a reservation after
/// its bucket is fine).
template <class Bucket>
class [[nodiscard]] Reservation {
 public:
  using time_point = typename detail::waiting_base_t<Bucket>::time_point;

  Reservation(Reservation&& o) noexcept
      : bucket_(std::exchange(o.bucket_, nullptr)),
        node_(std::exchange(o.node_, nullptr)),
        result_(o.result_),
        time_to_act_(o.time_to_act_) {}
  Reservation& operator=(Reservation&& o) noexcept {
    if (this != &o) {
      release(std::exchange(node_, std::exchange(o.node_, nullptr)));
      bucket_ = std::exchange(o.bucket_, nullptr);
      result_ = o.result_;
      time_to_act_ = o.time_to_act_;
    }
    return *this;
  }
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;
  ~Reservation() { release(node_); }

  /// True when the cost was reserved.
  explicit operator bool() const noexcept { return result_.ok(); }
  /// `acquired` when reserved (then, once `done()`, how the reservation
  /// ended: `acquired`, `cancelled`, `timed_out`, `never`); otherwise the
  /// refusal, with its retry-after.
  AcquireResult result() const noexcept {
    if (node_ && node_->completed.load(std::memory_order_acquire)) return detail::waiter_result(*node_);
    return result_;
  }
  /// The instant the cost is granted at (now, for one granted at once).
  time_point time_to_act() const noexcept { return time_to_act_; }
  /// True once the reservation's instant has been reached (or it ended early).
  bool done() const noexcept { return !node_ || node_->completed.load(std::memory_order_acquire); }

  /// Gives the cost back if the reservation is still pending; returns true
  /// then. At or after its instant, or when it was refused, does nothing.
  bool cancel() noexcept {
    if (!node_ || !bucket_) return false;
    return bucket_->cancel(*node_);  // completes it `cancelled` when it was still pending
  }

 private:
  friend Bucket;
  using Waiting = detail::waiting_base_t<Bucket>;
  using cost_type = typename Waiting::cost_type;

  struct Node : Waiting::waiter_type {
    std::atomic<bool> completed{false};  // set by the bucket's completion
    std::atomic<bool> handoff{false};    // the second of completion and owner frees the node
  };

  Reservation(Waiting& bucket, const cost_type& cost, detail::fine_t max_wait) : bucket_(&bucket) {
    bool queued = false;
    detail::fine_t due = 0;
    result_ = bucket.take_or_queue(
        cost, max_wait,
        [&]() -> typename Waiting::waiter_type& {
          node_ = new Node;
          Waiting::core_type::set_cost(*node_, cost);
          node_->on_complete = &Reservation::complete_thunk;
          return *node_;
        },
        queued, &due);
    time_to_act_ = bucket.at(due);
    if (!queued) {  // granted at once or refused: no node needed
      delete std::exchange(node_, nullptr);
      if (!result_.ok()) time_to_act_ = time_point::max();
    }
  }

  static void complete_thunk(detail::Waiter* w) noexcept {
    auto* node = static_cast<Node*>(w);
    node->completed.store(true, std::memory_order_release);
    if (node->handoff.exchange(true, std::memory_order_acq_rel)) delete node;
  }
  static void release(Node* node) noexcept {
    if (node && node->handoff.exchange(true, std::memory_order_acq_rel)) delete node;
  }

  Waiting* bucket_ = nullptr;
  Node* node_ = nullptr;
  AcquireResult result_{};
  time_point time_to_act_{};
};

}  // namespace tollgate
