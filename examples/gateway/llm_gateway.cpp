// llm_gateway: an HTTP/1.1 gateway in front of an OpenAI-compatible upstream
// or Anthropic's Messages API, on Boost.Beast and C++20 coroutines, that keeps
// the upstream at zero 429s.
//
//   llm_gateway --upstream https://api.example:443 [--upstream-ca cert.pem]
//               [--upstream-key-file FILE]   (or TOLLGATE_UPSTREAM_KEY in the environment)
//               [--provider openai|anthropic] [--anthropic-version 2023-06-01]
//               [--listen 127.0.0.1:8080] [--port-file F] [--config FILE]
//               [--rpm 500] [--tpm 30000] [--itpm 30000] [--otpm 8000] [--burst-seconds 60]
//               [--tier NAME:RPM:TPM[:BURST_SECONDS[:WEIGHT]]]...
//               [--tier NAME:rpm=N:tpm=N:itpm=N:otpm=N:burst=S:weight=W]... [--key KEY:TIER]...
//               [--sharing fair|fifo] [--output-quantile 0.95]
//               [--max-wait-ms 2000] [--default-max-tokens 256] [--adaptive]
//               [--max-connections 512] [--idle-timeout-ms 30000] [--header-timeout-ms 10000]
//               [--body-timeout-ms 30000] [--max-header-bytes 16384]
//               [--max-body-bytes 1048576] [--max-usage-tokens 1000000]
//               [--upstream-connections 32] [--upstream-idle-ms 15000] [--max-stream-seconds 600]
//               [--metrics-listen 127.0.0.1:9464] [--metrics-max-keys 100]
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
//   /v1/messages           prompt: messages, system; output: max_tokens  (--provider anthropic)
//
// `"stream": true` answers are relayed event by event and settled from the
// stream's own usage (see README, "Run a gateway"). GET /healthz answers on
// the serving port; --metrics-listen serves GET /metrics (Prometheus).
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

#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <functional>
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
#include <tollgate/output_estimator.hpp>
#include <tollgate/upstream_headers.hpp>

#include "llm_common.hpp"
#include "metrics.hpp"
#include "provider.hpp"

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

// A tier: per-minute limits by dimension name, whose burst (capacity) is
// `burst` seconds of refill (60, the whole minute, is how providers state
// them), and its weight in the fair share.
struct Tier {
  std::map<std::string, double> per_minute;
  double burst = 60, weight = 1;
};

struct Config {
  std::string listen = "127.0.0.1:8080", port_file, upstream, upstream_ca, upstream_key;
  Api api = Api::openai;
  std::string anthropic_version = "2023-06-01";
  double rpm = 500, tpm = 30000, itpm = 30000, otpm = 8000, burst = 60;
  double output_quantile = 0.95;
  std::string metrics_listen;  // empty: no metrics listener
  std::size_t metrics_max_keys = 100;
  std::size_t upstream_connections = 32;  // idle keep-alive connections kept (0: one per request)
  std::chrono::milliseconds upstream_idle = 15000ms;
  std::chrono::seconds max_stream = 600s;  // a streamed answer longer than this is cut
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
  std::size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || v <= 0) throw std::invalid_argument(name + " must be an integer > 0, got \"" + value + "\"");
  return v;
}

// A finite number > 0 (a rate, a burst, a weight), the whole string.
double number(const std::string& name, const std::string& value) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || !(v > 0) || !std::isfinite(v))
    throw std::invalid_argument(name + " must be a number > 0, got \"" + value + "\"");
  return v;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, sep);) out.push_back(part);
  return out;
}

// The dimension a per-minute option names (rpm, tpm, itpm, otpm).
const char* dimension_of(std::string_view option) {
  if (option == "rpm") return "requests";
  if (option == "tpm") return "tokens";
  if (option == "itpm") return "input_tokens";
  if (option == "otpm") return "output_tokens";
  return nullptr;
}

std::string tier_name(const std::string& value) {
  const std::string name = value.substr(0, value.find(':'));
  if (name.empty()) throw std::invalid_argument("a tier needs a name, got " + value);
  return name;
}

// NAME:RPM:TPM[:BURST_SECONDS[:WEIGHT]] (OpenAI's two limits by position), or
// NAME:field=value:... with fields rpm, tpm, itpm, otpm, burst, weight.
Tier parse_tier(const std::string& value) {
  const auto p = split(value, ':');
  const std::string what = "tier " + (p.empty() ? std::string() : p[0]);
  Tier t;
  if (p.size() >= 2 && p[1].find('=') != std::string::npos) {
    for (std::size_t i = 1; i < p.size(); ++i) {
      const auto eq = p[i].find('=');
      const std::string field = p[i].substr(0, eq), v = eq == std::string::npos ? "" : p[i].substr(eq + 1);
      if (const char* dim = dimension_of(field)) t.per_minute[dim] = number(what + " " + field, v);
      else if (field == "burst") t.burst = number(what + " burst", v);
      else if (field == "weight") t.weight = number(what + " weight", v);
      else throw std::invalid_argument(what + ": unknown field \"" + field + "\" (rpm, tpm, itpm, otpm, burst, weight)");
    }
    return t;
  }
  if (p.size() < 3 || p.size() > 5)
    throw std::invalid_argument("tier must be NAME:RPM:TPM[:BURST_SECONDS[:WEIGHT]] or NAME:rpm=N:otpm=N:..., got " + value);
  t.per_minute = {{"requests", number(what + " RPM", p[1])}, {"tokens", number(what + " TPM", p[2])}};
  if (p.size() >= 4) t.burst = number(what + " burst", p[3]);
  if (p.size() == 5) t.weight = number(what + " weight", p[4]);
  return t;
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
  else if (name == "metrics-listen") c.metrics_listen = value;
  else if (name == "metrics-max-keys") c.metrics_max_keys = std::size_t(positive(name, value));
  else if (name == "upstream-connections") {
    std::size_t used = 0;
    const long long n = std::stoll(value, &used);
    if (used != value.size() || n < 0) throw std::invalid_argument("upstream-connections must be an integer >= 0, got " + value);
    c.upstream_connections = std::size_t(n);
  }
  else if (name == "max-stream-seconds") c.max_stream = std::chrono::seconds(positive(name, value));
  else if (name == "upstream-idle-ms") c.upstream_idle = std::chrono::milliseconds(positive(name, value));
  else if (name == "max-connections") c.max_connections = std::size_t(positive(name, value));
  else if (name == "idle-timeout-ms") c.idle_timeout = std::chrono::milliseconds(positive(name, value));
  else if (name == "header-timeout-ms") c.header_timeout = std::chrono::milliseconds(positive(name, value));
  else if (name == "body-timeout-ms") c.body_timeout = std::chrono::milliseconds(positive(name, value));
  else if (name == "max-header-bytes") c.max_header_bytes = std::uint32_t(positive(name, value));
  else if (name == "max-body-bytes") c.max_body_bytes = std::uint64_t(positive(name, value));
  else if (name == "max-usage-tokens") c.max_usage_tokens = positive(name, value);
  else if (name == "provider") {
    if (value == "openai") c.api = Api::openai;
    else if (value == "anthropic") c.api = Api::anthropic;
    else throw std::invalid_argument("provider must be openai or anthropic, got " + value);
  } else if (name == "anthropic-version") {
    if (value.empty() || value.find_first_of("\r\n") != std::string::npos)
      throw std::invalid_argument("anthropic-version must be one line, got \"" + value + "\"");
    c.anthropic_version = value;
  }
  else if (name == "rpm") c.rpm = number(name, value);
  else if (name == "tpm") c.tpm = number(name, value);
  else if (name == "itpm") c.itpm = number(name, value);
  else if (name == "otpm") c.otpm = number(name, value);
  else if (name == "output-quantile") {
    c.output_quantile = number(name, value);
    if (c.output_quantile > 1) throw std::invalid_argument("output-quantile must be in (0, 1], got " + value);
  }
  else if (name == "burst-seconds") c.burst = number(name, value);
  else if (name == "max-wait-ms") c.max_wait = std::chrono::milliseconds(std::stoll(value));
  else if (name == "default-max-tokens") c.default_max_tokens = std::stoll(value);
  else if (name == "tier") {
    c.tiers[tier_name(value)] = parse_tier(value);
  } else if (name == "sharing") {
    if (value == "fair") c.sharing = tollgate::Sharing::weighted_fair;
    else if (value == "fifo") c.sharing = tollgate::Sharing::fifo;
    else throw std::invalid_argument("sharing must be fair or fifo, got " + value);
  } else if (name == "key") {
    auto p = split(value, ':');
    if (p.size() != 2) throw std::invalid_argument("a key must be KEY:TIER (one is not; keys are not logged)");
    c.keys[p[0]] = p[1];
  } else {
    throw std::invalid_argument("unknown option " + name);
  }
}

std::vector<tollgate::Dimension> upstream_dims(const Config& c);

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
        if (name == "tier") {  // "tier free 60 6000 [burst seconds [weight]]" or "tier free rpm=60 otpm=8000 ..."
          std::istringstream t(value);
          value.clear();
          for (std::string word; t >> word;) value += (value.empty() ? "" : ":") + word;
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
    if (!c.tiers.count(tier)) throw std::invalid_argument("a key names an unknown tier " + tier);
  // A tier may cap only what the provider meters.
  const std::vector<tollgate::Dimension> metered = upstream_dims(c);
  for (const auto& [name, t] : c.tiers)
    for (const auto& limit : t.per_minute) {
      const std::string& dim = limit.first;  // (clang 14 cannot capture a structured binding)
      if (std::none_of(metered.begin(), metered.end(), [&](const tollgate::Dimension& d) { return d.name == dim; }))
        throw std::invalid_argument("tier " + name + " limits " + dim + ", which the " +
                                    (c.api == Api::anthropic ? "anthropic" : "openai") +
                                    " upstream does not meter (" +
                                    (c.api == Api::anthropic ? "requests, input_tokens, output_tokens" : "requests, tokens") +
                                    ")");
    }
  return c;
}

// A per-minute limit whose burst is `burst` seconds of refill.
Limit per_minute(double rate, double burst) { return Limit::per_minute(rate, rate / 60 * burst); }

// The upstream's dimensions as its provider meters them: OpenAI requests and
// (combined) tokens; Anthropic requests, input and output tokens.
std::vector<tollgate::Dimension> upstream_dims(const Config& c) {
  if (c.api == Api::anthropic)
    return {{"requests", per_minute(c.rpm, c.burst)},
            {"input_tokens", per_minute(c.itpm, c.burst)},
            {"output_tokens", per_minute(c.otpm, c.burst)}};
  return {{"requests", per_minute(c.rpm, c.burst)}, {"tokens", per_minute(c.tpm, c.burst)}};
}

std::vector<tollgate::Dimension> tier_dims(const Tier& t) {
  std::vector<tollgate::Dimension> out;
  for (const auto& [dim, rate] : t.per_minute) out.push_back({dim, per_minute(rate, t.burst)});
  return out;
}

// The shared upstream set's options: one tier per configured tier (its
// per-key limits and weight), each known key mapped to its tier. On a
// reload, `previous` (the tiers in use) keeps every tier's index: a tier
// named again is redefined in place, a new one is appended, and one no
// longer named stays (no key maps to it).
Shared::Options sharing_options(const Config& c, std::vector<tollgate::KeyTier> previous = {}) {
  Shared::Options o;
  o.tiers = std::move(previous);
  auto index = std::make_shared<std::map<std::string, std::size_t>>();
  for (std::size_t i = 0; i < o.tiers.size(); ++i) (*index)[o.tiers[i].name] = i;
  for (const auto& [name, t] : c.tiers) {
    tollgate::KeyTier def{name, t.weight, tier_dims(t)};
    if (auto it = index->find(name); it != index->end()) {
      o.tiers[it->second] = std::move(def);
    } else {
      (*index)[name] = o.tiers.size();
      o.tiers.push_back(std::move(def));
    }
  }
  if (o.tiers.empty()) o.tiers.push_back({"default", 1, {}});  // no keys can be known then anyway
  auto keys = std::make_shared<std::map<std::string, std::string>>(c.keys);
  o.tier_of = [index, keys](const std::string& key) -> std::size_t {
    auto it = keys->find(key);
    return it == keys->end() ? 0 : index->at(it->second);
  };
  o.sharing = c.sharing;
  // Only known keys ever get here; room for the keys later reloads add.
  o.max_keys = std::max<std::size_t>(4 * c.keys.size(), 10000);
  return o;
}

// A billed endpoint: its canonical path, how its body's cost is estimated,
// and whether it answers `"stream": true` with server-sent events.
struct Endpoint {
  const char* path;
  std::int64_t (*input)(const json&);                // prompt tokens
  std::int64_t (*output)(const json&, std::int64_t);  // output tokens, given the default max_tokens
  bool streams = true;
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

const Endpoint kOpenAiEndpoints[] = {
    {"/v1/chat/completions", [](const json& b) { return prompt_tokens(b); },
     [](const json& b, std::int64_t d) { return max_tokens(b, d); }},
    {"/v1/completions", [](const json& b) { return field_tokens(b, "prompt"); },
     [](const json& b, std::int64_t) { return positive_field(b, {"max_tokens"}, 16); }},
    {"/v1/responses", [](const json& b) { return field_tokens(b, "input") + field_tokens(b, "instructions"); },
     [](const json& b, std::int64_t d) { return positive_field(b, {"max_output_tokens"}, d); }},
    {"/v1/embeddings", [](const json& b) { return field_tokens(b, "input"); },
     [](const json&, std::int64_t) { return std::int64_t{0}; }, false},
};

// Anthropic's Messages API: prompt = messages + system, output = max_tokens.
const Endpoint kAnthropicEndpoints[] = {
    {"/v1/messages", [](const json& b) { return prompt_tokens(b); },
     [](const json& b, std::int64_t d) { return positive_field(b, {"max_tokens"}, d); }},
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
        metrics_(config_.metrics_max_keys),
        timers_(io.get_executor()),
        sharing_(sharing_options(config_)),
        upstream_(upstream_dims(config_), sharing_, std::chrono::steady_clock{},
                  &timers_),
        feedback_(upstream_, feedback_options(config_)),
        estimator_(estimator_options(config_)),
        acceptor_(io, parse_listen(config_.listen)) {
    upstream_.set_listener(&metrics_);
    if (!config_.metrics_listen.empty()) metrics_acceptor_.emplace(io, parse_listen(config_.metrics_listen));
    if (url_.tls) {
      tls_.emplace(ssl::context::tls_client);
      tls_->set_verify_mode(ssl::verify_peer);
      if (!config_.upstream_ca.empty()) tls_->load_verify_file(config_.upstream_ca);
      else tls_->set_default_verify_paths();
    }
  }

  ~Gateway() { upstream_.set_listener(nullptr); }

  // SIGHUP: the configuration again (command line and file). Keys, tiers
  // and weights take effect at once, for requests in flight too, and no
  // key's current state is reset (SharedLimitSet::set_tiers); the rest
  // needs a restart and is kept (the log line names what differed). A bad
  // configuration is refused with a log line; the old one stays.
  void reload(int argc, char** argv) {
    try {
      const Config next = parse_args(argc, argv);
      json kept = json::array();
      const auto differs = [&](const char* name, bool d) {
        if (d) kept.push_back(name);
      };
      differs("upstream", next.upstream != config_.upstream || next.upstream_ca != config_.upstream_ca);
      differs("upstream key", next.upstream_key != config_.upstream_key);
      differs("provider", next.api != config_.api || next.anthropic_version != config_.anthropic_version);
      differs("upstream limits", next.rpm != config_.rpm || next.tpm != config_.tpm || next.itpm != config_.itpm ||
                                     next.otpm != config_.otpm || next.burst != config_.burst);
      differs("sharing", next.sharing != config_.sharing);
      differs("listen", next.listen != config_.listen || next.metrics_listen != config_.metrics_listen);
      Shared::Options o = sharing_options(next, sharing_.tiers);
      upstream_.set_tiers(o.tiers, o.tier_of);  // throws for a bad tier: nothing changed
      sharing_ = std::move(o);
      config_.keys = next.keys;
      config_.tiers = next.tiers;
      metrics_.reload("ok");
      std::printf("%s\n", json{{"event", "reload"}, {"keys", config_.keys.size()}, {"tiers", config_.tiers.size()},
                               {"kept_until_restart", kept}}
                              .dump()
                              .c_str());
      std::fflush(stdout);
    } catch (const std::exception& e) {
      metrics_.reload("rejected");
      log_event("reload_rejected", std::string(e.what()) + "; the configuration in use stays");
    }
  }

  unsigned short port() const { return acceptor_.local_endpoint().port(); }
  std::optional<unsigned short> metrics_port() const {
    if (!metrics_acceptor_) return std::nullopt;
    return metrics_acceptor_->local_endpoint().port();
  }

  void start() {
    net::co_spawn(io_, accept_loop(), net::detached);
    if (metrics_acceptor_) net::co_spawn(io_, metrics_loop(), net::detached);
    if (config_.upstream_connections > 0) net::co_spawn(io_, pool_sweeper(), net::detached);
  }

  // SIGINT/SIGTERM: no new connections; idle connections close; requests in
  // flight are answered, then their connections close.
  void stop() {
    stopping_ = true;
    beast::error_code ignored;
    acceptor_.close(ignored);
    if (metrics_acceptor_) metrics_acceptor_->close(ignored);
    sweep_timer_.cancel();  // the sweeper closes the idle connections and ends
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
  // An upstream answer read whole is at most this large; one server-sent
  // event at most kMaxEventBytes. The upstream may be silent for
  // kUpstreamIdle (a model thinking) before the call is abandoned; a client
  // must take each write within kClientWrite.
  static constexpr std::uint64_t kMaxUpstreamBody = 64 * 1024 * 1024;
  static constexpr std::size_t kMaxEventBytes = 1024 * 1024;
  static constexpr auto kUpstreamIdle = std::chrono::seconds(120);
  static constexpr auto kClientWrite = std::chrono::seconds(30);
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
    unsigned status = 0;      // a streamed answer's status (the others are in their Response)
    bool reusable = true;     // a streamed answer ended cleanly: the connection may serve another
    // For the metrics: a known key's tier and what became of its request
    // (admitted, refused, invalid); none: answered before admission.
    std::string tier;
    const char* outcome = nullptr;
    bool health = false;  // a health check: not a request of anyone's
    std::size_t written = 0;         // bytes of the request the upstream connection took
    bool upstream_reusable = false;  // the upstream's answer ended cleanly on a keep-alive connection
  };

  static tollgate::OutputEstimator::Options estimator_options(const Config& c) {
    tollgate::OutputEstimator::Options o;
    o.quantile = c.output_quantile;
    o.max_keys = 256;  // model names come from clients: bounded
    return o;
  }

  static Feedback::Options feedback_options(const Config& c) {
    Feedback::Options o;
    if (c.adaptive) o.adaptive = tollgate::AdaptiveRate{};
    o.bindings = c.api == Api::anthropic ? tollgate::HeaderBindings::anthropic() : tollgate::HeaderBindings::openai();
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
      beast::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);  // events go out as they come (no Nagle delay)
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
        log(parser.get(), early->result_int(), out);
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
        log(parser.get(), res.result_int(), out);
        if (bec != beast::error::timeout) co_await reply_and_close(stream, std::move(res));
        break;
      }
      Request req = parser.release();
      const bool keep = req.keep_alive();
      std::optional<Response> answer;
      std::string failure;
      try {
        answer = co_await handle(stream, buffer, req, std::get<Screened>(screened), out);
      } catch (const std::exception& e) {
        failure = e.what();
        answer = plain(req.version(), http::status::bad_gateway, "the gateway could not complete this request");
      }
      if (!failure.empty()) out.note = "internal_error: " + failure;
      if (!answer) {  // streamed already
        log(req, out.status, out);
        if (!out.reusable || !keep) break;
        continue;
      }
      Response& res = *answer;
      log(req, res.result_int(), out);
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

  // An answer of the gateway's own, in the error format of the API it
  // serves (OpenAI's `{"error": {...}}`, Anthropic's `{"type": "error", ...}`).
  Response plain(unsigned version, http::status s, const std::string& message, const char* type = "invalid_request_error") const {
    Response res{s, version};
    res.set(http::field::content_type, "application/json");
    if (config_.api == Api::anthropic) {
      const std::string_view t = type;
      const char* kind = t == "rate_limit_exceeded" ? "rate_limit_error"
                         : t == "invalid_api_key"   ? "authentication_error"
                         : t == "upstream_error"    ? "api_error"
                                                    : "invalid_request_error";
      if (s == http::status::not_found) kind = "not_found_error";
      res.body() = json{{"type", "error"}, {"error", {{"type", kind}, {"message", message}}}}.dump();
    } else {
      res.body() = json{{"error", {{"message", message}, {"type", type}}}}.dump();
    }
    res.prepare_payload();
    return res;
  }

  // A refusal of ours: 429 with Retry-After (rounded up) and the IETF
  // fields: the key's own policy (its tier), and what it could take now (the
  // lesser of its own tokens and the upstream's).
  Response too_many(unsigned version, const std::string& key, const AcquireResult& r) {
    Response res = plain(version, http::status::too_many_requests, "rate limit: " + upstream_.message(r), "rate_limit_exceeded");
    res.set(http::field::retry_after, tollgate::retry_after_header(r.retry_after()));
    // A dimension the key's tier caps has that policy; the others, the upstream's.
    // (A key a reload removed meanwhile has no tier: the upstream's policy.)
    const auto k = config_.keys.find(key);
    const auto t = k == config_.keys.end() ? config_.tiers.end() : config_.tiers.find(k->second);
    const Tier none{};
    const Tier& tier = t == config_.tiers.end() ? none : t->second;
    std::string policy, state;
    for (std::size_t i = 0; i < upstream_.size(); ++i) {
      const std::string name(upstream_.name(i));
      const auto own = tier.per_minute.find(name);
      const Limit limit = own != tier.per_minute.end() ? per_minute(own->second, tier.burst) : upstream_.limit(i);
      const double left = std::min(upstream_.key_available(key, i), upstream_.available(i));
      policy += (i ? ", " : "") + tollgate::ratelimit_policy_header(name, limit);
      state += (i ? ", " : "") + tollgate::ratelimit_header(name, left, r.retry_after());
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
    if (canon == "/healthz" && h.method() == http::verb::get) {
      out.health = true;
      return health(v);
    }
    const Endpoint* endpoint = nullptr;
    if (config_.api == Api::anthropic) {
      for (const Endpoint& e : kAnthropicEndpoints)
        if (canon == e.path) endpoint = &e;
    } else {
      for (const Endpoint& e : kOpenAiEndpoints)
        if (canon == e.path) endpoint = &e;
    }
    if (!endpoint) return plain(v, http::status::not_found, "no such endpoint on this gateway");
    out.path = canon;
    if (h.method() != http::verb::post) {
      Response res = plain(v, http::status::method_not_allowed, "use POST");
      res.set(http::field::allow, "POST");
      return res;
    }
    // The client's key: `Authorization: Bearer <key>` (OpenAI's SDKs) or
    // `x-api-key: <key>` (Anthropic's).
    const std::string_view auth(h[http::field::authorization].data(), h[http::field::authorization].size());
    const std::string_view api_key(h["x-api-key"].data(), h["x-api-key"].size());
    const std::string key = auth.rfind("Bearer ", 0) == 0 ? std::string(auth.substr(7)) : std::string(api_key);
    out.key = fingerprint(key);
    const auto known = config_.keys.find(key);
    if (known == config_.keys.end()) return plain(v, http::status::unauthorized, "unknown API key", "invalid_api_key");
    out.tier = known->second;
    // Work before admission: a key that cannot have even one request within
    // max_wait (its own limit, or its turn at the upstream) is refused before
    // its body is read or parsed.
    Shared::Permit probe = upstream_.try_acquire_permit(key, upstream_.costs({{"requests", 1}}));
    if (probe) probe.release();
    else if (probe.result().status() != tollgate::Status::not_now || probe.result().retry_after() > config_.max_wait)
    {
      out.outcome = "refused";
      return too_many(v, key, probe.result());
    }
    return Screened{key, endpoint, canon};
  }

  // The cost of a call as its provider counts it: OpenAI's tokens are the
  // prompt plus max_tokens at admission; Anthropic's input at admission and
  // output as produced (the caller passes the learned output estimate).
  Costs cost_of(std::int64_t input, double output) const {
    if (config_.api == Api::anthropic)
      return upstream_.costs({{"requests", 1}, {"input_tokens", double(input)}, {"output_tokens", output}});
    return upstream_.costs({{"requests", 1}, {"tokens", double(input) + output}});
  }
  // What the output estimator learns per: the model, when it is a short name.
  static std::string model_key(const json& body) {
    if (body.contains("model") && body["model"].is_string() && body["model"].get_ref<const std::string&>().size() <= 64)
      return body["model"].get<std::string>();
    return "(other)";
  }

  // An answer streamed to the client as it arrives (server-sent events).
  struct Relay {
    beast::tcp_stream& client;
    beast::flat_buffer& pending;  // what the client sends meanwhile: the next request's bytes
    unsigned version;
    bool keep;
    llm::StreamUsage usage;
    http::fields upstream_fields{};  // the upstream's header (its rate-limit fields, for feedback at the end)
    bool streamed = false;           // the client has the header: the answer is this stream
    bool clean = false;              // ... and its end (the stream ended as HTTP says)
    bool client_gone = false, watching = false, finished = false;
    std::function<void()> cancel_upstream{};
    std::optional<net::steady_timer> joined{};
  };

  // Answers a screened request: estimate, wait for the limits, forward,
  // settle. Returns the answer to write, or nothing when it was streamed to
  // `client` already (`out` says how that went).
  net::awaitable<std::optional<Response>> handle(beast::tcp_stream& client, beast::flat_buffer& pending, const Request& req,
                                                 const Screened& who, Outcome& out) {
    const unsigned v = req.version();
    json body = json::parse(req.body(), nullptr, false);
    if (body.is_discarded() || !body.is_object()) {
      out.outcome = "invalid";
      co_return plain(v, http::status::bad_request, "the body is not a JSON object");
    }
    const std::int64_t input = who.endpoint->input(body);
    const std::int64_t most = who.endpoint->output(body, config_.default_max_tokens);
    const std::string model = model_key(body);
    const double output = config_.api == Api::anthropic ? estimator_.estimate(model, double(most)) : double(most);
    const Costs estimate_costs = cost_of(input, output);
    out.estimate = double(input) + output;
    const bool stream = who.endpoint->streams && body.contains("stream") && body["stream"] == true;
    // OpenAI reports a stream's usage only when asked to: the gateway asks,
    // and keeps that chunk from a client that did not.
    std::string upstream_body = req.body();
    bool drop_usage = false;
    if (stream && config_.api == Api::openai && std::string_view(who.endpoint->path) != "/v1/responses") {
      json& so = body["stream_options"];
      if (!so.is_object() || !so.contains("include_usage") || so["include_usage"] != true) {
        if (!so.is_object()) so = json::object();
        so["include_usage"] = true;
        drop_usage = true;
        upstream_body = body.dump();
      }
    }
    // The key's own limits and the shared upstream, as one operation: its
    // turn among the keys (by weight), then both at one instant or neither.
    const tollgate::KeyedCosts estimate = upstream_.keyed(who.key, estimate_costs);
    prometheus::Gauge& queued = metrics_.queued(out.tier);
    queued.Increment();
    const auto asked = std::chrono::steady_clock::now();
    const AcquireResult got =
        co_await tollgate::boost_asio::async_acquire(upstream_, estimate, config_.max_wait, net::use_awaitable);
    queued.Decrement();
    if (!got) {
      const bool not_now = got.status() == tollgate::Status::not_now;
      out.outcome = not_now ? "refused" : "invalid";
      co_return not_now ? too_many(v, who.key, got) : plain(v, http::status::bad_request, upstream_.message(got));
    }
    out.outcome = "admitted";
    metrics_.waited(out.tier, std::chrono::duration<double>(std::chrono::steady_clock::now() - asked).count());
    // Unsettled (an exception below), the permit keeps the estimate charged.
    Shared::Permit permit(upstream_, estimate, got);
    out.admitted = std::chrono::steady_clock::now();
    std::optional<Relay> relay;
    if (stream)
      relay.emplace(Relay{client, pending, v, req.keep_alive(), llm::StreamUsage(config_.api, config_.max_usage_tokens, drop_usage)});
    std::optional<Response> res = co_await forward(who.path, std::move(upstream_body), v, out, relay ? &*relay : nullptr);

    if (relay && relay->streamed) {
      // Settled from the stream's own usage; a stream cut short keeps the
      // estimate for what it does not know (Anthropic's input is known
      // from message_start).
      Costs actual = estimate_costs;
      if (const auto u = relay->usage.complete()) {
        actual = cost_of(u->input, double(u->output));
        out.actual = double(u->total());
        if (config_.api == Api::anthropic) estimator_.observe(model, double(u->output));
      } else {
        if (const auto started = relay->usage.started()) actual = cost_of(started->input, output);
        out.actual = actual.size() == 3 ? actual[1] + actual[2] : actual[1];
        out.note = relay->client_gone ? "client_gone: the stream was cut; unknown usage keeps the estimate"
                   : relay->usage.invalid() ? "usage_invalid: the estimate stands"
                                            : "usage_missing: the stream ended without usage; the estimate stands";
      }
      out.status = 200;
      out.reusable = relay->clean && !relay->client_gone;
      metrics_.upstream(200);
      metrics_.stream(relay->client_gone ? "client_gone" : relay->clean ? "complete" : "cut");
      const http::fields& f = relay->upstream_fields;
      feedback_.complete(permit, actual, 200, [&f](std::string_view name) -> std::optional<std::string_view> {
        auto it = f.find(beast::string_view(name.data(), name.size()));
        if (it == f.end()) return std::nullopt;
        return std::string_view(it->value().data(), it->value().size());
      });
      co_return std::nullopt;
    }
    if (res) {
      metrics_.upstream(res->result_int());
    } else {
      metrics_.upstream_failure();
      res = plain(v, http::status::bad_gateway, "the upstream could not be reached", "upstream_error");
    }

    const auto header = [&res](std::string_view name) -> std::optional<std::string_view> {
      auto it = res->find(beast::string_view(name.data(), name.size()));
      if (it == res->end()) return std::nullopt;
      return std::string_view(it->value().data(), it->value().size());
    };
    std::string code;
    const json answer = json::parse(res->body(), nullptr, false);
    if (answer.is_object() && answer.contains("error") && answer["error"].is_object()) {
      const json& e = answer["error"];
      for (const char* k : {"code", "type"})
        if (code.empty() && e.contains(k) && e[k].is_string()) code = e[k].get<std::string>();
    }
    // The request was sent (it counts). A 200's tokens are its usage when the
    // usage is believable, else the estimate; other answers cost no tokens
    // (an exchange that broke after the request was written may have been
    // billed: the estimate stands).
    Costs actual = out.maybe_sent ? estimate_costs : cost_of(0, 0);
    out.actual = out.maybe_sent ? out.estimate : 0;
    if (res->result() == http::status::ok) {
      const json usage = answer.is_object() && answer.contains("usage") ? answer["usage"] : json();
      if (const auto u = read_usage(usage, config_.max_usage_tokens, config_.api)) {
        actual = cost_of(u->input, double(u->output));
        out.actual = double(u->total());
        if (config_.api == Api::anthropic) estimator_.observe(model, double(u->output));
      } else {
        actual = estimate_costs;
        out.actual = out.estimate;
        out.note = usage.is_null() ? "usage_missing: the estimate stands" : "usage_invalid: the estimate stands";
      }
    }
    // Settle first, then feed the answer back (UpstreamFeedback::complete):
    // the provider's remaining count already includes this call.
    feedback_.complete(permit, actual, static_cast<int>(res->result_int()), header, code);
    co_return res;
  }

  // The request the upstream gets: the canonical path, the body, the
  // upstream's own key and headers. None of the client's headers travel
  // (its key least of all).
  Request upstream_request(const std::string& path, std::string body) const {
    Request req{http::verb::post, path, 11};
    req.set(http::field::host, url_.host);
    req.set(http::field::content_type, "application/json");
    req.set(http::field::user_agent, "tollgate-llm-gateway");
    if (config_.api == Api::anthropic) {
      req.set("anthropic-version", config_.anthropic_version);
      if (!config_.upstream_key.empty()) req.set("x-api-key", config_.upstream_key);
    } else if (!config_.upstream_key.empty()) {
      req.set(http::field::authorization, "Bearer " + config_.upstream_key);
    }
    req.body() = std::move(body);
    req.keep_alive(config_.upstream_connections > 0);
    req.prepare_payload();
    return req;
  }

  // While an answer streams, reads the client's side of the connection:
  // bytes it sends (a pipelined request) are kept for later; its going away
  // (EOF or an error) cancels the upstream call. The relay stops it by
  // cancelling the read, and waits for it (`joined`).
  net::awaitable<void> watch_client(Relay& r) {
    while (!r.finished) {
      auto [ec, n] = co_await r.client.socket().async_read_some(r.pending.prepare(4096), net::as_tuple(net::use_awaitable));
      if (ec) {
        if (!r.finished) {
          r.client_gone = true;
          if (r.cancel_upstream) r.cancel_upstream();
        }
        break;
      }
      r.pending.commit(n);
      if (r.pending.size() > kDrainBytes) break;  // enough for later: stop reading
    }
    r.watching = false;
    r.joined->cancel();
  }

  // Relays a streamed answer: the client gets a chunked text/event-stream
  // response, one chunk per read that completed events; the stream's usage
  // is read on the way. Anything but a 200 event stream is read whole.
  template <class Stream>
  net::awaitable<std::optional<Response>> relay_stream(Stream& stream, Relay& r, Outcome& out) {
    beast::flat_buffer buffer;
    http::response_parser<http::buffer_body> parser;
    parser.body_limit(boost::none);
    beast::get_lowest_layer(stream).expires_after(kUpstreamIdle);
    auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, net::as_tuple(net::use_awaitable));
    if (hec) {
      out.note = "upstream read: " + hec.message();
      co_return std::nullopt;
    }
    auto& head = parser.get();
    const beast::string_view type = head[http::field::content_type];
    char chunk[16 * 1024];
    if (head.result() != http::status::ok || type.substr(0, 17) != "text/event-stream") {
      // An error (or a non-streamed answer): read whole, up to a bound.
      Response res{head.result(), r.version};
      for (const auto& f : head) res.set(f.name_string(), f.value());
      std::string& body = res.body();
      while (!parser.is_done()) {
        head.body().data = chunk;
        head.body().size = sizeof chunk;
        beast::get_lowest_layer(stream).expires_after(kUpstreamIdle);
        auto [ec, n] = co_await http::async_read(stream, buffer, parser, net::as_tuple(net::use_awaitable));
        if (ec && ec != http::error::need_buffer) {
          out.note = "upstream read: " + ec.message();
          co_return std::nullopt;
        }
        body.append(chunk, sizeof chunk - head.body().size);
        if (body.size() > kMaxUpstreamBody) {
          out.note = "upstream answer too large";
          co_return std::nullopt;
        }
      }
      res.prepare_payload();
      out.maybe_sent = false;
      out.upstream_reusable = head.keep_alive();
      co_return res;
    }
    out.maybe_sent = false;  // the upstream took the call
    r.upstream_fields = static_cast<const http::fields&>(head);
    http::response<http::empty_body> to_client{http::status::ok, r.version};
    to_client.set(http::field::content_type, "text/event-stream");
    to_client.set(http::field::cache_control, "no-cache");
    to_client.keep_alive(r.keep && !stopping_);
    to_client.chunked(true);
    http::response_serializer<http::empty_body> sr{to_client};
    r.client.expires_after(kClientWrite);
    auto [wec, wn] = co_await http::async_write_header(r.client, sr, net::as_tuple(net::use_awaitable));
    r.streamed = true;
    if (wec) {
      r.client_gone = true;
      co_return std::nullopt;
    }
    r.cancel_upstream = [&stream] { beast::get_lowest_layer(stream).cancel(); };
    r.joined.emplace(r.client.get_executor(), net::steady_timer::time_point::max());
    r.watching = true;
    net::co_spawn(r.client.get_executor(), watch_client(r), net::detached);
    llm::SseSplitter events(kMaxEventBytes);
    const auto cut_at = std::chrono::steady_clock::now() + config_.max_stream;
    // Whatever happens here, the watcher is stopped and joined below before
    // `r` (in the caller's frame) can go.
    try {
      for (;;) {
        if (r.client_gone) break;  // the watcher saw it go (no upstream read was pending to cancel)
        if (std::chrono::steady_clock::now() >= cut_at) {
          out.note = "upstream stream: longer than --max-stream-seconds, cut";
          break;
        }
        head.body().data = chunk;
        head.body().size = sizeof chunk;
        beast::get_lowest_layer(stream).expires_after(kUpstreamIdle);
        auto [ec, n] = co_await http::async_read_some(stream, buffer, parser, net::as_tuple(net::use_awaitable));
        if (ec && ec != http::error::need_buffer) {
          if (!r.client_gone) out.note = "upstream stream: " + ec.message();
          break;
        }
        std::string forward;
        try {
          events.feed(std::string_view(chunk, sizeof chunk - head.body().size));
          while (auto e = events.next())
            if (r.usage.on_event(*e)) forward += e->raw;
        } catch (const std::length_error& e) {
          out.note = std::string("upstream stream: ") + e.what();
          break;
        }
        if (parser.is_done()) forward += events.rest();
        if (!forward.empty()) {
          r.client.expires_after(kClientWrite);
          auto [cec, cn] = co_await net::async_write(r.client, http::make_chunk(net::buffer(forward)), net::as_tuple(net::use_awaitable));
          if (cec) {
            r.client_gone = true;
            break;
          }
        }
        if (parser.is_done()) {
          out.upstream_reusable = head.keep_alive();  // the upstream's side is complete
          r.client.expires_after(kClientWrite);
          auto [lec, ln] = co_await net::async_write(r.client, http::make_chunk_last(), net::as_tuple(net::use_awaitable));
          r.clean = !lec;
          break;
        }
      }
    } catch (const std::exception& e) {
      out.note = std::string("relay: ") + e.what();
    }
    r.finished = true;
    if (r.watching) {
      beast::error_code ignored;
      r.client.socket().cancel(ignored);
      co_await r.joined->async_wait(net::as_tuple(net::use_awaitable));
    }
    co_return std::nullopt;
  }

  template <class Stream>
  net::awaitable<std::optional<Response>> exchange(Stream& stream, Request& req, Outcome& out, Relay* relay) {
    beast::get_lowest_layer(stream).expires_after(30s);
    auto [wec, wn] = co_await http::async_write(stream, req, net::as_tuple(net::use_awaitable));
    out.written = wn;
    out.maybe_sent = true;  // part of it may have reached the provider, which may bill it
    if (wec) {
      out.note = "upstream write: " + wec.message();
      co_return std::nullopt;
    }
    if (relay) co_return co_await relay_stream(stream, *relay, out);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(kMaxUpstreamBody);
    beast::get_lowest_layer(stream).expires_after(kUpstreamIdle);
    auto [rec, rn] = co_await http::async_read(stream, buffer, parser, net::as_tuple(net::use_awaitable));
    if (rec) {
      out.note = "upstream read: " + rec.message();
      co_return std::nullopt;
    }
    out.maybe_sent = false;
    out.upstream_reusable = parser.get().keep_alive();
    co_return parser.release();
  }

  // Keeps the upstream's latest resumable TLS session for the next new
  // connection (read after an exchange: TLS 1.3 sends its tickets after the
  // handshake).
  void remember_session(ssl::stream<beast::tcp_stream>& s) {
    SSL_SESSION* got = SSL_get1_session(s.native_handle());
    if (got && SSL_SESSION_is_resumable(got)) tls_session_.reset(got, SSL_SESSION_free);
    else if (got) SSL_SESSION_free(got);
  }

  // An upstream connection (TLS or plain) and when it went idle.
  struct UpstreamConn {
    std::unique_ptr<ssl::stream<beast::tcp_stream>> tls;
    std::unique_ptr<beast::tcp_stream> plain;
    std::chrono::steady_clock::time_point idle_since{};
    beast::tcp_stream& lowest() { return tls ? beast::get_lowest_layer(*tls) : *plain; }
  };

  // True when an idle connection's peer has neither closed it nor sent
  // anything unasked (either makes it unusable): nothing to read yet.
  static bool quiet(tcp::socket& s) {
    char b;
    const ssize_t n = ::recv(s.native_handle(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  // The most recently used idle connection that is still usable, if any;
  // stale ones (idle too long, closed by the upstream) are closed on the way.
  std::unique_ptr<UpstreamConn> take_pooled() {
    const auto now = std::chrono::steady_clock::now();
    while (!pool_.empty()) {
      std::unique_ptr<UpstreamConn> c = std::move(pool_.back());
      pool_.pop_back();
      if (now - c->idle_since < config_.upstream_idle && quiet(c->lowest().socket())) return c;
      metrics_.connection("stale");
      beast::error_code ignored;
      c->lowest().socket().close(ignored);
    }
    return nullptr;
  }

  // Closes idle connections older than --upstream-idle-ms, every half of it.
  net::awaitable<void> pool_sweeper() {
    while (!stopping_) {
      sweep_timer_.expires_after(config_.upstream_idle / 2);
      co_await sweep_timer_.async_wait(net::as_tuple(net::use_awaitable));
      const auto now = std::chrono::steady_clock::now();
      std::erase_if(pool_, [&](std::unique_ptr<UpstreamConn>& c) {
        if (!stopping_ && now - c->idle_since < config_.upstream_idle) return false;
        beast::error_code ignored;
        c->lowest().socket().close(ignored);
        return true;
      });
    }
  }

  // A new connection to the upstream (TCP, then TLS when configured), or
  // nothing (the reason in `out.note`).
  net::awaitable<std::unique_ptr<UpstreamConn>> connect(Outcome& out) {
    auto ex = co_await net::this_coro::executor;
    tcp::resolver resolver(ex);
    auto [rec, endpoints] = co_await resolver.async_resolve(url_.host, url_.port, net::as_tuple(net::use_awaitable));
    if (rec) {
      out.note = "upstream resolve: " + rec.message();
      co_return nullptr;
    }
    auto c = std::make_unique<UpstreamConn>();
    if (url_.tls) {
      c->tls = std::make_unique<ssl::stream<beast::tcp_stream>>(ex, *tls_);
      SSL_set_tlsext_host_name(c->tls->native_handle(), url_.host.c_str());
      c->tls->set_verify_callback(ssl::host_name_verification(url_.host));
    } else {
      c->plain = std::make_unique<beast::tcp_stream>(ex);
    }
    c->lowest().expires_after(30s);
    auto [cec, ep] = co_await c->lowest().async_connect(endpoints, net::as_tuple(net::use_awaitable));
    if (cec) {
      out.note = "upstream connect: " + cec.message();
      co_return nullptr;
    }
    beast::error_code ignored;
    c->lowest().socket().set_option(tcp::no_delay(true), ignored);
    if (c->tls) {
      // Resume the last session the upstream gave us: no full handshake.
      if (tls_session_) SSL_set_session(c->tls->native_handle(), tls_session_.get());
      auto [hec] = co_await c->tls->async_handshake(ssl::stream_base::client, net::as_tuple(net::use_awaitable));
      if (hec) {
        out.note = "upstream TLS: " + hec.message();
        co_return nullptr;
      }
      metrics_.connection(SSL_session_reused(c->tls->native_handle()) ? "tls_resumed" : "tls_full");
    }
    metrics_.connection("opened");
    co_return c;
  }

  // One call to the upstream (HTTP or HTTPS) on a pooled keep-alive
  // connection or a new one. A pooled connection that fails before any byte
  // of the request was written is replaced once; one that fails later is
  // not (the upstream may have the request: it is never sent twice).
  // Returns its answer; nothing when it failed (the reason is in
  // `out.note`) or was streamed to the client (`relay->streamed`).
  net::awaitable<std::optional<Response>> forward(const std::string& path, std::string body, unsigned version, Outcome& out,
                                                  Relay* relay) {
    Request req = upstream_request(path, std::move(body));
    std::optional<Response> res;
    for (int attempt = 0;; ++attempt) {
      std::unique_ptr<UpstreamConn> c = attempt == 0 ? take_pooled() : nullptr;
      const bool reused = c != nullptr;
      if (reused) metrics_.connection("reused");
      if (!c) c = co_await connect(out);
      if (!c) co_return std::nullopt;
      out.written = 0;
      out.upstream_reusable = false;
      if (c->tls) res = co_await exchange(*c->tls, req, out, relay);  // (g++ 12 miscompiles co_await in ?:)
      else res = co_await exchange(*c->plain, req, out, relay);
      const bool failed = !res && !(relay && relay->streamed);
      if (c->tls && !failed) remember_session(*c->tls);
      if (out.upstream_reusable && pool_.size() < config_.upstream_connections && !stopping_) {
        c->idle_since = std::chrono::steady_clock::now();
        pool_.push_back(std::move(c));
      } else if (c->tls && !(relay && relay->client_gone) && !failed) {
        c->lowest().expires_after(5s);
        auto [sec] = co_await c->tls->async_shutdown(net::as_tuple(net::use_awaitable));
        (void)sec;
      } else {
        beast::error_code ignored;  // abandoned or broken: no orderly goodbye
        c->lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
        c->lowest().close();
      }
      if (failed && reused && out.written == 0 && attempt == 0) {
        metrics_.connection("retried");
        out.maybe_sent = false;
        continue;  // the pooled connection died before the request left: a new one
      }
      break;
    }
    if (res) res->version(version);
    co_return res;
  }

  // One JSON line per request: the key's fingerprint (never the key), the
  // method and path, the status, estimated and actual tokens, the wait for
  // the limits, the total time, the admission instant (steady clock, ns; 0
  // when not admitted), and a note (why the estimate stood, what failed).
  // JSON escapes whatever a client put in the path.
  //
  // Also counts the request in the metrics: a known key's outcome and
  // tokens by tier, anything else by status.
  void log(const http::request_header<>& req, unsigned status, const Outcome& o) {
    if (o.outcome) {
      metrics_.request(o.tier, o.key, o.outcome);
      if (std::string_view(o.outcome) == "admitted") metrics_.tokens(o.tier, o.estimate, o.actual);
    } else if (!o.health) {
      metrics_.rejected(status);
    }
    const auto now = std::chrono::steady_clock::now();
    const bool admitted = o.admitted != std::chrono::steady_clock::time_point{};
    json line = {{"event", "request"},
                 {"key", o.key},
                 {"method", std::string(req.method_string())},
                 {"path", o.path},
                 {"status", status},
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

  // GET /healthz: 200 while serving, 503 once stopping.
  Response health(unsigned version) const {
    Response res{stopping_ ? http::status::service_unavailable : http::status::ok, version};
    res.set(http::field::content_type, "application/json");
    res.body() = json{{"status", stopping_ ? "stopping" : "ok"}}.dump();
    res.prepare_payload();
    return res;
  }

  // The metrics listener (--metrics-listen): GET /metrics (the Prometheus
  // text format) and GET /healthz, one request per connection, at most
  // kMetricsConnections at once, each within 5 s.
  static constexpr int kMetricsConnections = 8;
  net::awaitable<void> metrics_loop() {
    while (!stopping_) {
      auto [ec, socket] = co_await metrics_acceptor_->async_accept(net::as_tuple(net::use_awaitable));
      if (stopping_ || ec == net::error::operation_aborted) co_return;
      if (ec) continue;
      if (metrics_connections_ >= kMetricsConnections) {
        beast::error_code ignored;
        socket.close(ignored);
        continue;
      }
      net::co_spawn(io_, metrics_session(std::move(socket)), net::detached);
    }
  }
  net::awaitable<void> metrics_session(tcp::socket socket) {
    ++metrics_connections_;
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    http::request_parser<http::empty_body> parser;
    parser.header_limit(8 * 1024);
    stream.expires_after(5s);
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, net::as_tuple(net::use_awaitable));
    if (!ec) {
      const auto& req = parser.get();
      const std::string_view target(req.target().data(), req.target().size());
      Response res;
      if (req.method() == http::verb::get && target == "/metrics") {
        for (std::size_t i = 0; i < upstream_.size(); ++i) {
          const Limit l = upstream_.limit(i);
          metrics_.dimension(std::string(upstream_.name(i)), l.rate, l.capacity, upstream_.available(i));
        }
        res = Response{http::status::ok, req.version()};
        res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
        res.body() = metrics_.scrape();
        res.prepare_payload();
      } else if (req.method() == http::verb::get && target == "/healthz") {
        res = health(req.version());
      } else {
        res = plain(req.version(), http::status::not_found, "GET /metrics or /healthz");
      }
      res.keep_alive(false);
      co_await http::async_write(stream, res, net::as_tuple(net::use_awaitable));
    }
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    --metrics_connections_;
  }

  net::io_context& io_;
  Config config_;
  Url url_;
  std::optional<ssl::context> tls_;
  llm::GatewayMetrics metrics_;  // before the set it listens to: outlives it
  tollgate::boost_asio::TimerScheduler<> timers_;
  Shared::Options sharing_;  // the tiers in use (their indices never change) and tier_of
  Shared upstream_;
  Feedback feedback_;
  tollgate::OutputEstimator estimator_;
  tcp::acceptor acceptor_;
  std::optional<tcp::acceptor> metrics_acceptor_;
  std::vector<std::unique_ptr<UpstreamConn>> pool_;  // idle upstream connections, most recent last
  net::steady_timer sweep_timer_{io_};
  std::shared_ptr<SSL_SESSION> tls_session_;  // the last resumable upstream TLS session
  int metrics_connections_ = 0;
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
    std::printf("llm_gateway: listening on 127.0.0.1:%u, upstream %s, %zu keys", gateway.port(),
                config.upstream.c_str(), config.keys.size());
    if (auto m = gateway.metrics_port()) std::printf(", metrics on 127.0.0.1:%u", *m);
    std::printf("\n");
    std::fflush(stdout);
    net::signal_set signals(io, SIGINT, SIGTERM);
    net::signal_set hangup(io, SIGHUP);
    std::function<void()> on_hangup = [&] {
      hangup.async_wait([&](const beast::error_code& ec, int) {
        if (ec) return;
        gateway.reload(argc, argv);
        on_hangup();
      });
    };
    on_hangup();
    signals.async_wait([&](const beast::error_code& ec, int) {
      if (ec) return;
      beast::error_code ignored;
      hangup.cancel(ignored);
      gateway.stop();
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
