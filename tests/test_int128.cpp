// The portable 128-bit integer (used where the compiler has no __int128)
// gives the same results as __int128, operation by operation, over random
// values of every magnitude (this test needs __int128 to compare with).
#include <cstdint>
#include <random>

#include <tollgate/detail/int128.hpp>

#include "catch.hpp"

#if defined(__SIZEOF_INT128__)
namespace {
__extension__ typedef __int128 ref_t;
__extension__ typedef unsigned __int128 uref_t;
using tollgate::detail::int128;

int128 of(ref_t v) {
  return int128::from_parts(static_cast<std::int64_t>(v >> 64), static_cast<std::uint64_t>(v));
}
bool same(int128 a, ref_t b) { return a == of(b); }

ref_t random_value(std::mt19937_64& rng) {
  const int bits = static_cast<int>(rng() % 127);  // magnitudes from 1 to 2^126
  ref_t v = (ref_t(rng()) << 64 | rng()) & ((ref_t(1) << bits) - 1);
  return rng() % 2 ? -v : v;
}
}  // namespace

TEST_CASE("int128: the same results as __int128", "[int128]") {
  std::mt19937_64 rng(42);
  for (int i = 0; i < 200'000; ++i) {
    const ref_t a = random_value(rng), b = random_value(rng);
    const int128 x = of(a), y = of(b);
    REQUIRE(same(x + y, a + b));
    REQUIRE(same(x - y, a - b));
    REQUIRE(same(-x, -a));
    REQUIRE(same(x * y, ref_t(static_cast<uref_t>(a) * static_cast<uref_t>(b))));
    if (b != 0) REQUIRE(same(x / y, a / b));
    const int s = static_cast<int>(rng() % 128);
    REQUIRE(same(x >> s, a >> s));
    REQUIRE(same(x << s, ref_t(static_cast<uref_t>(a) << s)));
    REQUIRE((x < y) == (a < b));
    REQUIRE((x == y) == (a == b));
    REQUIRE(static_cast<double>(x) == static_cast<double>(a));
    REQUIRE(static_cast<long double>(x) == static_cast<long double>(a));
    REQUIRE(static_cast<std::int64_t>(x) == static_cast<std::int64_t>(a));
    const long double f = static_cast<long double>(a);
    REQUIRE(same(int128(f), static_cast<ref_t>(f)));
    const double g = static_cast<double>(a) / 3;
    REQUIRE(same(int128(g), static_cast<ref_t>(g)));
    const std::int64_t n = static_cast<std::int64_t>(rng());
    REQUIRE(same(int128(n), ref_t(n)));
    REQUIRE(same(int128(static_cast<std::uint64_t>(n)), ref_t(static_cast<std::uint64_t>(n))));
  }
}
#endif
