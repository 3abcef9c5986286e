#pragma once
// redis::Connection: one hiredis connection driven by a dedicated I/O thread.
//
// Part of the optional Redis backend (CMake target `tollgate::redis`, hiredis
// found with pkg-config); the core never includes this header.

#include <hiredis/hiredis.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "detail/redis_script.hpp"

namespace tollgate::redis {

/// Where the server is and how long to wait for it.
struct ConnectionOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  /// Bound on establishing a connection (TCP connect, AUTH, SELECT, SCRIPT LOAD).
  std::chrono::milliseconds connect_timeout{200};
  /// Bound on each read and write of a command (a slow or stopped server).
  std::chrono::milliseconds command_timeout{200};
  /// After a failed connection attempt, calls fail at once (no attempt) for this long.
  std::chrono::milliseconds reconnect_interval{100};
  std::string password;  ///< AUTH when not empty
  int database = 0;      ///< SELECT when not 0
};

/// How a command ended.
enum class ReplyStatus : std::uint8_t {
  ok,           ///< the server answered (`values` / `text` hold the answer)
  unreachable,  ///< no connection (refused, lost, or waiting out `reconnect_interval`)
  timeout,      ///< the server did not answer within `command_timeout`
  error,        ///< the server answered with an error (`text` holds it)
  closed,       ///< the Connection was destroyed before the command ran
};

/// A command's answer: integers (an integer reply, or an array of integers and
/// numeric strings, such as a script's result or TIME) and/or text (a string,
/// a status or an error message).
struct Reply {
  ReplyStatus status = ReplyStatus::closed;
  std::vector<long long> values;
  std::string text;
  explicit operator bool() const noexcept { return status == ReplyStatus::ok; }
};

/// One connection to a Redis server, owned by a dedicated I/O thread.
///
/// Commands are queued from any thread; the I/O thread sends everything
/// queued in one pipeline (one write, one round trip for many callers),
/// reads the replies, and runs each callback on the I/O thread, in order.
/// Callbacks must be short and must not block (tollgate's own hand results
/// to a scheduler). The connection is made lazily and remade after any error:
/// a refused or lost connection fails the commands at hand at once
/// (`unreachable`), a server that does not answer within `command_timeout`
/// fails them with `timeout`, and for `reconnect_interval` after a failed
/// attempt commands fail without trying, so nothing ever waits longer than
/// about `connect_timeout + command_timeout`. The tollgate script is loaded
/// on each connection (SCRIPT LOAD) and called by SHA; a `NOSCRIPT` answer
/// (a SCRIPT FLUSH) loads it again and retries once.
///
/// Why a thread and not hiredis's async API on the caller's event loop: the
/// core has no event loop of its own (it serves coroutines on any scheduler,
/// blocking threads and Asio alike), and a thread of its own gives every
/// caller pipelining, timeouts and reconnection for free. The cost is one
/// thread per Connection and a hand-off (a mutex and a condition variable)
/// per batch; share one Connection among many limit sets.
class Connection {
 public:
  using Callback = std::function<void(Reply&&)>;

  explicit Connection(ConnectionOptions options = {}) : options_(std::move(options)) {
    thread_ = std::thread([this] { run(); });
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  /// Runs what is queued (bounded by the timeouts), then closes.
  ~Connection() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    thread_.join();
    if (context_) redisFree(context_);
  }

  const ConnectionOptions& options() const noexcept { return options_; }

  /// Queues any command (e.g. {"TIME"}); `done` runs on the I/O thread.
  void command_async(std::vector<std::string> argv, Callback done) {
    enqueue(Job{std::move(argv), false, std::move(done)});
  }
  /// Runs a command and waits for its reply (bounded by the timeouts).
  Reply command(std::vector<std::string> argv) {
    return wait([&](Callback cb) { command_async(std::move(argv), std::move(cb)); });
  }

  /// Queues a call of tollgate's limit-set script on `key` (see
  /// detail/redis_script.hpp for the arguments).
  void script_async(const std::string& key, std::vector<std::string> args, Callback done) {
    std::vector<std::string> argv;
    argv.reserve(args.size() + 4);
    argv.push_back(key);  // the SHA and "1" are added when sent
    for (auto& a : args) argv.push_back(std::move(a));
    enqueue(Job{std::move(argv), true, std::move(done)});
  }
  Reply script(const std::string& key, std::vector<std::string> args) {
    return wait([&](Callback cb) { script_async(key, std::move(args), std::move(cb)); });
  }

  /// Counters since construction.
  struct Stats {
    std::uint64_t commands = 0;     ///< commands answered by the server (ok or error)
    std::uint64_t round_trips = 0;  ///< pipelines sent (each one write and its reads)
    std::uint64_t connects = 0;     ///< successful connections (the first one included)
    std::uint64_t failures = 0;     ///< commands failed unreachable or timeout
  };
  Stats stats() const noexcept {
    return {commands_.load(std::memory_order_relaxed), round_trips_.load(std::memory_order_relaxed),
            connects_.load(std::memory_order_relaxed), failures_.load(std::memory_order_relaxed)};
  }

 private:
  struct Job {
    std::vector<std::string> argv;
    bool script = false;
    Callback done;
  };

  template <class Submit>
  static Reply wait(Submit submit) {
    std::promise<Reply> promise;
    auto future = promise.get_future();
    submit([&promise](Reply&& r) { promise.set_value(std::move(r)); });
    return future.get();
  }

  void enqueue(Job job) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(job));
    }
    wake_.notify_one();
  }

  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      std::vector<Job> batch;
      batch.swap(queue_);
      lock.unlock();
      process(batch);
      lock.lock();
    }
  }

  static timeval to_timeval(std::chrono::milliseconds ms) {
    timeval tv{};
    tv.tv_sec = static_cast<decltype(tv.tv_sec)>(ms.count() / 1000);
    tv.tv_usec = static_cast<decltype(tv.tv_usec)>((ms.count() % 1000) * 1000);
    return tv;
  }

  static Reply convert(const redisReply* r) {
    Reply out;
    out.status = ReplyStatus::ok;
    auto add = [&](const redisReply* e) {
      switch (e->type) {
        case REDIS_REPLY_INTEGER: out.values.push_back(e->integer); break;
        case REDIS_REPLY_STRING:
        case REDIS_REPLY_STATUS: {
          std::string s(e->str, e->len);
          char* end = nullptr;
          errno = 0;
          const long long v = std::strtoll(s.c_str(), &end, 10);
          if (!s.empty() && end && *end == '\0' && errno == 0) out.values.push_back(v);
          else out.text = std::move(s);
          break;
        }
        default: break;
      }
    };
    if (r->type == REDIS_REPLY_ERROR) {
      out.status = ReplyStatus::error;
      out.text.assign(r->str, r->len);
    } else if (r->type == REDIS_REPLY_ARRAY) {
      for (std::size_t i = 0; i < r->elements; ++i) add(r->element[i]);
    } else {
      add(r);
    }
    return out;
  }

  // Sends one command and reads its reply on the live context; false (the
  // context dropped) on an I/O error or timeout.
  bool roundtrip(const std::vector<std::string>& argv, Reply& out) {
    std::vector<const char*> a;
    std::vector<std::size_t> l;
    for (const auto& s : argv) {
      a.push_back(s.data());
      l.push_back(s.size());
    }
    void* raw = redisCommandArgv(context_, static_cast<int>(a.size()), a.data(), l.data());
    if (!raw) {
      out.status = io_status();
      out.text = context_->errstr;
      drop();
      return false;
    }
    out = convert(static_cast<redisReply*>(raw));
    freeReplyObject(raw);
    return true;
  }

  ReplyStatus io_status() const noexcept {
    return context_ && context_->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)
               ? ReplyStatus::timeout
               : ReplyStatus::unreachable;
  }

  void drop() noexcept {
    if (context_) redisFree(context_);
    context_ = nullptr;
    retry_at_ = std::chrono::steady_clock::now() + options_.reconnect_interval;
  }

  bool connect(std::string& why) {
    if (context_) return true;
    if (std::chrono::steady_clock::now() < retry_at_) {
      why = "reconnecting: waiting out reconnect_interval after a failed attempt";
      return false;
    }
    context_ = redisConnectWithTimeout(options_.host.c_str(), options_.port, to_timeval(options_.connect_timeout));
    if (!context_ || context_->err) {
      why = context_ ? context_->errstr : "cannot allocate a redis context";
      drop();
      return false;
    }
    redisSetTimeout(context_, to_timeval(options_.command_timeout));
    redisEnableKeepAlive(context_);
    Reply r;
    if (!options_.password.empty()) {
      if (!roundtrip({"AUTH", options_.password}, r)) return why = r.text, false;
      if (!r) return why = "AUTH: " + r.text, drop(), false;
    }
    if (options_.database != 0) {
      if (!roundtrip({"SELECT", std::to_string(options_.database)}, r)) return why = r.text, false;
      if (!r) return why = "SELECT: " + r.text, drop(), false;
    }
    if (!load_script(r)) return why = "SCRIPT LOAD: " + r.text, false;
    connects_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  bool load_script(Reply& r) {
    if (!roundtrip({"SCRIPT", "LOAD", detail::limit_set_script}, r)) return false;
    if (!r || r.text.empty()) {
      drop();
      return false;
    }
    sha_ = r.text;
    return true;
  }

  std::vector<std::string> wire(const Job& job) const {
    if (!job.script) return job.argv;
    std::vector<std::string> argv;
    argv.reserve(job.argv.size() + 3);
    argv.push_back("EVALSHA");
    argv.push_back(sha_);
    argv.push_back("1");
    argv.insert(argv.end(), job.argv.begin(), job.argv.end());
    return argv;
  }

  void process(std::vector<Job>& batch) {
    std::vector<Reply> replies(batch.size());
    std::string why;
    if (!connect(why)) {
      for (auto& r : replies) r = Reply{ReplyStatus::unreachable, {}, why};
    } else {
      // One pipeline: append everything, then read every reply.
      for (const Job& job : batch) {
        const auto argv = wire(job);
        std::vector<const char*> a;
        std::vector<std::size_t> l;
        for (const auto& s : argv) {
          a.push_back(s.data());
          l.push_back(s.size());
        }
        redisAppendCommandArgv(context_, static_cast<int>(a.size()), a.data(), l.data());
      }
      round_trips_.fetch_add(1, std::memory_order_relaxed);
      std::size_t i = 0;
      for (; i < batch.size(); ++i) {
        void* raw = nullptr;
        if (redisGetReply(context_, &raw) != REDIS_OK || !raw) break;
        replies[i] = convert(static_cast<redisReply*>(raw));
        freeReplyObject(raw);
        commands_.fetch_add(1, std::memory_order_relaxed);
      }
      if (i < batch.size()) {
        const Reply failed{io_status(), {}, context_->errstr};
        for (; i < batch.size(); ++i) replies[i] = failed;
        drop();
      }
      // A flushed script cache: load it again and retry those calls once.
      for (std::size_t j = 0; j < batch.size() && context_; ++j) {
        if (!batch[j].script || replies[j].status != ReplyStatus::error ||
            replies[j].text.compare(0, 8, "NOSCRIPT") != 0)
          continue;
        Reply loaded;
        if (!load_script(loaded)) {
          replies[j] = Reply{ReplyStatus::unreachable, {}, "SCRIPT LOAD: " + loaded.text};
          continue;
        }
        roundtrip(wire(batch[j]), replies[j]);
        round_trips_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    for (std::size_t j = 0; j < batch.size(); ++j) {
      if (replies[j].status == ReplyStatus::unreachable || replies[j].status == ReplyStatus::timeout)
        failures_.fetch_add(1, std::memory_order_relaxed);
      if (batch[j].done) batch[j].done(std::move(replies[j]));
    }
  }

  const ConnectionOptions options_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<Job> queue_;
  bool stopping_ = false;
  // I/O thread only.
  redisContext* context_ = nullptr;
  std::string sha_;
  std::chrono::steady_clock::time_point retry_at_{};
  std::atomic<std::uint64_t> commands_{0}, round_trips_{0}, connects_{0}, failures_{0};
  std::thread thread_;  // last: starts after everything above is built
};

}  // namespace tollgate::redis
