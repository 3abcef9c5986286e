#pragma once
// PosHeap: a binary min-heap of pointers whose elements know their position
// (`heap_pos`), so that any element can be removed or re-placed in O(log n).

#include <cstddef>
#include <utility>
#include <vector>

namespace tollgate::detail {

inline constexpr std::size_t not_in_heap = ~std::size_t{0};

template <class T, class Less>
class PosHeap {
 public:
  explicit PosHeap(Less less = Less{}) : less_(std::move(less)) {}

  bool empty() const noexcept { return v_.empty(); }
  std::size_t size() const noexcept { return v_.size(); }
  T* top() const noexcept { return v_.front(); }
  T* operator[](std::size_t i) const noexcept { return v_[i]; }

  /// Adds `x` (not in any heap). Allocates when the heap grows; running out
  /// of memory there terminates (the callers are noexcept).
  void push(T& x) noexcept {
    v_.push_back(&x);
    up(v_.size() - 1);
  }
  /// Removes `x` (in this heap).
  void erase(T& x) noexcept {
    const std::size_t i = x.heap_pos;
    x.heap_pos = not_in_heap;
    T* last = v_.back();
    v_.pop_back();
    if (last == &x) return;
    v_[i] = last;
    last->heap_pos = i;
    fix(*last);
  }
  /// Re-places `x` after its key changed.
  void fix(T& x) noexcept {
    up(x.heap_pos);
    down(x.heap_pos);
  }

 private:
  void up(std::size_t i) noexcept {
    T* x = v_[i];
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (!less_(*x, *v_[parent])) break;
      place(i, v_[parent]);
      i = parent;
    }
    place(i, x);
  }
  void down(std::size_t i) noexcept {
    T* x = v_[i];
    for (;;) {
      std::size_t c = 2 * i + 1;
      if (c >= v_.size()) break;
      if (c + 1 < v_.size() && less_(*v_[c + 1], *v_[c])) ++c;
      if (!less_(*v_[c], *x)) break;
      place(i, v_[c]);
      i = c;
    }
    place(i, x);
  }
  void place(std::size_t i, T* x) noexcept {
    v_[i] = x;
    x->heap_pos = i;
  }

  std::vector<T*> v_;
  Less less_;
};

}  // namespace tollgate::detail
