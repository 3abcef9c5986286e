#pragma once
// OutputEstimator: learns, per route or model, how many output tokens calls
// really produce, so that a limit set reserves a conservative quantile of
// that instead of the request's `max_tokens`.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tollgate {

/// Learns the distribution of actual output tokens per key (a route, a
/// model: whatever the caller chooses) and estimates a conservative quantile
/// of it, capped at the request's `max_tokens`.
///
///     OutputEstimator outputs;                          // p95, after 20 answers
///     const double out = outputs.estimate("gpt-4o", max_tokens);
///     auto permit = co_await upstream.acquire_permit(upstream.costs({{"requests", 1},
///                                                    {"output_tokens", out}}), 5s);
///     ...
///     outputs.observe("gpt-4o", usage.output_tokens);
///     permit.settle(actual);                            // an overrun is charged (within max_debt)
///
/// Use it for a dimension the provider charges as produced or reconciles at
/// completion; where a provider counts `max_tokens` at admission, reserve
/// `max_tokens` as the provider does.
///
/// Deterministic (no clock, no randomness) and bounded: each key keeps a
/// histogram of 96 logarithmic bins (ratio 2^(1/4), about 19% wide, from 1 to
/// 2^24 tokens), and the estimate is the upper edge of the bin holding the
/// quantile, so it errs high by at most one bin. Counts halve every `window`
/// observations of a key, so the estimate follows a drifting workload. At
/// most `max_keys` keys are learned; observations for further keys go to one
/// shared histogram (`estimate` of such a key uses it too). Thread-safe.
class OutputEstimator {
 public:
  struct Options {
    double quantile = 0.95;       ///< in (0, 1]: the share of answers the estimate covers
    std::uint32_t min_samples = 20;  ///< below this many answers of a key, estimate `max_tokens`
    std::uint32_t window = 1000;     ///< counts halve after this many answers of a key (>= min_samples)
    std::size_t max_keys = 1024;     ///< keys learned separately; the rest share one histogram
  };

  OutputEstimator() : OutputEstimator(Options{}) {}
  /// Throws `std::invalid_argument` naming a bad option.
  explicit OutputEstimator(Options options) : options_(options) {
    if (!(options_.quantile > 0 && options_.quantile <= 1)) fail("quantile must be in (0, 1]", options_.quantile);
    if (options_.window < options_.min_samples || options_.window == 0)
      fail("window must be >= min_samples and > 0", options_.window);
  }

  /// What to reserve for a call of `key` that may produce up to `max_tokens`:
  /// the learned quantile, never above `max_tokens`; `max_tokens` itself
  /// until `min_samples` answers of the key were observed. Throws
  /// `std::invalid_argument` for a negative, NaN or infinite `max_tokens`.
  double estimate(std::string_view key, double max_tokens) const {
    check("OutputEstimator::estimate", "max_tokens", max_tokens);
    std::lock_guard lock(mutex_);
    const Histogram* h = find(key);
    if (!h || h->samples < options_.min_samples) return max_tokens;
    return std::min(max_tokens, h->quantile(options_.quantile));
  }

  /// Records that a call of `key` produced `output_tokens`. Throws
  /// `std::invalid_argument` for a negative, NaN or infinite value.
  void observe(std::string_view key, double output_tokens) {
    check("OutputEstimator::observe", "output_tokens", output_tokens);
    std::lock_guard lock(mutex_);
    Histogram* h = find(key);
    if (!h) {
      if (keys_.size() < options_.max_keys) h = &keys_.emplace(std::string(key), Histogram{}).first->second;
      else h = &shared_;
    }
    h->add(output_tokens, options_.window);
  }

  /// How many keys are learned separately.
  std::size_t keys() const {
    std::lock_guard lock(mutex_);
    return keys_.size();
  }

 private:
  static constexpr int kBins = 96;  // 2^(b/4) for b in [0, 96): 1 .. 2^24 tokens

  struct Histogram {
    std::array<double, kBins> counts{};
    double total = 0;
    std::uint32_t samples = 0;      // answers observed (not decayed: gates min_samples)
    std::uint32_t since_decay = 0;

    static int bin_of(double tokens) noexcept {
      if (!(tokens > 1)) return 0;
      const int b = static_cast<int>(std::ceil(4 * std::log2(tokens)));
      return std::clamp(b, 0, kBins - 1);
    }
    static double upper_edge(int bin) noexcept { return std::exp2(bin / 4.0); }

    void add(double tokens, std::uint32_t window) noexcept {
      counts[bin_of(tokens)] += 1;
      total += 1;
      if (samples < UINT32_MAX) ++samples;
      if (++since_decay >= window) {
        for (double& c : counts) c /= 2;
        total /= 2;
        since_decay = 0;
      }
    }
    // The upper edge of the bin where the cumulative count first reaches q.
    double quantile(double q) const noexcept {
      const double want = q * total;
      double seen = 0;
      for (int b = 0; b < kBins; ++b) {
        seen += counts[b];
        if (seen >= want && counts[b] > 0) return upper_edge(b);
      }
      return upper_edge(kBins - 1);
    }
  };

  const Histogram* find(std::string_view key) const {
    const auto it = keys_.find(key);
    if (it != keys_.end()) return &it->second;
    return keys_.size() >= options_.max_keys && shared_.samples > 0 ? &shared_ : nullptr;
  }
  Histogram* find(std::string_view key) {
    return const_cast<Histogram*>(static_cast<const OutputEstimator*>(this)->find(key));
  }

  static void check(const char* who, const char* what, double v) {
    if (v >= 0 && std::isfinite(v)) return;
    std::ostringstream os;
    os << who << ": " << what << " must be finite and >= 0, got " << v;
    throw std::invalid_argument(os.str());
  }
  [[noreturn]] static void fail(const char* what, double v) {
    std::ostringstream os;
    os << "OutputEstimator: " << what << ", got " << v;
    throw std::invalid_argument(os.str());
  }

  Options options_;
  mutable std::mutex mutex_;
  std::map<std::string, Histogram, std::less<>> keys_;
  Histogram shared_;
};

}  // namespace tollgate
