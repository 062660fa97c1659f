#!/usr/bin/env bash
# Compares `kmpack build` with `dkms build` side by side, in one run, on the same module sources
# and the same kernel header trees, and a no-change `kmpack build` against kmpack's first build.
#
# Usage: scripts/bench-build.sh [PACKAGE...]   (Debian *-dkms packages from scripts/testdata.sh;
#        default: acpi-call-dkms gost-crypto-dkms v4l2loopback-dkms jool-dkms)
#
# The matrix (issue 16): Debian 12's six amd64 ABIs of the 6.1 series, 47, 50, 53, 54, 55 and 56
# (53 and 54 as scripts/setup.sh installs them; the others unpacked by kmpack from their .deb
# files, which this script downloads with apt-get download, and given to dkms with
# --kernelsourcedir), plus the installed cloud, rt and 6.12 trees: nine kernels.
#        BENCH_TREES='DIR...' scripts/bench-build.sh ...  builds against these trees instead.
#        BASELINE=/path/to/kmpack scripts/bench-build.sh ...  adds that binary's no-change
#        rebuild (after a cold build of its own, untimed) as a last column, "before".
#
# Columns, each from a fresh cache directory unless said: dkms; kmpack; kmpack --compile-cache
# (cold ccache); the same again with --no-cache (every kernel rebuilt, the compile cache warm);
# kmpack --classes (its probe modules built too, cold), with how many kernels it built and served;
# a no-change kmpack build against kmpack's first (the median of five); CPU seconds (user+sys of everything each ran)
# of dkms, kmpack and kmpack --classes; kmpack's own peak resident memory (VmHWM of the kmpack
# process, sampled from /proc; make and the compilers it runs are not kmpack).
#
# dkms builds one kernel after another (it has no way to do otherwise: one shared build/ dir per
# module), with its default -j$(nproc) inserted into make; kmpack builds all kernels at once under
# --jobs $(nproc). dkms also signs each module with its MOK key (its default on Debian); kmpack does not sign.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cache=$(bash scripts/testdata.sh 2>/dev/null | tail -1)
export PATH=/usr/local/go/bin:$PATH
go build -o out/kmpack ./cmd/kmpack
kmpack=$PWD/out/kmpack

pkgs=("$@")
((${#pkgs[@]})) || pkgs=(acpi-call-dkms gost-crypto-dkms v4l2loopback-dkms jool-dkms)
matrix=$(bash scripts/bench-trees.sh "$kmpack" "$cache") || { echo "bench-build: scripts/bench-trees.sh failed" >&2; exit 1; }
mapfile -t trees <<<"$matrix"
kernels=()
for t in "${trees[@]}"; do kernels+=("$("$kmpack" --cache-dir "$cache/bench-trees" kernels --json "$t" | sed -n 's/.*"release": "\(.*\)",/\1/p' | head -1)"); done
jobs=$(nproc)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
# timed OUT CMD...: runs CMD and writes "cpu_seconds peak_kib" to OUT: cpu is user+sys of CMD
# and every child it waited for (GNU time); peak is the highest VmHWM of CMD's own process
# (the child of time), read from /proc every 0.2 s until it exits.
timed() {
  local out=$1 peak=0 pid hwm c
  shift
  /usr/bin/time -f '%U %S' -o "$out.time" "$@" >/dev/null 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for c in $(pgrep -P "$pid" || true); do
      hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$c/status" 2>/dev/null || true)
      if [ -n "$hwm" ] && [ "$hwm" -gt "$peak" ]; then peak=$hwm; fi
    done
    sleep 0.2
  done
  wait "$pid" || true
  # GNU time writes "Command exited with non-zero status N" first when the command fails.
  tail -n 1 "$out.time" | awk -v p="$peak" '{ printf "%.1f %d\n", $1 + $2, p }' >"$out"
}
# dkms_all NAME VERSION PKG: dkms build for every kernel, one after another.
dkms_all() {
  local i ksrc
  for i in "${!kernels[@]}"; do
    ksrc=()
    case "${trees[$i]}" in /usr/src/linux-headers-* | /lib/modules/*) ;; *) ksrc=(--kernelsourcedir "${trees[$i]}") ;; esac
    dkms build --dkmstree "$work/$3/dkms-tree" --sourcetree "$work/$3/dkms-source" -m "$1" -v "$2" -k "${kernels[$i]}" "${ksrc[@]}" \
      >"$work/$3/dkms-${kernels[$i]}.log" 2>&1 || true
  done
}
export -f dkms_all
export work
printf '%s kernels: %s; %d CPUs\n\n' "${#kernels[@]}" "${kernels[*]}" "$jobs"
kflags=()
for t in "${trees[@]}"; do kflags+=(-k "$t"); done
# median5 CMD...: the median wall seconds of five runs of CMD (a no-change rebuild is a few tenths
# of a second: one run says little).
median5() {
  local i s e
  for i in 1 2 3 4 5; do
    s=$(now)
    "$@" >/dev/null 2>&1 || true
    e=$(now)
    echo "$e - $s" | bc
  done | sort -n | sed -n 3p
}
printf '%-18s %8s %10s %6s %11s %6s %8s %11s %6s %6s %9s %7s %18s %8s%s\n' module "dkms (s)" "kmpack (s)" ratio "+ccache (s)" ratio "warm (s)" "classes (s)" ratio "built" \
  "no-change" "vs first" "CPU s dkms/km/cls" "peak MiB" "${BASELINE:+    before}"
for pkg in "${pkgs[@]}"; do
  deb=$(ls "$cache"/debs/"${pkg}"_*.deb | tail -1)
  mkdir -p "$work/$pkg/unpacked"
  dpkg-deb -x "$deb" "$work/$pkg/unpacked"
  src=$(ls -d "$work/$pkg"/unpacked/usr/src/*)
  name=$(bash -c ". '$src/dkms.conf' >/dev/null 2>&1; echo \$PACKAGE_NAME")
  ver=$(bash -c ". '$src/dkms.conf' >/dev/null 2>&1; echo \$PACKAGE_VERSION")
  mkdir -p "$work/$pkg/dkms-source" "$work/$pkg/dkms-tree"
  cp -a "$src" "$work/$pkg/dkms-source/$name-$ver"

  t0=$(now)
  dkms_all "$name" "$ver" "$pkg"
  t1=$(now)
  timed "$work/$pkg/kmpack.stat" "$kmpack" --cache-dir "$work/$pkg/cache" build -q --jobs "$jobs" "${kflags[@]}" -o "$work/$pkg/out" "$src"
  t2=$(now)
  # A fresh cache directory: no cached builds and a cold compile cache.
  "$kmpack" --cache-dir "$work/$pkg/cache-cc" build -q --compile-cache --jobs "$jobs" "${kflags[@]}" -o "$work/$pkg/out-cc" "$src" >/dev/null 2>&1 || true
  t3=$(now)
  "$kmpack" --cache-dir "$work/$pkg/cache-cc" build -q --compile-cache --no-cache --jobs "$jobs" "${kflags[@]}" -o "$work/$pkg/out-cc" "$src" >/dev/null 2>&1 || true
  t4=$(now)
  nochange=$(median5 "$kmpack" --cache-dir "$work/$pkg/cache" build -q --jobs "$jobs" "${kflags[@]}" -o "$work/$pkg/out" "$src")
  before=""
  if [ -n "${BASELINE:-}" ]; then
    "$BASELINE" --cache-dir "$work/$pkg/cache-before" build -q --jobs "$jobs" "${kflags[@]}" -o "$work/$pkg/out-before" "$src" >/dev/null 2>&1 || true
    before=$(median5 "$BASELINE" --cache-dir "$work/$pkg/cache-before" build -q --jobs "$jobs" "${kflags[@]}" -o "$work/$pkg/out-before" "$src")
  fi
  t5=$(now)
  timed "$work/$pkg/classes.stat" "$kmpack" --cache-dir "$work/$pkg/cache-classes" build -q --classes --jobs "$jobs" "${kflags[@]}" -o "$work/$pkg/out-classes" "$src"
  t6=$(now)
  # dkms's CPU time, measured apart (a second dkms run would not be cold; this one is its own).
  rm -rf "$work/$pkg/dkms-tree" && mkdir -p "$work/$pkg/dkms-tree"
  timed "$work/$pkg/dkms.stat" bash -c "$(declare -p kernels trees); dkms_all '$name' '$ver' '$pkg'"
  built=$(sed -n '/"summary"/,/}/p' "$work/$pkg/out-classes/manifest.json" | tr -d ' ,' |
    awk -F: '$1 == "\"built\"" { b = $2 } $1 == "\"served\"" { s = $2 } END { printf "%d+%d", b, s }')
  read -r dcpu _ <"$work/$pkg/dkms.stat"
  read -r kcpu kpeak <"$work/$pkg/kmpack.stat"
  read -r ccpu cpeak <"$work/$pkg/classes.stat"
  awk -v p="$pkg" -v d="$(echo "$t1 - $t0" | bc)" -v k="$(echo "$t2 - $t1" | bc)" -v c="$(echo "$t3 - $t2" | bc)" \
    -v w="$(echo "$t4 - $t3" | bc)" -v n="$nochange" -v bf="$before" -v cl="$(echo "$t6 - $t5" | bc)" \
    -v dc="$dcpu" -v kc="$kcpu" -v cc="$ccpu" -v kp="$kpeak" -v cp="$cpeak" -v b="$built" \
    'BEGIN { pk = kp > cp ? kp : cp; printf "%-18s %8.1f %10.1f %5.2fx %11.1f %5.2fx %8.1f %11.1f %5.2fx %6s %9.2f %6.1f%% %18s %8.0f%s\n",
      p, d, k, k / d, c, c / d, w, cl, cl / d, b, n, 100 * n / k, sprintf("%.0f/%.0f/%.0f", dc, kc, cc), pk / 1024,
      bf == "" ? "" : sprintf(" %9.2f", bf) }'
done
echo
echo "ratio = kmpack wall time / dkms wall time (issue 16's targets: full build <= 0.45x, compile reuse <= 0.3x, classes <= 0.15x);"
echo "+ccache = kmpack --compile-cache, cold; warm = the same with --no-cache after it; classes = kmpack --classes, cold;"
echo "built = kernels --classes built + kernels it served with another kernel's build; no-change = median of five no-change rebuilds;"
echo "vs first = no-change rebuild / first build${BASELINE:+; before = the no-change rebuild of $BASELINE, median of five}"
echo "(target <= 3% and < 0.3 s); peak = kmpack's own resident memory, the larger of its full and --classes builds (target < 200 MiB)"
