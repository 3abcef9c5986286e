// 4 processes hammer one Redis limit set for 3 s of server time, each with
// its own connection, mixing try_acquire and waiting acquisitions. Each logs
// its admissions with the server instants the script granted them at; the
// parent merges the logs and checks, per dimension and exactly (integers),
// that every window [s, t] admitted at most capacity + rate * (t - s).

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <tollgate/redis.hpp>

#include "redis_support.hpp"
#include "test_support.hpp"

namespace {

using tollgate::Costs;
using tollgate::Limit;
namespace redis = tollgate::redis;

constexpr int kProcesses = 4;
constexpr std::int64_t kRunNs = 3'000'000'000;
const std::vector<tollgate::Dimension> kDims = {{"requests", Limit{20, 200}}, {"tokens", Limit{4000, 20000}}};

std::int64_t server_now(redis::Connection& c) {
  const redis::Reply r = c.command({"TIME"});
  if (!r || r.values.size() != 2) throw std::runtime_error("TIME failed: " + r.text);
  return r.values[0] * 1'000'000'000 + r.values[1] * 1000;
}

int child(int id, int port, const std::string& key, std::int64_t end_ns, const std::string& log_path) {
  redis::ConnectionOptions o;
  o.port = port;
  o.command_timeout = std::chrono::seconds(5);
  redis::Connection conn(o);
  redis::RedisLimitSet<> set(kDims, conn, key);
  std::mt19937_64 rng(static_cast<std::uint64_t>(id) * 7919 + 1);
  std::ofstream log(log_path);
  std::int64_t last = 0;
  long calls = 0;
  while (last < end_ns) {
    const Costs c{1, double(1 + rng() % 400)};
    redis::Decision d = rng() % 3 == 0 ? set.acquire_blocking_detailed(c, std::chrono::milliseconds(30))
                                       : set.try_acquire_detailed(c);
    ++calls;
    if (d.source != redis::Source::store || d.server_time_ns == 0) {
      std::fprintf(stderr, "process %d: %s\n", id, set.message(d.result).c_str());
      return 2;
    }
    last = d.server_time_ns;
    if (d) log << d.server_time_ns << ' ' << std::int64_t(c[0]) << ' ' << std::int64_t(c[1]) << '\n';
  }
  std::printf("process %d: %ld calls, %llu round trips\n", id, calls,
              static_cast<unsigned long long>(conn.stats().round_trips));
  std::fflush(stdout);  // the child leaves with _exit
  return 0;
}

}  // namespace

int main() {
  using tgredis::check;
  const int port = tgredis::read_port(tgredis::env("TOLLGATE_REDIS_PORT_FILE"));
  const std::string work = tgredis::env("TOLLGATE_REDIS_WORK");
  (void)std::system(("mkdir -p '" + work + "'").c_str());
  const std::string key = "tollgate-hammer:" + std::to_string(getpid());
  std::int64_t start = 0;
  {
    redis::ConnectionOptions o;
    o.port = port;
    redis::Connection c(o);  // joined before fork: the children start with one thread
    (void)c.command({"DEL", key});
    start = server_now(c);
  }
  std::vector<pid_t> pids;
  for (int i = 0; i < kProcesses; ++i) {
    const pid_t pid = fork();
    if (pid == 0) _exit(child(i, port, key, start + kRunNs, work + "/hammer-" + std::to_string(i) + ".log"));
    pids.push_back(pid);
  }
  bool children_ok = true;
  for (pid_t p : pids) {
    int status = 0;
    waitpid(p, &status, 0);
    children_ok = children_ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  check(children_ok, "every process ran to the end without a store failure");

  std::vector<std::vector<tgtest::Admission>> per_dim(kDims.size());
  std::int64_t first = INT64_MAX, last = 0;
  for (int i = 0; i < kProcesses; ++i) {
    std::ifstream in(work + "/hammer-" + std::to_string(i) + ".log");
    std::int64_t t, a, b;
    while (in >> t >> a >> b) {
      per_dim[0].push_back({t, a});
      per_dim[1].push_back({t, b});
      first = std::min(first, t);
      last = std::max(last, t);
    }
  }
  double best = 0;
  for (std::size_t d = 0; d < kDims.size(); ++d) {
    auto& adm = per_dim[d];
    std::stable_sort(adm.begin(), adm.end(), [](auto& x, auto& y) { return x.t_ns < y.t_ns; });
    std::int64_t total = 0;
    for (auto& x : adm) total += x.cost;
    const auto cap = std::int64_t(kDims[d].limit.capacity), rate = std::int64_t(kDims[d].limit.rate);
    const double bound = double(cap) + double(rate) * double(last - first) / 1e9;
    std::printf("%s: %zu admissions, %lld admitted over %.3f s (B + r*T = %.1f, %.1f%% of it)\n",
                kDims[d].name.c_str(), adm.size(), static_cast<long long>(total), double(last - first) / 1e9, bound,
                100.0 * double(total) / bound);
    const std::string violation = tgtest::check_conformance(adm, cap, rate);
    check(violation.empty(), kDims[d].name + ": every window conforms " + violation);
    best = std::max(best, double(total) / bound);
  }
  check(best >= 0.9, "the binding dimension admitted at least 90% of B + r*T (the test is not idle)");
  return tgredis::failures == 0 ? 0 : 1;
}
