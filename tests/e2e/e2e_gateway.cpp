// End to end: the mock upstream (HTTPS, a certificate made at start, limits of
// its own) and llm_gateway in front of it, both on 127.0.0.1 with ephemeral
// ports, started and stopped here. Three quiet keys send within their tier;
// one noisy key sends as fast as 48 connections can. Then the driver stops
// sending and sends SIGTERM while noisy requests are still queued in the
// gateway. Checked: the upstream refused nothing; every request got an
// answer; every key stayed within capacity + rate * T; the noisy key's excess
// got 429 with Retry-After and RateLimit fields; quiet keys got no 429; the
// gateway exited 0 after answering what was in flight.
//
//   usage: e2e_gateway MOCK_BINARY GATEWAY_BINARY WORK_DIR

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "e2e_support.hpp"

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

using tge2e::check;
using tge2e::Child;
using tge2e::failures;
using tge2e::finish;
using tge2e::port_of;
using tge2e::spawn;

struct Record {
  int status = 0;  // 0: no answer (transport error)
  std::string retry_after, ratelimit, policy;
  Clock::time_point at{};  // when the answer arrived
};

struct Load {
  unsigned short port;
  bool stop = false;
  std::map<std::string, std::vector<Record>> by_key;
  Clock::time_point first{}, last{}, stopped{};
};

net::awaitable<void> sender(Load& load, std::string key, std::chrono::milliseconds interval) {
  auto ex = co_await net::this_coro::executor;
  beast::tcp_stream stream(ex);
  auto [cec] = co_await stream.async_connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), load.port),
                                             net::as_tuple(net::use_awaitable));
  if (cec) {
    load.by_key[key].push_back({});
    co_return;
  }
  beast::flat_buffer buffer;
  net::steady_timer pace(ex);
  while (!load.stop) {
    if (interval.count() > 0) {
      pace.expires_after(interval);
      co_await pace.async_wait(net::as_tuple(net::use_awaitable));
      if (load.stop) break;
    }
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::authorization, "Bearer " + key);
    req.set(http::field::content_type, "application/json");
    req.body() = R"({"model":"mock-1","messages":[{"role":"user","content":"Say something kind about token buckets."}],"max_tokens":50})";
    req.prepare_payload();
    if (load.first == Clock::time_point{}) load.first = Clock::now();
    Record r;
    auto [wec, wn] = co_await http::async_write(stream, req, net::as_tuple(net::use_awaitable));
    http::response<http::string_body> res;
    if (!wec) {
      auto [rec, rn] = co_await http::async_read(stream, buffer, res, net::as_tuple(net::use_awaitable));
      if (!rec) {
        r.status = static_cast<int>(res.result_int());
        r.retry_after = std::string(res[http::field::retry_after]);
        r.ratelimit = std::string(res["RateLimit"]);
        r.policy = std::string(res["RateLimit-Policy"]);
      }
    }
    load.last = r.at = Clock::now();
    load.by_key[key].push_back(r);
    if (r.status == 0 || !res.keep_alive()) break;
  }
}

}  // namespace

// The upstream's true limit is half what the gateway was told (10 requests/s
// against 20), over plain HTTP: UpstreamFeedback (429 pauses, remaining-count
// sync, with `adaptive` the AIMD rate) must hold refusals to the first
// burst's excess and a few probes. Checked only for the adaptive gateway;
// `feedback-static` prints the comparison.
int feedback_phase(const std::string& mock_bin, const std::string& gateway_bin, bool adaptive) {
  Child mock;
  spawn(mock, {mock_bin, "--listen", "127.0.0.1:0", "--rpm", "600", "--tpm", "6000000", "--burst-seconds", "1",
               "--latency-ms", "5"});
  std::printf("%s\n", mock.first_line.c_str());
  std::vector<std::string> args = {gateway_bin, "--listen", "127.0.0.1:0", "--upstream",
                                   "http://127.0.0.1:" + std::to_string(port_of(mock.first_line)), "--rpm", "1200",
                                   "--tpm", "12000000", "--burst-seconds", "1", "--tier", "big:100000:100000000",
                                   "--key", "busy:big", "--max-wait-ms", "5000"};
  if (adaptive) args.push_back("--adaptive");
  Child gateway;
  spawn(gateway, args);
  Load load;
  load.port = port_of(gateway.first_line);
  net::io_context io(1);
  for (int i = 0; i < 16; ++i) net::co_spawn(io, sender(load, "busy", std::chrono::milliseconds(0)), net::detached);
  net::steady_timer run_for(io, std::chrono::seconds(6));
  run_for.async_wait([&](const auto&) {
    load.stop = true;
    kill(gateway.pid, SIGTERM);
  });
  io.run();
  const int gateway_exit = finish(gateway);
  kill(mock.pid, SIGTERM);
  finish(mock);
  std::printf("%s", mock.rest.c_str());
  long ok = 0, limited = 0, answered = 0;
  for (const Record& r : load.by_key["busy"]) ok += r.status == 200, limited += r.status == 429, answered += r.status != 0;
  const auto& records = load.by_key["busy"];
  long served = -1, refused = -1;
  std::sscanf(mock.rest.c_str(), "mock_llm_upstream: served=%ld refused=%ld", &served, &refused);
  const double capacity = 10 + 10 * 6.0;  // what the upstream can serve in the run
  std::printf("%s gateway: %zu requests, %ld answered 200, %ld answered 429; upstream served %ld (%.0f%% of the %.0f it could), refused %ld (%.1f%% of its calls)\n",
              adaptive ? "adaptive" : "static", records.size(), ok, limited, served, 100.0 * double(served) / capacity,
              capacity, refused, 100.0 * double(refused) / double(std::max(1L, served + refused)));
  if (!adaptive) return 0;
  check(answered == long(records.size()), "feedback: every request got an answer");
  check(served >= 0 && double(refused) <= 0.15 * double(served + refused), "feedback: the upstream refused at most 15% of its calls");
  check(double(served) >= 0.6 * capacity, "feedback: the gateway still used at least 60% of what the upstream could serve");
  check(gateway_exit == 0, "feedback: the gateway exited 0");
  return failures == 0 ? 0 : 1;
}

// Fair sharing: the upstream (20 requests/s, plain HTTP) is saturated by a
// heavy key of weight 1 on 32 connections and three light keys of weight 2
// on 4 connections each. By connections (FIFO) the heavy key would take 8 of
// 11 requests; by weight it gets 1 of 7 and each light key 2 of 7. Checked
// on proportions, which hold at any pace as long as every key keeps a
// request waiting in the gateway (each has connections to spare).
int fair_phase(const std::string& mock_bin, const std::string& gateway_bin) {
  Child mock;
  spawn(mock, {mock_bin, "--listen", "127.0.0.1:0", "--rpm", "1200", "--tpm", "100000000", "--burst-seconds", "1",
               "--latency-ms", "5"});
  std::printf("%s\n", mock.first_line.c_str());
  Child gateway;
  spawn(gateway, {gateway_bin, "--listen", "127.0.0.1:0", "--upstream",
                  "http://127.0.0.1:" + std::to_string(port_of(mock.first_line)), "--rpm", "1080", "--tpm",
                  "90000000", "--burst-seconds", "1", "--tier", "heavy:100000:100000000:1:1", "--tier",
                  "light:100000:100000000:1:2", "--key", "heavy:heavy", "--key", "light-1:light", "--key",
                  "light-2:light", "--key", "light-3:light", "--max-wait-ms", "20000"});
  std::printf("%s\n", gateway.first_line.c_str());
  Load load;
  load.port = port_of(gateway.first_line);
  net::io_context io(1);
  for (int i = 0; i < 32; ++i) net::co_spawn(io, sender(load, "heavy", std::chrono::milliseconds(0)), net::detached);
  for (const char* k : {"light-1", "light-2", "light-3"})
    for (int i = 0; i < 4; ++i) net::co_spawn(io, sender(load, k, std::chrono::milliseconds(0)), net::detached);
  net::steady_timer run_for(io, std::chrono::seconds(6));
  run_for.async_wait([&](const auto&) {
    load.stop = true;
    load.stopped = Clock::now();
    kill(gateway.pid, SIGTERM);
  });
  io.run();
  const int gateway_exit = finish(gateway);
  kill(mock.pid, SIGTERM);
  finish(mock);
  std::printf("%s", mock.rest.c_str());
  if (std::getenv("TOLLGATE_E2E_LOG")) std::printf("%s", gateway.rest.c_str());
  // Counted from 2 s to the stop: the opening burst goes to whoever connects
  // first, and the drain after the stop to whoever still has requests queued.
  std::map<std::string, long> ok;
  long total = 0, limited = 0;
  for (const auto& [key, records] : load.by_key)
    for (const Record& r : records) {
      limited += r.status == 429;
      if (r.at < load.first + std::chrono::seconds(2) || r.at >= load.stopped) continue;
      ok[key] += r.status == 200;
      total += r.status == 200;
    }
  for (const auto& [key, n] : ok)
    std::printf("%s: %ld answered 200 (%.1f%% of %ld)\n", key.c_str(), n, 100.0 * double(n) / double(total), total);
  check(total >= 20, "fair: the upstream was kept busy");
  check(limited == 0, "fair: nothing was refused (every request waited its turn)");
  check(mock.rest.find("refused=0 ") != std::string::npos, "fair: the upstream refused nothing");
  check(double(ok["heavy"]) <= 0.22 * double(total), "fair: the heavy key got about its weight's share (1/7), not its connections' (8/11)");
  for (const char* k : {"light-1", "light-2", "light-3"})
    check(double(ok[k]) >= 0.22 * double(total) && double(ok[k]) >= 1.5 * double(ok["heavy"]),
          std::string(k) + ": about its weight's share (2/7), twice the heavy key's");
  check(gateway_exit == 0, "fair: the gateway exited 0");
  return failures == 0 ? 0 : 1;
}

int main(int argc, char** argv) {
  if (argc == 5 && std::string(argv[4]) == "fair") return fair_phase(argv[1], argv[2]);
  if (argc == 5) return feedback_phase(argv[1], argv[2], std::string(argv[4]) == "feedback");
  if (argc != 4) return std::fprintf(stderr, "usage: e2e_gateway MOCK GATEWAY WORKDIR [feedback|feedback-static]\n"), 2;
  const std::string mock_bin = argv[1], gateway_bin = argv[2], work = argv[3];
  (void)std::system(("mkdir -p '" + work + "'").c_str());
  signal(SIGPIPE, SIG_IGN);

  // The provider: 20 requests/s and 2,000 tokens/s, a 2-second burst.
  Child mock;
  spawn(mock, {mock_bin, "--listen", "127.0.0.1:0", "--tls-dir", work, "--rpm", "1200", "--tpm", "120000",
               "--burst-seconds", "2", "--latency-ms", "5"});
  std::printf("%s\n", mock.first_line.c_str());
  const unsigned short mock_port = port_of(mock.first_line);

  // The gateway: the shared limit at 90% of the provider's; the free tier at
  // 4 requests/s (burst of 1 s) and 400 tokens/s.
  // Tiers and keys come from a config file (the rest from flags).
  {
    std::FILE* conf = std::fopen((work + "/gateway.conf").c_str(), "w");
    std::fputs("# the free tier: 240 requests and 24,000 tokens a minute, a burst of 1 s\n"
               "tier free 240 24000 1\n"
               "key quiet-1 free\nkey quiet-2 free\nkey quiet-3 free\n"
               "key noisy   free   # the noisy neighbour\n"
               "max-wait-ms 100\n",
               conf);
    std::fclose(conf);
  }
  Child gateway;
  spawn(gateway, {gateway_bin, "--listen", "127.0.0.1:0", "--upstream", "https://127.0.0.1:" + std::to_string(mock_port),
                  "--upstream-ca", work + "/cert.pem", "--rpm", "1080", "--tpm", "108000", "--burst-seconds", "2",
                  "--config", work + "/gateway.conf"});
  std::printf("%s\n", gateway.first_line.c_str());

  Load load;
  load.port = port_of(gateway.first_line);
  net::io_context io(1);
  for (const char* k : {"quiet-1", "quiet-2", "quiet-3"}) net::co_spawn(io, sender(load, k, std::chrono::milliseconds(500)), net::detached);
  for (int i = 0; i < 48; ++i) net::co_spawn(io, sender(load, "noisy", std::chrono::milliseconds(0)), net::detached);
  net::steady_timer run_for(io, std::chrono::seconds(4));
  run_for.async_wait([&](const auto&) {
    load.stop = true;        // no new requests ...
    kill(gateway.pid, SIGTERM);  // ... and the gateway stops with noisy ones still queued in it
  });
  io.run();
  const int gateway_exit = finish(gateway);
  kill(mock.pid, SIGTERM);
  finish(mock);
  std::printf("%s", mock.rest.c_str());

  const double seconds = std::chrono::duration<double>(load.last - load.first).count();
  long total = 0, answered = 0, ok_total = 0;
  for (auto& [key, records] : load.by_key) {
    long ok = 0, limited = 0, good_headers = 0;
    for (const Record& r : records) {
      ++total;
      answered += r.status != 0;
      ok += r.status == 200;
      if (r.status == 429) {
        ++limited;
        const long ra = r.retry_after.empty() ? 0 : std::stol(r.retry_after);
        good_headers += ra >= 1 && r.policy == R"("requests";q=4;w=1, "tokens";q=400;w=1)" &&
                        r.ratelimit.find("\"requests\";r=") == 0;
      }
    }
    ok_total += ok;
    const double bound = 4 + 4 * seconds;  // requests: capacity 4, 4 per second
    std::printf("%s: %zu requests, %ld answered 200, %ld answered 429 (bound on 200s over %.2f s: %.1f)\n", key.c_str(),
                records.size(), ok, limited, seconds, bound);
    check(double(ok) <= bound, key + ": within capacity + rate * T");
    if (key == "noisy") {
      check(double(records.size()) > bound, "noisy: it offered more than its tier allows (" + std::to_string(records.size()) + ")");
      check(limited > 0 && good_headers == limited, "noisy: its excess got 429 with Retry-After >= 1 and the RateLimit fields");
      check(double(ok) >= 0.8 * bound, "noisy: it got its whole tier, no less");
    } else {
      // However many a quiet key managed to send at this machine's pace,
      // every one was answered 200.
      check(limited == 0 && ok == long(records.size()) && ok >= 1, key + ": every request answered 200, none slowed into a 429");
    }
  }
  check(answered == total, "every request got an answer (" + std::to_string(answered) + " of " + std::to_string(total) + ")");
  check(mock.rest.find("refused=0 ") != std::string::npos, "the upstream refused nothing");
  check(mock.rest.find("served=" + std::to_string(ok_total) + " ") != std::string::npos,
        "the upstream served exactly the requests answered 200");
  check(gateway_exit == 0 && gateway.rest.find("stopped cleanly") != std::string::npos, "the gateway exited 0, cleanly");
  return failures == 0 ? 0 : 1;
}
