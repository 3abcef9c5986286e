// A client against a redis-server of its own that is stopped, restarted on
// the same port, then frozen (SIGSTOP) and thawed, in the middle of the test:
// every call returns (no hang, no crash) with the policy's answer, and the
// connection comes back by itself.

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include <tollgate/redis.hpp>

#include "redis_support.hpp"

namespace {

using tollgate::Limit;
using tollgate::Reason;
using tollgate::Status;
namespace redis = tollgate::redis;

std::string script, dir;

bool server(const std::string& what, const std::string& port = "") {
  const std::string cmd = "bash '" + script + "' " + what + " '" + dir + "' " + port + " >/dev/null";
  return std::system(cmd.c_str()) == 0;
}

pid_t server_pid() {
  std::ifstream in(dir + "/redis.pid");
  pid_t pid = 0;
  in >> pid;
  return pid;
}

}  // namespace

int main() {
  using tgredis::check;
  script = tgredis::env("TOLLGATE_REDIS_SCRIPT");
  dir = tgredis::env("TOLLGATE_REDIS_WORK") + "/faults";
  if (!server("start")) return std::printf("FAIL cannot start redis-server\n"), 1;
  const int port = tgredis::read_port(dir + "/port");

  redis::ConnectionOptions o;
  o.port = port;
  o.connect_timeout = std::chrono::milliseconds(100);
  o.command_timeout = std::chrono::milliseconds(100);
  o.reconnect_interval = std::chrono::milliseconds(0);  // every call may try again
  redis::Connection conn(o);
  const std::vector<tollgate::Dimension> dims = {{"requests", Limit{100, 100}}};
  redis::RedisLimitSet<> closed(dims, conn, "faults:closed");
  redis::RedisLimitOptions fb_options;
  fb_options.on_failure = redis::OnFailure::local_fallback;
  fb_options.fallback_share = 0.25;
  redis::RedisLimitSet<> fallback(dims, conn, "faults:fallback", fb_options);

  check(closed.try_acquire_detailed({1}).source == redis::Source::store && closed.try_acquire({1.0}).ok(),
        "server up: decided by Redis");

  // 1. The server goes away.
  check(server("stop"), "server stopped");
  tollgate::AcquireResult r = closed.try_acquire({1.0});
  check(r.status() == Status::unavailable && r.reason_code() == Reason::store_unreachable,
        "server down: fail closed says unavailable, unreachable (" + r.message() + ")");
  redis::Decision d = closed.acquire_blocking_detailed({1}, std::chrono::milliseconds(50));
  check(d.result.status() == Status::unavailable, "server down: a waiting acquire returns too (" + d.result.message() + ")");
  // The fallback takes over empty (it cannot know what others took), then
  // admits at its share's rate (25/s): never more, whatever the pace.
  int local = 0, from_fallback = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 30; ++i) {
    redis::Decision x = fallback.try_acquire_detailed({1});
    from_fallback += x.source == redis::Source::fallback;
    local += bool(x);
  }
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  check(from_fallback == 30, "server down: the local fallback decides (" + std::to_string(from_fallback) + " of 30)");
  check(local <= 25 * elapsed + 1, "server down: the fallback starts empty: " + std::to_string(local) + " admitted in " +
                                       std::to_string(elapsed) + " s at 25/s");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // >= 2.5 tokens at 25/s
  check(bool(fallback.try_acquire_detailed({1})), "server down: the fallback admits at its share's rate");

  // 2. It comes back on the same port, empty (no persistence, no scripts).
  check(server("start", std::to_string(port)), "server restarted on the same port");
  d = closed.try_acquire_detailed({1});
  check(d && d.source == redis::Source::store, "server back: the next call reconnects and is decided by Redis");
  check(conn.stats().connects == 2, "one reconnection: " + std::to_string(conn.stats().connects) + " connections");
  check(fallback.try_acquire_detailed({1}).source == redis::Source::store, "server back: the fallback set uses Redis again");

  // 3. The server freezes (SIGSTOP): calls time out instead of hanging.
  const pid_t pid = server_pid();
  check(pid > 0 && kill(pid, SIGSTOP) == 0, "server frozen");
  r = closed.try_acquire({1.0});
  check(r.status() == Status::unavailable && r.reason_code() == Reason::store_timeout,
        "server frozen: unavailable, timeout (" + r.message() + ")");
  d = closed.acquire_blocking_detailed({1}, std::chrono::seconds(1));
  check(d.result.status() == Status::unavailable, "server frozen: a waiting acquire times out too");
  check(kill(pid, SIGCONT) == 0, "server thawed");
  d = closed.try_acquire_detailed({1});
  check(d && d.source == redis::Source::store, "server thawed: decided by Redis again");

  // 4. State lost: FLUSHALL, then kill -9 and a restart without persistence.
  // Capacity 10 refilling at 0.1/s, drained: with MissingKey::empty a lost
  // key reads as empty (at most what accrued since, 0.1/s); with the default
  // it reads as full, one extra burst (the documented trade-off).
  const std::vector<tollgate::Dimension> slow = {{"requests", Limit{10, 0.1}}};
  redis::RedisLimitOptions empty_options;
  empty_options.missing_key = redis::MissingKey::empty;
  redis::RedisLimitSet<> careful(slow, conn, "faults:careful", empty_options);
  redis::RedisLimitSet<> plain(slow, conn, "faults:plain");
  auto drain = [](redis::RedisLimitSet<>& s) {
    int n = 0;
    while (n < 100 && s.try_acquire({1.0}).ok()) ++n;
    return n;
  };
  auto lose_state = [&](const std::string& how) {
    const auto start = std::chrono::steady_clock::now();
    const int careful_before = drain(careful), plain_before = drain(plain);
    if (how == "flushall") {
      check(bool(conn.command({"FLUSHALL"})), "FLUSHALL");
    } else {
      const pid_t p = server_pid();
      check(p > 0 && kill(p, SIGKILL) == 0, "server killed with SIGKILL");
      for (int i = 0; i < 200 && kill(p, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      std::remove((dir + "/redis.pid").c_str());
      check(server("start", std::to_string(port)), "server restarted after kill -9, empty");
      (void)careful.try_acquire({0.0});  // reconnect
    }
    const int careful_after = drain(careful), plain_after = drain(plain);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    check(plain_before == 10, how + ": the default set drained from full (10)");
    check(careful_before <= 0.1 * secs + 1, how + ": a new MissingKey::empty set starts empty: " + std::to_string(careful_before));
    check(careful_after <= 0.1 * secs + 1,
          how + ": MissingKey::empty admits no extra burst: " + std::to_string(careful_after) + " after the loss");
    check(plain_after == 10, how + ": MissingKey::full reads the lost key as full: " + std::to_string(plain_after));
    (void)conn.command({"DEL", "faults:careful", "faults:plain"});
  };
  lose_state("flushall");
  lose_state("kill -9");

  server("stop");
  return tgredis::failures == 0 ? 0 : 1;
}
