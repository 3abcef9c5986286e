// llm_sim: a deterministic LLM-provider simulator, the proof of the LLM layer.
//
// Five provider profiles (llm_sim_provider.hpp) meter like the real ones:
// OpenAI's requests and tokens (max_tokens counted at admission) and
// Anthropic's requests, input tokens (cache reads free) and output tokens
// (charged as produced), enforced as a continuous bucket or in fixed 1 s,
// 10 s or 60 s windows, with each provider's own headers. K client keys (one
// noisy and bursty) offer heavy-tailed prompts and answers with max_tokens far
// above the answer. Each scenario (a lower true limit, a hidden consumer, a
// limit drop, overload) runs three client strategies against the same
// arrivals, all on tollgate's manual clock and manual scheduler: no real time
// passes and every run is reproducible.
//
// The metrics are measured on the provider's side, on the binding dimension
// (the one whose demand is largest against what the provider allows):
//   utilization   what the provider counted from this client over the run
//                 / what it would have allowed over the run;
//   demand_ratio  what the clients offered / what it would have allowed;
//   rate_429      refused upstream calls / every upstream call (retries too);
//   shed_rate     requests refused locally (their wait over 30 s) / requests;
//   p50/p99 wait  arrival to the successful call, or to the local refusal.
//
//   llm_sim                       a readable table
//   llm_sim --json                one JSON object per (profile, scenario, strategy)
//   llm_sim --svg chart.svg       per scenario: what the binding dimension counted
//                                 upstream and the upstream 429s, per 10 s
//   llm_sim --shares-svg s.svg    each key's share of the tiered workload, FIFO and fair
//   llm_sim --duration 600 --check    exit 1 unless tollgate_adaptive meets
//                                     its targets (used by CTest)

#include <algorithm>
#include <chrono>
#include <cmath>
#include <coroutine>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <tollgate/limit_set.hpp>
#include <tollgate/output_estimator.hpp>
#include <tollgate/testing/manual_clock.hpp>
#include <tollgate/testing/manual_scheduler.hpp>
#include <tollgate/upstream_feedback.hpp>
#include <tollgate/upstream_headers.hpp>

#include "sim_support.hpp"
#include "llm_sim_provider.hpp"
#include "llm_sim_tiered.hpp"

namespace {

using namespace std::chrono_literals;
using namespace sim;
using tollgate::Costs;
using tollgate::Limit;
using tollgate::testing::ManualClock;
using tollgate::testing::ManualScheduler;

struct Scenario {
  std::string name;
  double true_share = 1.0;    // true limit / documented limit
  double hidden_share = 0.0;  // share of the quota another client takes
  double drop_at = -1;        // the limit halves at this fraction of the run
  double load = 1.25;         // offered / documented, on the dimension that binds
};

// ---- Offered load ----------------------------------------------------------

struct Request {
  int key;
  double arrival;
  Call call;
};

constexpr int kKeys = 5;  // keys 0..3 quiet (equal demand), key 4 noisy (3x, bursty)

// Heavy tails: prompts and answers log-normal (medians 700 and 250 tokens),
// a tenth of the answers over 900 tokens; max_tokens 4,096 for most calls,
// 1,024 or 8,192 for the rest; 60% of the calls read 30-90% of their prompt
// from the provider's cache.
Call draw_call(std::mt19937_64& rng) {
  std::lognormal_distribution<double> prompt(std::log(700.0), 1.0), output(std::log(250.0), 1.0);
  std::uniform_real_distribution<double> u01(0, 1);
  Call c;
  c.prompt = std::clamp(std::floor(prompt(rng)), 20.0, 8000.0);
  c.cached = u01(rng) < 0.6 ? std::floor(c.prompt * (0.3 + 0.6 * u01(rng))) : 0;
  const double m = u01(rng);
  c.max_tokens = m < 0.7 ? 4096 : m < 0.9 ? 1024 : 8192;
  c.output = std::clamp(std::floor(output(rng)), 1.0, c.max_tokens);
  return c;
}

std::vector<Request> offered_load(const Scenario& sc, const Provider& documented, std::size_t binding,
                                  double binding_per_second, double duration, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  // The mean cost on the binding dimension, from the same distributions.
  std::mt19937_64 probe(seed ^ 0x9e3779b97f4a7c15ULL);
  double mean = 0;
  const std::size_t b = binding;
  for (int i = 0; i < 20'000; ++i) mean += documented.cost(draw_call(probe))[b] / 20'000;
  const double total_rate = sc.load * binding_per_second / mean;  // requests per second
  std::vector<Request> out;
  for (int k = 0; k < kKeys; ++k) {
    const bool noisy = k == kKeys - 1;
    const double rate = total_rate * (noisy ? 3.0 : 1.0) / (kKeys - 1 + 3.0);
    std::exponential_distribution<double> gap(noisy ? rate / 8 : rate);  // the noisy key: bursts of 8
    for (double t = gap(rng); t < duration; t += gap(rng))
      for (int i = 0; i < (noisy ? 8 : 1); ++i) out.push_back({k, t, draw_call(rng)});
  }
  std::sort(out.begin(), out.end(), [](const Request& x, const Request& y) { return x.arrival < y.arrival; });
  return out;
}

// ---- Strategies ------------------------------------------------------------

enum class Strategy { none, tollgate_static, tollgate_adaptive };
constexpr const char* kStrategyNames[] = {"none", "tollgate_static", "tollgate_adaptive"};

struct Outcome {
  bool served = false, shed = false;
  double wait = 0;  // arrival to the successful call, or to the local refusal
};

struct Result {
  std::string profile, scenario, strategy;
  std::size_t requests = 0;
  std::string binding;
  double rate_429 = 0, utilization = 0, demand_ratio = 0, shed_rate = 0, p50_wait_ms = 0, p99_wait_ms = 0, jain = 0;
  std::uint64_t upstream_calls = 0, upstream_429 = 0, shed = 0, failed = 0;
  std::vector<double> admitted_per_bin;  // binding-dimension units counted per 10 s
  std::vector<double> refused_per_bin;   // upstream 429s per 10 s
  double allowed_per_second = 0;         // the binding dimension's allowance, averaged over the run
};

constexpr double kMaxLocalWait = 30;  // seconds a request may wait in the limiter
constexpr int kMaxAttempts = 6;

// tollgate as the "configure for your provider" table recommends: one
// dimension per provider limit, each with the burst of the provider's
// enforcement window (a minute for a bucket), the provider's header
// bindings, reservations as the provider counts (OpenAI: max_tokens;
// Anthropic output: a learned p95, settled at the real output).
class Client {
 public:
  Client(Sim& sim, Provider& provider, const ProviderProfile& profile, Strategy s, double duration)
      : bins_(static_cast<std::size_t>(duration / 10) + 1), refused_bins_(bins_.size()), sim_(sim), provider_(provider), profile_(profile) {
    if (s == Strategy::none) return;
    // The gateway has been running: its estimator has seen earlier answers
    // (the same workload, other draws). A cold one reserves max_tokens for
    // its first 20 answers.
    std::mt19937_64 earlier(0x5eed);
    for (int i = 0; i < 200; ++i) outputs_.observe("model", draw_call(earlier).output);
    const auto window = std::chrono::duration_cast<std::chrono::nanoseconds>(Seconds(profile.window > 0 ? profile.window : 60));
    set_ = std::make_unique<Set>(profile.api == Api::openai
                                     ? tollgate::ProviderLimits::openai(profile.rpm, profile.tpm_or_itpm, window)
                                     : tollgate::ProviderLimits::anthropic(profile.rpm, profile.tpm_or_itpm, profile.otpm, window),
                                 sim.clock, &sim.sched);
    if (s == Strategy::tollgate_adaptive) {
      Feedback::Options o;
      o.adaptive = tollgate::AdaptiveRate{};
      o.bindings = profile.api == Api::openai ? tollgate::HeaderBindings::openai() : tollgate::HeaderBindings::anthropic();
      if (profile.reserved) o.bindings[2].counted = tollgate::Counted::at_admission;  // output counted as max_tokens
      o.wall_clock = [&sim] { return sim_wall(sim.now()); };
      feedback_ = std::make_unique<Feedback>(*set_, o);
    }
  }

  Detached run(const Request& r, Outcome& out) {
    co_await sim_.sleep_until(r.arrival);
    double backoff = 1;
    const std::size_t b = provider_.dimensions() - 1;
    for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
      std::optional<Set::Permit> permit;
      if (set_) {
        const Costs estimate = reserve(r.call);  // named: GCC 12 cannot keep a braced list across co_await
        Set::Permit p = co_await set_->acquire_permit(estimate, Seconds(kMaxLocalWait));
        if (!p) {  // refused locally: the service answers 429 at once
          out.shed = true;
          out.wait = sim_.now() - r.arrival;
          co_return;
        }
        permit.emplace(std::move(p));
      }
      const double start = sim_.now();
      Answer a = provider_.call(start, r.call);
      if (a.status == 200) {
        feed(a);  // the answer's headers come with its first byte
        out.served = true;
        out.wait = start - r.arrival;
        const std::vector<double> counted = provider_.cost(r.call);
        if (!provider_.produced(b)) bin(start, counted[b]);
        co_await sim_.sleep_for(0.4 + r.call.output * 0.01);  // time to first token + generation
        provider_.complete(sim_.now(), r.call);
        if (provider_.produced(b)) bin(sim_.now(), counted[b]);
        outputs_.observe("model", r.call.output);
        if (permit) permit->settle(Costs(std::span<const double>(counted)));
        co_return;
      }
      // Refused upstream: the request was counted, its tokens were not.
      refused_bins_[bin_of(start)] += 1;
      Costs counted = Costs::zeros(provider_.dimensions());
      counted[0] = 1;
      if (permit && feedback_) feed_complete(*permit, counted, a);
      else if (permit) permit->settle(counted);
      double retry = backoff;
      if (auto it = a.headers.find("retry-after-ms"); it != a.headers.end()) retry = std::stod(it->second) / 1000;
      else if (auto it2 = a.headers.find("retry-after"); it2 != a.headers.end()) retry = std::stod(it2->second);
      backoff *= 2;
      if (!feedback_) co_await sim_.sleep_for(retry);  // the adaptive set is paused instead
    }
    out.wait = sim_.now() - r.arrival;  // gave up after kMaxAttempts refusals
  }

  std::vector<double> bins_, refused_bins_;
 private:
  using Set = tollgate::LimitSet<ManualClock>;
  using Feedback = tollgate::UpstreamFeedback<ManualClock>;

  Costs reserve(const Call& c) const {
    if (profile_.api == Api::openai) return Costs{1, c.prompt + c.max_tokens};
    // Output: reserve what the provider counts at admission (max_tokens), or a
    // learned p95 where it charges as produced; settled at the real output.
    return Costs{1, c.prompt - c.cached, profile_.reserved ? c.max_tokens : outputs_.estimate("model", c.max_tokens)};
  }
  std::size_t bin_of(double t) const { return std::min(bins_.size() - 1, static_cast<std::size_t>(t / 10)); }
  void bin(double t, double v) { bins_[bin_of(t)] += v; }

  auto header_fn(const Answer& a) {
    return [&a](std::string_view name) -> std::optional<std::string_view> {
      auto it = a.headers.find(std::string(name));
      if (it == a.headers.end()) return std::nullopt;
      return std::string_view(it->second);
    };
  }
  void feed(const Answer& a) {
    if (feedback_) feedback_->on_response(a.status, header_fn(a));
  }
  void feed_complete(Set::Permit& p, const Costs& counted, const Answer& a) {
    feedback_->complete(p, counted, a.status, header_fn(a));
  }

  Sim& sim_;
  Provider& provider_;
  const ProviderProfile& profile_;
  tollgate::OutputEstimator outputs_;  // p95, capped at max_tokens
  std::unique_ptr<Set> set_;
  std::unique_ptr<Feedback> feedback_;
};

Result simulate(const ProviderProfile& profile, const Scenario& sc, Strategy st, double duration, std::uint64_t seed) {
  const Provider documented(profile, 1.0, 0.0, -1);
  const double binding_per_second =  // the dimension expected to bind: tokens, output, or input when output is reserved
      profile.api == Api::openai || profile.reserved ? profile.tpm_or_itpm / 60 : profile.otpm / 60;
  const std::vector<Request> load = offered_load(sc, documented, profile.api == Api::anthropic && profile.reserved ? 1 : documented.dimensions() - 1,
                   binding_per_second, duration, seed);
  Sim sim;
  Provider provider(profile, sc.true_share, sc.hidden_share, sc.drop_at >= 0 ? sc.drop_at * duration : -1);
  provider.run_end = duration;
  std::vector<Outcome> outcomes(load.size());
  Client client(sim, provider, profile, st, duration);
  for (std::size_t i = 0; i < load.size(); ++i) client.run(load[i], outcomes[i]);
  sim.run();

  Result r;
  r.profile = profile.name;
  r.scenario = sc.name;
  r.strategy = kStrategyNames[static_cast<int>(st)];
  r.requests = load.size();
  r.upstream_calls = provider.calls;
  r.upstream_429 = provider.refused;
  r.rate_429 = provider.calls ? double(provider.refused) / double(provider.calls) : 0;
  // The binding dimension: the largest demand against what the provider allows.
  std::size_t b = 0;
  for (std::size_t d = 0; d < provider.dimensions(); ++d) {
    double offered = 0;
    for (const Request& q : load) offered += provider.cost(q.call)[d];
    const double ratio = offered / provider.allowed(d, duration);
    if (ratio > r.demand_ratio) {
      r.demand_ratio = ratio;
      b = d;
    }
  }
  r.binding = provider.dimension_name(b);
  r.utilization = provider.consumed_in_run[b] / provider.allowed(b, duration);
  std::vector<double> waits, per_key(kKeys, 0);
  for (std::size_t i = 0; i < load.size(); ++i) {
    const Outcome& o = outcomes[i];
    if (o.shed) ++r.shed;
    else if (!o.served) ++r.failed;
    waits.push_back(o.wait * 1000);
    if (o.served) per_key[static_cast<std::size_t>(load[i].key)] += provider.cost(load[i].call)[b];
  }
  r.shed_rate = double(r.shed) / double(std::max<std::size_t>(1, load.size()));
  r.p50_wait_ms = percentile(waits, 0.5);
  r.p99_wait_ms = percentile(waits, 0.99);
  double sum = 0, sq = 0;
  for (int k = 0; k < kKeys - 1; ++k) {  // the quiet keys: equal demand
    sum += per_key[static_cast<std::size_t>(k)];
    sq += per_key[static_cast<std::size_t>(k)] * per_key[static_cast<std::size_t>(k)];
  }
  r.jain = sq > 0 ? sum * sum / ((kKeys - 1) * sq) : 0;
  r.admitted_per_bin = client.bins_;
  r.refused_per_bin = client.refused_bins_;
  r.allowed_per_second = provider.allowed(b, duration) / duration;
  return r;
}

// Charts (SVG, no dependency): what the binding dimension counted upstream
// per second and the upstream 429s, per 10 s, for each strategy; and each
// key's share of the tiered workload against its fair allocation.
const char* const kColors[] = {"#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"};

void write_svg(const std::string& path, const std::vector<Result>& results, double duration) {
  std::ofstream f(path);
  const double w = 980, h = 230, pw = 440;  // two panels per row
  std::map<std::string, std::vector<const Result*>> by_scenario;
  for (const Result& r : results) by_scenario[r.profile + " / " + r.scenario].push_back(&r);
  f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h * double(by_scenario.size()) + 30
    << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  for (std::size_t s = 0; s < 3; ++s)
    f << "<text x='" << 40 + 160 * double(s) << "' y='18' fill='" << kColors[s] << "'>"
      << (s == 0 ? "none" : s == 1 ? "tollgate_static" : "tollgate_adaptive") << "</text>\n";
  double y0 = 30;
  for (const auto& [name, rs] : by_scenario) {
    // The last bin gathers what completes after the run: not drawn.
    const std::size_t n = rs.front()->admitted_per_bin.size() - 1;
    double peak = rs.front()->allowed_per_second * 1.2, peak429 = 1;
    for (const Result* r : rs)
      for (std::size_t i = 0; i < n; ++i) {
        peak = std::max(peak, r->admitted_per_bin[i] / 10);
        peak429 = std::max(peak429, r->refused_per_bin[i]);
      }
    const double top = y0 + 40, bottom = y0 + h - 25;
    auto x_at = [&](double x0, std::size_t i) { return x0 + pw * double(i) / double(n - 1); };
    auto y_at = [&](double v, double max) { return bottom - (bottom - top) * v / max; };
    f << "<text x='40' y='" << y0 + 16 << "' font-weight='bold'>" << name << "</text>\n";
    f << "<text x='40' y='" << y0 + 32 << "'>" << rs.front()->binding
      << " counted upstream per second (dashed: allowed)</text>\n";
    f << "<text x='" << 60 + pw << "' y='" << y0 + 32 << "'>upstream 429s per 10 s (top: " << peak429 << ")</text>\n";
    for (double x0 : {40.0, 60 + pw}) {
      f << "<line x1='" << x0 << "' y1='" << bottom << "' x2='" << x0 + pw << "' y2='" << bottom << "' stroke='#888'/>\n";
      f << "<text x='" << x0 + pw - 40 << "' y='" << bottom + 14 << "' fill='#555'>" << duration << " s</text>\n";
    }
    f << "<line stroke-dasharray='4 3' stroke='#555' x1='40' x2='" << 40 + pw << "' y1='"
      << y_at(rs.front()->allowed_per_second, peak) << "' y2='" << y_at(rs.front()->allowed_per_second, peak) << "'/>\n";
    for (std::size_t s = 0; s < rs.size(); ++s) {
      const char* color = kColors[s % 4];
      f << "<polyline fill='none' stroke='" << color << "' points='";
      for (std::size_t i = 0; i < n; ++i) f << x_at(40, i) << "," << y_at(rs[s]->admitted_per_bin[i] / 10, peak) << " ";
      f << "'/>\n<polyline fill='none' stroke='" << color << "' points='";
      for (std::size_t i = 0; i < n; ++i) f << x_at(60 + pw, i) << "," << y_at(rs[s]->refused_per_bin[i], peak429) << " ";
      f << "'/>\n";
    }
    y0 += h;
  }
  f << "</svg>\n";
}

void write_shares_svg(const std::string& path, const std::vector<TieredResult>& runs) {
  std::ofstream f(path);
  const double w = 980, h = 250, bar_area = 900;
  const char* tier_colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c"};
  const char* tier_names[] = {"free (weight 1)", "pro (weight 2)", "enterprise (weight 4)"};
  f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h * double(runs.size()) + 30
    << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  for (int t = 0; t < 3; ++t)
    f << "<rect x='" << 40 + 200 * t << "' y='8' width='12' height='12' fill='" << tier_colors[t] << "'/><text x='"
      << 56 + 200 * t << "' y='18'>" << tier_names[t] << "</text>\n";
  double y0 = 30;
  for (const TieredResult& r : runs) {
    const std::size_t n = r.key_served.size();
    const double top = y0 + 40, bottom = y0 + h - 25, max_ratio = 2;
    auto y_at = [&](double v) { return bottom - (bottom - top) * std::min(v, max_ratio) / max_ratio; };
    f << "<text x='40' y='" << y0 + 16 << "' font-weight='bold'>" << r.strategy
      << ": each key's output tokens served / its weighted max-min fair allocation (1 = fair; heavy key first)</text>\n";
    f << "<text x='40' y='" << y0 + 32 << "'>fair_jain " << r.fair_jain << ", min ratio " << r.min_fair_ratio
      << ", utilization " << r.utilization << "</text>\n";
    const double bw = bar_area / double(n);
    for (std::size_t k = 0; k < n; ++k) {
      const double ratio = r.key_fair[k] > 0 ? r.key_served[k] / r.key_fair[k] : 1;
      f << "<rect x='" << 40 + bw * double(k) + 1 << "' y='" << y_at(ratio) << "' width='" << bw - 2 << "' height='"
        << bottom - y_at(ratio) << "' fill='" << tier_colors[r.key_tier[k] % 3] << "'/>\n";
    }
    f << "<line stroke-dasharray='4 3' stroke='#333' x1='40' x2='" << 40 + bar_area << "' y1='" << y_at(1) << "' y2='"
      << y_at(1) << "'/><text x='" << 44 + bar_area << "' y='" << y_at(1) + 4 << "'>1</text>\n";
    f << "<line x1='40' x2='" << 40 + bar_area << "' y1='" << bottom << "' y2='" << bottom << "' stroke='#888'/>\n";
    y0 += h;
  }
  f << "</svg>\n";
}

// The cases where the recommended configuration does not meet the targets
// yet, and why; every other case must. Listed here, in the README and in
// the changelog, never silently excluded.
const char* known_miss(const std::string& profile, const std::string& scenario) {
  if (profile != "anthropic_bucket") return nullptr;
  if (scenario == "nominal" || scenario == "limit_drop")
    return "output charged as produced with heavy-tailed answers: p95 reservations make the predicted waits "
           "longer than the real ones, so requests are shed at a demand close to 1";
  if (scenario == "hidden_consumer")
    return "the bucket's refill is shared with a consumer the headers do not show; between answers the local "
           "refill runs ahead of it and an answer far above its estimate finds the provider in debt";
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false, check = false;
  double duration = 600;
  std::string svg, shares_svg, only_profile;
  std::uint64_t seed = 42;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") json = true;
    else if (a == "--check") check = true;
    else if (a == "--duration" && i + 1 < argc) duration = std::stod(argv[++i]);
    else if (a == "--seed" && i + 1 < argc) seed = std::stoull(argv[++i]);
    else if (a == "--svg" && i + 1 < argc) svg = argv[++i];
    else if (a == "--shares-svg" && i + 1 < argc) shares_svg = argv[++i];
    else if (a == "--profile" && i + 1 < argc) only_profile = argv[++i];
    else {
      std::fprintf(stderr, "usage: llm_sim [--json] [--check] [--duration seconds] [--seed n] [--svg file] [--shares-svg file] "
                   "[--profile name]\n");
      return 2;
    }
  }
  if (!(duration >= 60 && duration <= 86400)) {
    std::fprintf(stderr, "llm_sim: --duration must be between 60 and 86400 seconds\n");
    return 2;
  }
  const std::vector<Scenario> scenarios = {
      {"nominal", 1.0, 0.0, -1, 1.25},      {"lower_true_limit", 0.7, 0.0, -1, 1.25},
      {"hidden_consumer", 1.0, 0.4, -1, 1.25}, {"limit_drop", 1.0, 0.0, 0.5, 1.25},
      {"overload_2x", 1.0, 0.0, -1, 2.0},   {"overload_5x", 1.0, 0.0, -1, 5.0},
  };
  std::vector<Result> results;
  bool known = only_profile.empty();
  for (const ProviderProfile& p : provider_profiles()) {
    if (!only_profile.empty() && only_profile != p.name) continue;
    known = true;
    for (const Scenario& sc : scenarios)
      for (Strategy st : {Strategy::none, Strategy::tollgate_static, Strategy::tollgate_adaptive})
        if (!check || st == Strategy::tollgate_adaptive)  // --check: the recommended configuration only
          results.push_back(simulate(p, sc, st, duration, seed));
  }
  if (!known) {
    std::fprintf(stderr, "llm_sim: no profile named \"%s\"\n", only_profile.c_str());
    return 2;
  }

  bool ok = true;
  if (!json)
    std::printf("%-16s %-16s %-17s %-13s %6s %8s %6s %6s %8s %8s %6s\n", "profile", "scenario", "strategy", "binding",
                "demand", "rate_429", "util", "shed", "p50_ms", "p99_ms", "jain");
  for (const Result& r : results) {
    if (json)
      std::printf("{\"profile\":\"%s\",\"scenario\":\"%s\",\"strategy\":\"%s\",\"binding\":\"%s\",\"requests\":%zu,"
                  "\"upstream_calls\":%llu,\"upstream_429\":%llu,\"shed\":%llu,\"failed\":%llu,\"rate_429\":%.5f,"
                  "\"utilization\":%.4f,\"demand_ratio\":%.4f,\"shed_rate\":%.4f,\"p50_wait_ms\":%.1f,"
                  "\"p99_wait_ms\":%.1f,\"jain\":%.4f}\n",
                  r.profile.c_str(), r.scenario.c_str(), r.strategy.c_str(), r.binding.c_str(), r.requests,
                  static_cast<unsigned long long>(r.upstream_calls), static_cast<unsigned long long>(r.upstream_429),
                  static_cast<unsigned long long>(r.shed), static_cast<unsigned long long>(r.failed), r.rate_429,
                  r.utilization, r.demand_ratio, r.shed_rate, r.p50_wait_ms, r.p99_wait_ms, r.jain);
    else
      std::printf("%-16s %-16s %-17s %-13s %6.2f %8.4f %6.3f %6.3f %8.0f %8.0f %6.3f\n", r.profile.c_str(),
                  r.scenario.c_str(), r.strategy.c_str(), r.binding.c_str(), r.demand_ratio, r.rate_429, r.utilization,
                  r.shed_rate, r.p50_wait_ms, r.p99_wait_ms, r.jain);
    if (r.strategy == "tollgate_adaptive" && !(r.rate_429 <= 0.01 && (r.demand_ratio < 1 || r.utilization >= 0.95))) {
      const char* known = known_miss(r.profile, r.scenario);
      if (!known) ok = false;
      if (check)
        std::fprintf(stderr,
                     "llm_sim: %s / %s / tollgate_adaptive misses its targets: rate_429 %.4f (<= 0.01), utilization "
                     "%.3f (>= 0.95 at demand %.2f)%s%s\n",
                     r.profile.c_str(), r.scenario.c_str(), r.rate_429, r.utilization, r.demand_ratio,
                     known ? "; a known miss: " : "", known ? known : "");
    }
  }
  // The tiered workload: many keys, three tiers, one provider whose output
  // tokens bind; tollgate_fair must share it by weight.
  if (!json)
    std::printf("\n%-16s %-18s %8s %8s %7s %9s %10s %10s %13s\n", "scenario", "strategy", "requests", "rate_429", "util",
                "fair_jain", "min_ratio", "heavy", "light_p99_ms");
  std::vector<TieredResult> tiered;
  for (tollgate::Sharing sharing : {tollgate::Sharing::fifo, tollgate::Sharing::weighted_fair}) {
    const TieredResult& t = tiered.emplace_back(simulate_tiered(sharing, duration, seed));
    if (json)
      std::printf("{\"profile\":\"anthropic_bucket\",\"scenario\":\"tiered\",\"strategy\":\"%s\",\"requests\":%zu,\"upstream_calls\":%llu,"
                  "\"upstream_429\":%llu,\"shed\":%zu,\"rate_429\":%.5f,\"utilization\":%.4f,\"fair_jain\":%.4f,"
                  "\"min_fair_ratio\":%.4f,\"heavy_fair_ratio\":%.4f,\"light_min_fair_ratio\":%.4f,\"light_p99_wait_ms\":%.1f}\n",
                  t.strategy.c_str(), t.requests, static_cast<unsigned long long>(t.upstream_calls),
                  static_cast<unsigned long long>(t.upstream_429), t.shed, t.rate_429, t.utilization, t.fair_jain,
                  t.min_fair_ratio, t.heavy_ratio, t.light_min_ratio, t.light_p99_wait_ms);
    else
      std::printf("%-16s %-18s %8zu %8.4f %7.3f %9.4f %10.3f %10.3f %13.0f\n", "tiered", t.strategy.c_str(), t.requests,
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
  if (!shares_svg.empty()) write_shares_svg(shares_svg, tiered);
  return check && !ok ? 1 : 0;
}
