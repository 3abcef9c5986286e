// 04_llm_upstream: the LLM flow end to end. Limits from a provider's
// documented numbers, an estimate taken before the call, settled to the real
// usage after it, and the provider's answers (429s, rate headers) fed back.
//
// The "provider" here is a stand-in function answering like OpenAI does; see
// examples/llm_sim.cpp for a full simulated provider and tests/e2e for HTTP.
#include <tollgate/tollgate.hpp>

#include <chrono>
#include <coroutine>
#include <cstdio>
#include <exception>
#include <latch>
#include <map>
#include <optional>
#include <string>
#include <string_view>

struct Spawn {
  struct promise_type {
    Spawn get_return_object() { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() {}
    void unhandled_exception() { std::terminate(); }
  };
};

struct Usage {
  double prompt_tokens, completion_tokens;
};
struct Response {
  int status;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string error_code;
  Usage usage;
};

// A stand-in upstream: answers at once, reports its remaining quota, and
// refuses the 4th call with a 429 and retry-after-ms.
Response call_provider(int n, double prompt_tokens) {
  if (n == 3) return {429, {{"retry-after-ms", "150"}, {"x-ratelimit-remaining-requests", "0"}}, "rate_limit_exceeded", {}};
  return {200,
          {{"x-ratelimit-remaining-tokens", std::to_string(28'000 - 1'000 * n)},
           {"x-ratelimit-reset-tokens", "1.2s"}},
          "",
          {prompt_tokens, 120.0 + 40 * n}};
}

// [llm_flow]
// OpenAI's documented tier limits: 500 requests and 30,000 tokens per minute.
tollgate::LimitSet<> upstream({{"requests", tollgate::Limit::per_minute(500)},
                               {"tokens", tollgate::Limit::per_minute(30'000)}});
// 429s pause the set (waiters included), headers correct it, the rate adapts.
tollgate::UpstreamFeedback<> feedback(upstream, {.adaptive = tollgate::AdaptiveRate{}});

Spawn complete(int n, double prompt_tokens, double max_tokens, std::latch& done) {
  const tollgate::Costs estimate{1, prompt_tokens + max_tokens};  // the most this call can cost
  auto permit = co_await upstream.acquire_permit(estimate, std::chrono::seconds(5));
  if (!permit) {  // shed locally: answer 429 with upstream.message(permit.result())
    std::printf("call %d refused here: %s\n", n, upstream.message(permit.result()).c_str());
    done.count_down();
    co_return;
  }
  Response r = call_provider(n, prompt_tokens);
  auto header = [&](std::string_view name) -> std::optional<std::string_view> {
    auto it = r.headers.find(std::string(name));
    if (it == r.headers.end()) return std::nullopt;
    return std::string_view(it->second);
  };
  // What the provider counted: the usage when served (the unused part of
  // max_tokens is refunded, an overrun charged), the request alone otherwise.
  const bool served = r.status >= 200 && r.status < 300;
  const tollgate::Costs counted{1, served ? r.usage.prompt_tokens + r.usage.completion_tokens : 0};
  // Settles, then applies the answer (429s pause, headers correct): that order.
  const auto verdict = feedback.complete(permit, counted, r.status, header, r.error_code);
  std::printf("call %d: %-12s tokens now available %6.0f, rate %4.0f tokens/s\n", n,
              std::string(tollgate::to_string(verdict)).c_str(), upstream.available(1), feedback.rate(1));
  done.count_down();
}
// [llm_flow]

int main() {
  std::latch done(6);
  for (int n = 0; n < 5; ++n) complete(n, 800, 1'000, done);
  complete(5, 800, 40'000, done);  // more than a minute of tokens: refused at once, naming "tokens"
  done.wait();
}
