#!/usr/bin/env bash
# Runs tollgate_redis_bench against a throwaway redis-server on 127.0.0.1.
#   usage: benchmarks/run_redis_bench.sh [BUILD_DIR] [benchmark flags...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build/release}
shift || true
dir=$(mktemp -d)
trap 'bash "$root/tests/redis/redis_server.sh" stop "$dir"; rm -rf "$dir"' EXIT
port=$(bash "$root/tests/redis/redis_server.sh" start "$dir")
TOLLGATE_REDIS_PORT=$port "$build/benchmarks/tollgate_redis_bench" "$@"
