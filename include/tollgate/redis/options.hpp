#pragma once
// The options of a redis::RedisLimitSet, and the Decision it reports.

#include <chrono>
#include <cstdint>
#include <functional>

#include "../costs.hpp"
#include "../result.hpp"

namespace tollgate::redis {

/// What an acquisition does when Redis cannot be reached or does not answer
/// within the connection's timeouts.
enum class OnFailure : std::uint8_t {
  fail_closed,     ///< refuse: `Status::unavailable`, the reason naming the failure
  fail_open,       ///< admit (the upstream's own limits are the last line)
  local_fallback,  ///< decide with an in-process LimitSet at `fallback_share` of each limit
};

/// What a RedisLimitSet reads when its key is missing (see RedisLimitOptions).
enum class MissingKey : std::uint8_t { full, empty };

/// How a RedisLimitSet behaves beyond its limits.
struct RedisLimitOptions {
  OnFailure on_failure = OnFailure::fail_closed;
  /// For `local_fallback`: this process's share of every limit while Redis is
  /// away (e.g. 1/replicas), in (0, 1].
  double fallback_share = 0.5;
  /// Leasing (off when empty): when this process finds no local tokens, it
  /// takes up to `lease[i]` of dimension `i` from Redis in the same round
  /// trip as the request and spends them locally for at most
  /// `lease_lifetime`; what is left is handed back on the next round trip.
  Costs lease{};
  std::chrono::milliseconds lease_lifetime{1000};
  /// The most debt a charge (or a settle's overrun) may leave per dimension,
  /// in tokens; empty: one capacity each (as LimitSet::set_max_debt).
  Costs max_debt{};
  /// What a missing key means. `full` (the default): a fresh set, and keys
  /// expire once full again, so idle sets cost nothing; but state lost by a
  /// FLUSHALL, a restart without persistence or a failover to a replica that
  /// lacks the key then reads as a full bucket: one extra burst per loss.
  /// `empty`: a missing key reads as empty at the current server time (under-
  /// rather than over-admission after a loss), and keys never expire (delete
  /// a retired set's key yourself).
  MissingKey missing_key = MissingKey::full;
  /// Tests and replays only: the instant (ns since the Unix epoch) every call
  /// sends instead of letting the script read the server's TIME. Keys then
  /// expire no sooner than 10 minutes (expiry runs on the server's clock).
  std::function<std::chrono::nanoseconds()> time_override{};
};

/// Where a decision came from.
enum class Source : std::uint8_t {
  store,      ///< the Redis script
  lease,      ///< this process's lease (no round trip)
  fallback,   ///< the local fallback set (Redis unavailable)
  fail_open,  ///< admitted without a decision (Redis unavailable, fail_open)
};

/// An AcquireResult with what only a distributed set knows.
struct Decision {
  AcquireResult result = AcquireResult::failed(Status::invalid, Reason::none);
  /// For `Source::store`: the server's instant of the grant (a reservation's
  /// due instant) or of the refusal, in ns since the Unix epoch.
  std::int64_t server_time_ns = 0;
  Source source = Source::store;
  explicit operator bool() const noexcept { return result.ok(); }
};

}  // namespace tollgate::redis
