// llm_sim: a deterministic LLM-provider simulator, the proof of the LLM layer.
//
// A simulated provider enforces its true limits (a requests-per-minute and a
// tokens-per-minute bucket), charges each request's estimate at admission and
// reconciles to the actual tokens at completion, and refuses with 429 and the
// headers of an OpenAI or an Anthropic profile; refused requests still count
// against its request limit. K client keys (one noisy and bursty) offer
// requests with heavy-tailed output lengths. Several client strategies run
// against the same arrivals in each scenario, all on tollgate's manual clock
// and manual scheduler: no real time passes, every run is reproducible.
//
//   llm_sim                       a readable table
//   llm_sim --json                one JSON object per (scenario, strategy)
//   llm_sim --svg chart.svg       admitted tokens per second over time
//   llm_sim --duration 180 --check    exit 1 unless tollgate_adaptive meets
//                                     its targets (used by CTest)

#include <algorithm>
#include <chrono>
#include <cmath>
#include <coroutine>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <tollgate/limit_set.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/token_bucket.hpp>
#include <tollgate/upstream_feedback.hpp>
#include <tollgate/upstream_headers.hpp>

#include "sim_support.hpp"
#include "llm_sim_tiered.hpp"

namespace {

using namespace std::chrono_literals;
using namespace sim;
using tollgate::Costs;
using tollgate::Limit;
using tollgate::testing::ManualClock;
using tollgate::testing::ManualScheduler;

// ---- The provider ----------------------------------------------------------

struct Bucket {  // the provider's own, independent of tollgate
  double cap, rate, level, last = 0;
  void refill(double t) {
    level = std::min(cap, level + rate * (t - last));
    last = t;
  }
};

enum class Profile { openai, anthropic };

struct Scenario {
  std::string name;
  double true_share = 1.0;    // true limit / documented limit
  double hidden_share = 0.0;  // share of the quota another client takes
  double drop_at = -1;        // the limit halves at this fraction of the run
  double load = 1.25;         // offered tokens / documented tokens
  Profile profile = Profile::openai;
};

struct Answer {
  int status;
  std::map<std::string, std::string> headers;
};

std::string openai_duration(double s) {
  char buf[64];
  if (s < 1) std::snprintf(buf, sizeof buf, "%dms", static_cast<int>(std::ceil(s * 1000)));
  else if (s < 60) std::snprintf(buf, sizeof buf, "%.3gs", s);
  else std::snprintf(buf, sizeof buf, "%dm%ds", static_cast<int>(s / 60), static_cast<int>(std::ceil(std::fmod(s, 60))));
  return buf;
}

std::string rfc3339(std::chrono::system_clock::time_point t) {
  const auto secs = std::chrono::floor<std::chrono::seconds>(t);
  const std::time_t tt = std::chrono::system_clock::to_time_t(secs);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

class Provider {
 public:
  Provider(const Scenario& sc, double rpm, double tpm, double duration)
      : sc_(sc), duration_(duration),
        req_{rpm * sc.true_share, rpm * sc.true_share / 60 * (1 - sc.hidden_share), rpm * sc.true_share},
        tok_{tpm * sc.true_share, tpm * sc.true_share / 60 * (1 - sc.hidden_share), tpm * sc.true_share},
        tok0_(tok_) {}

  // The tokens this client could have been served in [0, duration].
  double servable_tokens() const {
    if (sc_.drop_at < 0) return tok0_.cap + tok0_.rate * duration_;
    return tok0_.cap + tok0_.rate * duration_ * sc_.drop_at + tok0_.rate / 2 * duration_ * (1 - sc_.drop_at);
  }

  Answer call(double t, double estimate) {
    update(t);
    ++calls;
    if (req_.level >= 1 && tok_.level >= estimate) {
      req_.level -= 1;
      tok_.level -= estimate;
      return {200, headers(t, false, 0)};
    }
    ++refused;
    req_.level = std::max(0.0, req_.level - 1);  // refused requests count too
    double wait = 0;
    if (req_.level < 1) wait = std::max(wait, (1 - req_.level) / req_.rate);
    if (tok_.level < estimate) wait = std::max(wait, (std::min(estimate, tok_.cap) - tok_.level) / tok_.rate);
    return {429, headers(t, true, wait)};
  }

  Answer complete(double t, double estimate, double actual) {
    update(t);
    tok_.level = std::min(tok_.cap, tok_.level + estimate - actual);
    return {200, headers(t, false, 0)};
  }

  std::uint64_t calls = 0, refused = 0;

 private:
  void update(double t) {
    if (sc_.drop_at >= 0 && !dropped_ && t >= sc_.drop_at * duration_) {
      req_.refill(t);
      tok_.refill(t);
      dropped_ = true;
      for (Bucket* b : {&req_, &tok_}) {
        b->cap /= 2;
        b->rate /= 2;
        b->level = std::min(b->level, b->cap);
      }
    }
    req_.refill(t);
    tok_.refill(t);
  }

  std::map<std::string, std::string> headers(double t, bool refused, double wait) const {
    std::map<std::string, std::string> h;
    const auto wall = std::chrono::system_clock::time_point(std::chrono::sys_days(std::chrono::year(2026) / 1 / 1)) +
                      std::chrono::duration_cast<std::chrono::system_clock::duration>(Seconds(t));
    struct D {
      const Bucket* b;
      const char *openai, *anthropic;
    };
    for (const D& d : {D{&req_, "requests", "requests"}, D{&tok_, "tokens", "tokens"}}) {
      const double remaining = std::floor(std::max(0.0, d.b->level));
      const double reset = (d.b->cap - std::max(0.0, d.b->level)) / d.b->rate;
      if (sc_.profile == Profile::openai) {
        h[std::string("x-ratelimit-limit-") + d.openai] = std::to_string(static_cast<long long>(d.b->cap));
        h[std::string("x-ratelimit-remaining-") + d.openai] = std::to_string(static_cast<long long>(remaining));
        h[std::string("x-ratelimit-reset-") + d.openai] = openai_duration(reset);
      } else {
        const std::string p = std::string("anthropic-ratelimit-") + d.anthropic + "-";
        h[p + "limit"] = std::to_string(static_cast<long long>(d.b->cap));
        h[p + "remaining"] = std::to_string(static_cast<long long>(remaining));
        h[p + "reset"] = rfc3339(wall + std::chrono::duration_cast<std::chrono::system_clock::duration>(Seconds(std::ceil(reset))));
      }
    }
    if (refused) {
      if (sc_.profile == Profile::openai) h["retry-after-ms"] = std::to_string(static_cast<long long>(std::ceil(wait * 1000)));
      else h["retry-after"] = std::to_string(static_cast<long long>(std::ceil(wait)));
    }
    return h;
  }

  const Scenario& sc_;
  double duration_;
  Bucket req_, tok_;
  Bucket tok0_;  // the tokens bucket as configured (before any drop)
  bool dropped_ = false;
};

// ---- Offered load ----------------------------------------------------------

struct Request {
  int key;
  double arrival, prompt, max_tokens, output;
  double estimate() const { return prompt + max_tokens; }
  double actual() const { return prompt + output; }
};

constexpr int kKeys = 5;  // keys 0..3 quiet (equal demand), key 4 noisy (3x, bursty)

std::vector<Request> offered_load(const Scenario& sc, double tpm, double duration, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> prompt(200, 800), u01(0, 1);
  const double mean_tokens = 500 + 250;  // prompt mean + output mean (approximately)
  const double total_rate = sc.load * tpm / 60 / mean_tokens;  // requests per second
  std::vector<Request> out;
  auto output_len = [&] {  // heavy tailed: Pareto(1.5) from 85, capped at max_tokens
    return std::min(1000.0, std::floor(85 / std::pow(1 - u01(rng), 1 / 1.5)));
  };
  for (int k = 0; k < kKeys; ++k) {
    const bool noisy = k == kKeys - 1;
    const double rate = total_rate * (noisy ? 3.0 : 1.0) / (kKeys - 1 + 3.0);
    std::exponential_distribution<double> gap(noisy ? rate / 8 : rate);  // the noisy key: bursts of 8
    for (double t = gap(rng); t < duration; t += gap(rng))
      for (int b = 0; b < (noisy ? 8 : 1); ++b) out.push_back({k, t, std::floor(prompt(rng)), 1000, output_len()});
  }
  std::sort(out.begin(), out.end(), [](const Request& a, const Request& b) { return a.arrival < b.arrival; });
  return out;
}

// ---- Strategies ------------------------------------------------------------

enum class Strategy { none, seed_static_80, tollgate_static, tollgate_adaptive };
constexpr const char* kStrategyNames[] = {"none", "seed_static_80", "tollgate_static", "tollgate_adaptive"};

struct Outcome {
  bool served = false;
  double wait = 0;  // arrival to the start of the successful call
};

struct Result {
  std::string scenario, strategy;
  std::size_t requests = 0;
  double rate_429 = 0, utilization = 0, p50_wait_ms = 0, p99_wait_ms = 0, jain = 0, max_wait_large_ms = 0;
  std::uint64_t upstream_calls = 0, upstream_429 = 0, shed = 0;
  std::vector<double> admitted_per_bin;  // tokens admitted upstream per 10 s
};

constexpr double kMaxLocalWait = 30;  // seconds a request may wait in the limiter
constexpr int kMaxAttempts = 6;

class Client {
 public:
  Client(Sim& sim, Provider& provider, Strategy s, double rpm, double tpm, double duration)
      : bins_(static_cast<std::size_t>(duration / 10) + 1), sim_(sim), provider_(provider) {
    if (s == Strategy::seed_static_80)
      seed_ = std::make_unique<tollgate::TokenBucket<ManualClock>>(Limit::per_minute(0.8 * tpm), sim.clock, &sim.sched);
    if (s == Strategy::tollgate_static || s == Strategy::tollgate_adaptive)
      set_ = std::make_unique<Set>(std::vector<tollgate::Dimension>{{"requests", Limit::per_minute(rpm)},
                                                                    {"tokens", Limit::per_minute(tpm)}},
                                   sim.clock, &sim.sched);
    if (s == Strategy::tollgate_adaptive) {
      Feedback::Options o;
      o.adaptive = tollgate::AdaptiveRate{};
      feedback_ = std::make_unique<Feedback>(*set_, o);
    }
  }

  Detached run(const Request& r, Outcome& out) {
    co_await sim_.sleep_until(r.arrival);
    double backoff = 1;
    for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
      std::optional<Set::Permit> permit;
      if (set_) {
        const Costs estimate{1, r.estimate()};  // named: GCC 12 cannot keep a braced list across co_await
        Set::Permit p = co_await set_->acquire_permit(estimate, Seconds(kMaxLocalWait));
        if (!p) co_return;  // shed by the limiter itself: a 429 the service answers at once
        permit.emplace(std::move(p));
      } else if (seed_) {
        const tollgate::AcquireResult a = co_await seed_->acquire_for(r.estimate(), Seconds(kMaxLocalWait));
        if (!a) co_return;
      }
      const double start = sim_.now();
      Answer a = provider_.call(start, r.estimate());
      feed(a);
      if (a.status == 200) {
        bins_[std::min(bins_.size() - 1, static_cast<std::size_t>(start / 10))] += r.actual();
        co_await sim_.sleep_for(0.4 + r.output * 0.01);  // time to first token + generation
        Answer done = provider_.complete(sim_.now(), r.estimate(), r.actual());
        const Costs actual{1, r.actual()};
        if (permit) permit->settle(actual);
        feed(done);
        out.served = true;
        out.wait = start - r.arrival;
        co_return;
      }
      // Refused upstream: the request was counted, its tokens were not.
      const Costs counted{1, 0};
      if (permit) permit->settle(counted);
      double retry = backoff;
      if (auto it = a.headers.find("retry-after-ms"); it != a.headers.end()) retry = std::stod(it->second) / 1000;
      else if (auto it2 = a.headers.find("retry-after"); it2 != a.headers.end()) retry = std::stod(it2->second);
      backoff *= 2;
      if (!feedback_) co_await sim_.sleep_for(retry);  // the adaptive set is paused instead
    }
  }

  std::vector<double> bins_;

 private:
  using Set = tollgate::LimitSet<ManualClock>;
  using Feedback = tollgate::UpstreamFeedback<ManualClock>;

  void feed(const Answer& a) {
    if (!feedback_) return;
    const auto wall = std::chrono::system_clock::time_point(std::chrono::sys_days(std::chrono::year(2026) / 1 / 1)) +
                      std::chrono::duration_cast<std::chrono::system_clock::duration>(Seconds(sim_.now()));
    feedback_->on_response(
        a.status,
        [&](std::string_view name) -> std::optional<std::string_view> {
          auto it = a.headers.find(std::string(name));
          if (it == a.headers.end()) return std::nullopt;
          return std::string_view(it->second);
        },
        wall);
  }

  Sim& sim_;
  Provider& provider_;
  std::unique_ptr<tollgate::TokenBucket<ManualClock>> seed_;
  std::unique_ptr<Set> set_;
  std::unique_ptr<Feedback> feedback_;
};

Result simulate(const Scenario& sc, Strategy st, double duration, std::uint64_t seed) {
  constexpr double rpm = 600, tpm = 120'000;  // the documented limits
  const std::vector<Request> load = offered_load(sc, tpm, duration, seed);
  Sim sim;
  Provider provider(sc, rpm, tpm, duration);
  std::vector<Outcome> outcomes(load.size());
  double offered_tokens = 0;
  {
    Client client(sim, provider, st, rpm, tpm, duration);
    for (std::size_t i = 0; i < load.size(); ++i) {
      client.run(load[i], outcomes[i]);
      offered_tokens += load[i].actual();
    }
    sim.run();
    Result r;
    r.scenario = sc.name;
    r.strategy = kStrategyNames[static_cast<int>(st)];
    r.requests = load.size();
    r.upstream_calls = provider.calls;
    r.upstream_429 = provider.refused;
    r.rate_429 = provider.calls ? double(provider.refused) / double(provider.calls) : 0;
    double goodput = 0;
    std::vector<double> waits, per_key(kKeys, 0);
    for (std::size_t i = 0; i < load.size(); ++i) {
      if (!outcomes[i].served) {
        ++r.shed;
        continue;
      }
      if (load[i].arrival + outcomes[i].wait <= duration) goodput += load[i].actual();  // served in the run
      per_key[static_cast<std::size_t>(load[i].key)] += load[i].actual();
      waits.push_back(outcomes[i].wait * 1000);
    }
    r.utilization = goodput / std::min(offered_tokens, provider.servable_tokens());
    r.p50_wait_ms = percentile(waits, 0.5);
    r.p99_wait_ms = percentile(waits, 0.99);
    double sum = 0, sq = 0;
    for (int k = 0; k < kKeys - 1; ++k) {  // the quiet keys: equal demand
      sum += per_key[static_cast<std::size_t>(k)];
      sq += per_key[static_cast<std::size_t>(k)] * per_key[static_cast<std::size_t>(k)];
    }
    r.jain = sq > 0 ? sum * sum / ((kKeys - 1) * sq) : 0;
    std::vector<double> estimates;
    for (const Request& q : load) estimates.push_back(q.prompt + q.output);
    const double large = percentile(estimates, 0.99);
    for (std::size_t i = 0; i < load.size(); ++i)
      if (outcomes[i].served && load[i].actual() >= large) r.max_wait_large_ms = std::max(r.max_wait_large_ms, outcomes[i].wait * 1000);
    r.admitted_per_bin = client.bins_;
    return r;
  }
}

void write_svg(const std::string& path, const std::vector<Result>& results, double duration) {
  std::ofstream f(path);
  const double w = 900, h = 260;
  const char* colors[] = {"#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"};
  std::map<std::string, std::vector<const Result*>> by_scenario;
  for (const Result& r : results) by_scenario[r.scenario].push_back(&r);
  f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h * double(by_scenario.size())
    << "' font-family='sans-serif' font-size='12'>\n";
  double y0 = 0;
  for (const auto& [name, rs] : by_scenario) {
    double peak = 1;
    for (const Result* r : rs)
      for (double v : r->admitted_per_bin) peak = std::max(peak, v / 10);
    f << "<text x='10' y='" << y0 + 16 << "'>" << name << ": tokens admitted upstream per second (10 s bins) over "
      << duration << " s</text>\n";
    for (std::size_t s = 0; s < rs.size(); ++s) {
      f << "<polyline fill='none' stroke='" << colors[s % 4] << "' points='";
      for (std::size_t i = 0; i < rs[s]->admitted_per_bin.size(); ++i)
        f << 40 + (w - 60) * double(i) / double(rs[s]->admitted_per_bin.size()) << ","
          << y0 + h - 20 - (h - 50) * rs[s]->admitted_per_bin[i] / 10 / peak << " ";
      f << "'/>\n<text x='" << w - 170 << "' y='" << y0 + 34 + 14 * double(s) << "' fill='" << colors[s % 4] << "'>"
        << rs[s]->strategy << "</text>\n";
    }
    y0 += h;
  }
  f << "</svg>\n";
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false, check = false;
  double duration = 600;
  std::string svg;
  std::uint64_t seed = 42;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") json = true;
    else if (a == "--check") check = true;
    else if (a == "--duration" && i + 1 < argc) duration = std::stod(argv[++i]);
    else if (a == "--seed" && i + 1 < argc) seed = std::stoull(argv[++i]);
    else if (a == "--svg" && i + 1 < argc) svg = argv[++i];
    else {
      std::fprintf(stderr, "usage: llm_sim [--json] [--check] [--duration seconds] [--seed n] [--svg file]\n");
      return 2;
    }
  }
  if (!(duration >= 60 && duration <= 86400)) {
    std::fprintf(stderr, "llm_sim: --duration must be between 60 and 86400 seconds\n");
    return 2;
  }
  const std::vector<Scenario> scenarios = {
      {"nominal", 1.0, 0.0, -1, 1.25, Profile::openai},
      {"lower_true_limit", 0.7, 0.0, -1, 1.25, Profile::openai},
      {"hidden_consumer", 1.0, 0.4, -1, 1.25, Profile::anthropic},
      {"limit_drop", 1.0, 0.0, 0.5, 1.25, Profile::anthropic},
      {"overload_2x", 1.0, 0.0, -1, 2.0, Profile::openai},
      {"overload_5x", 1.0, 0.0, -1, 5.0, Profile::openai},
  };
  std::vector<Result> results;
  for (const Scenario& sc : scenarios)
    for (Strategy st : {Strategy::none, Strategy::seed_static_80, Strategy::tollgate_static, Strategy::tollgate_adaptive})
      results.push_back(simulate(sc, st, duration, seed));

  bool ok = true;
  if (!json)
    std::printf("%-17s %-18s %8s %8s %7s %9s %9s %6s %9s\n", "scenario", "strategy", "requests", "rate_429", "util",
                "p50_ms", "p99_ms", "jain", "large_ms");
  for (const Result& r : results) {
    if (json)
      std::printf("{\"scenario\":\"%s\",\"strategy\":\"%s\",\"requests\":%zu,\"upstream_calls\":%llu,\"upstream_429\":%llu,"
                  "\"not_served\":%llu,\"rate_429\":%.5f,\"utilization\":%.4f,\"p50_wait_ms\":%.1f,\"p99_wait_ms\":%.1f,"
                  "\"jain\":%.4f,\"max_wait_large_ms\":%.1f}\n",
                  r.scenario.c_str(), r.strategy.c_str(), r.requests, static_cast<unsigned long long>(r.upstream_calls),
                  static_cast<unsigned long long>(r.upstream_429), static_cast<unsigned long long>(r.shed), r.rate_429,
                  r.utilization, r.p50_wait_ms, r.p99_wait_ms, r.jain, r.max_wait_large_ms);
    else
      std::printf("%-17s %-18s %8zu %8.4f %7.3f %9.0f %9.0f %6.3f %9.0f\n", r.scenario.c_str(), r.strategy.c_str(),
                  r.requests, r.rate_429, r.utilization, r.p50_wait_ms, r.p99_wait_ms, r.jain, r.max_wait_large_ms);
    if (r.strategy == "tollgate_adaptive" && !(r.rate_429 <= 0.01 && r.utilization >= 0.95 && r.jain >= 0.99)) {
      ok = false;
      if (check)
        std::fprintf(stderr, "llm_sim: %s / tollgate_adaptive misses its targets: rate_429 %.4f (<= 0.01), utilization %.3f (>= 0.95), jain %.3f (>= 0.99)\n",
                     r.scenario.c_str(), r.rate_429, r.utilization, r.jain);
    }
  }
  // The tiered workload: many keys, three tiers, one provider whose output
  // tokens bind; tollgate_fair must share it by weight.
  if (!json)
    std::printf("\n%-17s %-18s %8s %8s %7s %9s %10s %10s %13s\n", "scenario", "strategy", "requests", "rate_429", "util",
                "fair_jain", "min_ratio", "heavy", "light_p99_ms");
  for (tollgate::Sharing sharing : {tollgate::Sharing::fifo, tollgate::Sharing::weighted_fair}) {
    const TieredResult t = simulate_tiered(sharing, duration, seed);
    if (json)
      std::printf("{\"scenario\":\"tiered\",\"strategy\":\"%s\",\"requests\":%zu,\"upstream_calls\":%llu,"
                  "\"upstream_429\":%llu,\"shed\":%zu,\"rate_429\":%.5f,\"utilization\":%.4f,\"fair_jain\":%.4f,"
                  "\"min_fair_ratio\":%.4f,\"heavy_fair_ratio\":%.4f,\"light_min_fair_ratio\":%.4f,\"light_p99_wait_ms\":%.1f}\n",
                  t.strategy.c_str(), t.requests, static_cast<unsigned long long>(t.upstream_calls),
                  static_cast<unsigned long long>(t.upstream_429), t.shed, t.rate_429, t.utilization, t.fair_jain,
                  t.min_fair_ratio, t.heavy_ratio, t.light_min_ratio, t.light_p99_wait_ms);
    else
      std::printf("%-17s %-18s %8zu %8.4f %7.3f %9.4f %10.3f %10.3f %13.0f\n", "tiered", t.strategy.c_str(), t.requests,
                  t.rate_429, t.utilization, t.fair_jain, t.min_fair_ratio, t.heavy_ratio, t.light_p99_wait_ms);
    if (t.strategy == "tollgate_fair" &&
        !(t.fair_jain >= 0.99 && t.min_fair_ratio >= 0.9 && t.utilization >= 0.97 && t.rate_429 <= 0.01)) {
      ok = false;
      if (check)
        std::fprintf(stderr, "llm_sim: tiered / tollgate_fair misses its targets: fair_jain %.4f (>= 0.99), min_fair_ratio %.3f (>= 0.9), utilization %.3f (>= 0.97), rate_429 %.4f (<= 0.01)\n",
                     t.fair_jain, t.min_fair_ratio, t.utilization, t.rate_429);
    }
  }
  if (!svg.empty()) write_svg(svg, results, duration);
  return check && !ok ? 1 : 0;
}
