#pragma once
// tollgate/redis.hpp: redis::RedisLimitSet, a limit set whose state lives in
// Redis (CMake target `tollgate::redis`, hiredis). The pieces, by concern:
//   redis/limit_set.hpp     the public set
//   redis/options.hpp       RedisLimitOptions, OnFailure, Decision
//   redis/operation.hpp     the asynchronous acquisition and its awaitables
//   redis/script_codec.hpp  the script's arguments and a named reply decoder
//   redis/lease.hpp         a process's lease of tokens
//   redis_connection.hpp    the pipelined hiredis connection

#include "redis/limit_set.hpp"
