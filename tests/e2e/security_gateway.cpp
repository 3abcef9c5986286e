// Attacks on llm_gateway as a hostile client and a hostile upstream would
// make them, against the real gateway and mock upstream on 127.0.0.1 (every
// loop bounded in count and time). Each check asserts the defended outcome,
// whatever the machine's pace:
//   - deny by default: no path variant, method or missing key reaches the
//     upstream unmetered; only known keys on billed endpoints are forwarded;
//   - connections: idle and slow clients are cut, running out of file
//     descriptors does not stop the accept loop, oversized headers get 431,
//     oversized bodies 413, malformed requests 400, Connection: close and
//     HTTP/1.0 are honoured;
//   - work before admission: an over-limit key is refused before its body is
//     sent, let alone parsed;
//   - a hostile upstream: absurd, negative, non-integer or missing usage
//     leaves every key usable and the estimate standing;
//   - secrets: no client key in the log, a key with quotes and spaces cannot
//     forge log fields, 502s carry no internal detail, the upstream key comes
//     from the environment and is refused on the command line.
//
//   usage: security_gateway MOCK_BINARY GATEWAY_BINARY WORK_DIR

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "e2e_support.hpp"
#include "raw_http.hpp"

namespace {

using tge2e::check;
using tge2e::Child;
using tge2e::finish;
using tge2e::port_of;
using tge2e::spawn;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using namespace tge2e::raw;

const std::string kChat = R"({"model":"mock-1","messages":[{"role":"user","content":"hello"}],"max_tokens":20})";

std::string chat_with_usage(const std::string& usage_json) {
  return R"({"model":"mock-1","messages":[{"role":"user","content":"hello"}],"max_tokens":20,"mock_usage":)" +
         usage_json + "}";
}

long mock_received(unsigned short mock_port) {
  const std::string r = once(mock_port, "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  const json j = json::parse(body_of(r), nullptr, false);
  return j.is_object() ? j.value("received", -1L) : -1L;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) return std::fprintf(stderr, "usage: security_gateway MOCK GATEWAY WORKDIR\n"), 2;
  const std::string mock_bin = argv[1], gateway_bin = argv[2], work = argv[3];
  signal(SIGPIPE, SIG_IGN);
  (void)std::system(("mkdir -p '" + work + "'").c_str());
  const std::string upstream_key = "sk-upstream-operator-secret";

  Child mock;
  spawn(mock, {mock_bin, "--listen", "127.0.0.1:0", "--rpm", "600000", "--tpm", "600000000", "--latency-ms", "1",
               "--require-key-env", "MOCK_KEY"},
        {{{"MOCK_KEY", upstream_key}}, 0});
  const unsigned short mock_port = port_of(mock.first_line);
  const std::string upstream = "http://127.0.0.1:" + std::to_string(mock_port);

  // 0. The upstream key is refused on the command line.
  {
    Child bad;
    spawn(bad, {gateway_bin, "--listen", "127.0.0.1:0", "--upstream", upstream, "--upstream-key", upstream_key});
    const int code = finish(bad);
    check(code == 2, "secrets: --upstream-key on the command line is refused (exit " + std::to_string(code) + ")");
  }

  {
    std::FILE* conf = std::fopen((work + "/security.conf").c_str(), "w");
    std::fputs("tier big 600000 600000000\n"
               "tier tiny 6 6000000 10\n"        // 1 request per 10 s, a burst of 1
               "tier thin 600000 2400 1\n"       // 40 tokens/s, a burst of 40
               "key sk-victim-aaaa big\n"
               "key sk-bystander-bbbb big\n"
               "key sk-tiny-cccc tiny\n"
               "key sk-thin-dddd thin\n",
               conf);
    std::fclose(conf);
  }
  Child gw;
  spawn(gw,
        {gateway_bin, "--listen", "127.0.0.1:0", "--upstream", upstream, "--config", work + "/security.conf", "--rpm",
         "600000", "--tpm", "600000000", "--max-wait-ms", "50", "--idle-timeout-ms", "500", "--header-timeout-ms", "500", "--body-timeout-ms",
         "500", "--max-connections", "40", "--max-body-bytes", "1048576", "--max-stream-seconds", "1"},
        {{{"TOLLGATE_UPSTREAM_KEY", upstream_key}}, 64});
  const unsigned short port = port_of(gw.first_line);
  const std::string victim = "sk-victim-aaaa";

  // 1. Deny by default: nothing unauthenticated or off the billed endpoints
  //    reaches the upstream.
  {
    const long before = mock_received(mock_port);
    const std::vector<std::string> targets = {
        "/v1/chat/completions?x=1", "/v1/chat/completions/", "//v1/chat/completions", "/v1/completions",
        "/v1/embeddings",          "/v1/responses",         "/v1/models",            "/v1/chat/completions%2F",
        "/v1/../v1/chat/completions", "/./v1/chat/completions", "/admin", "/", "*", "http://evil/v1/chat/completions"};
    int refused = 0, total = 0;
    for (int round = 0; round < 10; ++round) {
      for (const auto& t : targets) {
        ++total;
        const int s = status_of(once(port, post(t, "", kChat, "Connection: close\r\n")));
        refused += s == 400 || s == 401 || s == 404 || s == 405;
      }
      ++total;  // a GET of a billed path with a valid key: not forwarded either
      const int s = status_of(once(port, "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + victim +
                                             "\r\nConnection: close\r\n\r\n"));
      refused += s == 404 || s == 405;
    }
    const long after = mock_received(mock_port);
    check(refused == total, "deny by default: " + std::to_string(refused) + " of " + std::to_string(total) +
                                " unauthenticated or unknown requests refused by the gateway");
    check(after == before, "deny by default: none reached the upstream (" + std::to_string(after - before) + ")");
    // Path variants of a billed endpoint with a valid key are metered and
    // forwarded to the canonical path.
    const long b2 = mock_received(mock_port);
    const int s1 = status_of(once(port, post("//v1/chat/completions/", victim, kChat, "Connection: close\r\n")));
    const int s2 = status_of(once(port, post("/v1/embeddings", victim, R"({"input":"abc"})", "Connection: close\r\n")));
    check(s1 == 200 && s2 == 200, "deny by default: a known key on billed endpoints is served (" + std::to_string(s1) +
                                      ", " + std::to_string(s2) + ")");
    check(mock_received(mock_port) == b2 + 2, "deny by default: each forwarded once");
  }

  // 2. Connections.
  {
    int fd = connect_to(port);
    check(fd >= 0 && closed_by_peer(fd, 10s), "connections: an idle connection is closed (idle timeout)");
    close(fd);
    fd = connect_to(port, 200ms);
    const std::string slow = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    bool cut = false;
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < 200 && !cut && Clock::now() - t0 < 20s; ++i) {  // one byte per 100 ms
      if (!send_all(fd, std::string(1, i < slow.size() ? slow[i] : 'x'))) cut = true;
      else cut = closed_by_peer(fd, 100ms);
    }
    check(cut, "connections: a client sending one byte at a time is cut");
    close(fd);

    // More connections than the gateway has descriptors (64) or allows (40).
    std::vector<int> flood;
    for (int i = 0; i < 120; ++i)
      if (int f = connect_to(port, 100ms); f >= 0) flood.push_back(f);
    const int during = status_of(once(port, post("/v1/chat/completions", victim, kChat, "Connection: close\r\n")));
    for (int f : flood) close(f);
    std::string after;
    for (int attempt = 0; attempt < 100 && status_of(after) != 200; ++attempt) {  // bounded: 100 x 50 ms
      after = once(port, post("/v1/chat/completions", victim, kChat, "Connection: close\r\n"));
      if (status_of(after) != 200) std::this_thread::sleep_for(50ms);
    }
    check(status_of(after) == 200, "connections: after a flood of " + std::to_string(flood.size()) +
                                       " connections past the descriptor limit, the gateway accepts and answers again (during: " +
                                       std::to_string(during) + ")");

    const std::string big_header = "X-Big: " + std::string(20000, 'a') + "\r\n";
    check(status_of(once(port, post("/v1/chat/completions", victim, kChat, big_header))) == 431,
          "connections: an oversized header gets 431");
    fd = connect_to(port);
    send_all(fd, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + victim +
                     "\r\nContent-Length: 2000000\r\n\r\n{");
    check(status_of(read_response(fd)) == 413, "connections: an oversized body gets 413");
    close(fd);
    check(status_of(once(port, "GARBAGE / NONSENSE\r\n\r\n")) == 400, "connections: a malformed request gets 400");
    check(status_of(once(port, "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello")) == 400,
          "connections: conflicting Content-Length gets 400");

    fd = connect_to(port);
    send_all(fd, post("/v1/chat/completions", victim, kChat, "Connection: close\r\n"));
    const std::string r = read_response(fd);
    check(status_of(r) == 200 && closed_by_peer(fd, 5s), "connections: Connection: close is honoured");
    close(fd);
    fd = connect_to(port);
    send_all(fd, post("/v1/chat/completions", victim, kChat, "", "HTTP/1.0"));
    const std::string r10 = read_response(fd);
    check(r10.rfind("HTTP/1.0 200", 0) == 0 && closed_by_peer(fd, 5s), "connections: HTTP/1.0 gets 1.0 and a close");
    close(fd);
  }

  // 3. Work before admission: a key at its limit is refused before it sends its body.
  {
    const std::string tiny = "sk-tiny-cccc";
    (void)once(port, post("/v1/chat/completions", tiny, kChat, "Connection: close\r\n"));  // takes its one request
    const int fd = connect_to(port, 5s);
    send_all(fd, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tiny +
                     "\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n");
    const auto t0 = Clock::now();
    const std::string r = read_response(fd);  // the body is never sent
    check(status_of(r) == 429, "admission: an over-limit key with a 0.9 MB body pending gets 429 before sending it (" +
                                   std::to_string(status_of(r)) + ")");
    check(Clock::now() - t0 < 5s, "admission: ... without the gateway waiting for the body");
    close(fd);
  }

  // 4. A hostile upstream's usage.
  {
    const std::vector<std::string> usages = {R"({"total_tokens":100000000000})", R"({"total_tokens":1000000000000000000})",
                                             R"({"total_tokens":-1000})",        R"({"total_tokens":"many"})",
                                             "5",                                R"("a string")",
                                             R"({"prompt_tokens":1e300,"completion_tokens":1})", R"("omit")"};
    int served = 0;
    for (const auto& u : usages)
      served += status_of(once(port, post("/v1/chat/completions", victim, chat_with_usage(u), "Connection: close\r\n"))) == 200;
    check(served == int(usages.size()), "hostile upstream: every call the upstream served is answered 200 (" +
                                            std::to_string(served) + " of " + std::to_string(usages.size()) + ")");
    const int v = status_of(once(port, post("/v1/chat/completions", victim, kChat, "Connection: close\r\n")));
    const int b = status_of(once(port, post("/v1/chat/completions", "sk-bystander-bbbb", kChat, "Connection: close\r\n")));
    check(v == 200 && b == 200, "hostile upstream: no key is locked out afterwards (" + std::to_string(v) + ", " +
                                    std::to_string(b) + ")");
    // No usage settles at the estimate: the thin key (40 tokens of burst, the
    // estimate of one call about 26) gets one such call, not a refund each time.
    int ok = 0;
    const auto t0 = Clock::now();
    for (int i = 0; i < 6; ++i)
      ok += status_of(once(port, post("/v1/chat/completions", "sk-thin-dddd", chat_with_usage(R"("omit")"),
                                      "Connection: close\r\n"))) == 200;
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    const double fit = (40 + 40 * secs) / 26;  // what the key's tokens allow at the estimate, at any pace
    check(ok >= 1 && ok <= fit && ok < 6, "hostile upstream: a 200 without usage keeps the estimate (" + std::to_string(ok) +
                                              " of 6 admitted in " + std::to_string(secs) + " s; " + std::to_string(fit) + " fit)");
  }

  // 4b. A hostile upstream's stream: an event of 2 MiB (over the gateway's
  //     1 MiB bound) and a final usage chunk with absurd counts.
  {
    const std::string ask = R"({"model":"mock-1","messages":[{"role":"user","content":"hi"}],"max_tokens":20,"stream":true)";
    const int fd = connect_to(port);
    send_all(fd, post("/v1/chat/completions", victim, ask + R"(,"mock_huge_event":2097152})"));
    std::string got;
    char buf[65536];
    for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) got.append(buf, std::size_t(n));  // until the gateway closes
    close(fd);
    check(status_of(got) == 200 && got.find("\r\n0\r\n\r\n") == std::string::npos && got.size() < 1024 * 1024,
          "hostile upstream: an oversized event cuts the stream (no clean end; " + std::to_string(got.size()) +
              " bytes reached the client)");
    const std::string absurd = once_stream(port, post("/v1/chat/completions", victim,
                                                     ask + R"(,"stream_options":{"include_usage":true},"mock_usage":{"prompt_tokens":-7,"completion_tokens":1e300}})"));
    check(status_of(absurd) == 200 && absurd.find("\r\n0\r\n\r\n") != std::string::npos,
          "hostile upstream: a stream with absurd usage is relayed whole");
    // A stream that would run 20 s (2,000 events 10 ms apart) against --max-stream-seconds 1.
    const auto t0 = Clock::now();
    const std::string endless = once_stream(port, post("/v1/chat/completions", victim, ask + R"(,"mock_chunks":2000,"mock_chunk_ms":10})"));
    const double took = std::chrono::duration<double>(Clock::now() - t0).count();
    check(status_of(endless) == 200 && endless.find("\r\n0\r\n\r\n") == std::string::npos,
          "hostile upstream: a stream longer than --max-stream-seconds is cut (" + std::to_string(took) + " s)");
    const int v = status_of(once(port, post("/v1/chat/completions", victim, kChat, "Connection: close\r\n")));
    check(v == 200, "hostile upstream: the key is usable after the hostile streams (" + std::to_string(v) + ")");
  }

  // 5. Secrets: a key with quotes and spaces; a dead upstream's 502.
  const std::string forged = "sk \"x\" status=200 key=admin\nfake";
  (void)once(port, post("/v1/chat/completions", forged, kChat, "Connection: close\r\n"));
  Child dead;
  spawn(dead, {gateway_bin, "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:1", "--config",
               work + "/security.conf"});
  const std::string r502 = once(port_of(dead.first_line), post("/v1/chat/completions", victim, kChat, "Connection: close\r\n"));
  check(status_of(r502) == 502, "secrets: a dead upstream gives 502");
  check(body_of(r502).find("refused") == std::string::npos && body_of(r502).find("connect") == std::string::npos,
        "secrets: the 502 body carries no internal error: " + body_of(r502));
  kill(dead.pid, SIGTERM);
  finish(dead);
  check(dead.rest.find("Connection refused") != std::string::npos || dead.rest.find("upstream connect") != std::string::npos,
        "secrets: the reason is in the gateway's log");

  kill(gw.pid, SIGTERM);
  const int gw_exit = finish(gw);
  kill(mock.pid, SIGTERM);
  finish(mock);
  check(gw_exit == 0, "the gateway exited 0 after all of it");
  std::istringstream lines(gw.rest);
  int parsed = 0, bad = 0, notes = 0;
  for (std::string line; std::getline(lines, line);) {
    const json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("event")) {
      ++parsed;
      if (j.value("event", "") == "request" && !j.contains("status")) ++bad;
      if (j.contains("note") && j["note"].is_string() && j["note"].get<std::string>().rfind("usage_", 0) == 0) ++notes;
    } else if (line.find("llm_gateway:") != 0) {
      ++bad;
      std::printf("  not a JSON line: %s\n", line.substr(0, 120).c_str());
    }
  }
  check(parsed > 100 && bad == 0, "secrets: every log line is one JSON object (" + std::to_string(parsed) + " lines)");
  check(notes >= 9, "hostile upstream: the invalid and missing usage is logged (" + std::to_string(notes) + ")");
  for (const std::string& secret : {victim, std::string("sk-bystander-bbbb"), std::string("sk-tiny-cccc"), upstream_key,
                                   std::string("status=200 key=admin")})
    check(gw.rest.find(secret) == std::string::npos, "secrets: the log does not contain \"" + secret.substr(0, 6) + "...\"");
  return tge2e::failures == 0 ? 0 : 1;
}
