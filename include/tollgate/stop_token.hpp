#pragma once
// tollgate::stop_token, stop_source, stop_callback: the standard ones where
// the standard library has <stop_token> (libstdc++ 10+, MSVC, libc++ 17+ with
// it enabled), else a small implementation of the same interface (libc++
// before 17, as in Debian 12's libc++ 14). tollgate's waiting front-ends take
// `tollgate::stop_token`: with the standard library's, that *is*
// `std::stop_token`, so code written against `std::stop_token` works as is.
//
// The fallback keeps the standard's guarantees that tollgate relies on:
// `request_stop` runs every registered callback once, on the requesting
// thread; a callback registered after the request runs at once, in its
// constructor; destroying a `stop_callback` deregisters it, and waits if its
// callback is running on another thread (not if on this one). Define
// TOLLGATE_FORCE_STOP_TOKEN_FALLBACK to use the fallback everywhere (tests).

#if __has_include(<stop_token>) && !defined(TOLLGATE_FORCE_STOP_TOKEN_FALLBACK)
#include <stop_token>
#if defined(__cpp_lib_jthread)
#define TOLLGATE_STD_STOP_TOKEN 1
#endif
#endif

#if defined(TOLLGATE_STD_STOP_TOKEN)

namespace tollgate {
using std::nostopstate;
using std::nostopstate_t;
using std::stop_callback;
using std::stop_source;
using std::stop_token;
}  // namespace tollgate

#else

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>

namespace tollgate {

struct nostopstate_t {
  explicit nostopstate_t() = default;
};
inline constexpr nostopstate_t nostopstate{};

namespace detail {

// One registered callback: a node in the state's list.
struct StopNode {
  StopNode* prev = nullptr;
  StopNode* next = nullptr;
  void (*run)(StopNode*) noexcept = nullptr;
  std::atomic<bool> done{false};  // its callback has returned
  bool* removed_during_run = nullptr;  // set when it destroys itself from inside its callback
};

struct StopState {
  std::mutex m;
  std::atomic<bool> requested{false};
  StopNode* head = nullptr;
  StopNode* running = nullptr;  // the callback request_stop is running now
  std::thread::id runner{};

  bool request_stop() noexcept {
    std::unique_lock lock(m);
    if (requested.exchange(true, std::memory_order_acq_rel)) return false;
    runner = std::this_thread::get_id();
    while (StopNode* n = head) {
      head = n->next;
      if (head) head->prev = nullptr;
      n->prev = n->next = nullptr;
      running = n;
      bool removed = false;
      n->removed_during_run = &removed;
      lock.unlock();
      n->run(n);
      if (!removed) {
        n->removed_during_run = nullptr;
        n->done.store(true, std::memory_order_release);
      }
      lock.lock();
      running = nullptr;
    }
    return true;
  }

  // Adds `n` unless a stop was requested (then false: run it now).
  bool add(StopNode* n) noexcept {
    std::lock_guard lock(m);
    if (requested.load(std::memory_order_acquire)) return false;
    n->next = head;
    if (head) head->prev = n;
    head = n;
    return true;
  }

  void remove(StopNode* n) noexcept {
    std::unique_lock lock(m);
    if (n->prev || head == n) {  // still listed: never ran
      if (n->prev) n->prev->next = n->next;
      else head = n->next;
      if (n->next) n->next->prev = n->prev;
      return;
    }
    if (running == n && runner == std::this_thread::get_id()) {  // destroyed from inside its callback
      if (n->removed_during_run) *n->removed_during_run = true;
      return;
    }
    lock.unlock();
    while (!n->done.load(std::memory_order_acquire)) std::this_thread::yield();  // running elsewhere
  }
};

}  // namespace detail

class stop_source;

class stop_token {
 public:
  stop_token() noexcept = default;
  bool stop_requested() const noexcept { return state_ && state_->requested.load(std::memory_order_acquire); }
  bool stop_possible() const noexcept { return state_ != nullptr; }
  friend bool operator==(const stop_token& a, const stop_token& b) noexcept { return a.state_ == b.state_; }
  void swap(stop_token& o) noexcept { state_.swap(o.state_); }

 private:
  friend class stop_source;
  template <class>
  friend class stop_callback;
  explicit stop_token(std::shared_ptr<detail::StopState> s) noexcept : state_(std::move(s)) {}
  std::shared_ptr<detail::StopState> state_;
};

class stop_source {
 public:
  stop_source() : state_(std::make_shared<detail::StopState>()) {}
  explicit stop_source(nostopstate_t) noexcept {}
  stop_token get_token() const noexcept { return stop_token(state_); }
  bool request_stop() noexcept { return state_ && state_->request_stop(); }
  bool stop_requested() const noexcept { return state_ && state_->requested.load(std::memory_order_acquire); }
  bool stop_possible() const noexcept { return state_ != nullptr; }
  friend bool operator==(const stop_source& a, const stop_source& b) noexcept { return a.state_ == b.state_; }
  void swap(stop_source& o) noexcept { state_.swap(o.state_); }

 private:
  std::shared_ptr<detail::StopState> state_;
};

template <class Callback>
class [[nodiscard]] stop_callback : detail::StopNode {
 public:
  using callback_type = Callback;

  template <class C>
    requires std::is_constructible_v<Callback, C>
  explicit stop_callback(const stop_token& st, C&& cb) noexcept(std::is_nothrow_constructible_v<Callback, C>)
      : callback_(std::forward<C>(cb)) {
    init(st.state_);
  }
  template <class C>
    requires std::is_constructible_v<Callback, C>
  explicit stop_callback(stop_token&& st, C&& cb) noexcept(std::is_nothrow_constructible_v<Callback, C>)
      : callback_(std::forward<C>(cb)) {
    init(std::move(st.state_));
  }
  ~stop_callback() {
    if (state_) state_->remove(this);
  }
  stop_callback(const stop_callback&) = delete;
  stop_callback& operator=(const stop_callback&) = delete;

 private:
  void init(std::shared_ptr<detail::StopState> s) {
    this->run = [](detail::StopNode* n) noexcept { std::forward<Callback>(static_cast<stop_callback*>(n)->callback_)(); };
    if (!s) return;
    if (s->add(this)) {
      state_ = std::move(s);
    } else {
      std::forward<Callback>(callback_)();  // already requested: run now, on this thread
    }
  }
  Callback callback_;
  std::shared_ptr<detail::StopState> state_;
};

template <class Callback>
stop_callback(stop_token, Callback) -> stop_callback<Callback>;

}  // namespace tollgate

#endif
