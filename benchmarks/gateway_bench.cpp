// gateway_bench: what llm_gateway costs in front of an upstream, measured on
// this machine with the real gateway and mock on 127.0.0.1 (all three
// processes share its cores; the numbers include that).
//
//   gateway_bench MOCK_BINARY GATEWAY_BINARY [--seconds 5] [--connections 32] [--rate 200]
//
// For the gateway with its upstream connection pool and without it
// (--upstream-connections 0), and for the mock alone (the baseline):
//   1. throughput: --connections clients, each on a keep-alive connection,
//      send requests back to back for --seconds: requests per second;
//   2. latency at a fixed load below saturation: --rate requests per second
//      spread over 8 clients for --seconds; p50 and p99, and what the gateway
//      adds to the mock's own;
//   3. time to first byte of a streamed answer (the first event), p50 / p99.
// The mock answers at once (--latency-ms 0, events 1 ms apart) and its
// limits are far above the load: what is measured is the gateway.

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "../tests/e2e/e2e_support.hpp"
#include "../tests/e2e/raw_http.hpp"

namespace {

using tge2e::Child;
using tge2e::port_of;
using tge2e::spawn;
using namespace tge2e::raw;

const std::string kChat = R"({"model":"mock-1","messages":[{"role":"user","content":"benchmark"}],"max_tokens":16})";
const std::string kStream = R"({"model":"mock-1","messages":[{"role":"user","content":"benchmark"}],"max_tokens":16,"stream":true})";

std::string request(const std::string& body) { return post("/v1/chat/completions", "sk-bench", body); }

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(q * double(v.size())))];
}

// Back-to-back requests on `connections` keep-alive connections: per second.
double throughput(unsigned short port, int connections, double seconds) {
  std::atomic<long> done{0};
  const auto until = Clock::now() + std::chrono::duration<double>(seconds);
  std::vector<std::thread> clients;
  for (int i = 0; i < connections; ++i)
    clients.emplace_back([&] {
      int fd = connect_to(port);
      while (fd >= 0 && Clock::now() < until) {
        if (!send_all(fd, request(kChat)) || status_of(read_response(fd)) != 200) break;
        done.fetch_add(1, std::memory_order_relaxed);
      }
      if (fd >= 0) close(fd);
    });
  for (auto& t : clients) t.join();
  return double(done.load()) / seconds;
}

// `rate` requests per second from 8 clients; each request's latency (ms).
// With `stream`, the time to the first event instead.
std::vector<double> latencies(unsigned short port, double rate, double seconds, bool stream) {
  constexpr int kClients = 8;
  std::vector<std::vector<double>> per(kClients);
  std::vector<std::thread> clients;
  const auto start = Clock::now();
  for (int c = 0; c < kClients; ++c)
    clients.emplace_back([&, c] {
      const auto gap = std::chrono::duration<double>(kClients / rate);
      int fd = connect_to(port);
      for (int i = 0; fd >= 0; ++i) {
        const auto at = start + std::chrono::duration_cast<Clock::duration>(gap * (i + double(c) / kClients));
        if (at > start + std::chrono::duration<double>(seconds)) break;
        std::this_thread::sleep_until(at);
        const auto t0 = Clock::now();
        if (!send_all(fd, request(stream ? kStream : kChat))) break;
        if (stream) {
          std::string got = read_until(fd, "data: ");
          per[c].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
          read_until(fd, kLastChunk, std::move(got));
        } else {
          if (status_of(read_response(fd)) != 200) break;
          per[c].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        }
      }
      if (fd >= 0) close(fd);
    });
  for (auto& t : clients) t.join();
  std::vector<double> all;
  for (auto& v : per) all.insert(all.end(), v.begin(), v.end());
  return all;
}

}  // namespace


int main(int argc, char** argv) {
  if (argc < 3) return std::fprintf(stderr, "usage: gateway_bench MOCK GATEWAY [--seconds S] [--connections C] [--rate R]\n"), 2;
  signal(SIGPIPE, SIG_IGN);
  const std::string mock_bin = argv[1], gateway_bin = argv[2];
  double seconds = 5, rate = 200;
  int connections = 32;
  for (int i = 3; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--seconds") seconds = std::stod(v);
    else if (a == "--connections") connections = std::stoi(v);
    else if (a == "--rate") rate = std::stod(v);
    else return std::fprintf(stderr, "gateway_bench: unknown option %s\n", a.c_str()), 2;
  }
  Child mock;
  spawn(mock, {mock_bin, "--listen", "127.0.0.1:0", "--rpm", "1e9", "--tpm", "1e12", "--latency-ms", "0", "--chunk-ms", "1"});
  const unsigned short mock_port = port_of(mock.first_line);
  const std::string upstream = "http://127.0.0.1:" + std::to_string(mock_port);

  std::printf("gateway_bench: %.1f s per measurement, %d connections for throughput, %.0f requests/s for latency\n",
              seconds, connections, rate);
  std::printf("%-22s %12s %10s %10s %12s %12s\n", "", "requests/s", "p50 ms", "p99 ms", "TTFB p50 ms", "TTFB p99 ms");
  struct Row {
    std::string name;
    double rps, p50, p99, t50, t99;
  };
  std::vector<Row> rows;
  auto measure = [&](const std::string& name, unsigned short port) {
    Row r{name, throughput(port, connections, seconds), 0, 0, 0, 0};
    const auto lat = latencies(port, rate, seconds, false);
    const auto ttfb = latencies(port, rate, seconds, true);
    r.p50 = percentile(lat, 0.5);
    r.p99 = percentile(lat, 0.99);
    r.t50 = percentile(ttfb, 0.5);
    r.t99 = percentile(ttfb, 0.99);
    std::printf("%-22s %12.0f %10.3f %10.3f %12.3f %12.3f\n", name.c_str(), r.rps, r.p50, r.p99, r.t50, r.t99);
    std::fflush(stdout);
    rows.push_back(r);
  };
  measure("mock alone", mock_port);
  for (const bool pooled : {true, false}) {
    std::vector<std::string> args = {gateway_bin, "--listen", "127.0.0.1:0", "--upstream", upstream, "--rpm", "1e9", "--tpm",
                                     "1e12", "--tier", "bench:1e9:1e12", "--key", "sk-bench:bench", "--max-wait-ms", "10000",
                                     "--max-connections", "1024"};
    if (!pooled) args.insert(args.end(), {"--upstream-connections", "0"});
    Child gw;
    spawn(gw, args);
    measure(pooled ? "gateway, pooled" : "gateway, no pool", port_of(gw.first_line));
    kill(gw.pid, SIGTERM);
    tge2e::finish(gw);
  }
  for (std::size_t i = 1; i < rows.size(); ++i)
    std::printf("%-22s adds p50 %.3f ms, p99 %.3f ms; TTFB p50 %.3f ms, p99 %.3f ms\n", rows[i].name.c_str(),
                rows[i].p50 - rows[0].p50, rows[i].p99 - rows[0].p99, rows[i].t50 - rows[0].t50, rows[i].t99 - rows[0].t99);
  kill(mock.pid, SIGTERM);
  tge2e::finish(mock);
  return 0;
}
