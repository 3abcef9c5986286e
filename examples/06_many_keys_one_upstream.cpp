// 06_many_keys_one_upstream: many client keys in tiers share one provider
// quota. Each key is held to its tier's own limits, and when the provider's
// quota is the bottleneck the keys share it by their tiers' weights, not by
// how hard they push: here a "free" key floods with 24 calls at once while
// two "pro" keys (weight 3) send 8 each, and the provider allows 20 requests
// per second after a burst of 1.
#include <tollgate/tollgate.hpp>

#include <chrono>
#include <coroutine>
#include <cstdio>
#include <exception>
#include <latch>
#include <map>
#include <mutex>
#include <string>

struct Spawn {
  struct promise_type {
    Spawn get_return_object() { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() {}
    void unhandled_exception() { std::terminate(); }
  };
};

std::mutex print_mutex;
std::string order;  // who was served, in order

// [many_keys]
// The provider's quota (shared), and each tier's per-key limits and weight.
tollgate::SharedLimitSet<> upstream(
    {{"requests", tollgate::Limit::per_second(20, 1)},
     {"input_tokens", tollgate::Limit::per_minute(400'000)},
     {"output_tokens", tollgate::Limit::per_minute(80'000)}},
    {.tiers = {{"free", 1, {{"requests", tollgate::Limit::per_minute(600)}}},
               {"pro", 3, {{"requests", tollgate::Limit::per_minute(6'000)}}}},
     .tier_of = [](const std::string& key) -> std::size_t { return key.starts_with("pro-") ? 1 : 0; }});

Spawn call(std::string key, double prompt_tokens, double max_tokens, std::latch& done) {
  // The key's own limits and the shared quota, as one operation: its turn
  // among the keys, then both at one instant (nothing is held while waiting).
  const tollgate::Costs estimate{1, prompt_tokens, max_tokens};
  auto permit = co_await upstream.acquire_permit(key, estimate, std::chrono::seconds(5));
  if (permit) {
    const double output_tokens = max_tokens / 4;  // what the provider really produced
    permit.settle(tollgate::Costs{1, prompt_tokens, output_tokens});  // per dimension, key and shared
    std::lock_guard lock(print_mutex);
    order += key[0] == 'f' ? 'F' : key[4] == 'a' ? 'a' : 'b';
  } else {
    std::printf("%s refused: %s\n", key.c_str(), upstream.message(permit.result()).c_str());
  }
  done.count_down();
}
// [many_keys]

int main() {
  std::latch done(24 + 8 + 8);
  for (int i = 0; i < 24; ++i) call("free-flooder", 500, 1000, done);
  for (int i = 0; i < 8; ++i) {
    call("pro-a", 500, 1000, done);
    call("pro-b", 500, 1000, done);
  }
  done.wait();
  std::printf("served in this order (F: free-flooder, a: pro-a, b: pro-b):\n%s\n", order.c_str());
  std::map<char, int> first16;
  for (std::size_t i = 1; i < 17 && i < order.size(); ++i) ++first16[order[i]];
  std::printf("of the 16 calls after the burst: free %d, pro-a %d, pro-b %d (weights 1 : 3 : 3)\n", first16['F'],
              first16['a'], first16['b']);
  return first16['a'] >= 6 && first16['b'] >= 6 ? 0 : 1;
}
