// Two replicas of a service share one upstream quota through Redis.
//   usage: tollgate_05_redis_shared_quota [PORT]   (redis-server on 127.0.0.1)
// Each "replica" has its own connection, as separate processes would; both
// name the same key, so they draw on one budget of 5 requests and 3,000
// tokens, refilled per minute. Without a server the set fails closed.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>

#include <tollgate/redis.hpp>

using namespace std::chrono_literals;
namespace redis = tollgate::redis;

// [redis_shared]
void share_one_quota(redis::Connection& first_conn, redis::Connection& second_conn) {
  const std::vector<tollgate::Dimension> upstream = {
      {"requests", tollgate::Limit::per_minute(5)},
      {"tokens", tollgate::Limit::per_minute(3'000)}};
  redis::RedisLimitSet<> replica_a(upstream, first_conn, "example:upstream");
  redis::RedisLimitSet<> replica_b(upstream, second_conn, "example:upstream");

  for (int i = 0; i < 3; ++i) {
    tollgate::AcquireResult a = replica_a.try_acquire({1, 800});
    tollgate::AcquireResult b = replica_b.try_acquire({1, 800});
    std::printf("A: %s\nB: %s\n", replica_a.message(a).c_str(), replica_b.message(b).c_str());
  }
  // Waiting: a reservation in Redis (FIFO across replicas), then a local sleep.
  tollgate::AcquireResult waited = replica_a.acquire_blocking({1, 500}, 30s);
  std::printf("A waited: %s\n", replica_a.message(waited).c_str());
}
// [redis_shared]

int main(int argc, char** argv) {
  redis::ConnectionOptions where;
  where.port = argc > 1 ? std::atoi(argv[1]) : 6379;
  redis::Connection first_conn(where), second_conn(where);
  (void)first_conn.command({"DEL", "example:upstream"});
  share_one_quota(first_conn, second_conn);
  return 0;
}
