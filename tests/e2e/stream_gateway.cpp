// End to end: streamed answers through llm_gateway, for both upstream APIs,
// against the real mock upstream on 127.0.0.1. Checked, at any pace:
//   - OpenAI: a `"stream": true` answer arrives as a chunked event stream
//     ending in `data: [DONE]`; the gateway asked for the usage chunk and
//     kept it from a client that did not ask; a client that asked gets it;
//     each call is settled at the usage the stream reported (the log's
//     `actual`), and the connection serves the next request;
//   - a client that goes away mid-stream: the gateway cancels the upstream
//     call (the mock sees its reader go), logs `client_gone`, keeps serving;
//     and since the client had an event while the upstream was still
//     producing, the answer was relayed as it came, not buffered whole;
//   - Anthropic: x-api-key and anthropic-version reach the mock (it refuses
//     calls without them), streamed and whole answers are settled at
//     message_start's input plus message_delta's output, a client may
//     authenticate with x-api-key or a bearer token, and the gateway's own
//     errors are in Anthropic's format;
//   - metrics: a scrape of /metrics after a known mix of traffic counts it
//     exactly (admitted and refused per tier, rejections by status, the
//     upstream's answers, a complete stream, tokens settled at the usage the
//     clients saw); /healthz answers on both ports;
//   - connection reuse: ten calls through the gateway open one upstream
//     connection (the mock counts them), ten without the pool open ten; a
//     pooled connection the upstream closed while idle is replaced, and no
//     request reaches the upstream twice; over HTTPS, a new connection
//     resumes the upstream's TLS session (one full handshake in three calls
//     without the pool), and the pool needs one handshake for three calls;
//   - reload: SIGHUP under load adds a key and changes a tier's weight while
//     every key keeps its state (a key that spent its burst is still
//     refused) and no request in flight fails; a bad file is refused with a
//     log line and the configuration in use stays.
//
//   usage: stream_gateway MOCK_BINARY GATEWAY_BINARY WORK_DIR

#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <map>
#include <stdexcept>
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
using namespace tge2e::raw;

// A whole chunked response (through its last, empty chunk).
std::string read_chunked(int fd) { return read_until(fd, kLastChunk); }

// The JSON objects on the `data:` lines of a stream's body (chunk framing
// lines are not JSON and are skipped).
std::vector<json> data_objects(const std::string& body) {
  std::vector<json> out;
  std::size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const std::size_t end = body.find('\n', at);
    const json j = json::parse(body.substr(at + 6, end - at - 6), nullptr, false);
    if (j.is_object()) out.push_back(j);
    at = end;
  }
  return out;
}

json mock_stats(unsigned short mock_port) {
  const std::string r = once(mock_port, "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  return json::parse(body_of(r), nullptr, false);
}

// The gateway's request log lines, in order.
std::vector<json> request_lines(const std::string& log) {
  std::vector<json> out;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.value("event", "") == "request") out.push_back(j);
  }
  return out;
}

std::string header_value(const std::string& response, const std::string& name) {
  std::istringstream in(response.substr(0, response.find("\r\n\r\n")));
  for (std::string line; std::getline(in, line);) {
    std::string lower = line;
    for (auto& ch : lower) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    if (lower.rfind(name + ":", 0) == 0) {
      std::string v = line.substr(name.size() + 1);
      while (!v.empty() && (v.front() == ' ')) v.erase(0, 1);
      while (!v.empty() && (v.back() == '\r' || v.back() == ' ')) v.pop_back();
      return v;
    }
  }
  return "";
}

Child start_gateway(const std::string& gateway_bin, const std::string& upstream, const std::string& key,
                    std::vector<std::string> extra) {
  std::vector<std::string> args = {gateway_bin, "--listen", "127.0.0.1:0", "--upstream", upstream, "--max-wait-ms", "2000"};
  args.insert(args.end(), extra.begin(), extra.end());
  Child c;
  spawn(c, args, {{{"TOLLGATE_UPSTREAM_KEY", key}}, 0});
  return c;
}

int stop(Child& c) {
  kill(c.pid, SIGTERM);
  return finish(c);
}

void openai_phase(const std::string& gateway_bin, const std::string& upstream, unsigned short mock_port, const std::string& key) {
  Child gw = start_gateway(gateway_bin, upstream, key,
                           {"--rpm", "600000", "--tpm", "600000000", "--tier", "big:600000:600000000", "--key", "sk-stream:big"});
  const unsigned short port = port_of(gw.first_line);
  const std::string ask = R"({"model":"mock-1","messages":[{"role":"user","content":"stream me something"}],"max_tokens":80,"stream":true)";
  std::map<std::string, std::int64_t> totals;  // what each answer's usage said

  // Two streams and a whole answer on one connection.
  const int fd = connect_to(port);
  send_all(fd, post("/v1/chat/completions", "sk-stream", ask + "}"));
  const std::string plain = read_chunked(fd);
  check(status_of(plain) == 200 && header_value(plain, "content-type") == "text/event-stream" &&
            header_value(plain, "transfer-encoding") == "chunked",
        "openai: a streamed answer is a chunked text/event-stream");
  const auto chunks = data_objects(plain);
  bool any_usage = false, content = false;
  for (const json& c : chunks) {
    if (c.contains("usage") && c["usage"].is_object()) any_usage = true;
    if (c.value("object", "") == "chat.completion.chunk" && !c["choices"].empty()) content = true;
  }
  check(content && plain.find("data: [DONE]") != std::string::npos, "openai: content chunks, then data: [DONE]");
  check(!any_usage, "openai: the usage chunk the gateway asked for is kept from a client that did not ask");

  send_all(fd, post("/v1/chat/completions", "sk-stream", ask + R"(,"stream_options":{"include_usage":true}})"));
  const std::string with_usage = read_chunked(fd);
  for (const json& c : data_objects(with_usage))
    if (c.contains("usage") && c["usage"].is_object()) totals["asked"] = c["usage"].value("total_tokens", -1);
  check(status_of(with_usage) == 200 && totals.count("asked"),
        "openai: a client that asked for the usage chunk gets it (same connection, after a stream)");

  send_all(fd, post("/v1/chat/completions", "sk-stream", R"({"model":"mock-1","messages":[{"role":"user","content":"whole"}],"max_tokens":80})"));
  const std::string whole = read_response(fd);
  const json answer = json::parse(body_of(whole), nullptr, false);
  if (answer.is_object() && answer.contains("usage")) totals["whole"] = answer["usage"].value("total_tokens", -1);
  check(status_of(whole) == 200 && totals.count("whole"), "openai: a whole answer on the same connection");
  close(fd);

  // A client that goes away mid-stream: 2,000 events 10 ms apart (20 s).
  const long cut_before = mock_stats(mock_port).value("streams_cut", -1L);
  const int quitter = connect_to(port);
  send_all(quitter, post("/v1/chat/completions", "sk-stream",
                         ask + R"(,"mock_chunks":2000,"mock_chunk_ms":10})"));
  const std::string first = read_until(quitter, "chat.completion.chunk");
  const bool had_event = first.find("chat.completion.chunk") != std::string::npos;
  close(quitter);
  long cut_after = cut_before;
  for (int i = 0; i < 300 && cut_after <= cut_before; ++i) {  // up to 30 s
    std::this_thread::sleep_for(100ms);
    cut_after = mock_stats(mock_port).value("streams_cut", -1L);
  }
  check(had_event && cut_after == cut_before + 1,
        "openai: the client had an event while the upstream was still producing, then left: the upstream call was "
        "cancelled (mock streams_cut " + std::to_string(cut_before) + " -> " + std::to_string(cut_after) + ")");
  const std::string after = once_stream(port, post("/v1/chat/completions", "sk-stream", ask + "}"));
  check(status_of(after) == 200, "openai: the gateway serves the next client");

  const int code = stop(gw);
  check(code == 0, "openai: the gateway exits 0");
  const auto lines = request_lines(gw.rest);
  check(lines.size() == 5, "openai: one log line per request (" + std::to_string(lines.size()) + ")");
  if (lines.size() == 5) {
    check(lines[1].value("actual", -1.0) == double(totals["asked"]),
          "openai: the stream is settled at its reported usage (" + lines[1].dump() + ")");
    check(lines[2].value("actual", -1.0) == double(totals["whole"]), "openai: the whole answer at its usage");
    const double a0 = lines[0].value("actual", -1.0), e0 = lines[0].value("est", -1.0);
    check(a0 > 0 && a0 < e0 && !lines[0].contains("note"),
          "openai: the stream whose usage chunk was dropped is settled at that usage, below the estimate (" +
              lines[0].dump() + ")");
    check(lines[3].value("note", "").rfind("client_gone", 0) == 0 && lines[3].value("actual", -1.0) == lines[3].value("est", -2.0),
          "openai: the cut stream is logged client_gone and keeps its estimate (" + lines[3].dump() + ")");
  }
}

void anthropic_phase(const std::string& gateway_bin, const std::string& upstream, const std::string& key) {
  Child gw = start_gateway(gateway_bin, upstream, key,
                           {"--provider", "anthropic", "--rpm", "600000", "--itpm", "600000000", "--otpm", "600000000",
                            "--tier", "big:rpm=600000:otpm=600000000:weight=2", "--key", "sk-claude:big"});
  const unsigned short port = port_of(gw.first_line);
  const std::string ask =
      R"({"model":"claude-mock","system":"be brief","messages":[{"role":"user","content":[{"type":"text","text":"stream me"}]}],"max_tokens":200)";

  const std::string streamed = once_stream(port, post("/v1/messages", "", ask + R"(,"stream":true})", "x-api-key: sk-claude\r\n"));
  std::int64_t input = -1, output = -1;
  std::vector<std::string> types;
  for (const json& e : data_objects(streamed)) {
    types.push_back(e.value("type", ""));
    if (types.back() == "message_start") input = e["message"]["usage"].value("input_tokens", -1);
    if (types.back() == "message_delta") output = e["usage"].value("output_tokens", -1);
  }
  check(status_of(streamed) == 200 && !types.empty() && types.front() == "message_start" && types.back() == "message_stop" &&
            input > 0 && output > 0,
        "anthropic: a streamed answer, message_start to message_stop (" + std::to_string(types.size()) + " events)");

  const std::string whole = once(port, post("/v1/messages", "sk-claude", ask + "}"));
  const json answer = json::parse(body_of(whole), nullptr, false);
  std::int64_t whole_total = -1;
  if (answer.is_object() && answer.contains("usage"))
    whole_total = answer["usage"].value("input_tokens", 0) + answer["usage"].value("output_tokens", 0);
  check(status_of(whole) == 200 && whole_total > 0,
        "anthropic: a whole answer, with a bearer token (the mock required x-api-key and anthropic-version)");

  const std::string unknown = once(port, post("/v1/messages", "", ask + "}", "x-api-key: sk-nobody\r\n"));
  const json err = json::parse(body_of(unknown), nullptr, false);
  check(status_of(unknown) == 401 && err.is_object() && err.value("type", "") == "error" &&
            err["error"].value("type", "") == "authentication_error",
        "anthropic: an unknown key gets 401 in Anthropic's error format");
  const std::string openai_path = once(port, post("/v1/chat/completions", "sk-claude", "{}"));
  check(status_of(openai_path) == 404, "anthropic: OpenAI's paths are not served by an Anthropic gateway");

  const int code = stop(gw);
  check(code == 0, "anthropic: the gateway exits 0");
  const auto lines = request_lines(gw.rest);
  check(lines.size() == 4 && lines[0].value("actual", -1.0) == double(input + output) &&
            lines[1].value("actual", -1.0) == double(whole_total),
        "anthropic: both settled at input + output as reported (" + (lines.empty() ? std::string() : lines[0].dump()) + ")");
}

// The sum of a metric's samples whose labels include every one of `with`
// (e.g. {"tier=\"big\"", "outcome=\"admitted\""}), from the text format.
double metric(const std::string& text, const std::string& name, const std::vector<std::string>& with = {}) {
  double sum = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const std::size_t end = line.find_first_of("{ ");
    if (line.substr(0, end) != name) continue;
    const std::string labels = line[end] == '{' ? line.substr(end, line.find('}') - end + 1) : "";
    bool all = true;
    for (const auto& l : with) all = all && labels.find(l) != std::string::npos;
    if (all) sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

void metrics_phase(const std::string& gateway_bin, const std::string& upstream, const std::string& key) {
  Child gw = start_gateway(gateway_bin, upstream, key,
                           {"--metrics-listen", "127.0.0.1:0", "--rpm", "600000", "--tpm", "600000000", "--tier",
                            "big:600000:600000000", "--tier", "tiny:rpm=6:burst=10", "--key", "sk-m-big:big", "--key",
                            "sk-m-tiny:tiny"});
  const unsigned short port = port_of(gw.first_line);
  const auto second = gw.first_line.find("127.0.0.1:", gw.first_line.find("metrics on"));
  const unsigned short metrics_port = port_of(gw.first_line.substr(second));
  const std::string chat = R"({"model":"mock-1","messages":[{"role":"user","content":"count me"}],"max_tokens":60)";
  double seen_tokens = 0;  // the usage the clients were told
  int ok = 0;
  for (int i = 0; i < 4; ++i) {
    const std::string r = once(port, post("/v1/chat/completions", "sk-m-big", chat + R"(,"n":)" + std::to_string(i) + "}"));
    const json a = json::parse(body_of(r), nullptr, false);
    if (status_of(r) == 200 && a.is_object() && a.contains("usage")) {
      ++ok;
      seen_tokens += a["usage"].value("total_tokens", 0);
    }
  }
  const std::string streamed =
      once_stream(port, post("/v1/chat/completions", "sk-m-big", chat + R"(,"stream":true,"stream_options":{"include_usage":true}})"));
  for (const json& c : data_objects(streamed))
    if (c.contains("usage") && c["usage"].is_object()) {
      ++ok;
      seen_tokens += c["usage"].value("total_tokens", 0);
    }
  std::vector<int> tiny;
  for (int i = 0; i < 3; ++i) tiny.push_back(status_of(once(port, post("/v1/chat/completions", "sk-m-tiny", chat + "}"))));
  const int u1 = status_of(once(port, post("/v1/chat/completions", "sk-nobody", chat + "}")));
  const int u2 = status_of(once(port, post("/v1/chat/completions", "", chat + "}")));
  const int nf = status_of(once(port, post("/v1/files", "sk-m-big", "{}")));
  const int h1 = status_of(once(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
  const int h2 = status_of(once(metrics_port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
  check(ok == 5 && tiny == std::vector<int>{200, 429, 429} && u1 == 401 && u2 == 401 && nf == 404 && h1 == 200 && h2 == 200,
        "metrics: the traffic (5 big, tiny 200/429/429, two 401s, a 404, two health checks)");
  const std::string scraped = body_of(once(metrics_port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  const auto count = [&](const std::string& name, const std::vector<std::string>& with = {}) { return metric(scraped, name, with); };
  check(count("tollgate_gateway_requests_total", {"tier=\"big\"", "outcome=\"admitted\""}) == 5 &&
            count("tollgate_gateway_requests_total", {"tier=\"tiny\"", "outcome=\"admitted\""}) == 1 &&
            count("tollgate_gateway_requests_total", {"tier=\"tiny\"", "outcome=\"refused\""}) == 2,
        "metrics: requests per tier and outcome match the traffic");
  check(count("tollgate_gateway_rejected_total", {"status=\"401\""}) == 2 &&
            count("tollgate_gateway_rejected_total", {"status=\"404\""}) == 1 && count("tollgate_gateway_rejected_total") == 3,
        "metrics: rejections by status (health checks are not counted)");
  check(count("tollgate_gateway_upstream_responses_total", {"status=\"200\""}) == 6 &&
            count("tollgate_gateway_upstream_responses_total") == 6 && count("tollgate_gateway_streams_total", {"complete"}) == 1,
        "metrics: six upstream 200s, one complete stream");
  check(count("tollgate_gateway_tokens_total", {"tier=\"big\"", "kind=\"settled\""}) == seen_tokens,
        "metrics: the big tier's settled tokens are the usage its clients saw (" + std::to_string(seen_tokens) + ")");
  check(count("tollgate_gateway_wait_seconds_count") == 6 && count("tollgate_gateway_queued") == 0 &&
            count("tollgate_gateway_limit_rate", {"dimension=\"requests\""}) == 10000,
        "metrics: six waits observed, none queued now, the requests dimension at 10,000/s");
  const int code = stop(gw);
  check(code == 0, "metrics: the gateway exits 0");
}

long stat(unsigned short mock_port, const char* name) { return mock_stats(mock_port).value(name, -1L); }

void pool_phase(const std::string& mock_bin, const std::string& gateway_bin, const std::string& key) {
  Child mock;  // closes a keep-alive connection idle for 300 ms
  spawn(mock, {mock_bin, "--listen", "127.0.0.1:0", "--rpm", "600000", "--tpm", "600000000", "--latency-ms", "1",
               "--keepalive-ms", "300", "--require-key-env", "MOCK_KEY"},
        {{{"MOCK_KEY", key}}, 0});
  const unsigned short mock_port = port_of(mock.first_line);
  const std::string upstream = "http://127.0.0.1:" + std::to_string(mock_port);
  const std::string chat = R"({"model":"mock-1","messages":[{"role":"user","content":"again"}],"max_tokens":20})";
  const std::vector<std::string> common = {"--rpm", "600000", "--tpm", "600000000", "--tier", "big:600000:600000000",
                                           "--key", "sk-pool:big"};
  for (const bool pooled : {true, false}) {
    std::vector<std::string> extra = common;
    if (!pooled) extra.insert(extra.end(), {"--upstream-connections", "0"});
    Child gw = start_gateway(gateway_bin, upstream, key, extra);
    const unsigned short port = port_of(gw.first_line);
    const json before = mock_stats(mock_port);  // one connection of its own
    int ok = 0;
    const int fd = connect_to(port);
    for (int i = 0; i < 10; ++i) {
      send_all(fd, post("/v1/chat/completions", "sk-pool", chat));
      ok += status_of(read_response(fd)) == 200;
    }
    close(fd);
    const json after = mock_stats(mock_port);
    const long opened = after.value("connections", 0L) - before.value("connections", 0L) - 1;  // less this /stats call's own
    check(ok == 10 && after.value("received", 0L) - before.value("received", 0L) == 10 && opened == (pooled ? 1 : 10),
          std::string(pooled ? "pool" : "no pool") + ": 10 calls opened " + std::to_string(opened) +
              " upstream connection(s)");
    if (pooled) {
      // Idle past the upstream's keep-alive: the pooled connection is closed
      // by the mock; the next call finds that out and opens a new one.
      std::this_thread::sleep_for(800ms);
      const long r1 = stat(mock_port, "received");
      const int s = status_of(once(port, post("/v1/chat/completions", "sk-pool", chat)));
      check(s == 200 && stat(mock_port, "received") - r1 == 1,
            "pool: a pooled connection the upstream closed is replaced; the call reaches it once");
    }
    check(stop(gw) == 0, std::string(pooled ? "pool" : "no pool") + ": the gateway exits 0");
  }
  kill(mock.pid, SIGTERM);
  finish(mock);
}

void tls_phase(const std::string& mock_bin, const std::string& gateway_bin, const std::string& key, const std::string& work) {
  (void)std::system(("mkdir -p '" + work + "'").c_str());
  Child mock;
  spawn(mock, {mock_bin, "--listen", "127.0.0.1:0", "--rpm", "600000", "--tpm", "600000000", "--latency-ms", "1",
               "--tls-dir", work, "--require-key-env", "MOCK_KEY"},
        {{{"MOCK_KEY", key}}, 0});
  const std::string upstream = "https://127.0.0.1:" + std::to_string(port_of(mock.first_line));
  const std::string chat = R"({"model":"mock-1","messages":[{"role":"user","content":"over TLS"}],"max_tokens":20})";
  for (const bool pooled : {false, true}) {
    std::vector<std::string> extra = {"--upstream-ca", work + "/cert.pem", "--metrics-listen", "127.0.0.1:0", "--rpm", "600000",
                                      "--tpm", "600000000", "--tier", "big:600000:600000000", "--key", "sk-tls:big"};
    if (!pooled) extra.insert(extra.end(), {"--upstream-connections", "0"});
    Child gw = start_gateway(gateway_bin, upstream, key, extra);
    const unsigned short port = port_of(gw.first_line);
    const unsigned short metrics_port = port_of(gw.first_line.substr(gw.first_line.find("metrics on")));
    int ok = 0;
    for (int i = 0; i < 3; ++i) ok += status_of(once(port, post("/v1/chat/completions", "sk-tls", chat))) == 200;
    const std::string m = body_of(once(metrics_port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    const double full = metric(m, "tollgate_gateway_upstream_connections_total", {"event=\"tls_full\""});
    const double resumed = metric(m, "tollgate_gateway_upstream_connections_total", {"event=\"tls_resumed\""});
    const double reused = metric(m, "tollgate_gateway_upstream_connections_total", {"event=\"reused\""});
    check(ok == 3 && full == 1 && (pooled ? resumed == 0 && reused == 2 : resumed == 2),
          std::string(pooled ? "tls, pooled" : "tls, no pool") + ": 3 calls, " + std::to_string(int(full)) +
              " full handshake(s), " + std::to_string(int(resumed)) + " resumed, " + std::to_string(int(reused)) +
              " pooled reuse(s)");
    check(stop(gw) == 0, std::string(pooled ? "tls, pooled" : "tls, no pool") + ": the gateway exits 0");
  }
  kill(mock.pid, SIGTERM);
  finish(mock);
}

void write_file(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throw std::runtime_error("cannot write " + path);
  std::fputs(text.c_str(), f);
  std::fclose(f);
}

void reload_phase(const std::string& gateway_bin, const std::string& upstream, const std::string& key, const std::string& work) {
  (void)std::system(("mkdir -p '" + work + "'").c_str());
  const std::string conf = work + "/gateway.conf";
  const std::string tiers = "tier small rpm=6 burst=10\ntier big rpm=600000 tpm=600000000\nkey sk-r3 big\n";
  write_file(conf, tiers + "key sk-r1 small\n");  // small: 1 request of burst, then 1 every 10 s
  Child gw = start_gateway(gateway_bin, upstream, key,
                           {"--config", conf, "--rpm", "600000", "--tpm", "600000000", "--metrics-listen", "127.0.0.1:0"});
  const unsigned short port = port_of(gw.first_line);
  const unsigned short metrics_port = port_of(gw.first_line.substr(gw.first_line.find("metrics on")));
  const std::string chat = R"({"model":"mock-1","messages":[{"role":"user","content":"reload"}],"max_tokens":20})";
  const auto call = [&](const char* k) { return status_of(once(port, post("/v1/chat/completions", k, chat))); };
  const auto reloads = [&](const char* result) {
    return metric(body_of(once(metrics_port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")), "tollgate_gateway_reloads_total",
                  {std::string("result=\"") + result + "\""});
  };
  const auto wait_for = [&](const char* result) {
    for (int i = 0; i < 200 && reloads(result) < 1; ++i) std::this_thread::sleep_for(50ms);
    return reloads(result) >= 1;
  };
  const int r1a = call("sk-r1"), r1b = call("sk-r1"), r2a = call("sk-r2");
  check(r1a == 200 && r1b == 429 && r2a == 401, "reload: before, sk-r1 spends its burst (200, 429), sk-r2 is unknown (401)");

  // Load through the reloads: a big-tier key on one keep-alive connection.
  std::atomic<bool> done{false};
  std::atomic<int> load_ok{0}, load_bad{0};
  std::thread load([&] {
    const int fd = connect_to(port);
    while (!done) {
      send_all(fd, post("/v1/chat/completions", "sk-r3", chat));
      (status_of(read_response(fd)) == 200 ? load_ok : load_bad)++;
    }
    close(fd);
  });
  write_file(conf, "tier small rpm=6 burst=10 weight=5\ntier big rpm=600000 tpm=600000000\nkey sk-r3 big\n"
                   "key sk-r1 small\nkey sk-r2 small\n");
  kill(gw.pid, SIGHUP);
  const bool reloaded = wait_for("ok");
  const int r1c = call("sk-r1"), r2b = call("sk-r2");
  check(reloaded && r1c == 429 && r2b == 200,
        "reload: a new key is admitted (" + std::to_string(r2b) + ") and a known key keeps its spent burst (" +
            std::to_string(r1c) + ")");
  write_file(conf, "tier small rpm=abc\n");
  kill(gw.pid, SIGHUP);
  const bool rejected = wait_for("rejected");
  const int r2c = call("sk-r2");
  check(rejected && r2c == 429, "reload: a bad file is refused; the configuration and the key's state stay (" +
                                    std::to_string(r2c) + ")");
  done = true;
  load.join();
  check(load_ok > 0 && load_bad == 0, "reload: requests in flight through both reloads all answered 200 (" +
                                          std::to_string(load_ok.load()) + " of " +
                                          std::to_string(load_ok + load_bad) + ")");
  check(stop(gw) == 0, "reload: the gateway exits 0");
  check(gw.rest.find("\"reload_rejected\"") != std::string::npos && gw.rest.find("rpm must be a number") != std::string::npos,
        "reload: the refusal is logged, naming what was wrong");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) return std::fprintf(stderr, "usage: stream_gateway MOCK GATEWAY WORKDIR\n"), 2;
  const std::string mock_bin = argv[1], gateway_bin = argv[2];
  signal(SIGPIPE, SIG_IGN);
  const std::string key = "sk-upstream-stream-secret";
  Child mock;
  spawn(mock,
        {mock_bin, "--listen", "127.0.0.1:0", "--rpm", "600000", "--tpm", "600000000", "--itpm", "600000000", "--otpm",
         "600000000", "--latency-ms", "1", "--chunk-ms", "1", "--require-key-env", "MOCK_KEY"},
        {{{"MOCK_KEY", key}}, 0});
  const unsigned short mock_port = port_of(mock.first_line);
  const std::string upstream = "http://127.0.0.1:" + std::to_string(mock_port);
  openai_phase(gateway_bin, upstream, mock_port, key);
  anthropic_phase(gateway_bin, upstream, key);
  metrics_phase(gateway_bin, upstream, key);
  pool_phase(mock_bin, gateway_bin, key);
  tls_phase(mock_bin, gateway_bin, key, std::string(argv[3]) + "/tls");
  reload_phase(gateway_bin, upstream, key, std::string(argv[3]) + "/reload");
  kill(mock.pid, SIGTERM);
  finish(mock);
  std::printf("%s: %d failure(s)\n", tge2e::failures ? "FAILED" : "passed", tge2e::failures);
  return tge2e::failures ? 1 : 0;
}
