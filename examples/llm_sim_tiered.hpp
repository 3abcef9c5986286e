#pragma once
// llm_sim's tiered workload: 25 client keys in three tiers share one provider
// whose output-token limit binds. One heavy key demands many times its share,
// four medium keys a little more than theirs, twenty light keys half of
// theirs. The provider (its own buckets, not tollgate's) meters requests,
// input tokens and output tokens separately: requests and input at admission,
// output as produced (at completion, possibly into debt), and admits only while
// its output bucket is not exhausted. Clients acquire from one SharedLimitSet,
// FIFO or weighted fair, and reserve `max_tokens` of output until they settle.
//
// The reference is the weighted max-min fair allocation of the provider's
// output tokens over the run, computed exactly (water-filling) from each
// key's offered output tokens and its tier's weight.

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <tollgate/shared_limit_set.hpp>

#include "sim_support.hpp"

namespace sim {

struct TieredResult {
  std::string strategy;
  std::size_t requests = 0, shed = 0;
  std::uint64_t upstream_calls = 0, upstream_429 = 0;
  double fair_jain = 0, min_fair_ratio = 0, utilization = 0, light_p99_wait_ms = 0, rate_429 = 0;
  double heavy_ratio = 0, light_min_ratio = 0;  // served / fair allocation
  // Per key (for the chart): its tier, its output tokens served, and its
  // weighted max-min fair allocation over the run.
  std::vector<int> key_tier;
  std::vector<double> key_served, key_fair;
};

class TieredProvider {
 public:
  TieredProvider(double rpm, double input_tpm, double output_tpm)
      : req_{rpm, rpm / 60, rpm}, in_{input_tpm, input_tpm / 60, input_tpm}, out_{output_tpm, output_tpm / 60, output_tpm} {}

  // A call: admitted while a request and the prompt's input tokens are there
  // and the output bucket is not exhausted; a refusal still counts the request.
  bool admit(double t, double prompt) {
    refill(t);
    ++calls;
    if (req_.level >= 1 && in_.level >= prompt && out_.level > 0) {
      req_.level -= 1;
      in_.level -= prompt;
      return true;
    }
    ++refused;
    req_.level = std::max(0.0, req_.level - 1);
    return false;
  }
  // The answer's output tokens, charged as produced.
  void produced(double t, double output) {
    refill(t);
    out_.level -= output;
  }
  double servable_output(double duration) const { return out_.cap + out_.rate * duration; }

  std::uint64_t calls = 0, refused = 0;

 private:
  struct B {
    double cap, rate, level, last = 0;
  };
  void refill(double t) {
    for (B* b : {&req_, &in_, &out_}) {
      b->level = std::min(b->cap, b->level + b->rate * (t - b->last));
      b->last = t;
    }
  }
  B req_, in_, out_;
};

struct TieredKey {
  std::string name;
  int tier;        // 0 free, 1 pro, 2 enterprise
  double demand;   // offered output tokens per second, in weight-1 shares
};

/// Weighted max-min fair allocation of `capacity` among `demand` by `weight` (water-filling).
inline std::vector<double> weighted_max_min(const std::vector<double>& demand, const std::vector<double>& weight,
                                            double capacity) {
  std::vector<double> alloc(demand.size(), 0);
  std::vector<bool> done(demand.size(), false);
  for (;;) {
    double w = 0;
    for (std::size_t k = 0; k < demand.size(); ++k)
      if (!done[k]) w += weight[k];
    if (w == 0) break;
    bool fixed = false;
    for (std::size_t k = 0; k < demand.size(); ++k) {
      if (!done[k] && demand[k] <= capacity * weight[k] / w) {
        alloc[k] = demand[k];
        capacity -= demand[k];
        done[k] = true;
        fixed = true;
      }
    }
    if (fixed) continue;
    for (std::size_t k = 0; k < demand.size(); ++k)
      if (!done[k]) alloc[k] = capacity * weight[k] / w;
    break;
  }
  return alloc;
}

inline TieredResult simulate_tiered(tollgate::Sharing sharing, double duration, std::uint64_t seed) {
  using tollgate::Costs;
  using tollgate::Limit;
  constexpr double rpm = 600, input_tpm = 400'000, output_tpm = 60'000, max_tokens = 1024, max_wait = 30;
  const double weights[] = {1, 2, 4};
  std::vector<TieredKey> keys;
  keys.push_back({"pro-heavy", 1, 20.0});
  for (int i = 0; i < 4; ++i) keys.push_back({std::string("ent-").append(std::to_string(i)), 2, 4 * 1.2});
  for (int i = 0; i < 20; ++i) keys.push_back({std::string("free-").append(std::to_string(i)), 0, 0.5});
  double total_weight = 0;
  for (const TieredKey& k : keys) total_weight += weights[k.tier];
  const double unit = output_tpm / 60 / total_weight;  // output tokens per second of a weight-1 share

  struct Req {
    std::size_t key;
    double arrival, prompt, output;
  };
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u01(0, 1), prompt(200, 2000);
  auto output_len = [&] { return std::min(max_tokens, std::floor(85 / std::pow(1 - u01(rng), 1 / 1.5))); };
  const double mean_output = 205;  // of output_len (205.5 over 10^6 draws): sets arrival rates only
  std::vector<Req> load;
  for (std::size_t k = 0; k < keys.size(); ++k) {
    std::exponential_distribution<double> gap(keys[k].demand * unit / mean_output);
    for (double t = gap(rng); t < duration; t += gap(rng)) load.push_back({k, t, std::floor(prompt(rng)), output_len()});
  }
  std::sort(load.begin(), load.end(), [](const Req& a, const Req& b) { return a.arrival < b.arrival; });

  Sim s;
  TieredProvider provider(rpm, input_tpm, output_tpm);
  using Set = tollgate::SharedLimitSet<std::string, ManualClock>;
  Set::Options o;
  o.tiers = {{"free", weights[0], {}}, {"pro", weights[1], {}}, {"enterprise", weights[2], {}}};
  o.tier_of = [](const std::string& k) -> std::size_t { return k[0] == 'f' ? 0 : k[0] == 'p' ? 1 : 2; };
  o.sharing = sharing;
  Set set({{"requests", Limit::per_minute(rpm)},
           {"input_tokens", Limit::per_minute(input_tpm)},
           {"output_tokens", Limit::per_minute(output_tpm)}},
          o, s.clock, &s.sched);

  struct Outcome {
    bool served = false, shed = false;
    double wait = 0;
  };
  std::vector<Outcome> out(load.size());
  auto run = [&](const Req& r, Outcome& o) -> Detached {
    co_await s.sleep_until(r.arrival);
    const Costs estimate{1, r.prompt, max_tokens};  // named: GCC 12 cannot keep a braced list across co_await
    Set::Permit permit = co_await set.acquire_permit(keys[r.key].name, estimate, Seconds(max_wait));
    if (!permit) {
      o.shed = true;
      co_return;
    }
    const double start = s.now();
    if (!provider.admit(start, r.prompt)) {
      permit.settle(Costs{1, 0, 0});  // the provider counted the request only
      co_return;
    }
    co_await s.sleep_for(0.4 + r.output * 0.01);
    provider.produced(s.now(), r.output);
    permit.settle(Costs{1, r.prompt, r.output});
    o.served = true;
    o.wait = start - r.arrival;
  };
  for (std::size_t i = 0; i < load.size(); ++i) run(load[i], out[i]);
  s.run();

  TieredResult res;
  res.strategy = sharing == tollgate::Sharing::fifo ? "tollgate_fifo" : "tollgate_fair";
  res.requests = load.size();
  res.upstream_calls = provider.calls;
  res.upstream_429 = provider.refused;
  res.rate_429 = provider.calls ? double(provider.refused) / double(provider.calls) : 0;
  std::vector<double> demand(keys.size(), 0), served(keys.size(), 0), weight(keys.size());
  std::vector<double> light_waits;
  double served_total = 0;
  for (std::size_t i = 0; i < load.size(); ++i) {
    demand[load[i].key] += load[i].output;
    if (out[i].shed) ++res.shed;
    if (keys[load[i].key].tier == 0 && (out[i].served || out[i].shed))
      light_waits.push_back((out[i].shed ? max_wait : out[i].wait) * 1000);  // a shed request waited its max
    if (!out[i].served || load[i].arrival + out[i].wait > duration) continue;
    served[load[i].key] += load[i].output;
    served_total += load[i].output;
  }
  for (std::size_t k = 0; k < keys.size(); ++k) weight[k] = weights[keys[k].tier];
  const double servable = provider.servable_output(duration);
  const std::vector<double> fair = weighted_max_min(demand, weight, servable);
  double sum = 0, sq = 0;
  res.min_fair_ratio = 1e300;
  res.light_min_ratio = 1e300;
  for (std::size_t k = 0; k < keys.size(); ++k) {
    res.key_tier.push_back(keys[k].tier);
    res.key_served.push_back(served[k]);
    res.key_fair.push_back(fair[k]);
    const double x = fair[k] > 0 ? served[k] / fair[k] : 1;
    sum += x;
    sq += x * x;
    res.min_fair_ratio = std::min(res.min_fair_ratio, x);
    if (keys[k].tier == 0) res.light_min_ratio = std::min(res.light_min_ratio, x);
    if (k == 0) res.heavy_ratio = x;
  }
  res.fair_jain = sum * sum / (double(keys.size()) * sq);
  double total_demand = 0;
  for (double d : demand) total_demand += d;
  res.utilization = served_total / std::min(servable, total_demand);
  res.light_p99_wait_ms = percentile(light_waits, 0.99);
  return res;
}

}  // namespace sim
