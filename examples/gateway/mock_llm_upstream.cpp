// mock_llm_upstream: an OpenAI-compatible mock provider with limits of its own.
//
//   mock_llm_upstream --listen 127.0.0.1:0 [--port-file F] [--rpm 600] [--tpm 60000]
//                     [--burst-seconds 60] [--tls-dir DIR] [--latency-ms 20]
//                     [--require-key-env VAR]   (the key a caller must present, from the environment)
//
// POST /v1/chat/completions (and /v1/completions, /v1/responses,
// /v1/embeddings) is billed like a provider: prompt tokens (the estimate in
// llm_common.hpp) plus max_tokens are taken from its token bucket at
// admission, and the unused part of max_tokens is given back when the answer
// is complete. Answers carry `usage` and OpenAI's x-ratelimit-* headers; a
// request beyond either limit gets 429 with Retry-After and retry-after-ms.
// GET /v1/models answers a model list, GET /stats the mock's counters
// (`received` counts every request on any path). For tests of a hostile
// upstream, a request body's "mock_usage" is sent back verbatim as `usage`
// (the string "omit": no usage at all). With --tls-dir it serves HTTPS with
// a self-signed certificate it writes to DIR/cert.pem.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <string>

#include "llm_common.hpp"

namespace {

using namespace llm;
using Clock = std::chrono::steady_clock;

// The provider's own limit: a plain token bucket, independent of tollgate.
struct ProviderBucket {
  double capacity, rate, tokens;
  Clock::time_point last = Clock::now();
  ProviderBucket(double per_minute, double burst_seconds)
      : capacity(per_minute / 60.0 * burst_seconds), rate(per_minute / 60.0), tokens(capacity) {}
  void refill(Clock::time_point now) {
    tokens = std::min(capacity, tokens + rate * std::chrono::duration<double>(now - last).count());
    last = now;
  }
  double wait_for(double n) const { return tokens >= n ? 0.0 : (n - tokens) / rate; }
  double reset() const { return (capacity - tokens) / rate; }
};

struct Mock {
  ProviderBucket requests, tokens;
  std::chrono::milliseconds latency;
  long served = 0, refused = 0, bad = 0, received = 0;
  std::string required_key{};  // --require-key: billed paths answer 401 without "Authorization: Bearer <it>"
  long long next_id = 1;
};

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3fs", std::max(0.0, s));
  return buf;
}

template <class Body>
void rate_headers(http::response<Body>& res, const Mock& m) {
  res.set("x-ratelimit-limit-requests", std::to_string(std::llround(m.requests.rate * 60)));
  res.set("x-ratelimit-remaining-requests", std::to_string(static_cast<long long>(std::floor(m.requests.tokens))));
  res.set("x-ratelimit-reset-requests", seconds_text(m.requests.reset()));
  res.set("x-ratelimit-limit-tokens", std::to_string(std::llround(m.tokens.rate * 60)));
  res.set("x-ratelimit-remaining-tokens", std::to_string(static_cast<long long>(std::floor(m.tokens.tokens))));
  res.set("x-ratelimit-reset-tokens", seconds_text(m.tokens.reset()));
}

http::response<http::string_body> reply(const http::request<http::string_body>& req, http::status s, const json& body) {
  http::response<http::string_body> res{s, req.version()};
  res.set(http::field::content_type, "application/json");
  res.keep_alive(req.keep_alive());
  res.body() = body.dump();
  res.prepare_payload();
  return res;
}

net::awaitable<http::response<http::string_body>> handle(Mock& m, const http::request<http::string_body>& req) {
  const std::string target(req.target());
  if (req.method() == http::verb::get && target == "/stats")
    co_return reply(req, http::status::ok, json{{"served", m.served}, {"refused", m.refused}, {"bad", m.bad}, {"received", m.received}});
  ++m.received;
  if (req.method() == http::verb::get && target == "/v1/models")
    co_return reply(req, http::status::ok, json{{"object", "list"}, {"data", json::array({json{{"id", "mock-1"}, {"object", "model"}}})}});
  const bool billed = target == "/v1/chat/completions" || target == "/v1/completions" || target == "/v1/responses" ||
                      target == "/v1/embeddings";
  if (req.method() != http::verb::post || !billed)
    co_return reply(req, http::status::not_found, json{{"error", {{"message", "no such path"}, {"type", "invalid_request_error"}}}});
  if (!m.required_key.empty() && req[http::field::authorization] != "Bearer " + m.required_key)
    co_return reply(req, http::status::unauthorized, json{{"error", {{"message", "bad key"}, {"type", "invalid_api_key"}}}});
  const json body = json::parse(req.body(), nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    ++m.bad;
    co_return reply(req, http::status::bad_request, json{{"error", {{"message", "body is not JSON"}, {"type", "invalid_request_error"}}}});
  }
  const double prompt = double(prompt_tokens(body));
  const double most = double(max_tokens(body, 256));
  const auto now = Clock::now();
  m.requests.refill(now);
  m.tokens.refill(now);
  const double wait = std::max(m.requests.wait_for(1), m.tokens.wait_for(prompt + most));
  if (wait > 0) {
    ++m.refused;
    auto res = reply(req, http::status::too_many_requests,
                     json{{"error", {{"message", "Rate limit reached"}, {"type", "requests"}, {"code", "rate_limit_exceeded"}}}});
    res.set(http::field::retry_after, std::to_string(static_cast<long long>(std::ceil(wait))));
    res.set("retry-after-ms", std::to_string(static_cast<long long>(std::ceil(wait * 1000))));
    rate_headers(res, m);
    co_return res;
  }
  m.requests.tokens -= 1;
  m.tokens.tokens -= prompt + most;
  // A deterministic output length between a quarter of max_tokens and all of it.
  const auto h = std::hash<std::string>{}(req.body());
  const double completion = std::floor(most / 4 + double(h % 1000) / 1000.0 * (most - most / 4));
  net::steady_timer t(co_await net::this_coro::executor, m.latency);
  co_await t.async_wait(net::use_awaitable);
  m.tokens.refill(Clock::now());
  m.tokens.tokens = std::min(m.tokens.capacity, m.tokens.tokens + (most - completion));  // reconciled
  m.requests.refill(Clock::now());
  ++m.served;
  json answer = {{"id", "chatcmpl-" + std::to_string(m.next_id++)},
                 {"object", "chat.completion"},
                 {"model", body.contains("model") && body["model"].is_string() ? body["model"] : json("mock-1")},
                 {"choices", json::array({json{{"index", 0},
                                               {"message", {{"role", "assistant"}, {"content", "ok"}}},
                                               {"finish_reason", "stop"}}})},
                 {"usage",
                  {{"prompt_tokens", std::int64_t(prompt)},
                   {"completion_tokens", std::int64_t(completion)},
                   {"total_tokens", std::int64_t(prompt + completion)}}}};
  if (body.contains("mock_usage")) {  // a hostile upstream, for tests
    if (body["mock_usage"] == "omit") answer.erase("usage");
    else answer["usage"] = body["mock_usage"];
  }
  auto res = reply(req, http::status::ok, answer);
  rate_headers(res, m);
  co_return res;
}

template <class Stream>
net::awaitable<void> serve(Mock& m, Stream& stream) {
  beast::flat_buffer buffer;
  for (;;) {
    http::request<http::string_body> req;
    auto [ec, n] = co_await http::async_read(stream, buffer, req, net::as_tuple(net::use_awaitable));
    if (ec) co_return;
    http::response<http::string_body> res = co_await handle(m, req);
    const bool keep = res.keep_alive();
    auto [wec, wn] = co_await http::async_write(stream, res, net::as_tuple(net::use_awaitable));
    if (wec || !keep) co_return;
  }
}

net::awaitable<void> session(Mock& m, tcp::socket socket, ssl::context* tls) {
  if (tls) {
    ssl::stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), *tls);
    auto [ec] = co_await stream.async_handshake(ssl::stream_base::server, net::as_tuple(net::use_awaitable));
    if (ec) co_return;
    co_await serve(m, stream);
    auto [sec] = co_await stream.async_shutdown(net::as_tuple(net::use_awaitable));
    (void)sec;
  } else {
    beast::tcp_stream stream(std::move(socket));
    co_await serve(m, stream);
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }
}

net::awaitable<void> listen(Mock& m, tcp::acceptor& acceptor, ssl::context* tls) {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(net::as_tuple(net::use_awaitable));
    if (ec) co_return;
    net::co_spawn(acceptor.get_executor(), session(m, std::move(socket), tls), net::detached);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen_at = "127.0.0.1:0", port_file, tls_dir, key_env;
  double rpm = 600, tpm = 60000, burst = 60;
  int latency_ms = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--listen") listen_at = value();
    else if (a == "--port-file") port_file = value();
    else if (a == "--rpm") rpm = std::stod(value());
    else if (a == "--tpm") tpm = std::stod(value());
    else if (a == "--burst-seconds") burst = std::stod(value());
    else if (a == "--tls-dir") tls_dir = value();
    else if (a == "--latency-ms") latency_ms = std::stoi(value());
    else if (a == "--require-key-env") key_env = value();
    else {
      std::fprintf(stderr, "mock_llm_upstream: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  net::io_context io(1);
  Mock mock{ProviderBucket(rpm, burst), ProviderBucket(tpm, burst), std::chrono::milliseconds(latency_ms)};
  if (!key_env.empty()) {
    const char* k = std::getenv(key_env.c_str());
    if (!k || !*k) return std::fprintf(stderr, "mock_llm_upstream: %s is not set\n", key_env.c_str()), 2;
    mock.required_key = k;
  }
  std::optional<ssl::context> tls;
  if (!tls_dir.empty()) {
    write_self_signed(tls_dir + "/cert.pem", tls_dir + "/key.pem");
    tls.emplace(ssl::context::tls_server);
    tls->use_certificate_chain_file(tls_dir + "/cert.pem");
    tls->use_private_key_file(tls_dir + "/key.pem", ssl::context::pem);
  }
  tcp::acceptor acceptor(io, parse_listen(listen_at));
  const unsigned short port = acceptor.local_endpoint().port();
  if (!port_file.empty()) std::ofstream(port_file) << port << '\n';
  std::printf("mock_llm_upstream: %s://127.0.0.1:%u, %.0f RPM, %.0f TPM\n", tls ? "https" : "http", port, rpm, tpm);
  std::fflush(stdout);
  net::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const auto&, int) { io.stop(); });
  net::co_spawn(io, listen(mock, acceptor, tls ? &*tls : nullptr), net::detached);
  io.run();
  std::printf("mock_llm_upstream: served=%ld refused=%ld bad=%ld received=%ld\n", mock.served, mock.refused, mock.bad,
              mock.received);
  return 0;
}
