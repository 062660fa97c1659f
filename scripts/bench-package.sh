#!/usr/bin/env bash
# What packaging costs next to building, on the bundled example (testdata/modules/hello, against
# every installed header tree: five), side by side in one run: a cold `kmpack build` (empty cache
# directory, no packaging), then `kmpack package` with every profile (debian with the runtime
# package, suse, rhel, alpine, arch) twice: with an empty package cache (the runtime binary
# stripped and compressed) and with a warm one (taken from --cache-dir/packages). The packages
# of both runs must be byte-identical. Each figure is the median of ROUNDS rounds (wall seconds;
# CPU seconds, user+sys, in brackets: on a shared machine wall times wander more).
#
# Usage: scripts/bench-package.sh [ROUNDS]   (default 3)
#        BASELINE=/path/to/other/kmpack scripts/bench-package.sh   adds that binary's packaging
#        (e.g. a build of an older commit) as a "before" column, run in the same rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export PATH=/usr/local/go/bin:$PATH
go build -o out/kmpack ./cmd/kmpack
kmpack=$PWD/out/kmpack
rounds=${1:-3}
profiles=debian,suse,rhel,alpine,arch
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Packages are dated by SOURCE_DATE_EPOCH (without it, now: no two runs would be comparable,
# and the package cache is not used).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
TIMEFORMAT='%R %U %S'

timed() { # file, command...: appends "wall cpu" of the command to file
  local file=$1; shift
  local t
  t=$({ time "$@" >/dev/null 2>"$work/stderr" ; } 2>&1) || { cat "$work/stderr" >&2; exit 1; }
  awk -v t="$t" 'BEGIN { split(t, a, " "); printf "%.3f %.3f\n", a[1], a[2] + a[3] }' >>"$file"
}

for r in $(seq "$rounds"); do
  rm -rf "$work/cache" "$work/out"
  timed "$work/build" "$kmpack" --cache-dir "$work/cache" build -q -o "$work/out" testdata/modules/hello
  timed "$work/cold" "$kmpack" --cache-dir "$work/cache" package -p "$profiles" "$work/out"
  cp "$work/out/packages/packages.json" "$work/cold.json"
  timed "$work/warm" "$kmpack" --cache-dir "$work/cache" package -p "$profiles" "$work/out"
  if ! cmp -s "$work/cold.json" "$work/out/packages/packages.json"; then
    echo "packages differ between the cold and the warm package cache" >&2
    exit 1
  fi
  if [[ -n ${BASELINE:-} ]]; then
    timed "$work/baseline" "$BASELINE" --cache-dir "$work/cache" package -p "$profiles" "$work/out"
  fi
done

median() { sort -n -k"$2" "$1" | awk -v k="$2" '{ v[NR] = $k } END { print v[int((NR + 1) / 2)] }'; }
build=$(median "$work/build" 1)
row() { # label, file
  local w c
  w=$(median "$2" 1)
  c=$(median "$2" 2)
  awk -v l="$1" -v w="$w" -v c="$c" -v b="$build" 'BEGIN { printf "%-34s %8.2f  (%5.2f)  %7.1f%%\n", l, w, c, 100 * w / b }'
}
mapfile -t trees < <("$kmpack" kernels --dirs)
printf 'kmpack-hello against %d kernels; packages: %s; %d CPUs; median of %d rounds\n\n' \
  "${#trees[@]}" "$profiles" "$(nproc)" "$rounds"
printf '%-34s %8s  %7s  %8s\n' "" "wall (s)" "(cpu)" "of build"
row "cold build (empty cache)" "$work/build"
[[ -n ${BASELINE:-} ]] && row "packaging, $(basename "$BASELINE") (before)" "$work/baseline"
row "packaging, empty package cache" "$work/cold"
row "packaging, warm package cache" "$work/warm"
echo
echo "target: packaging <= 10% of the cold build; the cold- and warm-cache packages are byte-identical"
