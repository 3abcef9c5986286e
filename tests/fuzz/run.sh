#!/usr/bin/env bash
# Builds the libFuzzer harnesses (preset "fuzz": clang, ASan + UBSan) and runs
# each for SECONDS (default 60), in parallel, starting from the committed
# corpus (tests/fuzz/corpus/HARNESS.tar.gz). Prints executions and exec/s;
# exits non-zero if any harness found a failure (the crashing input is left
# in build/fuzz/artifacts/). With --pack, the corpus each run grew is
# minimized (libFuzzer's -merge=1) with the committed one and packed back into
# tests/fuzz/corpus/ (regression inputs, named regress*, are always kept).
#   usage: tests/fuzz/run.sh [SECONDS] [--pack]
set -euo pipefail
seconds=${1:-60}
pack=${2:-}
cd "$(dirname "$0")/../.."
harnesses="fuzz_bucket fuzz_deadlines fuzz_registry fuzz_headers"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
mkdir -p build/fuzz/artifacts
pids=()
for h in $harnesses; do
  work=build/fuzz/corpus-$h
  rm -rf "$work" && mkdir -p "$work" && tar -xzf tests/fuzz/corpus/$h.tar.gz -C "$work"
  build/fuzz/tests/$h "$work" -max_total_time="$seconds" -max_len=2048 -print_final_stats=1 \
    -artifact_prefix=build/fuzz/artifacts/$h- >build/fuzz/$h.log 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for h in $harnesses; do
  runs=$(grep -E '^stat::number_of_executed_units' build/fuzz/$h.log | awk '{print $2}')
  rate=$(grep -E '^stat::average_exec_per_sec' build/fuzz/$h.log | awk '{print $2}')
  echo "$h: ${runs:-?} executions in ${seconds} s (${rate:-?} exec/s)"
  if grep -qE 'invariant broken|ERROR:' build/fuzz/$h.log; then
    grep -E 'invariant broken|ERROR:' build/fuzz/$h.log | head -5
    status=1
  fi
done
if [ "$pack" = "--pack" ] && [ $status -eq 0 ]; then
  for h in $harnesses; do
    min=build/fuzz/min-$h old=build/fuzz/old-$h
    rm -rf "$min" "$old" && mkdir -p "$min" "$old"
    tar -xzf tests/fuzz/corpus/$h.tar.gz -C "$old"
    build/fuzz/tests/$h -merge=1 "$min" "$old" build/fuzz/corpus-$h >build/fuzz/merge-$h.log 2>&1
    cp "$old"/regress* "$min"/ 2>/dev/null || true
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -czf tests/fuzz/corpus/$h.tar.gz -C "$min" .
    echo "$h: packed $(ls "$min" | wc -l) inputs"
  done
fi
exit $status
