// fuzz_headers: every header parser on arbitrary bytes. No crash, no
// undefined behaviour (ASan + UBSan), and every result within its clamp.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <tollgate/upstream_headers.hpp>

#include "fuzz_support.hpp"

using tgfuzz::fail;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace std::chrono;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const system_clock::time_point now = sys_days(year(2024) / 5 / 1);
  auto in_clamp = [](const std::optional<nanoseconds>& d) {
    if (d && (*d < nanoseconds(0) || *d > tollgate::max_upstream_wait)) fail("wait outside [0, max_upstream_wait]");
  };
  in_clamp(tollgate::parse_reset_duration(in));
  in_clamp(tollgate::parse_retry_after_ms(in));
  in_clamp(tollgate::parse_retry_after(in, now));
  if (auto c = tollgate::parse_count(in); c && (*c < 0 || *c > 1e15)) fail("count outside [0, 1e15]");
  if (auto t = tollgate::parse_http_date(in); t && *t < sys_days(year(1970) / 1 / 1)) fail("date before 1970");
  (void)tollgate::parse_rfc3339(in);
  // The whole header set, every header holding the input.
  const auto limits = tollgate::parse_upstream_limits([&](std::string_view) { return std::optional(in); }, now);
  in_clamp(limits.retry_after);
  for (const auto* d : {&limits.requests, &limits.tokens, &limits.input_tokens, &limits.output_tokens}) in_clamp(d->reset);
  (void)tollgate::retry_after_header(nanoseconds(static_cast<std::int64_t>(size) * 1'000'003));
  return 0;
}
