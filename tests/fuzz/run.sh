#!/usr/bin/env bash
# Builds the libFuzzer harnesses (preset "fuzz": clang, ASan + UBSan) and runs
# each for SECONDS (default 60), in parallel, starting from the committed
# corpus. Prints executions and exec/s; exits non-zero if any harness found a
# failure (the crashing input is left in build/fuzz/artifacts/).
#   usage: tests/fuzz/run.sh [SECONDS]
set -euo pipefail
seconds=${1:-60}
cd "$(dirname "$0")/../.."
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
mkdir -p build/fuzz/artifacts
pids=()
for h in fuzz_bucket fuzz_registry fuzz_headers; do
  work=build/fuzz/corpus-$h
  rm -rf "$work" && mkdir -p "$work" && cp tests/fuzz/corpus/$h/* "$work"/
  build/fuzz/tests/$h "$work" -max_total_time="$seconds" -max_len=2048 -print_final_stats=1 \
    -artifact_prefix=build/fuzz/artifacts/$h- >build/fuzz/$h.log 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for h in fuzz_bucket fuzz_registry fuzz_headers; do
  runs=$(grep -E '^stat::number_of_executed_units' build/fuzz/$h.log | awk '{print $2}')
  rate=$(grep -E '^stat::average_exec_per_sec' build/fuzz/$h.log | awk '{print $2}')
  echo "$h: ${runs:-?} executions in ${seconds} s (${rate:-?} exec/s)"
  if grep -qE 'invariant broken|ERROR:' build/fuzz/$h.log; then
    grep -E 'invariant broken|ERROR:' build/fuzz/$h.log | head -5
    status=1
  fi
done
exit $status
