#!/usr/bin/env bash
# Compile time of a translation unit that includes only <tollgate/tollgate.hpp>
# against one that includes only the standard headers tollgate's headers
# include: the difference is tollgate's own share. Medians of RUNS (7).
#   usage: benchmarks/compile_cost.sh [CXX] [FLAGS...]   (default: g++ -O2)
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${1:-g++}
shift || true
flags=("$@")
[ ${#flags[@]} -eq 0 ] && flags=(-O2)
runs=${RUNS:-7}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '#include <tollgate/tollgate.hpp>\nint main() {}\n' >"$work/tollgate.cpp"
headers=$("$cxx" -std=c++20 -Iinclude -MM "$work/tollgate.cpp" | tr ' \\' '\n\n' | grep -E '^include/|/include/tollgate/')
{ grep -hoE '^#include <[a-z_/.0-9]+>' $headers | sort -u; echo 'int main() {}'; } >"$work/standard.cpp"
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
time_of() {
  for _ in $(seq "$runs"); do
    local s e
    s=$(date +%s%N)
    "$cxx" -std=c++20 "${flags[@]}" -Iinclude -c "$1" -o /dev/null
    e=$(date +%s%N)
    echo $(((e - s) / 1000000))
  done | median
}
t=$(time_of "$work/tollgate.cpp")
s=$(time_of "$work/standard.cpp")
echo "$cxx ${flags[*]}: <tollgate/tollgate.hpp> ${t} ms, its $(grep -c include "$work/standard.cpp") standard headers alone ${s} ms: tollgate's share $((t - s)) ms"
