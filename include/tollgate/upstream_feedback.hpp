#pragma once
// UpstreamFeedback: feeds an LLM provider's answers back into a LimitSet:
// 429/503/529 pause it, rate headers correct it, and an optional adaptive
// rate shrinks on rate-limit refusals and grows back slowly on success.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <functional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "limit.hpp"
#include "limit_set.hpp"
#include "permit.hpp"
#include "upstream_headers.hpp"

namespace tollgate {

/// What an upstream answer means for the limiter.
enum class UpstreamVerdict : std::uint8_t {
  ok,               ///< served (2xx)
  rate_limited,     ///< 429 for rate: wait and retry; the limits are too high
  overloaded,       ///< 503 / 529: the provider is busy; wait and retry, limits unchanged
  quota_exhausted,  ///< 429 `insufficient_quota`, a spend limit, 402: do not retry; tell the caller
  error,            ///< any other failure: nothing to learn about limits
};

constexpr std::string_view to_string(UpstreamVerdict v) noexcept {
  switch (v) {
    case UpstreamVerdict::ok: return "ok";
    case UpstreamVerdict::rate_limited: return "rate_limited";
    case UpstreamVerdict::overloaded: return "overloaded";
    case UpstreamVerdict::quota_exhausted: return "quota_exhausted";
    case UpstreamVerdict::error: return "error";
  }
  return "unknown";
}

/// Classifies an HTTP status and the provider's error code or type (OpenAI's
/// `error.code` / `error.type`, Anthropic's `error.type`), if any.
inline UpstreamVerdict classify_upstream(int status, std::string_view error_code = {}) noexcept {
  for (std::string_view quota : {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active",
                                 "spend_limit_exceeded", "credit_balance_too_low"})
    if (detail::iequals(error_code, quota)) return UpstreamVerdict::quota_exhausted;
  if (status >= 200 && status < 300) return UpstreamVerdict::ok;
  if (status == 402) return UpstreamVerdict::quota_exhausted;
  if (status == 429) return UpstreamVerdict::rate_limited;
  if (status == 503 || status == 529 || detail::iequals(error_code, "overloaded_error"))
    return UpstreamVerdict::overloaded;
  return UpstreamVerdict::error;
}

/// The adaptive rate's parameters (AIMD). The rate of every dimension moves
/// between `floor * ceiling` and the ceiling (the configured limit, lowered
/// when a provider's `*-limit` header reports less).
struct AdaptiveRate {
  double decrease = 0.8;   ///< on a rate-limit 429: rate *= decrease (0 < decrease < 1)
  double ramp = 0.01;      ///< on success: rate += ramp * ceiling per second, at most
  double floor = 0.1;      ///< never below floor * ceiling (0 < floor <= 1)
  double headroom = 0.05;  ///< grow only while the provider reports at least this share left
  /// After a cut, no growth for this long (past the refusal's pause): a
  /// rate just cut is tried for a while before it climbs back to the excess.
  std::chrono::nanoseconds calm = std::chrono::seconds(10);

  void validate() const {
    if (!(decrease > 0 && decrease < 1)) throw std::invalid_argument("AdaptiveRate: decrease must be in (0, 1)");
    if (!(ramp > 0 && std::isfinite(ramp))) throw std::invalid_argument("AdaptiveRate: ramp must be finite and > 0");
    if (!(floor > 0 && floor <= 1)) throw std::invalid_argument("AdaptiveRate: floor must be in (0, 1]");
    if (!(headroom >= 0 && headroom < 1)) throw std::invalid_argument("AdaptiveRate: headroom must be in [0, 1)");
    if (calm < std::chrono::nanoseconds(0) || calm > std::chrono::hours(24))
      throw std::invalid_argument("AdaptiveRate: calm must be in [0, 24 h]");
  }
};

/// A provider's header family: which of `UpstreamLimits`' dimensions.
enum class HeaderFamily : std::uint8_t { requests, tokens, input_tokens, output_tokens };

/// How a provider refills a dimension, as its rate headers show it.
enum class Refill : std::uint8_t {
  unknown,     ///< not shown yet: a remaining count is held until its reset (safe for both)
  windowed,    ///< fixed windows: a remaining count stays until the reset
  continuous,  ///< a bucket refilling continuously (full at its reset): a count is a level, not held
};

/// When a provider counts a call against a dimension.
enum class Counted : std::uint8_t {
  at_admission,  ///< when the call arrives (requests, input tokens, OpenAI's max_tokens estimate)
  as_produced,   ///< as the answer is generated (Anthropic's output tokens): calls in flight are not in `remaining` yet
};

/// Binds a header family (OpenAI's `x-ratelimit-*-tokens`, Anthropic's
/// `anthropic-ratelimit-input-tokens-*`, ...) to a set's dimension by name.
struct HeaderBinding {
  HeaderFamily family;
  std::string dimension;
  /// When the provider counts this dimension: for `as_produced`, the
  /// estimates of the set's Permits in flight are taken off the provider's
  /// `remaining` (it has not charged them yet).
  Counted counted = Counted::at_admission;
  /// The period the provider's `*-limit` header counts over (per minute for
  /// OpenAI's and Anthropic's RPM / TPM / ITPM / OTPM).
  std::chrono::nanoseconds limit_period = std::chrono::minutes(1);
};

/// Provider profiles: the bindings of each provider's header families.
struct HeaderBindings {
  /// OpenAI: requests and (combined) tokens.
  static std::vector<HeaderBinding> openai() {
    return {{HeaderFamily::requests, "requests"}, {HeaderFamily::tokens, "tokens"}};
  }
  /// Anthropic: requests, input tokens and output tokens, metered
  /// separately; output tokens are counted as they are produced.
  static std::vector<HeaderBinding> anthropic() {
    return {{HeaderFamily::requests, "requests"},
            {HeaderFamily::input_tokens, "input_tokens"},
            {HeaderFamily::output_tokens, "output_tokens", Counted::as_produced}};
  }
};

/// A provider's limits as a limit set's dimensions, each per-minute limit
/// with the burst of the window the provider enforces it over: a minute for
/// a continuous bucket (or per-minute windows), one second for a per-minute
/// limit enforced per second (OpenAI documents 60,000 per minute enforced as
/// 1,000 per second), so that no burst a window cannot take is released.
/// Names match `HeaderBindings::openai()` / `anthropic()`.
struct ProviderLimits {
  /// `per_minute` with the burst of `window`: Limit{per_minute * window / 1 min, per_minute / 60 s}.
  /// Throws `std::invalid_argument` unless `window` is in (0, 1 min] and `per_minute` > 0 and finite.
  static Limit per_minute(double per_minute, std::chrono::nanoseconds window = std::chrono::minutes(1)) {
    if (!(window > std::chrono::nanoseconds(0) && window <= std::chrono::minutes(1)))
      throw std::invalid_argument("ProviderLimits: the enforcement window must be in (0, 1 min]");
    if (!(per_minute > 0 && std::isfinite(per_minute)))
      throw std::invalid_argument("ProviderLimits: a per-minute limit must be finite and > 0");
    const double share = std::chrono::duration<double>(window).count() / 60;
    Limit l{per_minute * share, per_minute / 60};
    l.validate("ProviderLimits");
    return l;
  }
  /// OpenAI: "requests" and "tokens" (counted at admission as prompt + max_tokens).
  static std::vector<Dimension> openai(double rpm, double tpm, std::chrono::nanoseconds window = std::chrono::minutes(1)) {
    return {{"requests", per_minute(rpm, window)}, {"tokens", per_minute(tpm, window)}};
  }
  /// Anthropic: "requests", "input_tokens" and "output_tokens".
  static std::vector<Dimension> anthropic(double rpm, double itpm, double otpm,
                                          std::chrono::nanoseconds window = std::chrono::minutes(1)) {
    return {{"requests", per_minute(rpm, window)},
            {"input_tokens", per_minute(itpm, window)},
            {"output_tokens", per_minute(otpm, window)}};
  }
};

/// Connects a LimitSet (or a SharedLimitSet: `Set`) to a provider's answers. Header families are bound to
/// the set's dimensions by `Options::bindings` (e.g. `HeaderBindings::anthropic()`),
/// checked at construction: a binding to a dimension the set does not have
/// throws. Without bindings, a dimension named "requests", "tokens",
/// "input_tokens" or "output_tokens" takes that family, and a set where no
/// dimension binds throws (header sync is never a silent no-op).
///
/// For each answer (`on_response`):
///  - a `*-remaining` header lowers the matching dimension's unreserved
///    tokens to it (never raises them) and, with its `*-reset`, holds them
///    there until the reset (`LimitSet::limit_remaining(i, n, hold_for)`):
///    the provider's count is authoritative until then, whether it enforces
///    fixed windows (where the count stays until the reset) or refills
///    continuously (where it is a lower bound). Once a dimension's answers
///    have all fitted a continuous bucket of its limit (full at each reset)
///    for a tenth of the limit period, its counts only lower it (`refill(i)`
///    is then `Refill::continuous`); one answer that does not makes it
///    `windowed` again. For a dimension the provider
///    counts `as_produced`, the estimates of the set's Permits in flight are
///    taken off first (the set counts them from construction on);
///  - a `*-limit` header below the configured limit lowers that dimension's
///    ceiling: rate `limit / limit_period` at most, the capacity scaled with
///    it (the configured burst window is kept); never above the configuration;
///  - a rate-limit 429 or an overload (503/529) pauses the whole set, queued
///    waiters included, for `retry-after-ms` / `Retry-After`, else for the
///    exhausted dimension's reset, else for `default_pause`; capped at
///    `max_upstream_wait`. A rate-limit 429 also empties the dimensions it
///    concerns (below), so that the pause's end releases only what refilled
///    during it, at most a capacity: size a dimension's capacity to the
///    provider's enforcement window (a per-minute limit enforced per second:
///    one second's worth) and no burst the window cannot take is released;
///  - with an AdaptiveRate: a rate-limit 429 multiplies by `decrease` the
///    rates of the dimensions reported exhausted, else of the one nearest to
///    exhaustion (least remaining share of its limit), and of all of them
///    only when no header reports a remaining count below the limit, once
///    per refusal episode (the 429s that come before the first one's pause
///    ends answer calls already sent: the same excess, not a new one);
///    a success grows them by at most `ramp * ceiling` per second while the
///    provider reports headroom, judged per dimension against the window the
///    headers describe (the remaining share of the smaller of the `*-limit`
///    and the dimension's capacity); an overload changes no rate;
///  - a quota error changes nothing and is returned for the caller to report.
///
/// The set's capacities stay the ceiling's (the provider's burst); only the
/// refill rates adapt. Thread safety: as the LimitSet when `Mutex` is a real
/// mutex (the adaptive state has its own lock, never held while the set runs).
template <class Clock = std::chrono::steady_clock, class Mutex = SpinMutex, class Set = LimitSet<Clock, Mutex>>
class UpstreamFeedback {
 public:
  /// What the set's permits hold: Costs (LimitSet), KeyedCosts (SharedLimitSet).
  using cost_type = typename Set::cost_type;
  struct Options {
    std::optional<AdaptiveRate> adaptive;                        ///< none: header sync and pauses only
    std::chrono::nanoseconds default_pause = std::chrono::seconds(1);  ///< a 429 that says nothing
    /// Which header family feeds which dimension; empty: by dimension name.
    std::vector<HeaderBinding> bindings{};
    /// The wall clock that absolute resets (RFC 3339, HTTP dates) are read
    /// against by the `on_response` and `complete` overloads that take no
    /// `now`; a simulation on a manual clock passes its own.
    std::function<std::chrono::system_clock::time_point()> wall_clock = [] { return std::chrono::system_clock::now(); };
  };

  /// Throws `std::invalid_argument` for a bad AdaptiveRate, a binding to a
  /// missing dimension, a family or dimension bound twice, or (without
  /// bindings) a set none of whose dimensions is named after a family.
  explicit UpstreamFeedback(Set& set, Options options = {}) : set_(set), options_(std::move(options)) {
    if (options_.adaptive) options_.adaptive->validate();
    for (std::size_t i = 0; i < set.size(); ++i) {
      Dim& d = dims_[i];
      d.configured = set.limit(i);
      d.ceiling = d.applied_ceiling = d.configured;
      d.rate = d.applied = d.configured.rate;
    }
    bind();
    last_ramp_ = set.clock().now();
    for (std::size_t i = 0; i < set.size(); ++i)
      if (dims_[i].field && dims_[i].counted == Counted::as_produced) set.count_in_flight();
  }

  /// Feeds one answer: its HTTP status, its parsed headers, and the
  /// provider's error code if any. Returns the verdict.
  UpstreamVerdict on_response(int status, const UpstreamLimits& headers, std::string_view error_code = {}) {
    const UpstreamVerdict verdict = classify_upstream(status, error_code);
    if (verdict == UpstreamVerdict::quota_exhausted || verdict == UpstreamVerdict::error) return verdict;
    // Decide under our lock; act on the set after releasing it (the set may
    // resume waiters, whose code may call back here).
    std::array<std::optional<double>, max_dimensions> remaining{};
    std::array<std::optional<std::chrono::nanoseconds>, max_dimensions> hold{};
    std::array<std::chrono::nanoseconds, max_dimensions> window{};
    std::array<std::optional<Limit>, max_dimensions> new_limit{};
    std::optional<std::chrono::nanoseconds> pause;
    {
      std::lock_guard lock(mutex_);
      const auto now = set_.clock().now();
      const double elapsed = std::max(0.0, std::chrono::duration<double>(now - last_ramp_).count());
      last_ramp_ = now;
      std::array<bool, max_dimensions> exhausted{};
      bool any_exhausted = false;
      // The dimension nearest to exhaustion (least remaining share of its
      // limit): the one a 429 concerns when no header reports one exhausted.
      std::size_t nearest = max_dimensions;
      double nearest_share = 2;
      std::optional<std::chrono::nanoseconds> reset_pause;
      bool headroom = true;
      for (std::size_t i = 0; i < set_.size(); ++i) {
        Dim& d = dims_[i];
        if (!d.field) continue;
        const UpstreamDimension& u = headers.*(d.field);
        if (u.limit && *u.limit > 0) {
          const double rate = *u.limit / std::chrono::duration<double>(d.limit_period).count();
          if (rate < d.ceiling.rate) {
            d.ceiling = Limit{d.configured.capacity * (rate / d.configured.rate), rate};
            d.rate = std::min(d.rate, d.ceiling.rate);
          }
        }
        if (u.remaining) {
          remaining[i] = *u.remaining;
          if (u.reset) {
            // Held until the reset unless the headers have shown a continuous bucket.
            const Refill r = learn_refill(d, now, *u.remaining, *u.reset, u.limit);
            if (r != Refill::continuous && *u.reset <= std::chrono::nanoseconds(0)) {
              // A window already over: the count of a call answered late (a
              // newer answer may have reported the window in effect). It says
              // nothing of the window in effect: neither lowers nor ends its hold.
              remaining[i].reset();
            } else if (r != Refill::continuous) {
              hold[i] = *u.reset;
            } else {
              // A bucket's level is what its reset says (limit - reset * rate),
              // and that shows a debt (output produced past it) its remaining
              // count, never below 0, hides: held at 0 until it is repaid
              // (beyond the second a reset may be rounded up by).
              const double period = std::chrono::duration<double>(d.limit_period).count();
              const double full = u.limit && *u.limit > 0 ? *u.limit : d.ceiling.rate * period;
              const double debt_s = std::chrono::duration<double>(*u.reset).count() - period - 1;
              hold[i] = std::chrono::nanoseconds(0);  // lowered only; ends any hold
              if (debt_s > 0 && full > 0) {
                remaining[i] = 0.0;
                hold[i] = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(debt_s));
              }
            }
            if (r == Refill::windowed) window[i] = learn_window(d, now, *u.reset);
          }
          // The window the headers describe: the provider's limit, or this
          // dimension's burst when that is smaller (a per-minute limit
          // enforced over shorter windows reports the short window's count).
          const double cap = std::min(u.limit && *u.limit > 0 ? *u.limit : d.ceiling.capacity, d.ceiling.capacity);
          if (*u.remaining / cap < nearest_share) {
            nearest_share = *u.remaining / cap;
            nearest = i;
          }
          if (*u.remaining < (options_.adaptive ? options_.adaptive->headroom : 0) * cap) headroom = false;
          if (*u.remaining < 1) {
            exhausted[i] = any_exhausted = true;
            if (u.reset) reset_pause = std::max(reset_pause.value_or(std::chrono::nanoseconds(0)), *u.reset);
          }
        }
      }
      if (!any_exhausted && nearest < max_dimensions && nearest_share < 1) {
        exhausted[nearest] = true;  // the 429 concerns it; every dimension only when nothing says
        any_exhausted = true;
      }
      if (verdict == UpstreamVerdict::rate_limited || verdict == UpstreamVerdict::overloaded)
        pause = std::min<std::chrono::nanoseconds>(
            headers.retry_after ? *headers.retry_after : reset_pause.value_or(options_.default_pause),
            max_upstream_wait);
      for (std::size_t i = 0; i < set_.size(); ++i) {
        Dim& d = dims_[i];
        // A rate-limit 429 says the provider has nothing left in the
        // dimensions it concerns: empty them locally too, so that when the
        // pause ends only what refilled meanwhile is released (at most a
        // capacity, at the rate): no herd of every queued waiter at once.
        if (verdict == UpstreamVerdict::rate_limited && (exhausted[i] || !any_exhausted)) remaining[i] = 0.0;
        if (const auto& a = options_.adaptive) {
          // One cut per refusal episode: the 429s of calls already on their
          // way when the first came (until its pause ends) are the same excess.
          if (verdict == UpstreamVerdict::rate_limited && (exhausted[i] || !any_exhausted) && now >= d.cut_until) {
            d.rate = std::max(a->floor * d.ceiling.rate, d.rate * a->decrease);
            d.cut_until = now + std::chrono::duration_cast<typename Clock::duration>(
                                    std::max<std::chrono::nanoseconds>(pause.value_or(options_.default_pause),
                                                                       std::chrono::milliseconds(1)));
          }
          else if (verdict == UpstreamVerdict::ok && headroom && now > d.cut_until + a->calm) {
            const double calm_over = std::chrono::duration<double>(now - (d.cut_until + a->calm)).count();
            d.rate = std::min(d.ceiling.rate, d.rate + a->ramp * d.ceiling.rate * std::min(elapsed, calm_over));
          }
        }
        // Apply a change of ceiling, any decrease, and increases in steps of
        // 1% (each change re-times the queue).
        if (d.ceiling != d.applied_ceiling || d.rate < d.applied || d.rate >= d.applied * 1.01 ||
            (d.rate == d.ceiling.rate && d.applied != d.rate)) {
          d.applied = d.rate;
          d.applied_ceiling = d.ceiling;
          new_limit[i] = Limit{d.ceiling.capacity, d.rate};
        }
      }
    }
    for (std::size_t i = 0; i < set_.size(); ++i) {
      if (new_limit[i]) set_.set_limit(i, *new_limit[i]);
      if (!remaining[i]) continue;
      double left = *remaining[i];
      if (dims_[i].counted == Counted::as_produced) left = std::max(0.0, left - set_.in_flight(i));
      if (hold[i]) set_.limit_remaining(i, left, *hold[i], window[i]);
      else set_.limit_remaining(i, left);
    }
    if (pause) set_.pause_for(*pause);
    return verdict;
  }

  /// `on_response` with the headers read through `header(name)` (see
  /// parse_upstream_limits), absolute resets read against `now`.
  template <class HeaderFn>
    requires std::is_invocable_v<HeaderFn&, std::string_view>
  UpstreamVerdict on_response(int status, HeaderFn&& header, std::chrono::system_clock::time_point now,
                              std::string_view error_code = {}) {
    return on_response(status, parse_upstream_limits(std::forward<HeaderFn>(header), now), error_code);
  }
  /// ... against `Options::wall_clock`.
  template <class HeaderFn>
    requires std::is_invocable_v<HeaderFn&, std::string_view>
  UpstreamVerdict on_response(int status, HeaderFn&& header, std::string_view error_code = {}) {
    return on_response(status, std::forward<HeaderFn>(header), options_.wall_clock(), error_code);
  }

  /// Completes one upstream call in the one correct order: settles `permit`
  /// at `actual` (what the provider counted: the usage, or for a refused call
  /// what it still counts, such as the request), then applies the answer.
  /// Settling first matters: a provider's `remaining` already counts this
  /// call's real usage, so a refund applied after the correction would lift
  /// the level above what the provider said is left. Returns the verdict.
  UpstreamVerdict complete(Permit<cost_type>& permit, const cost_type& actual, int status, const UpstreamLimits& headers,
                           std::string_view error_code = {}) {
    if (!permit.settled()) permit.settle(actual);
    return on_response(status, headers, error_code);
  }
  /// `complete` with the headers read through `header(name)`, resets against `Options::wall_clock`.
  template <class HeaderFn>
    requires std::is_invocable_v<HeaderFn&, std::string_view>
  UpstreamVerdict complete(Permit<cost_type>& permit, const cost_type& actual, int status, HeaderFn&& header,
                           std::string_view error_code = {}) {
    return complete(permit, actual, status, parse_upstream_limits(std::forward<HeaderFn>(header), options_.wall_clock()),
                    error_code);
  }

  /// The dimension header family `f` feeds, if any.
  std::optional<std::size_t> bound(HeaderFamily f) const noexcept {
    for (std::size_t i = 0; i < set_.size(); ++i)
      if (dims_[i].field == field_of(f)) return i;
    return std::nullopt;
  }

  /// The current refill rate of dimension `i` (the adaptive one, or the ceiling).
  double rate(std::size_t i) const {
    std::lock_guard lock(mutex_);
    return dims_.at(i).rate;
  }
  /// How dimension `i`'s provider refills, as its headers have shown so far.
  Refill refill(std::size_t i) const {
    std::lock_guard lock(mutex_);
    return dims_.at(i).refill;
  }
  /// The ceiling of dimension `i`: its configured limit, or less if the provider said so.
  Limit ceiling(std::size_t i) const {
    std::lock_guard lock(mutex_);
    return dims_.at(i).ceiling;
  }

 private:
  static UpstreamDimension UpstreamLimits::*field_of(HeaderFamily f) noexcept {
    switch (f) {
      case HeaderFamily::requests: return &UpstreamLimits::requests;
      case HeaderFamily::tokens: return &UpstreamLimits::tokens;
      case HeaderFamily::input_tokens: return &UpstreamLimits::input_tokens;
      case HeaderFamily::output_tokens: return &UpstreamLimits::output_tokens;
    }
    return nullptr;
  }
  static constexpr std::array<std::pair<HeaderFamily, std::string_view>, 4> kFamilyNames{
      {{HeaderFamily::requests, "requests"},
       {HeaderFamily::tokens, "tokens"},
       {HeaderFamily::input_tokens, "input_tokens"},
       {HeaderFamily::output_tokens, "output_tokens"}}};

  // Binds header families to dimensions (see the class comment).
  void bind() {
    std::vector<HeaderBinding> bindings = options_.bindings;
    const bool by_name = bindings.empty();
    if (by_name)
      for (const auto& [family, name] : kFamilyNames)
        for (std::size_t i = 0; i < set_.size(); ++i)
          if (set_.name(i) == name)
            bindings.push_back({family, std::string(name),
                                family == HeaderFamily::output_tokens ? Counted::as_produced : Counted::at_admission});
    if (bindings.empty())
      throw std::invalid_argument(
          "UpstreamFeedback: no dimension of the set is bound to a header family (name one \"requests\", "
          "\"tokens\", \"input_tokens\" or \"output_tokens\", or give Options::bindings)");
    for (const HeaderBinding& b : bindings) {
      std::size_t i = 0;
      while (i < set_.size() && set_.name(i) != b.dimension) ++i;
      if (i == set_.size())
        throw std::invalid_argument("UpstreamFeedback: a header binding names dimension \"" + b.dimension +
                                    "\", which the set does not have");
      if (dims_[i].field) throw std::invalid_argument("UpstreamFeedback: dimension \"" + b.dimension + "\" bound twice");
      for (std::size_t j = 0; j < set_.size(); ++j)
        if (dims_[j].field == field_of(b.family))
          throw std::invalid_argument("UpstreamFeedback: a header family is bound to two dimensions (\"" +
                                      set_.name(j) + "\" and \"" + b.dimension + "\")");
      dims_[i].field = field_of(b.family);
      dims_[i].counted = b.counted;
      if (!(b.limit_period > std::chrono::nanoseconds(0)))
        throw std::invalid_argument("UpstreamFeedback: the binding of dimension \"" + b.dimension +
                                    "\" has a limit_period that is not positive");
      dims_[i].limit_period = b.limit_period;
    }
  }

  // A continuous bucket of limit L per period P is full at its reset:
  // remaining + reset * L / P = L, on every answer (within 1% and a second's
  // refill: resets come rounded up to the second or the millisecond). A fixed
  // window is full at its reset whatever it had left, so its answers miss
  // that (except around one instant per window). Answers that all fit a bucket for a tenth of the
  // period show a continuous provider; one that falls short, a windowed one.
  template <class TimePoint>
  Refill learn_refill(auto& d, TimePoint now, double remaining, std::chrono::nanoseconds reset,
                      std::optional<double> limit) {
    const double period = std::chrono::duration<double>(d.limit_period).count();
    const double full = limit && *limit > 0 ? *limit : d.ceiling.rate * period;
    const double rate = full / period;
    const double at_reset = remaining + rate * std::chrono::duration<double>(reset).count();
    const double tolerance = full * 0.01 + rate;
    // A bucket in debt (output produced past it) says 0 left and a reset later than a full refill.
    if (remaining <= 0 ? at_reset < full - tolerance : std::abs(at_reset - full) > tolerance) {
      d.refill = Refill::windowed;
      d.consistent = false;
    } else if (!d.consistent) {
      d.consistent = true;
      d.consistent_since = now;
    } else if (now - d.consistent_since >= d.limit_period / 10) {
      d.refill = Refill::continuous;
    }
    return d.refill;
  }

  // A windowed provider's window length: an answer whose reset is later than
  // the current window's end starts a new window, and the gap between the
  // two ends is the length (the smallest seen). Zero until known.
  template <class TimePoint>
  std::chrono::nanoseconds learn_window(auto& d, TimePoint now, std::chrono::nanoseconds reset) {
    const TimePoint end = now + std::chrono::duration_cast<typename TimePoint::duration>(reset);
    const auto tolerance = std::max<std::chrono::nanoseconds>(std::chrono::milliseconds(1), reset / 100);
    if (!d.window_seen || end > d.window_end + tolerance) {
      if (d.window_seen) {
        const auto length = std::chrono::duration_cast<std::chrono::nanoseconds>(end - d.window_end);
        if (d.window_length == std::chrono::nanoseconds(0) || length < d.window_length) d.window_length = length;
      }
      d.window_seen = true;
      d.window_end = end;
    }
    return d.window_length;
  }

  struct Dim {
    Limit configured, ceiling, applied_ceiling;
    Refill refill = Refill::unknown;
    typename Clock::time_point cut_until{};  // rate-limit refusals before this are the episode already cut for
    bool window_seen = false;
    typename Clock::time_point window_end{};
    std::chrono::nanoseconds window_length{0};
    bool consistent = false;  // every answer since `consistent_since` fits a continuous bucket
    typename Clock::time_point consistent_since{};
    double rate = 0;     // the adaptive rate
    double applied = 0;  // the rate last given to the set
    UpstreamDimension UpstreamLimits::*field = nullptr;
    Counted counted = Counted::at_admission;
    std::chrono::nanoseconds limit_period = std::chrono::minutes(1);
  };

  Set& set_;
  Options options_;
  std::array<Dim, max_dimensions> dims_{};
  typename Clock::time_point last_ramp_{};
  mutable std::mutex mutex_;
};

}  // namespace tollgate
