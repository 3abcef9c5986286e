#pragma once
// What every fuzz harness shares: reading the input, failing loudly.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace tgfuzz {

/// Aborts (libFuzzer records the input) with a description of the broken invariant.
[[noreturn]] inline void fail(const char* what, long a = 0, long b = 0) {
  std::fprintf(stderr, "fuzz: invariant broken: %s (%ld, %ld)\n", what, a, b);
  std::abort();
}

/// Reads the input a byte at a time; zeros once it runs out.
struct Reader {
  const std::uint8_t* p;
  std::size_t n;
  std::uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
};

}  // namespace tgfuzz
