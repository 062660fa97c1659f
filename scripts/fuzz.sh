#!/usr/bin/env bash
# Runs every Go fuzz target of the repository, one after another: scripts/fuzz.sh [DURATION]
#
#   DURATION        -fuzztime per target (default 3m; "10x" style counts work too)
#   FUZZ_PARALLEL   fuzzing workers per target (default 1, so it can run beside other work)
#   FUZZ_TARGETS    optional regexp: only targets whose name matches
#   FUZZ_LOG_DIR    where each target's full output goes (default: a new directory under /tmp)
#
# Targets are found by grepping every *_test.go for `func FuzzXxx(`, each run in its own package.
# A failing target does not stop the others. One summary line per target (target, package,
# executions, new interesting inputs, result) is printed at the end, and the exit status is 1 if
# any target failed. Crashers land in <package>/testdata/fuzz/<target>/ and then run as regression
# tests in `go test`; keep them (git add) once fixed.
#
# KMPACK_PANIC=1 makes kmp.Guard re-panic instead of turning a parser panic into an error, so
# an out-of-bounds index is a crash the fuzzer reports (the targets set it themselves as well).
# -fuzzminimizetime is bounded because minimizing each new 20 KB module input for the default
# 60 s leaves the module targets at almost no executions per second.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
export KMPACK_PANIC=1
time=${1:-3m}
parallel=${FUZZ_PARALLEL:-1}
filter=${FUZZ_TARGETS:-.}
logdir=${FUZZ_LOG_DIR:-$(mktemp -d /tmp/kmpack-fuzz.XXXXXX)}
mkdir -p "$logdir"

# "pkgdir target" pairs, sorted, from every test file outside testdata and vendor.
mapfile -t targets < <(
  grep -rHo --include='*_test.go' --exclude-dir=testdata --exclude-dir=vendor --exclude-dir=.git \
    '^func Fuzz[A-Za-z0-9_]*(' . |
    sed -E 's|^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\($|\1 \2|' | sort -u
)
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz.sh: no fuzz targets found" >&2
  exit 1
fi

summary=()
failed=0
for entry in "${targets[@]}"; do
  pkg=${entry% *}
  target=${entry#* }
  [[ $target =~ $filter ]] || continue
  log="$logdir/$target.log"
  echo "== $target ($pkg, $time, -parallel $parallel) log: $log"
  start=$SECONDS
  go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$time" -parallel "$parallel" \
    -fuzzminimizetime 10x >"$log" 2>&1
  rc=$?
  secs=$((SECONDS - start))
  # The fuzzer's last progress line: "fuzz: elapsed: 2m0s, execs: 123 (1/sec), new interesting: 4 (total: 9)"
  last=$(grep -E '^fuzz: elapsed: .*execs: ' "$log" | tail -n 1)
  execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
  interesting=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
  if [ $rc -eq 0 ]; then
    result=PASS
  else
    result=FAIL
    failed=1
    crasher=$(sed -nE 's/.*Failing input written to (.*)$/\1/p' "$log" | tail -n 1)
    [ -n "$crasher" ] && result="FAIL (input: $pkg/${crasher})"
    # The failure itself: the first error or panic lines.
    grep -m 8 -E 'panic:|--- FAIL|fuzz_test\.go:[0-9]+:|_test\.go:[0-9]+:|error:|hung|terminated' "$log" | sed 's/^/    /'
  fi
  line=$(printf '%-24s %-14s %6ss  execs %-10s new interesting %-5s %s' \
    "$target" "$pkg" "$secs" "${execs:-?}" "${interesting:-?}" "$result")
  echo "$line"
  summary+=("$line")
done

echo
echo "== summary (logs in $logdir)"
printf '%s\n' "${summary[@]}"
exit $failed
