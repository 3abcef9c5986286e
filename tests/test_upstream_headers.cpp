// Provider rate-limit headers (OpenAI, Anthropic, Retry-After) and the
// gateway's own refusal headers: tables of inputs and exact expectations.

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <tollgate/upstream_headers.hpp>

#include "catch.hpp"

using namespace std::chrono;
using namespace std::chrono_literals;
using tollgate::max_upstream_wait;

namespace {
const system_clock::time_point kNow = sys_days(year(2024) / 5 / 1) + 12h;  // 2024-05-01T12:00:00Z
}

TEST_CASE("headers: OpenAI reset durations", "[headers]") {
  struct Row {
    const char* in;
    std::optional<nanoseconds> out;
  };
  const Row rows[] = {
      {"6m0s", 360s},
      {"1s", 1s},
      {"20ms", 20ms},
      {"8.64s", 8640ms},
      {"1h2m3.5s", 1h + 2min + 3500ms},
      {"250us", 250us},
      {"250\xc2\xb5s", 250us},
      {"0s", 0ns},
      {"0.0000000001s", 1ns},  // rounded up, never down
      {" 3s ", 3s},
      {"1000h", max_upstream_wait},  // clamped
      {"", std::nullopt},
      {"s", std::nullopt},
      {"5", std::nullopt},
      {"-1s", std::nullopt},
      {"1d", std::nullopt},
      {"1.2.3s", std::nullopt},
      {"99999999999999999999s", std::nullopt},
  };
  for (const Row& r : rows) {
    INFO("input '" << r.in << "'");
    CHECK(tollgate::parse_reset_duration(r.in) == r.out);
  }
}

TEST_CASE("headers: Retry-After and retry-after-ms", "[headers]") {
  CHECK(tollgate::parse_retry_after("120", kNow) == 120s);
  CHECK(tollgate::parse_retry_after("  7 ", kNow) == 7s);
  CHECK(tollgate::parse_retry_after("1.5", kNow) == 1500ms);
  CHECK(tollgate::parse_retry_after("1000000000000", kNow) == max_upstream_wait);  // 10^12 s: clamped
  CHECK(tollgate::parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", kNow) == 30s);
  CHECK(tollgate::parse_retry_after("Wednesday, 01-May-24 12:01:00 GMT", kNow) == 60s);
  CHECK(tollgate::parse_retry_after("Wed May  1 12:00:05 2024", kNow) == 5s);
  CHECK(tollgate::parse_retry_after("Tue, 30 Apr 2024 12:00:00 GMT", kNow) == 0s);  // past: now
  CHECK(tollgate::parse_retry_after("Wed, 01 May 2999 12:00:00 GMT", kNow) == max_upstream_wait);
  CHECK_FALSE(tollgate::parse_retry_after("-5", kNow));
  CHECK_FALSE(tollgate::parse_retry_after("soon", kNow));
  CHECK_FALSE(tollgate::parse_retry_after("Wed, 31 Feb 2024 12:00:00 GMT", kNow));  // no such day
  CHECK_FALSE(tollgate::parse_retry_after("Wed, 01 Foo 2024 12:00:00 GMT", kNow));
  CHECK_FALSE(tollgate::parse_retry_after("Wed, 01 May 2024 25:00:00 GMT", kNow));
  CHECK_FALSE(tollgate::parse_retry_after("", kNow));
  CHECK(tollgate::parse_retry_after_ms("250") == 250ms);
  CHECK(tollgate::parse_retry_after_ms("0.5") == 500us);
  CHECK(tollgate::parse_retry_after_ms("1e3") == std::nullopt);
  CHECK(tollgate::parse_retry_after_ms("99999999999") == max_upstream_wait);
}

TEST_CASE("headers: RFC 3339 resets", "[headers]") {
  using tollgate::parse_rfc3339;
  const auto base = sys_time<nanoseconds>(kNow);
  CHECK(parse_rfc3339("2024-05-01T12:00:03Z") == base + 3s);
  CHECK(parse_rfc3339("2024-05-01T12:00:03.25Z") == base + 3250ms);
  CHECK(parse_rfc3339("2024-05-01t12:00:03z") == base + 3s);
  CHECK(parse_rfc3339("2024-05-01T14:00:03+02:00") == base + 3s);
  CHECK(parse_rfc3339("2024-05-01T11:00:03-01:00") == base + 3s);
  CHECK_FALSE(parse_rfc3339("2024-05-01 12:00:03"));  // no zone
  CHECK_FALSE(parse_rfc3339("2024-13-01T12:00:03Z"));
  CHECK_FALSE(parse_rfc3339("2024-05-01T12:00:03+24:00"));
  CHECK_FALSE(parse_rfc3339("yesterday"));
}

TEST_CASE("headers: an OpenAI response and an Anthropic response", "[headers]") {
  auto lookup = [](const std::map<std::string, std::string>& h) {
    return [&h](std::string_view name) -> std::optional<std::string_view> {
      for (const auto& [k, v] : h)
        if (tollgate::detail::iequals(k, name)) return std::string_view(v);
      return std::nullopt;
    };
  };
  const std::map<std::string, std::string> openai = {
      {"X-RateLimit-Limit-Requests", "500"},     {"x-ratelimit-remaining-requests", "499"},
      {"x-ratelimit-reset-requests", "120ms"},   {"x-ratelimit-limit-tokens", "30000"},
      {"x-ratelimit-remaining-tokens", "29000"}, {"x-ratelimit-reset-tokens", "2s"},
      {"retry-after-ms", "1500"},                {"Retry-After", "2"}};
  const auto o = tollgate::parse_upstream_limits(lookup(openai), kNow);
  CHECK(o.retry_after == 1500ms);  // retry-after-ms wins: it is more precise
  CHECK(o.requests.limit == 500);
  CHECK(o.requests.remaining == 499);
  CHECK(o.requests.reset == 120ms);
  CHECK(o.tokens.remaining == 29000);
  CHECK(o.tokens.reset == 2s);
  CHECK_FALSE(o.input_tokens.limit);

  const std::map<std::string, std::string> anthropic = {
      {"anthropic-ratelimit-requests-limit", "50"},
      {"anthropic-ratelimit-requests-remaining", "0"},
      {"anthropic-ratelimit-requests-reset", "2024-05-01T12:00:20Z"},
      {"anthropic-ratelimit-input-tokens-limit", "40000"},
      {"anthropic-ratelimit-input-tokens-remaining", "-3"},  // hostile: ignored
      {"anthropic-ratelimit-output-tokens-reset", "garbage"},
      {"retry-after", "20"}};
  const auto a = tollgate::parse_upstream_limits(lookup(anthropic), kNow);
  CHECK(a.retry_after == 20s);
  CHECK(a.requests.limit == 50);
  CHECK(a.requests.remaining == 0);
  CHECK(a.requests.reset == 20s);
  CHECK(a.input_tokens.limit == 40000);
  CHECK_FALSE(a.input_tokens.remaining);
  CHECK_FALSE(a.output_tokens.reset);
}

TEST_CASE("headers: what a gateway sends with its refusals", "[headers]") {
  CHECK(tollgate::retry_after_header(1ns) == "1");  // rounded up, at least 1
  CHECK(tollgate::retry_after_header(0ns) == "1");
  CHECK(tollgate::retry_after_header(2s) == "2");
  CHECK(tollgate::retry_after_header(2001ms) == "3");
  CHECK(tollgate::ratelimit_policy_header("tokens", tollgate::Limit::per_minute(90000)) ==
        "\"tokens\";q=90000;w=60");
  CHECK(tollgate::ratelimit_header("tokens", 12.9, 1500ms) == "\"tokens\";r=12;t=2");
  CHECK(tollgate::ratelimit_header("tokens", -4, -1s) == "\"tokens\";r=0;t=0");
}
