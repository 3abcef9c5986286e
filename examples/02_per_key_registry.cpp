// 02_per_key_registry: one bucket per API key; a noisy neighbour drains only
// its own bucket, and tiers give some keys more.
#include <tollgate/tollgate.hpp>

#include <cstdio>
#include <string>
#include <string_view>

// [registry]
tollgate::BucketRegistry<> limits({
    .default_limit = tollgate::Limit::per_minute(60, 10),  // 1/s, bursts of 10
    .policy = [](const std::string& key) {                 // tiers, decided once per key
      return key.starts_with("pro-") ? tollgate::Limit::per_minute(600, 50)
                                     : tollgate::Limit::per_minute(60, 10);
    },
    .max_keys = 100'000,  // beyond: new keys share one overflow bucket
});

bool allowed(std::string_view api_key) {  // no allocation once the key exists
  return limits.try_acquire(api_key).ok();
}
// [registry]

int main() {
  int noisy = 0, quiet = 0, pro = 0;
  for (int i = 0; i < 100; ++i) noisy += allowed("free-noisy");
  for (int i = 0; i < 5; ++i) quiet += allowed("free-quiet");
  for (int i = 0; i < 100; ++i) pro += allowed("pro-team");
  std::printf("noisy key: %d/100 admitted, quiet key: %d/5 admitted, pro key: %d/100 admitted\n", noisy,
              quiet, pro);
  std::printf("keys held: %zu\n", limits.size());
  return noisy == 10 && quiet == 5 && pro == 50 ? 0 : 1;
}
