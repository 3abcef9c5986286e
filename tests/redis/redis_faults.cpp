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
  redis::RedisLimitSet<> closed(conn, "faults:closed", dims);
  redis::RedisLimitOptions fb_options;
  fb_options.on_failure = redis::OnFailure::local_fallback;
  fb_options.fallback_share = 0.25;
  redis::RedisLimitSet<> fallback(conn, "faults:fallback", dims, fb_options);

  check(closed.try_acquire_detailed({1}).source == redis::Source::store && closed.try_acquire(1.0).ok(),
        "server up: decided by Redis");

  // 1. The server goes away.
  check(server("stop"), "server stopped");
  tollgate::AcquireResult r = closed.try_acquire(1.0);
  check(r.status() == Status::unavailable && r.reason_code() == Reason::store_unreachable,
        "server down: fail closed says unavailable, unreachable (" + r.message() + ")");
  redis::Decision d = closed.acquire_blocking({1}, std::chrono::milliseconds(50));
  check(d.result.status() == Status::unavailable, "server down: a waiting acquire returns too (" + d.result.message() + ")");
  int local = 0;
  for (int i = 0; i < 30; ++i) {
    redis::Decision x = fallback.try_acquire_detailed({1});
    if (x && x.source == redis::Source::fallback) ++local;
  }
  check(local == 25, "server down: the local fallback admits its 25% share (25 of 30): " + std::to_string(local));

  // 2. It comes back on the same port, empty (no persistence, no scripts).
  check(server("start", std::to_string(port)), "server restarted on the same port");
  d = closed.try_acquire_detailed({1});
  check(d && d.source == redis::Source::store, "server back: the next call reconnects and is decided by Redis");
  check(conn.stats().connects == 2, "one reconnection: " + std::to_string(conn.stats().connects) + " connections");
  check(fallback.try_acquire_detailed({1}).source == redis::Source::store, "server back: the fallback set uses Redis again");

  // 3. The server freezes (SIGSTOP): calls time out instead of hanging.
  const pid_t pid = server_pid();
  check(pid > 0 && kill(pid, SIGSTOP) == 0, "server frozen");
  r = closed.try_acquire(1.0);
  check(r.status() == Status::unavailable && r.reason_code() == Reason::store_timeout,
        "server frozen: unavailable, timeout (" + r.message() + ")");
  d = closed.acquire_blocking({1}, std::chrono::seconds(1));
  check(d.result.status() == Status::unavailable, "server frozen: a waiting acquire times out too");
  check(kill(pid, SIGCONT) == 0, "server thawed");
  d = closed.try_acquire_detailed({1});
  check(d && d.source == redis::Source::store, "server thawed: decided by Redis again");

  server("stop");
  return tgredis::failures == 0 ? 0 : 1;
}
