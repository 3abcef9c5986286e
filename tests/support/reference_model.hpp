#pragma once
// The reference model the randomized tests and the fuzzer compare buckets
// against: a plain token count in integers, a FIFO queue, nothing shared with
// the library's representation.

#include <algorithm>
#include <cstdint>
#include <deque>
#include <ostream>
#include <utility>
#include <vector>

#include <tollgate/result.hpp>

namespace tgtest {

struct Event {
  int id;
  std::int64_t t_ns;
  std::int64_t cost;
  tollgate::Status status;
  friend bool operator==(const Event&, const Event&) = default;
  friend std::ostream& operator<<(std::ostream& os, const Event& e) {
    return os << "{id " << e.id << ", t " << e.t_ns << ", cost " << e.cost << ", "
              << tollgate::to_string(e.status) << "}";
  }
};

// The reference: a plain token count in nano-units (1 unit = 10^9 nano-units,
// so a rate of r units/s adds exactly r nano-units per ns), a FIFO queue, and
// waiters served at the first whole nanosecond their cost is there.
class Model {
 public:
  Model(std::int64_t capacity, std::int64_t rate) : cap_(capacity * kNano), rate_(rate), level_(cap_) {}

  void advance_to(std::int64_t t, std::vector<Event>& out) {
    while (!queue_.empty()) {
      auto [id, cost] = queue_.front();
      const std::int64_t need = cost * kNano - level_;
      const std::int64_t dt = need <= 0 ? 0 : (need + rate_ - 1) / rate_;
      const std::int64_t at = std::max(now_ + dt, paused_until_);  // nobody before a pause ends
      if (at > t) break;
      refill(at - now_);
      level_ -= cost * kNano;
      queue_.pop_front();
      out.push_back({id, now_, cost, tollgate::Status::acquired});
    }
    refill(t - now_);
  }
  bool try_acquire(std::int64_t cost) {
    if (now_ < paused_until_ || !queue_.empty() || level_ < cost * kNano) return false;
    level_ -= cost * kNano;
    return true;
  }
  void enqueue(int id, std::int64_t cost) { queue_.push_back({id, cost}); }
  // Takes `cost` even into debt (a negative level), which later waiters pay;
  // the debt never goes beyond one capacity (what is asked beyond is not taken).
  void charge(std::int64_t cost) { level_ = std::max(level_ - cost * kNano, std::min(level_, -cap_)); }
  // The upstream says `remaining` units are left: the level drops to it, never rises.
  void limit_remaining(std::int64_t remaining) { level_ = std::min(level_, remaining * kNano); }
  // Admits nothing before `t` (ns); never shortens a pause. Tokens keep
  // accruing, capped at capacity as always.
  void pause_until(std::int64_t t) { paused_until_ = std::max(paused_until_, t); }
  // Gives back `cost` units, never above capacity; returns nano-units credited.
  std::int64_t refund(std::int64_t cost) {
    const std::int64_t credited = std::min(cost * kNano, cap_ - level_);
    level_ += credited;
    return credited;
  }
  bool cancel(int id) {
    auto it = std::find_if(queue_.begin(), queue_.end(), [&](auto& p) { return p.first == id; });
    if (it == queue_.end()) return false;
    queue_.erase(it);
    return true;
  }
  bool queued(int id) const {
    return std::any_of(queue_.begin(), queue_.end(), [&](auto& p) { return p.first == id; });
  }
  std::int64_t now() const { return now_; }

 private:
  static constexpr std::int64_t kNano = 1'000'000'000;
  void refill(std::int64_t dt) {
    now_ += dt;
    level_ = std::min(cap_, level_ + rate_ * dt);
  }
  std::int64_t cap_, rate_, level_, now_ = 0;
  std::int64_t paused_until_ = 0;
  std::deque<std::pair<int, std::int64_t>> queue_;
};


}  // namespace tgtest
