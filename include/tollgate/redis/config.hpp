#pragma once
// What a RedisLimitSet's dimensions and options mean in the script's terms
// (whole nanoseconds of refill time), checked once at construction.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../limit_set.hpp"
#include "options.hpp"
#include "script_codec.hpp"

namespace tollgate::redis::detail {

struct Config {
  static constexpr std::int64_t max_tau_ns = std::int64_t{1} << 51;         // exact in the script's doubles
  static constexpr std::int64_t max_debt_limit_ns = std::int64_t{1} << 52;  // the script's range

  std::array<double, max_dimensions> capacity{};  // what one acquisition may take (lowered by leasing)
  ns_array tau{};                                 // refill time of a full dimension
  ns_array lease_iv{};                            // a lease's size
  ns_array max_debt_ns{};                         // the most debt a charge may leave

  /// Throws `std::invalid_argument` naming what is wrong (see RedisLimitSet).
  static Config of(const std::string& key, const std::vector<Dimension>& dims, const RedisLimitOptions& options) {
    Config c;
    if (key.empty()) throw std::invalid_argument("RedisLimitSet: the key is empty");
    (void)LimitSet<>(dims);  // names, count and limits, as LimitSet checks them
    if (options.on_failure == OnFailure::local_fallback &&
        !(options.fallback_share > 0 && options.fallback_share <= 1)) {
      std::ostringstream os;
      os << "RedisLimitSet: fallback_share must be in (0, 1], got " << options.fallback_share;
      throw std::invalid_argument(os.str());
    }
    if (options.lease.size() != 0) {
      if (options.lease.size() != dims.size()) {
        std::ostringstream os;
        os << "RedisLimitSet: lease has " << options.lease.size() << " amounts for " << dims.size() << " dimensions";
        throw std::invalid_argument(os.str());
      }
      if (options.lease_lifetime <= std::chrono::milliseconds::zero())
        throw std::invalid_argument("RedisLimitSet: lease_lifetime must be > 0");
    }
    const double lifetime_s = options.lease.size() != 0 ? std::chrono::duration<double>(options.lease_lifetime).count() : 0.0;
    for (std::size_t d = 0; d < dims.size(); ++d) {
      const Limit& l = dims[d].limit;
      const double cap = l.capacity - l.rate * lifetime_s;
      if (options.lease.size() != 0) {
        const double lease = options.lease[d];
        if (!(cap > 0) || !(lease >= 0 && lease <= cap)) {
          std::ostringstream os;
          os << "RedisLimitSet: dimension \"" << dims[d].name << "\": with a lease lifetime of " << lifetime_s
             << " s the capacity " << l.capacity << " leaves " << cap << " (capacity - rate * lifetime) for leases of "
             << lease << "; shorten the lifetime or lower the lease";
          throw std::invalid_argument(os.str());
        }
        c.lease_iv[d] = detail::refill_ns_down(lease, l.rate);
      }
      c.capacity[d] = cap;
      const double tau = std::ceil(cap * 1e9 / l.rate);
      if (!(tau <= double(max_tau_ns))) {
        std::ostringstream os;
        os << "RedisLimitSet: dimension \"" << dims[d].name << "\": capacity / rate = " << cap / l.rate
           << " s exceeds the Redis backend's longest refill window (2^51 ns, about 26 days)";
        throw std::invalid_argument(os.str());
      }
      c.tau[d] = static_cast<std::int64_t>(tau);
      if (options.max_debt.size() != 0) {
        if (options.max_debt.size() != dims.size())
          throw std::invalid_argument("RedisLimitSet: max_debt has " + std::to_string(options.max_debt.size()) +
                                      " values for " + std::to_string(dims.size()) + " dimensions");
        tollgate::detail::check_amount("RedisLimitSet", "max_debt", options.max_debt[d]);
        c.max_debt_ns[d] = std::min(detail::refill_ns_up(options.max_debt[d], l.rate), max_debt_limit_ns);  // the script's range
      } else {
        c.max_debt_ns[d] = c.tau[d];
      }
    }
    return c;
  }
};

}  // namespace tollgate::redis::detail
