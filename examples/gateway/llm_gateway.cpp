// llm_gateway: an HTTP/1.1 gateway in front of an OpenAI-compatible upstream,
// on Boost.Beast and C++20 coroutines, that keeps the upstream at zero 429s.
//
//   llm_gateway --upstream https://api.example:443 [--upstream-ca cert.pem]
//               [--upstream-key-file FILE]   (or TOLLGATE_UPSTREAM_KEY in the environment)
//               [--listen 127.0.0.1:8080] [--port-file F] [--config FILE]
//               [--rpm 500] [--tpm 30000] [--burst-seconds 60]
//               [--tier NAME:RPM:TPM[:BURST_SECONDS[:WEIGHT]]]... [--key KEY:TIER]...
//               [--sharing fair|fifo]
//               [--max-wait-ms 2000] [--default-max-tokens 256] [--adaptive]
//               [--max-connections 512] [--idle-timeout-ms 30000] [--header-timeout-ms 10000]
//               [--body-timeout-ms 30000] [--max-header-bytes 16384]
//               [--max-body-bytes 1048576] [--max-usage-tokens 1000000]
//
// A config file holds the same options, one per line without the dashes
// ("tier free 60 6000 60 1", "key sk-alice free", "upstream http://127.0.0.1:9000";
// '#' starts a comment). The upstream key is never taken from the command
// line (any local user can read a process's arguments).
//
// Deny by default: only the billed endpoints below are forwarded, only with
// POST, only for a known client key, only to their canonical path, and
// always metered; anything else is answered here and never forwarded.
//
//   /v1/chat/completions   prompt: messages;       output: max_completion_tokens | max_tokens
//   /v1/completions        prompt: prompt;          output: max_tokens (16 if absent)
//   /v1/responses          prompt: input, instructions; output: max_output_tokens
//   /v1/embeddings         prompt: input;           output: none
//
// For such a request the gateway:
//   1. reads the header only (bounded in size and time); a path that is not
//      one of the above after normalization is 404, a query string 400, an
//      unknown `Authorization: Bearer <key>` 401, and a key whose own limit
//      cannot admit even one request within --max-wait-ms 429 -- all without
//      reading or parsing the body (the connection is then closed);
//   2. reads the body (bounded: 413 beyond --max-body-bytes) and estimates
//      the cost {1 request, prompt tokens + output tokens};
//   3. waits (up to --max-wait-ms in all, without blocking the event loop)
//      for its key's tier limits and the shared upstream limits together, as
//      one operation (nothing is held in one while waiting for the other):
//      FIFO within a key, and between keys in proportion to their tiers'
//      weights when the upstream is the bottleneck (--sharing fair, the
//      default; fifo: by arrival); otherwise answers 429 with Retry-After and
//      the IETF RateLimit fields;
//   4. forwards a fresh request (the canonical path, the body, the upstream's
//      key; none of the client's headers) over HTTP or HTTPS, settles both
//      limit sets from the response's `usage` (validated: non-negative
//      integers up to --max-usage-tokens, else the estimate stands, as it
//      does for a 200 without usage), and feeds the upstream's status and
//      x-ratelimit-* headers back into the shared set (UpstreamFeedback);
//   5. logs one JSON line per request, with a fingerprint of the key, never
//      the key itself; internal errors go to the log, clients get a generic
//      502.
// Connections: at most --max-connections (more are closed at once); a
// connection idle for --idle-timeout-ms is closed; a header must be complete
// within --header-timeout-ms of its first byte (slow clients are cut), a body
// within --body-timeout-ms; oversized headers
// get 431, malformed requests 400; `Connection: close` and HTTP/1.0 are
// honoured. Running out of file descriptors pauses accepting briefly, never
// for good. SIGINT/SIGTERM: stop accepting, answer the requests in flight,
// exit 0.

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#include <tollgate/boost_asio.hpp>
#include <tollgate/shared_limit_set.hpp>
#include <tollgate/upstream_feedback.hpp>
#include <tollgate/upstream_headers.hpp>

#include "llm_common.hpp"

namespace {

using namespace llm;
using namespace std::chrono_literals;
using tollgate::AcquireResult;
using tollgate::Costs;
using tollgate::Limit;
using Shared = tollgate::SharedLimitSet<>;
using Feedback = tollgate::UpstreamFeedback<std::chrono::steady_clock, tollgate::SpinMutex, Shared>;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

// Per-minute limits whose burst (capacity) is `burst` seconds of refill: 60,
// the whole minute, is how providers state them.
struct Tier {
  double rpm = 0, tpm = 0, burst = 60, weight = 1;
};

struct Config {
  std::string listen = "127.0.0.1:8080", port_file, upstream, upstream_ca, upstream_key;
  double rpm = 500, tpm = 30000, burst = 60;
  std::map<std::string, Tier> tiers;
  std::map<std::string, std::string> keys;  // API key -> tier
  std::chrono::milliseconds max_wait = 2000ms;
  std::int64_t default_max_tokens = 256;
  bool adaptive = false;
  tollgate::Sharing sharing = tollgate::Sharing::weighted_fair;
  std::size_t max_connections = 512;
  std::chrono::milliseconds idle_timeout = 30000ms, header_timeout = 10000ms, body_timeout = 30000ms;
  std::uint32_t max_header_bytes = 16 * 1024;
  std::uint64_t max_body_bytes = 1024 * 1024;
  std::int64_t max_usage_tokens = 1'000'000;
};

std::string read_secret_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("cannot read the upstream key file " + path);
  std::string key;
  std::getline(in, key);
  while (!key.empty() && (key.back() == '\r' || key.back() == ' ')) key.pop_back();
  if (key.empty()) throw std::invalid_argument("the upstream key file " + path + " is empty");
  return key;
}

std::int64_t positive(const std::string& name, const std::string& value) {
  const long long v = std::stoll(value);
  if (v <= 0) throw std::invalid_argument(name + " must be > 0, got " + value);
  return v;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, sep);) out.push_back(part);
  return out;
}

void apply_option(Config& c, const std::string& name, const std::string& value) {
  if (name == "listen") c.listen = value;
  else if (name == "port-file") c.port_file = value;
  else if (name == "upstream") c.upstream = value;
  else if (name == "upstream-ca") c.upstream_ca = value;
  else if (name == "upstream-key")
    throw std::invalid_argument("the upstream key is not taken from the command line or the config file: set "
                                "TOLLGATE_UPSTREAM_KEY or give --upstream-key-file");
  else if (name == "upstream-key-file") c.upstream_key = read_secret_file(value);
  else if (name == "max-connections") c.max_connections = std::size_t(positive(name, value));
  else if (name == "idle-timeout-ms") c.idle_timeout = std::chrono::milliseconds(positive(name, value));
  else if (name == "header-timeout-ms") c.header_timeout = std::chrono::milliseconds(positive(name, value));
  else if (name == "body-timeout-ms") c.body_timeout = std::chrono::milliseconds(positive(name, value));
  else if (name == "max-header-bytes") c.max_header_bytes = std::uint32_t(positive(name, value));
  else if (name == "max-body-bytes") c.max_body_bytes = std::uint64_t(positive(name, value));
  else if (name == "max-usage-tokens") c.max_usage_tokens = positive(name, value);
  else if (name == "rpm") c.rpm = std::stod(value);
  else if (name == "tpm") c.tpm = std::stod(value);
  else if (name == "burst-seconds") c.burst = std::stod(value);
  else if (name == "max-wait-ms") c.max_wait = std::chrono::milliseconds(std::stoll(value));
  else if (name == "default-max-tokens") c.default_max_tokens = std::stoll(value);
  else if (name == "tier") {
    auto p = split(value, ':');
    if (p.size() < 3 || p.size() > 5)
      throw std::invalid_argument("tier must be NAME:RPM:TPM[:BURST_SECONDS[:WEIGHT]], got " + value);
    c.tiers[p[0]] = Tier{std::stod(p[1]), std::stod(p[2]), p.size() >= 4 ? std::stod(p[3]) : 60.0,
                         p.size() == 5 ? std::stod(p[4]) : 1.0};
  } else if (name == "sharing") {
    if (value == "fair") c.sharing = tollgate::Sharing::weighted_fair;
    else if (value == "fifo") c.sharing = tollgate::Sharing::fifo;
    else throw std::invalid_argument("sharing must be fair or fifo, got " + value);
  } else if (name == "key") {
    auto p = split(value, ':');
    if (p.size() != 2) throw std::invalid_argument("key must be KEY:TIER, got " + value);
    c.keys[p[0]] = p[1];
  } else {
    throw std::invalid_argument("unknown option " + name);
  }
}

Config parse_args(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument " + a);
    a = a.substr(2);
    if (a == "adaptive") {
      c.adaptive = true;
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument("--" + a + " needs a value");
    const std::string v = argv[++i];
    if (a == "config") {
      std::ifstream in(v);
      if (!in) throw std::invalid_argument("cannot read config file " + v);
      for (std::string line; std::getline(in, line);) {
        line = line.substr(0, line.find('#'));
        std::istringstream words(line);
        std::string name, value;
        if (!(words >> name)) continue;
        if (name == "adaptive") {
          c.adaptive = true;
          continue;
        }
        std::getline(words >> std::ws, value);
        if (name == "tier") {  // "tier free 60 6000 [burst seconds [weight]]"
          std::istringstream t(value);
          std::string n, r, k, b, w;
          t >> n >> r >> k >> b >> w;
          value = n + ":" + r + ":" + k + (b.empty() ? "" : ":" + b) + (w.empty() ? "" : ":" + w);
        } else if (name == "key") {
          std::istringstream t(value);
          std::string k, tier;
          t >> k >> tier;
          value = k + ":" + tier;
        }
        apply_option(c, name, value);
      }
    } else {
      apply_option(c, a, v);
    }
  }
  if (c.upstream.empty()) throw std::invalid_argument("--upstream is required");
  if (c.upstream_key.empty())
    if (const char* k = std::getenv("TOLLGATE_UPSTREAM_KEY"); k && *k) c.upstream_key = k;
  for (const auto& [key, tier] : c.keys)
    if (!c.tiers.count(tier)) throw std::invalid_argument("key " + key + " names an unknown tier " + tier);
  return c;
}

std::vector<tollgate::Dimension> dims(double rpm, double tpm, double burst) {
  return {{"requests", Limit::per_minute(rpm, rpm / 60 * burst)}, {"tokens", Limit::per_minute(tpm, tpm / 60 * burst)}};
}

// The shared upstream set's options: one tier per configured tier (its
// per-key limits and weight), each known key mapped to its tier.
Shared::Options sharing_options(const Config& c) {
  Shared::Options o;
  o.tiers.clear();
  auto index = std::make_shared<std::map<std::string, std::size_t>>();
  for (const auto& [name, t] : c.tiers) {
    (*index)[name] = o.tiers.size();
    o.tiers.push_back({name, t.weight, dims(t.rpm, t.tpm, t.burst)});
  }
  if (o.tiers.empty()) o.tiers.push_back({"default", 1, {}});  // no keys can be known then anyway
  auto keys = std::make_shared<std::map<std::string, std::string>>(c.keys);
  o.tier_of = [index, keys](const std::string& key) -> std::size_t {
    auto it = keys->find(key);
    return it == keys->end() ? 0 : index->at(it->second);
  };
  o.sharing = c.sharing;
  o.max_keys = std::max<std::size_t>(c.keys.size(), 1);  // only known keys ever get here
  return o;
}

// A billed endpoint: its canonical path and how its body's cost is estimated.
struct Endpoint {
  const char* path;
  std::int64_t (*input)(const json&);                // prompt tokens
  std::int64_t (*output)(const json&, std::int64_t);  // output tokens, given the default max_tokens
};

std::int64_t text_tokens(const json& v) {  // a string, or an array of strings/messages
  if (v.is_string()) return (std::int64_t(v.get_ref<const std::string&>().size()) + 3) / 4;
  std::int64_t n = 0;
  if (v.is_array())
    for (const auto& e : v) n += e.is_object() && e.contains("content") ? 4 + text_tokens(e["content"]) : text_tokens(e);
  return n;
}
std::int64_t field_tokens(const json& body, const char* name) { return body.contains(name) ? text_tokens(body[name]) : 0; }
std::int64_t positive_field(const json& body, std::initializer_list<const char*> names, std::int64_t fallback) {
  for (const char* k : names)
    if (body.contains(k) && body[k].is_number_integer() && body[k].get<std::int64_t>() > 0) return body[k].get<std::int64_t>();
  return fallback;
}

const Endpoint kEndpoints[] = {
    {"/v1/chat/completions", [](const json& b) { return prompt_tokens(b); },
     [](const json& b, std::int64_t d) { return max_tokens(b, d); }},
    {"/v1/completions", [](const json& b) { return field_tokens(b, "prompt"); },
     [](const json& b, std::int64_t) { return positive_field(b, {"max_tokens"}, 16); }},
    {"/v1/responses", [](const json& b) { return field_tokens(b, "input") + field_tokens(b, "instructions"); },
     [](const json& b, std::int64_t d) { return positive_field(b, {"max_output_tokens"}, d); }},
    {"/v1/embeddings", [](const json& b) { return field_tokens(b, "input"); }, [](const json&, std::int64_t) {
       return std::int64_t{0};
     }},
};

// The canonical form of a request target's path: duplicate slashes and "."
// segments removed, no trailing slash. Empty when it cannot be trusted (a
// ".." segment, a percent-escape, a character outside the path alphabet).
std::string canonical_path(std::string_view path) {
  if (path.empty() || path[0] != '/') return {};
  std::string out;
  std::size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    const std::size_t j = std::min(path.find('/', i), path.size());
    const std::string_view seg = path.substr(i, j - i);
    i = j;
    if (seg.empty() || seg == ".") continue;
    if (seg == "..") return {};
    for (char ch : seg)
      if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.')) return {};
    out += '/';
    out += seg;
  }
  return out.empty() ? "/" : out;
}

// A short, stable fingerprint of a client key for logs (FNV-1a, 32 bits):
// enough to follow one key through the log, useless to replay it.
std::string fingerprint(std::string_view key) {
  if (key.empty()) return "-";
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : key) h = (h ^ ch) * 1099511628211ULL;
  char buf[16];
  std::snprintf(buf, sizeof buf, "k-%08x", static_cast<unsigned>(h ^ (h >> 32)));
  return buf;
}

class Gateway {
 public:
  Gateway(net::io_context& io, Config config)
      : io_(io),
        config_(std::move(config)),
        url_(Url::parse(config_.upstream)),
        timers_(io.get_executor()),
        upstream_(dims(config_.rpm, config_.tpm, config_.burst), sharing_options(config_), std::chrono::steady_clock{},
                  &timers_),
        feedback_(upstream_, feedback_options(config_.adaptive)),
        acceptor_(io, parse_listen(config_.listen)) {
    if (url_.tls) {
      tls_.emplace(ssl::context::tls_client);
      tls_->set_verify_mode(ssl::verify_peer);
      if (!config_.upstream_ca.empty()) tls_->load_verify_file(config_.upstream_ca);
      else tls_->set_default_verify_paths();
    }
  }

  unsigned short port() const { return acceptor_.local_endpoint().port(); }

  void start() { net::co_spawn(io_, accept_loop(), net::detached); }

  // SIGINT/SIGTERM: no new connections; idle connections close; requests in
  // flight are answered, then their connections close.
  void stop() {
    stopping_ = true;
    beast::error_code ignored;
    acceptor_.close(ignored);
    for (Conn* c : conns_)
      if (c->idle) c->stream->socket().cancel(ignored);
  }

 private:
  struct Conn {
    beast::tcp_stream* stream;
    bool idle = true;
  };
  // A refused request's body up to this size is read and dropped to keep
  // the connection; a larger one is never read.
  static constexpr std::uint64_t kDrainBytes = 16 * 1024;
  // What the header alone decided: an answer now, or the key and endpoint.
  struct Screened {
    std::string key;
    const Endpoint* endpoint = nullptr;
    std::string path;
  };
  // What a request's log line says besides the request itself.
  struct Outcome {
    std::string key = "-", path;
    double estimate = 0, actual = 0;
    std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now(), admitted{};
    std::string note;
    bool maybe_sent = false;  // the upstream exchange broke after the request was written
  };

  static Feedback::Options feedback_options(bool adaptive) {
    Feedback::Options o;
    if (adaptive) o.adaptive = tollgate::AdaptiveRate{};
    return o;
  }

  // Keeps accepting whatever happens: out of descriptors (EMFILE, ENFILE) or
  // buffers, it logs, waits a little and tries again; over the connection
  // cap it closes the new connection at once.
  net::awaitable<void> accept_loop() {
    net::steady_timer backoff(io_);
    while (!stopping_) {
      auto [ec, socket] = co_await acceptor_.async_accept(net::as_tuple(net::use_awaitable));
      if (stopping_ || ec == net::error::operation_aborted) co_return;
      if (ec) {
        log_event("accept_error", ec.message());
        backoff.expires_after(100ms);
        co_await backoff.async_wait(net::as_tuple(net::use_awaitable));
        continue;
      }
      if (conns_.size() >= config_.max_connections) {
        ++refused_connections_;
        if ((refused_connections_ & (refused_connections_ - 1)) == 0)  // 1, 2, 4, ...: bounded log volume
          log_event("connection_cap", "refused " + std::to_string(refused_connections_) + " connections so far");
        beast::error_code ignored;
        socket.close(ignored);
        continue;
      }
      net::co_spawn(io_, session(std::move(socket)), net::detached);
    }
  }

  net::awaitable<void> session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    Conn conn{&stream};
    auto it = conns_.insert(conns_.end(), &conn);
    beast::flat_buffer buffer;
    while (!stopping_) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(config_.max_header_bytes);
      parser.body_limit(config_.max_body_bytes);
      conn.idle = true;
      if (buffer.size() == 0) {  // between requests: the first byte within the idle timeout
        stream.expires_after(config_.idle_timeout);
        auto [iec, in] = co_await stream.async_read_some(buffer.prepare(4096), net::as_tuple(net::use_awaitable));
        if (iec) break;
        buffer.commit(in);
      }
      conn.idle = false;
      stream.expires_after(config_.header_timeout);  // then the whole header: slow or partial headers are cut
      auto [ec, n] = co_await http::async_read_header(stream, buffer, parser, net::as_tuple(net::use_awaitable));
      if (ec) {
        if (ec == http::error::header_limit) co_await reply_and_close(stream, plain(11, http::status::request_header_fields_too_large, "request header too large"));
        else if (ec == http::error::body_limit)  // a declared Content-Length over the limit
          co_await reply_and_close(stream, plain(11, http::status::payload_too_large, "request body too large"));
        else if (ec.category() == beast::error_code(http::error::bad_target).category() && ec != http::error::end_of_stream &&
                 ec != http::error::partial_message)
          co_await reply_and_close(stream, plain(11, http::status::bad_request, "malformed request"));
        break;
      }
      Outcome out;
      auto screened = screen(parser.get(), out);
      if (auto* early = std::get_if<Response>(&screened)) {
        log(parser.get(), *early, out);
        // A small body is read and dropped (never parsed) to keep the
        // connection; a large or chunked one is not read: the connection closes.
        const auto length = parser.content_length();
        if (parser.chunked() || !length || *length > kDrainBytes) {
          co_await reply_and_close(stream, std::move(*early));
          break;
        }
        stream.expires_after(config_.body_timeout);
        auto [dec, dn] = co_await http::async_read(stream, buffer, parser, net::as_tuple(net::use_awaitable));
        if (dec) break;
        early->keep_alive(parser.get().keep_alive() && !stopping_);
        stream.expires_after(30s);
        auto [wec, wn] = co_await http::async_write(stream, *early, net::as_tuple(net::use_awaitable));
        if (wec || !early->keep_alive()) break;
        continue;
      }
      stream.expires_after(config_.body_timeout);
      auto [bec, bn] = co_await http::async_read(stream, buffer, parser, net::as_tuple(net::use_awaitable));
      if (bec) {
        Response res = bec == http::error::body_limit ? plain(parser.get().version(), http::status::payload_too_large, "request body too large")
                                                      : plain(parser.get().version(), http::status::bad_request, "incomplete or malformed body");
        out.note = bec.message();
        log(parser.get(), res, out);
        if (bec != beast::error::timeout) co_await reply_and_close(stream, std::move(res));
        break;
      }
      Request req = parser.release();
      const bool keep = req.keep_alive();
      Response res;
      std::string failure;
      try {
        res = co_await handle(req, std::get<Screened>(screened), out);
      } catch (const std::exception& e) {
        failure = e.what();
      }
      if (!failure.empty()) {
        res = plain(req.version(), http::status::bad_gateway, "the gateway could not complete this request");
        out.note = "internal_error: " + failure;
      }
      log(req, res, out);
      res.keep_alive(keep && !stopping_);
      stream.expires_after(30s);
      auto [wec, wn] = co_await http::async_write(stream, res, net::as_tuple(net::use_awaitable));
      if (wec || !res.keep_alive()) break;
    }
    conns_.erase(it);
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  net::awaitable<void> reply_and_close(beast::tcp_stream& stream, Response res) {
    res.keep_alive(false);
    stream.expires_after(5s);
    co_await http::async_write(stream, res, net::as_tuple(net::use_awaitable));
  }

  static Response plain(unsigned version, http::status s, const std::string& message, const char* type = "invalid_request_error") {
    Response res{s, version};
    res.set(http::field::content_type, "application/json");
    res.body() = json{{"error", {{"message", message}, {"type", type}}}}.dump();
    res.prepare_payload();
    return res;
  }

  // A refusal of ours: 429 with Retry-After (rounded up) and the IETF
  // fields: the key's own policy (its tier), and what it could take now (the
  // lesser of its own tokens and the upstream's).
  Response too_many(unsigned version, const std::string& key, const AcquireResult& r) {
    Response res = plain(version, http::status::too_many_requests, "rate limit: " + upstream_.message(r), "rate_limit_exceeded");
    res.set(http::field::retry_after, tollgate::retry_after_header(r.retry_after()));
    const Tier& tier = config_.tiers.at(config_.keys.at(key));
    const std::vector<tollgate::Dimension> own = dims(tier.rpm, tier.tpm, tier.burst);
    std::string policy, state;
    for (std::size_t i = 0; i < upstream_.size(); ++i) {
      const double left = std::min(upstream_.key_available(key, i), upstream_.available(i));
      policy += (i ? ", " : "") + tollgate::ratelimit_policy_header(own[i].name, own[i].limit);
      state += (i ? ", " : "") + tollgate::ratelimit_header(own[i].name, left, r.retry_after());
    }
    res.set("RateLimit-Policy", policy);
    res.set("RateLimit", state);
    return res;
  }

  // Everything decided from the header alone, before the body is read.
  std::variant<Response, Screened> screen(const http::request_header<>& h, Outcome& out) {
    const unsigned v = h.version();
    const std::string_view target(h.target().data(), h.target().size());
    const std::string_view path = target.substr(0, target.find('?'));
    out.path = std::string(path);
    if (path.size() != target.size()) return plain(v, http::status::bad_request, "query strings are not accepted");
    const std::string canon = canonical_path(path);
    const Endpoint* endpoint = nullptr;
    for (const Endpoint& e : kEndpoints)
      if (canon == e.path) endpoint = &e;
    if (!endpoint) return plain(v, http::status::not_found, "no such endpoint on this gateway");
    out.path = canon;
    if (h.method() != http::verb::post) {
      Response res = plain(v, http::status::method_not_allowed, "use POST");
      res.set(http::field::allow, "POST");
      return res;
    }
    const std::string_view auth(h[http::field::authorization].data(), h[http::field::authorization].size());
    const std::string key = auth.rfind("Bearer ", 0) == 0 ? std::string(auth.substr(7)) : std::string();
    out.key = fingerprint(key);
    if (!config_.keys.count(key)) return plain(v, http::status::unauthorized, "unknown API key", "invalid_api_key");
    // Work before admission: a key that cannot have even one request within
    // max_wait (its own limit, or its turn at the upstream) is refused before
    // its body is read or parsed.
    Shared::Permit probe = upstream_.try_acquire_permit(key, {1, 0});
    if (probe) probe.release();
    else if (probe.result().status() != tollgate::Status::not_now || probe.result().retry_after() > config_.max_wait)
      return too_many(v, key, probe.result());
    return Screened{key, endpoint, canon};
  }

  net::awaitable<Response> handle(const Request& req, const Screened& who, Outcome& out) {
    const unsigned v = req.version();
    const json body = json::parse(req.body(), nullptr, false);
    if (body.is_discarded() || !body.is_object()) co_return plain(v, http::status::bad_request, "the body is not a JSON object");
    const double estimate_tokens = double(who.endpoint->input(body) + who.endpoint->output(body, config_.default_max_tokens));
    out.estimate = estimate_tokens;
    // The key's own limits and the shared upstream, as one operation: its
    // turn among the keys (by weight), then both at one instant or neither.
    const tollgate::KeyedCosts estimate = upstream_.keyed(who.key, Costs{1, estimate_tokens});
    const AcquireResult got =
        co_await tollgate::boost_asio::async_acquire(upstream_, estimate, config_.max_wait, net::use_awaitable);
    if (!got) {
      co_return got.status() == tollgate::Status::not_now ? too_many(v, who.key, got)
                                                          : plain(v, http::status::bad_request, upstream_.message(got));
    }
    out.admitted = std::chrono::steady_clock::now();
    Response res;
    try {
      res = co_await forward(who.path, req.body(), v, out);
    } catch (...) {
      settle(estimate, estimate_tokens, out);  // it may have reached the provider: keep the estimate
      throw;
    }

    // Settle both sets at the real usage, then feed the upstream's answer back.
    const auto header = [&res](std::string_view name) -> std::optional<std::string_view> {
      auto it = res.find(beast::string_view(name.data(), name.size()));
      if (it == res.end()) return std::nullopt;
      return std::string_view(it->value().data(), it->value().size());
    };
    std::string code;
    const json answer = json::parse(res.body(), nullptr, false);
    if (answer.is_object() && answer.contains("error") && answer["error"].is_object()) {
      const json& e = answer["error"];
      for (const char* k : {"code", "type"})
        if (code.empty() && e.contains(k) && e[k].is_string()) code = e[k].get<std::string>();
    }
    // The request was sent (it counts). A 200's tokens are its usage when the
    // usage is believable, else the estimate; other answers cost no tokens.
    double actual_tokens = out.maybe_sent ? estimate_tokens : 0;  // unknown: the estimate stands
    if (res.result() == http::status::ok) {
      const std::optional<double> used = usage_tokens(answer);
      if (used) {
        actual_tokens = *used;
      } else {
        actual_tokens = estimate_tokens;
        out.note = answer.is_object() && answer.contains("usage") ? "usage_invalid: the estimate stands" : "usage_missing: the estimate stands";
      }
    }
    // Settle first, then feed the answer back: the provider's remaining count
    // already includes this call, so a refund after the correction would lift
    // the shared set above it (UpstreamFeedback::complete's order).
    settle(estimate, actual_tokens, out);
    feedback_.on_response(static_cast<int>(res.result_int()), header, code);
    co_return res;
  }

  // Settles the key's limits and the shared set at once.
  void settle(const tollgate::KeyedCosts& estimate, double actual_tokens, Outcome& out) {
    out.actual = actual_tokens;
    upstream_.settle(estimate, Costs{1, actual_tokens});
  }

  // The tokens an answer's `usage` reports (total_tokens, else prompt +
  // completion or input + output), or nothing when absent or not
  // believable: each value must be an integer in [0, --max-usage-tokens].
  std::optional<double> usage_tokens(const json& answer) const {
    if (!answer.is_object() || !answer.contains("usage") || !answer["usage"].is_object()) return std::nullopt;
    const json& u = answer["usage"];
    auto value = [&](const char* k) -> std::optional<std::int64_t> {
      if (!u.contains(k)) return std::nullopt;
      const json& x = u[k];
      if (!x.is_number_integer()) return std::int64_t{-1};  // present but not an integer: invalid
      if (x.is_number_unsigned() && x.get<std::uint64_t>() > std::uint64_t(config_.max_usage_tokens)) return std::int64_t{-1};
      const std::int64_t n = x.get<std::int64_t>();
      return n < 0 || n > config_.max_usage_tokens ? std::int64_t{-1} : n;
    };
    const auto total = value("total_tokens");
    const auto in = value("prompt_tokens") ? value("prompt_tokens") : value("input_tokens");
    const auto outp = value("completion_tokens") ? value("completion_tokens") : value("output_tokens");
    for (const auto& x : {total, in, outp})
      if (x && *x < 0) return std::nullopt;
    if (total) return double(*total);
    if (in || outp) {
      const std::int64_t sum = in.value_or(0) + outp.value_or(0);
      if (sum > config_.max_usage_tokens) return std::nullopt;
      return double(sum);
    }
    return std::nullopt;
  }

  template <class Stream>
  net::awaitable<std::optional<Response>> exchange(Stream& stream, Request& req, Outcome& out) {
    auto [wec, wn] = co_await http::async_write(stream, req, net::as_tuple(net::use_awaitable));
    out.maybe_sent = true;  // part of it may have reached the provider, which may bill it
    if (wec) {
      out.note = "upstream write: " + wec.message();
      co_return std::nullopt;
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 * 1024 * 1024);
    auto [rec, rn] = co_await http::async_read(stream, buffer, parser, net::as_tuple(net::use_awaitable));
    if (rec) {
      out.note = "upstream read: " + rec.message();
      co_return std::nullopt;
    }
    out.maybe_sent = false;
    co_return parser.release();
  }

  // A fresh request to the upstream (HTTP or HTTPS), one connection per
  // request: the canonical path, the body, the upstream's own key. None of
  // the client's headers travel (its key least of all). Failures answer a
  // generic 502; the reason goes to the log.
  net::awaitable<Response> forward(const std::string& path, const std::string& body, unsigned version, Outcome& out) {
    auto ex = co_await net::this_coro::executor;
    Request req{http::verb::post, path, 11};
    req.set(http::field::host, url_.host);
    req.set(http::field::content_type, "application/json");
    req.set(http::field::user_agent, "tollgate-llm-gateway");
    if (!config_.upstream_key.empty()) req.set(http::field::authorization, "Bearer " + config_.upstream_key);
    req.body() = body;
    req.keep_alive(false);
    req.prepare_payload();
    const Response unavailable = plain(version, http::status::bad_gateway, "the upstream could not be reached", "upstream_error");
    tcp::resolver resolver(ex);
    auto [rec, endpoints] = co_await resolver.async_resolve(url_.host, url_.port, net::as_tuple(net::use_awaitable));
    if (rec) {
      out.note = "upstream resolve: " + rec.message();
      co_return unavailable;
    }
    std::optional<Response> res;
    if (url_.tls) {
      ssl::stream<beast::tcp_stream> stream(ex, *tls_);
      SSL_set_tlsext_host_name(stream.native_handle(), url_.host.c_str());
      stream.set_verify_callback(ssl::host_name_verification(url_.host));
      beast::get_lowest_layer(stream).expires_after(30s);
      auto [cec, ep] = co_await beast::get_lowest_layer(stream).async_connect(endpoints, net::as_tuple(net::use_awaitable));
      if (cec) {
        out.note = "upstream connect: " + cec.message();
        co_return unavailable;
      }
      auto [hec] = co_await stream.async_handshake(ssl::stream_base::client, net::as_tuple(net::use_awaitable));
      if (hec) {
        out.note = "upstream TLS: " + hec.message();
        co_return unavailable;
      }
      res = co_await exchange(stream, req, out);
      auto [sec] = co_await stream.async_shutdown(net::as_tuple(net::use_awaitable));
      (void)sec;
    } else {
      beast::tcp_stream stream(ex);
      stream.expires_after(30s);
      auto [cec, ep] = co_await stream.async_connect(endpoints, net::as_tuple(net::use_awaitable));
      if (cec) {
        out.note = "upstream connect: " + cec.message();
        co_return unavailable;
      }
      res = co_await exchange(stream, req, out);
      beast::error_code ignored;
      stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    }
    if (!res) co_return unavailable;
    res->version(version);
    co_return std::move(*res);
  }

  // One JSON line per request: the key's fingerprint (never the key), the
  // method and path, the status, estimated and actual tokens, the wait for
  // the limits, the total time, the admission instant (steady clock, ns; 0
  // when not admitted), and a note (why the estimate stood, what failed).
  // JSON escapes whatever a client put in the path.
  void log(const http::request_header<>& req, const Response& res, const Outcome& o) const {
    const auto now = std::chrono::steady_clock::now();
    const bool admitted = o.admitted != std::chrono::steady_clock::time_point{};
    json line = {{"event", "request"},
                 {"key", o.key},
                 {"method", std::string(req.method_string())},
                 {"path", o.path},
                 {"status", res.result_int()},
                 {"est", o.estimate},
                 {"actual", o.actual},
                 {"wait_ms", admitted ? std::chrono::duration<double, std::milli>(o.admitted - o.started).count() : 0.0},
                 {"total_ms", std::chrono::duration<double, std::milli>(now - o.started).count()},
                 {"admitted_ns", admitted ? static_cast<long long>(o.admitted.time_since_epoch().count()) : 0LL}};
    if (!o.note.empty()) line["note"] = o.note;
    std::printf("%s\n", line.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    std::fflush(stdout);
  }
  void log_event(const char* event, const std::string& detail) const {
    std::printf("%s\n", json{{"event", event}, {"detail", detail}}.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    std::fflush(stdout);
  }

  net::io_context& io_;
  Config config_;
  Url url_;
  std::optional<ssl::context> tls_;
  tollgate::boost_asio::TimerScheduler<> timers_;
  Shared upstream_;
  Feedback feedback_;
  tcp::acceptor acceptor_;
  std::list<Conn*> conns_;
  std::uint64_t refused_connections_ = 0;
  bool stopping_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    Config config = parse_args(argc, argv);
    net::io_context io(1);
    Gateway gateway(io, config);
    if (!config.port_file.empty()) std::ofstream(config.port_file) << gateway.port() << '\n';
    std::printf("llm_gateway: listening on 127.0.0.1:%u, upstream %s, %zu keys\n", gateway.port(),
                config.upstream.c_str(), config.keys.size());
    std::fflush(stdout);
    net::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](const beast::error_code& ec, int) {
      if (!ec) gateway.stop();
    });
    gateway.start();
    io.run();
    std::printf("llm_gateway: stopped cleanly\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llm_gateway: %s\n", e.what());
    return 2;
  }
}
