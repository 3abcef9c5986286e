// mock_llm_upstream: a mock provider with limits of its own, speaking
// OpenAI's API and Anthropic's Messages API, streamed or not.
//
//   mock_llm_upstream --listen 127.0.0.1:0 [--port-file F] [--rpm 600] [--tpm 60000]
//                     [--itpm 40000] [--otpm 8000] [--burst-seconds 60]
//                     [--tls-dir DIR] [--latency-ms 20] [--chunk-ms 2] [--keepalive-ms 60000]
//                     [--require-key-env VAR]   (the key a caller must present, from the environment)
//
// OpenAI: POST /v1/chat/completions (and /v1/completions, /v1/responses,
// /v1/embeddings) is billed like OpenAI bills: prompt tokens (the estimate
// in llm_common.hpp) plus max_tokens are taken from its token bucket at
// admission, and the unused part of max_tokens is given back when the answer
// is complete; answers carry `usage` and the x-ratelimit-* headers.
// Anthropic: POST /v1/messages (`x-api-key`, `anthropic-version` required)
// meters requests, input tokens (at admission) and output tokens (as
// produced: charged when the answer is complete, refused while that bucket
// is empty) separately, with the anthropic-ratelimit-* headers (RFC 3339
// resets). A request beyond a limit gets 429 with Retry-After (and OpenAI's
// retry-after-ms).
//
// `"stream": true` answers are server-sent events, one every --chunk-ms
// after --latency-ms: OpenAI's chat.completion.chunk objects (a final usage
// chunk with `stream_options.include_usage`, then `data: [DONE]`),
// Anthropic's message_start ... message_delta (usage) ... message_stop. A
// stream whose reader goes away is cut and counted (`streams_cut`).
//
// A keep-alive connection idle for --keepalive-ms is closed (as providers
// close idle connections). GET /v1/models answers a model list, GET /stats the mock's counters
// (`received` counts every request on any path, `connections` every
// accepted connection, `tls_resumed` the TLS handshakes that resumed a session). For tests of a hostile upstream, a request body's
// "mock_usage" is sent back verbatim as `usage` (the string "omit": no usage
// at all), "mock_chunks" sets how many content events a stream has (up to
// 100,000), "mock_chunk_ms" their spacing, and "mock_huge_event" puts an
// event of that many bytes (up to 8 MiB) first. With --tls-dir it serves HTTPS
// with a self-signed certificate it writes to DIR/cert.pem.

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

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
  ProviderBucket requests, tokens, input, output;
  std::chrono::milliseconds latency, chunk_gap, keepalive;
  long served = 0, refused = 0, bad = 0, received = 0, connections = 0, streams = 0, streams_cut = 0, tls_resumed = 0;
  std::string required_key{};  // --require-key: billed paths answer 401 without it
  long long next_id = 1;
};

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3fs", std::max(0.0, s));
  return buf;
}

// An instant `s` seconds from now as RFC 3339 (UTC, whole seconds rounded up).
std::string rfc3339_in(double s) {
  const auto at = std::chrono::system_clock::now() + std::chrono::milliseconds(std::llround(std::max(0.0, s) * 1000));
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::ceil<std::chrono::seconds>(at));
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string count_text(double tokens) { return std::to_string(static_cast<long long>(std::max(0.0, std::floor(tokens)))); }

template <class Body>
void rate_headers(http::response<Body>& res, const Mock& m, bool anthropic) {
  if (anthropic) {
    using P = std::pair<const char*, const ProviderBucket*>;
    for (auto [name, b] : {P{"requests", &m.requests}, P{"input-tokens", &m.input}, P{"output-tokens", &m.output}}) {
      const std::string p = std::string("anthropic-ratelimit-") + name + "-";
      res.set(p + "limit", std::to_string(std::llround(b->rate * 60)));
      res.set(p + "remaining", count_text(b->tokens));
      res.set(p + "reset", rfc3339_in(b->reset()));
    }
    return;
  }
  using P = std::pair<const char*, const ProviderBucket*>;
  for (auto [name, b] : {P{"requests", &m.requests}, P{"tokens", &m.tokens}}) {
    res.set(std::string("x-ratelimit-limit-") + name, std::to_string(std::llround(b->rate * 60)));
    res.set(std::string("x-ratelimit-remaining-") + name, count_text(b->tokens));
    res.set(std::string("x-ratelimit-reset-") + name, seconds_text(b->reset()));
  }
}

http::response<http::string_body> reply(const http::request<http::string_body>& req, http::status s, const json& body) {
  http::response<http::string_body> res{s, req.version()};
  res.set(http::field::content_type, "application/json");
  res.keep_alive(req.keep_alive());
  res.body() = body.dump();
  res.prepare_payload();
  return res;
}

json error_body(bool anthropic, const char* type, const std::string& message) {
  if (anthropic) return json{{"type", "error"}, {"error", {{"type", type}, {"message", message}}}};
  return json{{"error", {{"message", message}, {"type", type}}}};
}

// An answer: whole, or a stream of server-sent events (written by `serve`).
struct Reply {
  http::response<http::string_body> whole;
  std::optional<std::vector<std::string>> events{};
  std::chrono::milliseconds gap{0};
  Reply(http::response<http::string_body> r, std::optional<std::vector<std::string>> e = {},
        std::chrono::milliseconds g = std::chrono::milliseconds(0))
      : whole(std::move(r)), events(std::move(e)), gap(g) {}
};

std::string sse(const json& data, const char* name = nullptr) {
  std::string e = name ? std::string("event: ") + name + "\n" : std::string();
  return e + "data: " + data.dump() + "\n\n";
}

// The events of a streamed answer of `completion` output tokens in `chunks`
// content events, ending with the usage each API reports.
std::vector<std::string> stream_events(bool anthropic, const json& body, const std::string& id, const json& model,
                                       double prompt, double completion, long chunks, const std::optional<json>& usage) {
  std::vector<std::string> out;
  if (anthropic) {
    json u = usage ? *usage : json{{"input_tokens", std::int64_t(prompt)}, {"output_tokens", std::int64_t(completion)}};
    out.push_back(sse({{"type", "message_start"},
                       {"message", {{"id", id}, {"type", "message"}, {"role", "assistant"}, {"model", model},
                                    {"content", json::array()},
                                    {"usage", {{"input_tokens", usage ? u.value("input_tokens", json()) : json(std::int64_t(prompt))},
                                               {"output_tokens", 1}}}}}},
                      "message_start"));
    out.push_back(sse({{"type", "content_block_start"}, {"index", 0}, {"content_block", {{"type", "text"}, {"text", ""}}}},
                      "content_block_start"));
    for (long i = 0; i < chunks; ++i)
      out.push_back(sse({{"type", "content_block_delta"}, {"index", 0}, {"delta", {{"type", "text_delta"}, {"text", "ok "}}}},
                        "content_block_delta"));
    out.push_back(sse({{"type", "content_block_stop"}, {"index", 0}}, "content_block_stop"));
    out.push_back(sse({{"type", "message_delta"},
                       {"delta", {{"stop_reason", "end_turn"}}},
                       {"usage", {{"output_tokens", usage ? u.value("output_tokens", json()) : json(std::int64_t(completion))}}}},
                      "message_delta"));
    out.push_back(sse({{"type", "message_stop"}}, "message_stop"));
    return out;
  }
  const bool include_usage = body.contains("stream_options") && body["stream_options"].is_object() &&
                             body["stream_options"].value("include_usage", false) == true;
  json u = usage ? *usage
                 : json{{"prompt_tokens", std::int64_t(prompt)},
                        {"completion_tokens", std::int64_t(completion)},
                        {"total_tokens", std::int64_t(prompt + completion)}};
  auto chunk = [&](json choices) {
    json c = {{"id", id}, {"object", "chat.completion.chunk"}, {"model", model}, {"choices", std::move(choices)}};
    if (include_usage) c["usage"] = nullptr;
    return c;
  };
  for (long i = 0; i < chunks; ++i)
    out.push_back(sse(chunk(json::array({json{{"index", 0}, {"delta", {{"content", "ok "}}}}}))));
  out.push_back(sse(chunk(json::array({json{{"index", 0}, {"delta", json::object()}, {"finish_reason", "stop"}}}))));
  if (include_usage && !(usage && *usage == "omit")) {
    json last = chunk(json::array());
    last["usage"] = u;
    out.push_back(sse(last));
  }
  out.push_back("data: [DONE]\n\n");
  return out;
}

net::awaitable<Reply> handle(Mock& m, const http::request<http::string_body>& req) {
  const std::string target(req.target());
  if (req.method() == http::verb::get && target == "/stats")
    co_return Reply{reply(req, http::status::ok,
                          json{{"served", m.served}, {"refused", m.refused}, {"bad", m.bad}, {"received", m.received},
                               {"connections", m.connections}, {"streams", m.streams}, {"streams_cut", m.streams_cut},
                               {"tls_resumed", m.tls_resumed}})};
  ++m.received;
  if (req.method() == http::verb::get && target == "/v1/models")
    co_return Reply{reply(req, http::status::ok, json{{"object", "list"}, {"data", json::array({json{{"id", "mock-1"}, {"object", "model"}}})}})};
  const bool anthropic = target == "/v1/messages";
  const bool billed = anthropic || target == "/v1/chat/completions" || target == "/v1/completions" ||
                      target == "/v1/responses" || target == "/v1/embeddings";
  if (req.method() != http::verb::post || !billed)
    co_return Reply{reply(req, http::status::not_found, error_body(anthropic, "not_found_error", "no such path"))};
  const bool key_ok = anthropic ? req["x-api-key"] == m.required_key
                                : req[http::field::authorization] == "Bearer " + m.required_key;
  if (!m.required_key.empty() && !key_ok)
    co_return Reply{reply(req, http::status::unauthorized, error_body(anthropic, anthropic ? "authentication_error" : "invalid_api_key", "bad key"))};
  if (anthropic && req["anthropic-version"].empty()) {
    ++m.bad;
    co_return Reply{reply(req, http::status::bad_request, error_body(true, "invalid_request_error", "anthropic-version header is required"))};
  }
  const json body = json::parse(req.body(), nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    ++m.bad;
    co_return Reply{reply(req, http::status::bad_request, error_body(anthropic, "invalid_request_error", "body is not JSON"))};
  }
  const double prompt = double(prompt_tokens(body));
  const double most = double(max_tokens(body, 256));
  const auto now = Clock::now();
  for (ProviderBucket* b : {&m.requests, &m.tokens, &m.input, &m.output}) b->refill(now);
  // Anthropic: output is charged as produced, so only an empty (or
  // indebted) output bucket refuses; OpenAI counts max_tokens at admission.
  const double wait = anthropic ? std::max({m.requests.wait_for(1), m.input.wait_for(prompt), m.output.wait_for(1)})
                                : std::max(m.requests.wait_for(1), m.tokens.wait_for(prompt + most));
  if (wait > 0) {
    ++m.refused;
    auto res = reply(req, http::status::too_many_requests,
                     anthropic ? error_body(true, "rate_limit_error", "Rate limit reached")
                               : json{{"error", {{"message", "Rate limit reached"}, {"type", "requests"}, {"code", "rate_limit_exceeded"}}}});
    res.set(http::field::retry_after, std::to_string(static_cast<long long>(std::ceil(wait))));
    if (!anthropic) res.set("retry-after-ms", std::to_string(static_cast<long long>(std::ceil(wait * 1000))));
    rate_headers(res, m, anthropic);
    co_return Reply{std::move(res)};
  }
  m.requests.tokens -= 1;
  if (anthropic) m.input.tokens -= prompt;
  else m.tokens.tokens -= prompt + most;
  // A deterministic output length between a quarter of max_tokens and all of it.
  const auto h = std::hash<std::string>{}(req.body());
  const double completion = std::floor(most / 4 + double(h % 1000) / 1000.0 * (most - most / 4));
  net::steady_timer t(co_await net::this_coro::executor, m.latency);
  co_await t.async_wait(net::use_awaitable);
  m.tokens.refill(Clock::now());
  m.output.refill(Clock::now());
  if (anthropic) m.output.tokens -= completion;  // as produced: may go below zero (a debt)
  else m.tokens.tokens = std::min(m.tokens.capacity, m.tokens.tokens + (most - completion));  // reconciled
  m.requests.refill(Clock::now());
  ++m.served;
  const json model = body.contains("model") && body["model"].is_string() ? body["model"] : json("mock-1");
  const std::string id = (anthropic ? "msg_" : "chatcmpl-") + std::to_string(m.next_id++);
  std::optional<json> usage;
  if (body.contains("mock_usage")) usage = body["mock_usage"];  // a hostile upstream, for tests
  if (body.value("stream", false) == true) {
    ++m.streams;
    const auto count = [&](const char* k, long dflt, long most_allowed) {
      return body.contains(k) && body[k].is_number_integer() ? std::clamp<long>(body[k].get<long>(), 0, most_allowed) : dflt;
    };
    const long chunks = count("mock_chunks", std::clamp<long>(long(completion) / 8, 1, 32), 100000);
    const auto gap = std::chrono::milliseconds(count("mock_chunk_ms", m.chunk_gap.count(), 10000));
    http::response<http::string_body> head{http::status::ok, req.version()};
    head.set(http::field::content_type, "text/event-stream");
    head.set(http::field::cache_control, "no-cache");
    head.keep_alive(req.keep_alive());
    rate_headers(head, m, anthropic);
    auto events = stream_events(anthropic, body, id, model, prompt, completion, chunks, usage);
    if (const long huge = count("mock_huge_event", 0, 8 << 20); huge > 0)  // one event of that many bytes, first
      events.insert(events.begin(), "data: " + std::string(std::size_t(huge), 'x') + "\n\n");
    co_return Reply{std::move(head), std::move(events), gap};
  }
  json answer;
  if (anthropic) {
    answer = {{"id", id}, {"type", "message"}, {"role", "assistant"}, {"model", model},
              {"content", json::array({json{{"type", "text"}, {"text", "ok"}}})},
              {"stop_reason", "end_turn"},
              {"usage", {{"input_tokens", std::int64_t(prompt)}, {"output_tokens", std::int64_t(completion)}}}};
  } else {
    answer = {{"id", id},
              {"object", "chat.completion"},
              {"model", model},
              {"choices", json::array({json{{"index", 0},
                                            {"message", {{"role", "assistant"}, {"content", "ok"}}},
                                            {"finish_reason", "stop"}}})},
              {"usage",
               {{"prompt_tokens", std::int64_t(prompt)},
                {"completion_tokens", std::int64_t(completion)},
                {"total_tokens", std::int64_t(prompt + completion)}}}};
  }
  if (usage) {
    if (*usage == "omit") answer.erase("usage");
    else answer["usage"] = *usage;
  }
  auto res = reply(req, http::status::ok, answer);
  rate_headers(res, m, anthropic);
  co_return Reply{std::move(res)};
}

// Writes a streamed answer: the header, then each event as one HTTP chunk,
// `gap` apart. False when the reader went away (the stream is cut).
template <class Stream>
net::awaitable<bool> write_stream(Mock& m, Stream& stream, Reply& r) {
  http::response<http::empty_body> head{r.whole.result(), r.whole.version()};
  for (const auto& f : r.whole) head.set(f.name_string(), f.value());
  head.chunked(true);
  http::response_serializer<http::empty_body> sr{head};
  auto [hec, hn] = co_await http::async_write_header(stream, sr, net::as_tuple(net::use_awaitable));
  if (hec) co_return false;
  net::steady_timer t(co_await net::this_coro::executor);
  for (const std::string& e : *r.events) {
    if (r.gap.count() > 0) {
      t.expires_after(r.gap);
      co_await t.async_wait(net::as_tuple(net::use_awaitable));
    }
    auto [wec, wn] = co_await net::async_write(stream, http::make_chunk(net::buffer(e)), net::as_tuple(net::use_awaitable));
    if (wec) {
      ++m.streams_cut;
      co_return false;
    }
  }
  auto [lec, ln] = co_await net::async_write(stream, http::make_chunk_last(), net::as_tuple(net::use_awaitable));
  co_return !lec;
}

template <class Stream>
net::awaitable<void> serve(Mock& m, Stream& stream) {
  beast::flat_buffer buffer;
  for (;;) {
    http::request<http::string_body> req;
    beast::get_lowest_layer(stream).expires_after(m.keepalive);  // an idle keep-alive connection is closed
    auto [ec, n] = co_await http::async_read(stream, buffer, req, net::as_tuple(net::use_awaitable));
    if (ec) co_return;
    beast::get_lowest_layer(stream).expires_never();
    Reply r = co_await handle(m, req);
    const bool keep = r.whole.keep_alive();
    if (r.events) {
      if (!co_await write_stream(m, stream, r) || !keep) co_return;
      continue;
    }
    auto [wec, wn] = co_await http::async_write(stream, r.whole, net::as_tuple(net::use_awaitable));
    if (wec || !keep) co_return;
  }
}

net::awaitable<void> session(Mock& m, tcp::socket socket, ssl::context* tls) {
  if (tls) {
    ssl::stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), *tls);
    auto [ec] = co_await stream.async_handshake(ssl::stream_base::server, net::as_tuple(net::use_awaitable));
    if (ec) co_return;
    if (SSL_session_reused(stream.native_handle())) ++m.tls_resumed;
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
    ++m.connections;
    socket.set_option(tcp::no_delay(true), ec);  // each event goes out when written
    net::co_spawn(acceptor.get_executor(), session(m, std::move(socket), tls), net::detached);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen_at = "127.0.0.1:0", port_file, tls_dir, key_env;
  double rpm = 600, tpm = 60000, itpm = 40000, otpm = 8000, burst = 60;
  int latency_ms = 20, chunk_ms = 2, keepalive_ms = 60000;
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
    else if (a == "--itpm") itpm = std::stod(value());
    else if (a == "--otpm") otpm = std::stod(value());
    else if (a == "--chunk-ms") chunk_ms = std::stoi(value());
    else if (a == "--keepalive-ms") keepalive_ms = std::stoi(value());
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
  Mock mock{ProviderBucket(rpm, burst), ProviderBucket(tpm, burst), ProviderBucket(itpm, burst), ProviderBucket(otpm, burst),
            std::chrono::milliseconds(latency_ms), std::chrono::milliseconds(chunk_ms), std::chrono::milliseconds(keepalive_ms)};
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
  std::printf("mock_llm_upstream: %s://127.0.0.1:%u, %.0f RPM, %.0f TPM (OpenAI), %.0f ITPM, %.0f OTPM (Anthropic)\n",
              tls ? "https" : "http", port, rpm, tpm, itpm, otpm);
  std::fflush(stdout);
  net::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const auto&, int) { io.stop(); });
  net::co_spawn(io, listen(mock, acceptor, tls ? &*tls : nullptr), net::detached);
  io.run();
  std::printf("mock_llm_upstream: served=%ld refused=%ld bad=%ld received=%ld\n", mock.served, mock.refused, mock.bad,
              mock.received);
  return 0;
}
