#pragma once
// Parsers for the rate-limit headers LLM providers send back, and formatters
// for the headers a gateway sends with its own refusals. Every parser treats
// its input as hostile: malformed, negative, missing or absurd values yield
// std::nullopt or are clamped to a documented cap; none is undefined behaviour.

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "limit.hpp"

namespace tollgate {

/// The longest wait any parser here returns: one day. A provider asking for
/// more (a Retry-After of 10^12 seconds) is clamped to it, never believed.
inline constexpr std::chrono::nanoseconds max_upstream_wait = std::chrono::hours(24);

namespace detail {

inline std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

inline bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

// A non-negative decimal number ("12", "8.64", ".5"); the whole input must be
// consumed. At most 18 integer digits: nothing here needs more.
inline std::optional<double> parse_decimal(std::string_view s) noexcept {
  if (s.empty() || s.size() > 40) return std::nullopt;
  double whole = 0, frac = 0, scale = 1;
  std::size_t i = 0, digits = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i, ++digits) {
    if (digits == 18) return std::nullopt;
    whole = whole * 10 + (s[i] - '0');
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    std::size_t fdigits = 0;
    for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i, ++fdigits) {
      if (fdigits < 18) {
        scale /= 10;
        frac += (s[i] - '0') * scale;
      }
    }
    digits += fdigits;
  }
  if (i != s.size() || digits == 0) return std::nullopt;
  return whole + frac;
}

// Seconds (double, >= 0) to a clamped, rounded-up duration.
inline std::chrono::nanoseconds seconds_up(double seconds) noexcept {
  if (!(seconds > 0)) return std::chrono::nanoseconds(0);
  const double max_s = std::chrono::duration<double>(max_upstream_wait).count();
  if (seconds >= max_s) return max_upstream_wait;
  return std::chrono::ceil<std::chrono::nanoseconds>(std::chrono::duration<double>(seconds));
}

// A double as a whole number for a header, clamped to [0, 10^15].
inline long long header_int(double v) noexcept {
  if (!(v > 0)) return 0;
  return v >= 1e15 ? 1'000'000'000'000'000LL : static_cast<long long>(v);
}

inline std::optional<int> month_of(std::string_view m) noexcept {
  static constexpr std::array<std::string_view, 12> names = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                             "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  for (std::size_t i = 0; i < names.size(); ++i)
    if (iequals(m, names[i])) return static_cast<int>(i) + 1;
  return std::nullopt;
}

inline std::optional<int> fixed_int(std::string_view s) noexcept {
  if (s.empty() || s.size() > 9) return std::nullopt;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

inline std::optional<std::chrono::sys_seconds> make_time(int y, int mo, int d, int h, int mi, int s) noexcept {
  using namespace std::chrono;
  if (y < 1970 || y > 9999 || h > 23 || mi > 59 || s > 60) return std::nullopt;
  const year_month_day ymd{year(y), month(static_cast<unsigned>(mo)), day(static_cast<unsigned>(d))};
  if (!ymd.ok()) return std::nullopt;
  return sys_days(ymd) + hours(h) + minutes(mi) + seconds(std::min(s, 59));
}

// "08:49:37"
inline bool parse_hms(std::string_view t, int& h, int& mi, int& s) noexcept {
  if (t.size() != 8 || t[2] != ':' || t[5] != ':') return false;
  auto hh = fixed_int(t.substr(0, 2)), mm = fixed_int(t.substr(3, 2)), ss = fixed_int(t.substr(6, 2));
  if (!hh || !mm || !ss) return false;
  h = *hh, mi = *mm, s = *ss;
  return true;
}

}  // namespace detail

/// Parses an HTTP-date (RFC 9110 §5.6.7): IMF-fixdate "Sun, 06 Nov 1994
/// 08:49:37 GMT", the obsolete RFC 850 form "Sunday, 06-Nov-94 08:49:37 GMT"
/// and asctime "Sun Nov  6 08:49:37 1994". Returns nullopt for anything else.
inline std::optional<std::chrono::sys_seconds> parse_http_date(std::string_view v) noexcept {
  v = detail::trim(v);
  int h = 0, mi = 0, s = 0;
  const std::size_t comma = v.find(',');
  if (comma != std::string_view::npos) {
    std::string_view rest = detail::trim(v.substr(comma + 1));
    if (rest.size() == 24 && rest[2] == ' ' && rest[6] == ' ' && rest[11] == ' ' && rest.substr(20) == " GMT") {
      // IMF-fixdate: "06 Nov 1994 08:49:37 GMT"
      auto d = detail::fixed_int(rest.substr(0, 2));
      auto mo = detail::month_of(rest.substr(3, 3));
      auto y = detail::fixed_int(rest.substr(7, 4));
      if (!d || !mo || !y || !detail::parse_hms(rest.substr(12, 8), h, mi, s)) return std::nullopt;
      return detail::make_time(*y, *mo, *d, h, mi, s);
    }
    if (rest.size() == 22 && rest[2] == '-' && rest[6] == '-' && rest[9] == ' ' && rest.substr(18) == " GMT") {
      // RFC 850: "06-Nov-94 08:49:37 GMT"; two-digit years: 70..99 -> 19xx
      auto d = detail::fixed_int(rest.substr(0, 2));
      auto mo = detail::month_of(rest.substr(3, 3));
      auto yy = detail::fixed_int(rest.substr(7, 2));
      if (!d || !mo || !yy || !detail::parse_hms(rest.substr(10, 8), h, mi, s)) return std::nullopt;
      return detail::make_time(*yy < 70 ? 2000 + *yy : 1900 + *yy, *mo, *d, h, mi, s);
    }
    return std::nullopt;
  }
  // asctime: "Sun Nov  6 08:49:37 1994"
  if (v.size() == 24 && v[3] == ' ' && v[7] == ' ' && v[10] == ' ' && v[19] == ' ') {
    auto mo = detail::month_of(v.substr(4, 3));
    std::string_view dd = v.substr(8, 2);
    if (dd[0] == ' ') dd.remove_prefix(1);
    auto d = detail::fixed_int(dd);
    auto y = detail::fixed_int(v.substr(20, 4));
    if (!d || !mo || !y || !detail::parse_hms(v.substr(11, 8), h, mi, s)) return std::nullopt;
    return detail::make_time(*y, *mo, *d, h, mi, s);
  }
  return std::nullopt;
}

/// Parses an RFC 3339 timestamp ("2024-05-01T12:00:03Z",
/// "2024-05-01T12:00:03.25+02:00"), as Anthropic's `*-reset` headers carry.
/// Fractions are rounded up to the nanosecond.
inline std::optional<std::chrono::sys_time<std::chrono::nanoseconds>> parse_rfc3339(std::string_view v) noexcept {
  using namespace std::chrono;
  v = detail::trim(v);
  if (v.size() < 20 || v[4] != '-' || v[7] != '-' || (v[10] != 'T' && v[10] != 't' && v[10] != ' ')) return std::nullopt;
  auto y = detail::fixed_int(v.substr(0, 4)), mo = detail::fixed_int(v.substr(5, 2)), d = detail::fixed_int(v.substr(8, 2));
  int h = 0, mi = 0, s = 0;
  if (!y || !mo || !d || *mo < 1 || *mo > 12 || !detail::parse_hms(v.substr(11, 8), h, mi, s)) return std::nullopt;
  if (*y > 2261) return std::nullopt;  // beyond 64-bit nanoseconds since 1970
  auto base = detail::make_time(*y, *mo, *d, h, mi, s);
  if (!base) return std::nullopt;
  std::string_view rest = v.substr(19);
  nanoseconds frac{0};
  if (!rest.empty() && rest[0] == '.') {
    std::size_t n = 1;
    while (n < rest.size() && rest[n] >= '0' && rest[n] <= '9') ++n;
    if (n == 1 || n > 31) return std::nullopt;
    auto f = detail::parse_decimal(rest.substr(0, n));
    if (!f) return std::nullopt;
    frac = ceil<nanoseconds>(duration<double>(*f));
    rest.remove_prefix(n);
  }
  minutes offset{0};
  if (rest == "Z" || rest == "z") {
  } else if (rest.size() == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':') {
    auto oh = detail::fixed_int(rest.substr(1, 2)), om = detail::fixed_int(rest.substr(4, 2));
    if (!oh || !om || *oh > 23 || *om > 59) return std::nullopt;
    offset = hours(*oh) + minutes(*om);
    if (rest[0] == '-') offset = -offset;
  } else {
    return std::nullopt;
  }
  return sys_time<nanoseconds>(*base) + frac - offset;
}

/// Parses a Go-style duration as OpenAI's `x-ratelimit-reset-*` headers carry
/// it: "6m0s", "1s", "20ms", "8.64s", "1h2m3.5s", "250us", "0s". Rounded up
/// to the nanosecond and clamped to `max_upstream_wait`.
inline std::optional<std::chrono::nanoseconds> parse_reset_duration(std::string_view v) noexcept {
  v = detail::trim(v);
  if (v.empty() || v.size() > 64) return std::nullopt;
  double seconds = 0;
  while (!v.empty()) {
    std::size_t n = 0;
    while (n < v.size() && ((v[n] >= '0' && v[n] <= '9') || v[n] == '.')) ++n;
    auto num = detail::parse_decimal(v.substr(0, n));
    if (!num) return std::nullopt;
    v.remove_prefix(n);
    std::size_t u = v.rfind("\xc2\xb5s", 0) == 0 ? 3 : 0;  // "µs" in UTF-8
    while (u < v.size() && std::isalpha(static_cast<unsigned char>(v[u]))) ++u;
    const std::string_view unit = v.substr(0, u);
    v.remove_prefix(u);
    double scale;
    if (unit == "h") scale = 3600;
    else if (unit == "m") scale = 60;
    else if (unit == "s") scale = 1;
    else if (unit == "ms") scale = 1e-3;
    else if (unit == "us" || unit == "\xc2\xb5s") scale = 1e-6;
    else if (unit == "ns") scale = 1e-9;
    else return std::nullopt;
    seconds += *num * scale;
  }
  return detail::seconds_up(seconds);
}

/// Parses `retry-after-ms` (milliseconds, possibly fractional): rounded up,
/// clamped to `max_upstream_wait`.
inline std::optional<std::chrono::nanoseconds> parse_retry_after_ms(std::string_view v) noexcept {
  auto ms = detail::parse_decimal(detail::trim(v));
  if (!ms) return std::nullopt;
  return detail::seconds_up(*ms / 1000);
}

/// Parses `Retry-After`: delta-seconds ("120") or an HTTP-date, relative to
/// `now`. A date in the past means zero. Clamped to `max_upstream_wait`.
inline std::optional<std::chrono::nanoseconds> parse_retry_after(std::string_view v,
                                                                 std::chrono::system_clock::time_point now) noexcept {
  v = detail::trim(v);
  if (auto secs = detail::parse_decimal(v)) return detail::seconds_up(*secs);
  if (auto date = parse_http_date(v)) {
    // In seconds first: a date centuries ahead does not fit in nanoseconds.
    const auto now_s = std::chrono::floor<std::chrono::seconds>(now);
    if (*date - now_s > std::chrono::duration_cast<std::chrono::seconds>(max_upstream_wait)) return max_upstream_wait;
    const auto wait = std::chrono::sys_time<std::chrono::nanoseconds>(*date) - now;
    if (wait <= std::chrono::nanoseconds(0)) return std::chrono::nanoseconds(0);
    return std::min<std::chrono::nanoseconds>(wait, max_upstream_wait);
  }
  return std::nullopt;
}

/// A non-negative whole count ("60000"), as the `*-limit` and `*-remaining`
/// headers carry. At most 10^15.
inline std::optional<double> parse_count(std::string_view v) noexcept {
  v = detail::trim(v);
  if (v.empty() || v.size() > 15) return std::nullopt;
  std::uint64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || p != v.data() + v.size()) return std::nullopt;
  return static_cast<double>(n);
}

/// One metered dimension as a provider reports it.
struct UpstreamDimension {
  std::optional<double> limit;                  ///< the quota per window
  std::optional<double> remaining;              ///< what is left now
  std::optional<std::chrono::nanoseconds> reset;  ///< until it is fully replenished
};

/// What a provider's response headers say about its limits.
struct UpstreamLimits {
  std::optional<std::chrono::nanoseconds> retry_after;  ///< from retry-after-ms, else Retry-After
  UpstreamDimension requests, tokens, input_tokens, output_tokens;
};

/// Reads OpenAI's (`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`)
/// and Anthropic's (`anthropic-ratelimit-{requests,tokens,input-tokens,
/// output-tokens}-{limit,remaining,reset}`) headers plus `retry-after-ms` and
/// `Retry-After`. `header(name)` returns a header's value, matching names
/// case-insensitively (HTTP field names are). Anything malformed is left unset.
inline UpstreamLimits parse_upstream_limits(const std::function<std::optional<std::string_view>(std::string_view)>& header,
                                            std::chrono::system_clock::time_point now) {
  UpstreamLimits out;
  if (auto v = header("retry-after-ms")) out.retry_after = parse_retry_after_ms(*v);
  if (!out.retry_after)
    if (auto v = header("retry-after")) out.retry_after = parse_retry_after(*v, now);
  struct Dim {
    UpstreamDimension* dim;
    std::string_view openai, anthropic;
  };
  const Dim dims[] = {{&out.requests, "requests", "requests"},
                      {&out.tokens, "tokens", "tokens"},
                      {&out.input_tokens, "", "input-tokens"},
                      {&out.output_tokens, "", "output-tokens"}};
  std::string name;
  for (const Dim& d : dims) {
    if (!d.openai.empty()) {
      name = "x-ratelimit-limit-";
      name += d.openai;
      if (auto v = header(name)) d.dim->limit = parse_count(*v);
      name = "x-ratelimit-remaining-";
      name += d.openai;
      if (auto v = header(name)) d.dim->remaining = parse_count(*v);
      name = "x-ratelimit-reset-";
      name += d.openai;
      if (auto v = header(name)) d.dim->reset = parse_reset_duration(*v);
    }
    const std::string prefix = "anthropic-ratelimit-" + std::string(d.anthropic) + "-";
    if (!d.dim->limit)
      if (auto v = header(prefix + "limit")) d.dim->limit = parse_count(*v);
    if (!d.dim->remaining)
      if (auto v = header(prefix + "remaining")) d.dim->remaining = parse_count(*v);
    if (!d.dim->reset)
      if (auto v = header(prefix + "reset")) {
        if (auto t = parse_rfc3339(*v)) {
          const auto wait = *t - now;
          d.dim->reset = wait <= std::chrono::nanoseconds(0) ? std::chrono::nanoseconds(0)
                                                              : std::min<std::chrono::nanoseconds>(wait, max_upstream_wait);
        }
      }
  }
  return out;
}

/// The `Retry-After` value for a refusal: whole seconds, rounded up (a client
/// retrying at that instant is never early), at least 1.
inline std::string retry_after_header(std::chrono::nanoseconds wait) {
  const auto s = std::chrono::ceil<std::chrono::seconds>(std::max(wait, std::chrono::nanoseconds(1)));
  return std::to_string(s.count());
}

/// The IETF `RateLimit-Policy` field (draft-ietf-httpapi-ratelimit-headers)
/// for a limit: `"<name>";q=<capacity>;w=<seconds to refill it>`.
inline std::string ratelimit_policy_header(std::string_view name, const Limit& limit) {
  const long long w = detail::header_int(std::ceil(limit.capacity / limit.rate));
  return "\"" + std::string(name) + "\";q=" + std::to_string(detail::header_int(limit.capacity)) +
         ";w=" + std::to_string(w);
}

/// The IETF `RateLimit` field: `"<name>";r=<remaining>;t=<seconds until retry>`,
/// remaining rounded down, the wait rounded up.
inline std::string ratelimit_header(std::string_view name, double remaining, std::chrono::nanoseconds wait) {
  const long long r = detail::header_int(std::floor(remaining));
  const auto t = std::chrono::ceil<std::chrono::seconds>(std::max(wait, std::chrono::nanoseconds(0)));
  return "\"" + std::string(name) + "\";r=" + std::to_string(r) + ";t=" + std::to_string(t.count());
}

}  // namespace tollgate
