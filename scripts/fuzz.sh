#!/usr/bin/env bash
# Runs every fuzz target for a while (default 3m each): scripts/fuzz.sh [DURATION]
# Crashers land in kmp/testdata/fuzz/<target>/ and then run as regression tests in `go test`.
# -fuzzminimizetime is bounded because minimizing each new 20 KB module input for the default
# 60 s leaves the module targets at almost no executions per second.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
time=${1:-3m}
for target in $(grep -ho '^func Fuzz[A-Za-z]*' kmp/*_test.go | sed 's/^func //'); do
  echo "== $target ($time)"
  go test ./kmp -run '^$' -fuzz "^${target}\$" -fuzztime "$time" -fuzzminimizetime 10x 2>&1 | tail -n 3
done
