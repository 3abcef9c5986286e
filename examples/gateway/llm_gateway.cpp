// llm_gateway: an HTTP/1.1 gateway in front of an OpenAI-compatible upstream,
// on Boost.Beast and C++20 coroutines, that keeps the upstream at zero 429s.
//
//   llm_gateway --upstream https://api.example:443 [--upstream-ca cert.pem]
//               [--listen 127.0.0.1:8080] [--port-file F] [--config FILE]
//               [--rpm 500] [--tpm 30000] [--burst-seconds 60]
//               [--tier NAME:RPM:TPM[:BURST_SECONDS]]... [--key KEY:TIER]...
//               [--max-wait-ms 2000] [--default-max-tokens 256] [--adaptive]
//               [--upstream-key SECRET]
//
// A config file holds the same options, one per line without the dashes
// ("tier free 60 6000", "key sk-alice free", "upstream http://127.0.0.1:9000";
// '#' starts a comment). For POST /v1/chat/completions the gateway:
//   1. identifies the client by `Authorization: Bearer <key>` (unknown: 401);
//   2. estimates the cost {1 request, prompt tokens + max_tokens};
//   3. waits (up to --max-wait-ms, FIFO, without blocking the event loop) for
//      the key's tier limits, then for the shared upstream limits; otherwise
//      answers 429 with Retry-After and the IETF RateLimit fields;
//   4. forwards the request upstream (HTTP or HTTPS), settles both limit sets
//      from the response's `usage`, and feeds the upstream's status and
//      x-ratelimit-* headers back into the shared set (UpstreamFeedback);
//   5. logs one line per request.
// Other paths pass through unmetered. SIGINT/SIGTERM: stop accepting, answer
// the requests in flight, exit 0.

#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <tollgate/boost_asio.hpp>
#include <tollgate/limit_set.hpp>
#include <tollgate/upstream_feedback.hpp>
#include <tollgate/upstream_headers.hpp>

#include "llm_common.hpp"

namespace {

using namespace llm;
using namespace std::chrono_literals;
using tollgate::AcquireResult;
using tollgate::Costs;
using tollgate::Limit;
using Set = tollgate::LimitSet<>;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

// Per-minute limits whose burst (capacity) is `burst` seconds of refill: 60,
// the whole minute, is how providers state them.
struct Tier {
  double rpm = 0, tpm = 0, burst = 60;
};

struct Config {
  std::string listen = "127.0.0.1:8080", port_file, upstream, upstream_ca, upstream_key;
  double rpm = 500, tpm = 30000, burst = 60;
  std::map<std::string, Tier> tiers;
  std::map<std::string, std::string> keys;  // API key -> tier
  std::chrono::milliseconds max_wait = 2000ms;
  std::int64_t default_max_tokens = 256;
  bool adaptive = false;
};

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
  else if (name == "upstream-key") c.upstream_key = value;
  else if (name == "rpm") c.rpm = std::stod(value);
  else if (name == "tpm") c.tpm = std::stod(value);
  else if (name == "burst-seconds") c.burst = std::stod(value);
  else if (name == "max-wait-ms") c.max_wait = std::chrono::milliseconds(std::stoll(value));
  else if (name == "default-max-tokens") c.default_max_tokens = std::stoll(value);
  else if (name == "tier") {
    auto p = split(value, ':');
    if (p.size() != 3 && p.size() != 4) throw std::invalid_argument("tier must be NAME:RPM:TPM[:BURST_SECONDS], got " + value);
    c.tiers[p[0]] = Tier{std::stod(p[1]), std::stod(p[2]), p.size() == 4 ? std::stod(p[3]) : 60.0};
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
        if (name == "tier") {  // "tier free 60 6000 [burst seconds]"
          std::istringstream t(value);
          std::string n, r, k, b;
          t >> n >> r >> k >> b;
          value = n + ":" + r + ":" + k + (b.empty() ? "" : ":" + b);
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
  for (const auto& [key, tier] : c.keys)
    if (!c.tiers.count(tier)) throw std::invalid_argument("key " + key + " names an unknown tier " + tier);
  return c;
}

std::vector<tollgate::Dimension> dims(double rpm, double tpm, double burst) {
  return {{"requests", Limit::per_minute(rpm, rpm / 60 * burst)}, {"tokens", Limit::per_minute(tpm, tpm / 60 * burst)}};
}

class Gateway {
 public:
  Gateway(net::io_context& io, Config config)
      : io_(io),
        config_(std::move(config)),
        url_(Url::parse(config_.upstream)),
        timers_(io.get_executor()),
        upstream_(dims(config_.rpm, config_.tpm, config_.burst), {}, &timers_),
        feedback_(upstream_, feedback_options(config_.adaptive)),
        acceptor_(io, parse_listen(config_.listen)) {
    for (const auto& [key, tier] : config_.keys) {
      const Tier& t = config_.tiers.at(tier);
      keys_.emplace(key, std::make_unique<Set>(dims(t.rpm, t.tpm, t.burst), std::chrono::steady_clock{}, &timers_));
    }
    if (url_.tls) {
      tls_.emplace(ssl::context::tls_client);
      tls_->set_verify_mode(ssl::verify_peer);
      if (!config_.upstream_ca.empty()) tls_->load_verify_file(config_.upstream_ca);
      else tls_->set_default_verify_paths();
    }
  }

  unsigned short port() const { return acceptor_.local_endpoint().port(); }

  void start() {
    net::co_spawn(io_, accept_loop(), net::detached);
  }

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

  static tollgate::UpstreamFeedback<>::Options feedback_options(bool adaptive) {
    tollgate::UpstreamFeedback<>::Options o;
    if (adaptive) o.adaptive = tollgate::AdaptiveRate{};
    return o;
  }

  net::awaitable<void> accept_loop() {
    while (!stopping_) {
      auto [ec, socket] = co_await acceptor_.async_accept(net::as_tuple(net::use_awaitable));
      if (ec) co_return;
      net::co_spawn(io_, session(std::move(socket)), net::detached);
    }
  }

  net::awaitable<void> session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    Conn conn{&stream};
    auto it = conns_.insert(conns_.end(), &conn);
    beast::flat_buffer buffer;
    while (!stopping_) {
      Request req;
      conn.idle = true;
      auto [ec, n] = co_await http::async_read(stream, buffer, req, net::as_tuple(net::use_awaitable));
      conn.idle = false;
      if (ec) break;
      Response res = co_await handle(std::move(req));
      if (stopping_) res.keep_alive(false);
      const bool keep = res.keep_alive();
      auto [wec, wn] = co_await http::async_write(stream, res, net::as_tuple(net::use_awaitable));
      if (wec || !keep) break;
    }
    conns_.erase(it);
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  static Response error(const Request& req, http::status s, const std::string& message, const char* type) {
    Response res{s, req.version()};
    res.set(http::field::content_type, "application/json");
    res.keep_alive(req.keep_alive());
    res.body() = json{{"error", {{"message", message}, {"type", type}}}}.dump();
    res.prepare_payload();
    return res;
  }

  // A refusal of ours: 429 with Retry-After (rounded up) and the IETF fields.
  static Response too_many(const Request& req, const Set& set, const AcquireResult& r, const char* who) {
    Response res = error(req, http::status::too_many_requests, std::string(who) + ": " + set.message(r), "rate_limit_exceeded");
    res.set(http::field::retry_after, tollgate::retry_after_header(r.retry_after()));
    std::string policy, state;
    for (std::size_t i = 0; i < set.size(); ++i) {
      policy += (i ? ", " : "") + tollgate::ratelimit_policy_header(set.name(i), set.limit(i));
      state += (i ? ", " : "") + tollgate::ratelimit_header(set.name(i), set.available(i), r.retry_after());
    }
    res.set("RateLimit-Policy", policy);
    res.set("RateLimit", state);
    return res;
  }

  net::awaitable<Response> handle(Request req) {
    const auto started = std::chrono::steady_clock::now();
    const std::string target(req.target());
    if (req.method() != http::verb::post || target != "/v1/chat/completions") {
      Response res = co_await forward(req);
      log("-", req, res, 0, 0, started, started);
      co_return res;
    }
    const std::string auth(req[http::field::authorization]);
    const std::string key = auth.rfind("Bearer ", 0) == 0 ? auth.substr(7) : std::string();
    auto found = keys_.find(key);
    if (found == keys_.end()) {
      Response res = error(req, http::status::unauthorized, "unknown API key", "invalid_api_key");
      log(key, req, res, 0, 0, started, started);
      co_return res;
    }
    Set& mine = *found->second;
    const json body = json::parse(req.body(), nullptr, false);
    if (body.is_discarded() || !body.is_object()) {
      Response res = error(req, http::status::bad_request, "the body is not a JSON object", "invalid_request_error");
      log(key, req, res, 0, 0, started, started);
      co_return res;
    }
    const double estimate_tokens = double(prompt_tokens(body) + max_tokens(body, config_.default_max_tokens));
    const Costs estimate{1, estimate_tokens};

    // The key's tier first, then the shared upstream: FIFO, on this event loop.
    const AcquireResult own = co_await tollgate::boost_asio::async_acquire(mine, estimate, config_.max_wait, net::use_awaitable);
    if (!own) {
      Response res = own.status() == tollgate::Status::not_now
                         ? too_many(req, mine, own, "your key's limit")
                         : error(req, http::status::bad_request, mine.message(own), "invalid_request_error");
      log(key, req, res, estimate_tokens, 0, started, started);
      co_return res;
    }
    const auto left = config_.max_wait - std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
    const AcquireResult shared =
        co_await tollgate::boost_asio::async_acquire(upstream_, estimate, std::max(left, 0ms), net::use_awaitable);
    if (!shared) {
      mine.refund(estimate);  // nothing taken from the key when the upstream refuses
      Response res = shared.status() == tollgate::Status::not_now
                         ? too_many(req, upstream_, shared, "upstream capacity")
                         : error(req, http::status::bad_request, upstream_.message(shared), "invalid_request_error");
      log(key, req, res, estimate_tokens, 0, started, started);
      co_return res;
    }
    const auto admitted = std::chrono::steady_clock::now();
    Response res = co_await forward(req);

    // Feed the upstream's answer back, then settle both sets at the real usage.
    const auto header = [&res](std::string_view name) -> std::optional<std::string_view> {
      auto it = res.find(beast::string_view(name.data(), name.size()));
      if (it == res.end()) return std::nullopt;
      return std::string_view(it->value().data(), it->value().size());
    };
    std::string code;
    const json answer = json::parse(res.body(), nullptr, false);
    if (answer.is_object() && answer.contains("error") && answer["error"].is_object())
      code = answer["error"].value("code", answer["error"].value("type", ""));
    feedback_.on_response(static_cast<int>(res.result_int()), header, std::chrono::system_clock::now(), code);
    // The request was sent (it counts); its tokens become the real usage
    // (none when the upstream did not answer 200).
    double actual_tokens = 0;
    if (res.result() == http::status::ok && answer.is_object() && answer.contains("usage"))
      actual_tokens = answer["usage"].value("total_tokens", estimate_tokens);
    const Costs actual{1, actual_tokens};
    mine.settle(estimate, actual);
    upstream_.settle(estimate, actual);
    log(key, req, res, estimate_tokens, actual_tokens, started, admitted);
    co_return res;
  }

  template <class Stream>
  net::awaitable<Response> exchange(Stream& stream, Request& req) {
    auto [wec, wn] = co_await http::async_write(stream, req, net::as_tuple(net::use_awaitable));
    if (wec) co_return error(req, http::status::bad_gateway, "upstream write: " + wec.message(), "upstream_error");
    beast::flat_buffer buffer;
    Response res;
    auto [rec, rn] = co_await http::async_read(stream, buffer, res, net::as_tuple(net::use_awaitable));
    if (rec) co_return error(req, http::status::bad_gateway, "upstream read: " + rec.message(), "upstream_error");
    co_return res;
  }

  // One connection per request to the upstream (HTTP or HTTPS).
  net::awaitable<Response> forward(Request req) {
    auto ex = co_await net::this_coro::executor;
    req.set(http::field::host, url_.host);
    req.keep_alive(false);
    if (!config_.upstream_key.empty()) req.set(http::field::authorization, "Bearer " + config_.upstream_key);
    tcp::resolver resolver(ex);
    auto [rec, endpoints] = co_await resolver.async_resolve(url_.host, url_.port, net::as_tuple(net::use_awaitable));
    if (rec) co_return error(req, http::status::bad_gateway, "upstream resolve: " + rec.message(), "upstream_error");
    Response res;
    if (url_.tls) {
      ssl::stream<beast::tcp_stream> stream(ex, *tls_);
      SSL_set_tlsext_host_name(stream.native_handle(), url_.host.c_str());
      stream.set_verify_callback(ssl::host_name_verification(url_.host));
      beast::get_lowest_layer(stream).expires_after(30s);
      auto [cec, ep] = co_await beast::get_lowest_layer(stream).async_connect(endpoints, net::as_tuple(net::use_awaitable));
      if (cec) co_return error(req, http::status::bad_gateway, "upstream connect: " + cec.message(), "upstream_error");
      auto [hec] = co_await stream.async_handshake(ssl::stream_base::client, net::as_tuple(net::use_awaitable));
      if (hec) co_return error(req, http::status::bad_gateway, "upstream TLS: " + hec.message(), "upstream_error");
      res = co_await exchange(stream, req);
      auto [sec] = co_await stream.async_shutdown(net::as_tuple(net::use_awaitable));
      (void)sec;
    } else {
      beast::tcp_stream stream(ex);
      stream.expires_after(30s);
      auto [cec, ep] = co_await stream.async_connect(endpoints, net::as_tuple(net::use_awaitable));
      if (cec) co_return error(req, http::status::bad_gateway, "upstream connect: " + cec.message(), "upstream_error");
      res = co_await exchange(stream, req);
      beast::error_code ignored;
      stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    }
    res.keep_alive(true);
    co_return res;
  }

  // One line per request: key, method, path, status, estimated and actual
  // tokens, the wait for the limits, the total time, and the admission
  // instant (steady clock, ns; 0 when not admitted).
  void log(const std::string& key, const Request& req, const Response& res, double estimate, double actual,
           std::chrono::steady_clock::time_point started, std::chrono::steady_clock::time_point admitted) const {
    const auto now = std::chrono::steady_clock::now();
    const double wait_ms = std::chrono::duration<double, std::milli>(admitted - started).count();
    const double total_ms = std::chrono::duration<double, std::milli>(now - started).count();
    std::printf("gateway key=%s %s %s status=%u est=%.0f actual=%.0f wait_ms=%.1f total_ms=%.1f admitted_ns=%lld\n",
                key.empty() ? "-" : key.c_str(), std::string(req.method_string()).c_str(), std::string(req.target()).c_str(),
                res.result_int(), estimate, actual, wait_ms, total_ms,
                admitted == started ? 0LL : static_cast<long long>(admitted.time_since_epoch().count()));
    std::fflush(stdout);
  }

  net::io_context& io_;
  Config config_;
  Url url_;
  std::optional<ssl::context> tls_;
  tollgate::boost_asio::TimerScheduler<> timers_;
  Set upstream_;
  tollgate::UpstreamFeedback<> feedback_;
  std::map<std::string, std::unique_ptr<Set>> keys_;
  tcp::acceptor acceptor_;
  std::list<Conn*> conns_;
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
