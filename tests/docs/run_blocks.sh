#!/usr/bin/env bash
# Runs the ```sh blocks of a documentation page marked <!-- run: NAME -->, in
# order, as one bash script (set -euo pipefail) in a scratch directory, the way
# a reader pastes them into one terminal. `cmake` lines are skipped (CTest
# builds what the test needs first) and build/dev/ becomes the build tree's
# directory. Background processes the blocks start are killed at the end.
# Usage: run_blocks.sh PAGE NAME BUILD_DIR WORK_DIR [FILE=PATH ...]
# (each FILE=PATH: a symbolic link FILE to PATH in the scratch directory,
# for files the reader is told to have there)
set -euo pipefail
page=$(realpath "$1") name=$2 build=$3 work=$4
shift 4
script=$(awk -v marker="<!-- run: $name -->" '
  $0 == marker { armed = 1; next }
  armed && /^```sh$/ { inside = 1; armed = 0; next }
  inside && /^```$/ { inside = 0; next }
  inside { print }
  { armed = 0 }' "$page" | grep -v '^cmake ' | sed "s#build/dev/#$build/#g")
if [ -z "$script" ]; then
  echo "run_blocks.sh: no sh block marked '<!-- run: $name -->' in $page" >&2
  exit 1
fi
rm -rf "$work" && mkdir -p "$work" && cd "$work"
for link in "$@"; do ln -s "${link#*=}" "${link%%=*}"; done
printf '%s\n' "$script" > blocks.sh
echo "---- running the blocks of $page marked run: $name"
cat blocks.sh
echo "----"
# A session of its own, so that everything it starts can be stopped together.
setsid bash -c 'set -euo pipefail; trap "st=\$?; kill \$(jobs -p) 2>/dev/null || true; wait; exit \$st" EXIT; source ./blocks.sh' &
pid=$!
status=0
wait $pid || status=$?
pkill -s $pid 2>/dev/null || true
echo
echo "---- exit status $status"
exit $status
