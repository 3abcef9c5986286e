#pragma once
// llm_sim's provider: built like the real ones, not like tollgate. Each
// profile meters requests and tokens its own way:
//
//  - OpenAI: requests and (combined) tokens per minute; a call's tokens are
//    counted at admission as prompt + max_tokens and not reconciled.
//  - Anthropic: requests, input tokens and output tokens per minute; input at
//    admission, cache reads free; output as produced (at completion, possibly
//    past the limit), and a call is admitted only while output is not
//    exhausted; or (`reserved`) output counted at admission as max_tokens and
//    reconciled to the real output at completion.
//
// and enforces each limit as a continuous bucket (a minute's burst) or in
// fixed windows (1 s, 10 s, 60 s: the per-minute limit scaled to the window,
// reset at each window's start). Rate headers are each provider's own:
// OpenAI's `x-ratelimit-*` with Go-style duration resets and retry-after-ms,
// Anthropic's `anthropic-ratelimit-*` with RFC 3339 resets (whole seconds)
// and Retry-After in seconds; `remaining` and `reset` describe the current
// window (or the bucket: reset = until full). A refused call still counts
// as a request.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <string>
#include <vector>

namespace sim {

enum class Api { openai, anthropic };

struct ProviderProfile {
  const char* name;
  Api api;
  double window;  // seconds; 0: a continuous bucket with a minute's burst
  bool reserved;  // Anthropic's output counted at admission as max_tokens, reconciled at completion
  // Per minute: requests, then tokens (OpenAI) or input and output tokens (Anthropic).
  double rpm, tpm_or_itpm, otpm;
};

inline const std::vector<ProviderProfile>& provider_profiles() {
  static const std::vector<ProviderProfile> p = {
      {"openai_bucket", Api::openai, 0, false, 10'000, 5'000'000, 0},
      {"openai_1s", Api::openai, 1, false, 10'000, 5'000'000, 0},
      {"openai_60s", Api::openai, 60, false, 10'000, 5'000'000, 0},
      {"anthropic_bucket", Api::anthropic, 0, false, 1'000, 100'000, 20'000},
      {"anthropic_10s_reserved", Api::anthropic, 10, true, 1'000, 100'000, 1'000'000},
  };
  return p;
}

/// One call as the provider sees it.
struct Call {
  double prompt = 0, cached = 0, max_tokens = 0, output = 0;  // cached: prompt tokens read from the cache
};

struct Answer {
  int status = 200;
  std::map<std::string, std::string> headers;
};

inline std::string go_duration(double s) {  // as OpenAI writes resets: "20ms", "1.5s", "6m0s"
  char buf[64];
  if (s < 1) std::snprintf(buf, sizeof buf, "%dms", static_cast<int>(std::ceil(s * 1000)));
  else if (s < 60) std::snprintf(buf, sizeof buf, "%gs", std::ceil(s * 1000) / 1000);
  else std::snprintf(buf, sizeof buf, "%dm%ds", static_cast<int>(s / 60), static_cast<int>(std::ceil(std::fmod(s, 60))));
  return buf;
}

inline std::chrono::system_clock::time_point sim_wall(double t) {  // the simulation starts 2026-01-01T00:00:00Z
  return std::chrono::system_clock::time_point(std::chrono::sys_days(std::chrono::year(2026) / 1 / 1)) +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(t));
}

inline std::string rfc3339_up(double t) {  // rounded up to the second
  const auto secs = std::chrono::ceil<std::chrono::seconds>(sim_wall(t));
  const std::time_t tt = std::chrono::system_clock::to_time_t(secs);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

/// One metered limit: a continuous bucket or fixed windows.
class Meter {
 public:
  Meter(double per_minute, double window, double hidden_share)
      : per_minute_(per_minute), per_minute0_(per_minute), window_(window), keep_(1 - hidden_share), level_(capacity()) {}

  // A bucket: a minute's worth, refilled at the per-minute rate less what a
  // hidden consumer takes. A window: the per-minute limit scaled to the
  // window, less the hidden consumer's share.
  double capacity() const { return window_ > 0 ? per_minute_ * window_ / 60 * keep_ : per_minute_; }
  double rate() const { return per_minute_ / 60 * keep_; }
  double per_minute() const { return per_minute_; }

  void advance(double t) {
    if (window_ > 0) {
      const auto w = static_cast<long long>(std::floor(t / window_));
      if (w != win_) {
        win_ = w;
        level_ = capacity();
      }
    } else {
      level_ = std::min(capacity(), level_ + rate() * (t - last_));
    }
    last_ = t;
  }
  void scale(double f) {  // the provider changes the limit
    per_minute_ *= f;
    level_ = std::min(level_, capacity());
  }
  double left() const { return level_; }  // may be negative after output produced past it
  void take(double c) { level_ -= c; }
  void refund(double c) { level_ = std::min(capacity(), level_ + c); }
  // Until the window ends, or until the bucket is full again.
  double reset(double t) const {
    // A bucket's reset is computed at its own rate (it cannot know what a
    // hidden consumer will take), as a provider does.
    return window_ > 0 ? (static_cast<double>(win_) + 1) * window_ - t : (capacity() - level_) / (per_minute_ / 60);
  }
  // Until `c` fits (as_produced: until the level is positive again).
  double wait_for(double t, double c) const {
    if (window_ > 0) return reset(t);
    return std::max(0.0, (std::max(c, 1e-9) - level_) / rate());
  }
  // What the meter allows a client over [0, duration] (with a drop to half
  // at `drop_at` if >= 0): a bucket's initial burst plus its refill; the sum
  // of the windows that start in the run.
  double allowed(double duration, double drop_at) const {
    const double rate0 = per_minute0_ / 60 * keep_;
    if (window_ <= 0) {
      if (drop_at < 0) return per_minute0_ + rate0 * duration;
      return per_minute0_ + rate0 * drop_at + rate0 / 2 * (duration - drop_at);
    }
    double total = 0;
    for (double s = 0; s < duration; s += window_) total += rate0 * window_ * (drop_at >= 0 && s >= drop_at ? 0.5 : 1);
    return total;
  }

 private:
  double per_minute_, per_minute0_, window_, keep_, level_, last_ = 0;
  long long win_ = 0;
};

/// The provider: its meters, its admission rule and its headers.
class Provider {
 public:
  Provider(const ProviderProfile& p, double true_share, double hidden_share, double drop_at)
      : p_(p), drop_at_(drop_at) {
    meters_.emplace_back(p.rpm * true_share, p.window, hidden_share);
    meters_.emplace_back(p.tpm_or_itpm * true_share, p.window, hidden_share);
    if (p.api == Api::anthropic) meters_.emplace_back(p.otpm * true_share, p.window, hidden_share);
  }

  std::size_t dimensions() const { return meters_.size(); }
  const char* dimension_name(std::size_t d) const {
    static const char* openai[] = {"requests", "tokens"};
    static const char* anthropic[] = {"requests", "input_tokens", "output_tokens"};
    return p_.api == Api::openai ? openai[d] : anthropic[d];
  }
  // What a call costs in each dimension as this provider counts it.
  std::vector<double> cost(const Call& c) const {
    if (p_.api == Api::openai) return {1, c.prompt + c.max_tokens};
    return {1, c.prompt - c.cached, c.output};
  }
  // What it counts at admission (Anthropic reserved: max_tokens of output).
  std::vector<double> admission_cost(const Call& c) const {
    std::vector<double> k = cost(c);
    if (p_.api == Api::anthropic) k[2] = p_.reserved ? c.max_tokens : 0;
    return k;
  }
  bool produced(std::size_t d) const { return p_.api == Api::anthropic && !p_.reserved && d == 2; }
  double allowed(std::size_t d, double duration) const { return meters_[d].allowed(duration, drop_at_); }

  Answer call(double t, const Call& c) {
    update(t);
    ++calls;
    const std::vector<double> k = admission_cost(c);
    bool ok = true;
    double wait = 0;
    for (std::size_t d = 0; d < meters_.size(); ++d) {
      const double need = k[d];  // as produced: checked not exhausted; charged later
      if (produced(d) ? meters_[d].left() <= 0 : meters_[d].left() < need) {
        ok = false;
        wait = std::max(wait, meters_[d].wait_for(t, need));
      }
    }
    if (!ok) {
      ++refused;
      meters_[0].take(std::min(1.0, std::max(0.0, meters_[0].left())));  // a refused request still counts
      return {429, headers(t, wait)};
    }
    for (std::size_t d = 0; d < meters_.size(); ++d)
      if (!produced(d)) charge(t, d, k[d]);
    return {200, headers(t, -1)};
  }

  // The answer is complete: Anthropic charges its output now, or reconciles
  // the max_tokens it reserved to the real output (a refund into the current
  // window or bucket, never above its capacity).
  void complete(double t, const Call& c) {
    update(t);
    if (p_.api != Api::anthropic) return;
    if (!p_.reserved) charge(t, 2, c.output);
    else meters_[2].refund(c.max_tokens - c.output), consumed_in_run[2] -= t <= run_end ? c.max_tokens - c.output : 0;
  }

  std::uint64_t calls = 0, refused = 0;
  std::vector<double> consumed_in_run = std::vector<double>(3, 0.0);
  double run_end = 0;

 private:
  void charge(double t, std::size_t d, double amount) {
    meters_[d].take(amount);
    if (t <= run_end) consumed_in_run[d] += amount;
  }

  void update(double t) {
    if (drop_at_ >= 0 && !dropped_ && t >= drop_at_) {
      for (Meter& m : meters_) {
        m.advance(t);
        m.scale(0.5);
      }
      dropped_ = true;
    }
    for (Meter& m : meters_) m.advance(t);
  }

  std::map<std::string, std::string> headers(double t, double retry) const {
    std::map<std::string, std::string> h;
    for (std::size_t d = 0; d < meters_.size(); ++d) {
      const Meter& m = meters_[d];
      const auto limit = std::to_string(static_cast<long long>(m.per_minute()));
      const auto remaining = std::to_string(static_cast<long long>(std::floor(std::max(0.0, m.left()))));
      const double reset = std::max(0.0, m.reset(t));
      if (p_.api == Api::openai) {
        const std::string family = dimension_name(d);
        h["x-ratelimit-limit-" + family] = limit;
        h["x-ratelimit-remaining-" + family] = remaining;
        h["x-ratelimit-reset-" + family] = go_duration(reset);
      } else {
        static const char* family[] = {"requests", "input-tokens", "output-tokens"};
        const std::string prefix = std::string("anthropic-ratelimit-").append(family[d]).append("-");
        h[prefix + "limit"] = limit;
        h[prefix + "remaining"] = remaining;
        h[prefix + "reset"] = rfc3339_up(t + reset);
      }
    }
    if (retry >= 0) {
      if (p_.api == Api::openai) h["retry-after-ms"] = std::to_string(static_cast<long long>(std::ceil(retry * 1000)));
      else h["retry-after"] = std::to_string(static_cast<long long>(std::ceil(retry)));
    }
    return h;
  }

  const ProviderProfile& p_;
  double drop_at_;
  bool dropped_ = false;
  std::vector<Meter> meters_;
};

}  // namespace sim
