#!/usr/bin/env bash
# Builds tollgate's core tests (the unit, conformance, registry, limit-set, reserve,
# defects and stop_token suites: everything but Asio, Redis and the gateway)
# for Windows with MinGW-w64 (x86_64, POSIX threads, static), and runs them
# under Wine. Needs g++-mingw-w64-x86-64-posix, wine64 and Catch2 2.x's
# single header (Debian's catch2).
#   usage: tests/windows/run.sh [BUILD_DIR]   (default build/mingw)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/mingw}
cxx=${MINGW_CXX:-x86_64-w64-mingw32-g++-posix}
wine=${WINE:-/usr/lib/wine/wine64}
mkdir -p "$out/inc" "$out/obj"
ln -sfn /usr/include/catch2 "$out/inc/catch2"  # the header only, not the host's other headers
flags=(-std=c++20 -O1 -Wall -Wextra -Wpedantic -Werror -Iinclude -Itests/support "-I$out/inc")
core="test_core_table test_token_bucket test_acquire test_conformance test_registry test_stress test_biased_mutex
      test_hostile test_upstream_headers test_limit_set test_upstream_feedback test_defects test_reserve test_output_estimator test_listener test_int128 test_link_a
      test_shared_limit_set test_keyed_limit_sets test_holds test_lock_free
      test_link_b"
objs=()
for t in support/catch_main $core test_stop_token; do objs+=("$t"); done
printf '%s\n' "${objs[@]}" | xargs -P 2 -I{} sh -c \
  "$cxx ${flags[*]} -c tests/{}.cpp -o $out/obj/\$(basename {}).o"
main_objs=("$out/obj/catch_main.o")
for t in $core; do main_objs+=("$out/obj/$t.o"); done
"$cxx" -static -o "$out/tollgate_tests.exe" "${main_objs[@]}"
"$cxx" -static -o "$out/tollgate_stop_token_tests.exe" "$out/obj/catch_main.o" "$out/obj/test_stop_token.o"
export WINEPREFIX="$PWD/$out/wineprefix" WINEDEBUG=-all
status=0
for exe in tollgate_tests tollgate_stop_token_tests; do
  echo "== $exe.exe under $("$wine" --version 2>/dev/null || echo wine)"
  if ! "$wine" "$out/$exe.exe" > "$out/$exe.log" 2>&1; then
    status=1
    grep -B4 -A30 -E 'FAILED|failed' "$out/$exe.log" | head -n 200 || true  # what failed, not just the count
  fi
  tail -n 3 "$out/$exe.log"
done
exit $status
