#!/usr/bin/env bash
# Compares `kmpack build` with `dkms build` side by side, in one run, on the same module sources
# and the same kernel header trees (every tree scripts/setup.sh installs: four), and a no-change
# `kmpack build` against kmpack's first build.
#
# Usage: scripts/bench-build.sh [PACKAGE...]   (Debian *-dkms packages from scripts/testdata.sh;
#        default: acpi-call-dkms gost-crypto-dkms v4l2loopback-dkms; add jool-dkms for a large one)
#        BENCH_TREES='DIR...' scripts/bench-build.sh ...  builds against these trees instead of the
#        installed ones (e.g. trees unpacked from .debs by `kmpack kernels --dirs FILE.deb...`;
#        dkms gets --kernelsourcedir for each).
#
# Columns: dkms; kmpack; kmpack --compile-cache with a fresh (cold) ccache directory; the same
# again with --no-cache (every kernel rebuilt, the compile cache warm); a no-change kmpack build
# against kmpack's first.
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
((${#pkgs[@]})) || pkgs=(acpi-call-dkms gost-crypto-dkms v4l2loopback-dkms)
if [ -n "${BENCH_TREES:-}" ]; then
  read -r -a trees <<<"$BENCH_TREES"
else
  mapfile -t trees < <("$kmpack" kernels --dirs)
fi
kernels=()
for t in "${trees[@]}"; do kernels+=("$("$kmpack" kernels --json "$t" | sed -n 's/.*"release": "\(.*\)",/\1/p' | head -1)"); done
jobs=$(nproc)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
printf '%s kernels: %s; %d CPUs\n\n' "${#kernels[@]}" "${kernels[*]}" "$jobs"
kflags=()
for t in "${trees[@]}"; do kflags+=(-k "$t"); done
printf '%-20s %9s %11s %7s %11s %7s %11s %13s %9s\n' module "dkms (s)" "kmpack (s)" ratio "+ccache (s)" ratio "warm (s)" "no-change (s)" "vs first"
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
  for i in "${!kernels[@]}"; do
    k=${kernels[$i]}
    ksrc=()
    [ -n "${BENCH_TREES:-}" ] && ksrc=(--kernelsourcedir "${trees[$i]}")
    dkms build --dkmstree "$work/$pkg/dkms-tree" --sourcetree "$work/$pkg/dkms-source" -m "$name" -v "$ver" -k "$k" "${ksrc[@]}" \
      >"$work/$pkg/dkms-$k.log" 2>&1 || true
  done
  t1=$(now)
  "$kmpack" --cache-dir "$work/$pkg/cache" build -q --jobs "$jobs" "${kflags[@]}" -o "$work/$pkg/out" "$src" >/dev/null 2>&1 || true
  t2=$(now)
  # A fresh cache directory: no cached builds and a cold compile cache.
  "$kmpack" --cache-dir "$work/$pkg/cache-cc" build -q --compile-cache --jobs "$jobs" "${kflags[@]}" -o "$work/$pkg/out-cc" "$src" >/dev/null 2>&1 || true
  t3=$(now)
  "$kmpack" --cache-dir "$work/$pkg/cache-cc" build -q --compile-cache --no-cache --jobs "$jobs" "${kflags[@]}" -o "$work/$pkg/out-cc" "$src" >/dev/null 2>&1 || true
  t4=$(now)
  "$kmpack" --cache-dir "$work/$pkg/cache" build -q --jobs "$jobs" "${kflags[@]}" -o "$work/$pkg/out" "$src" >/dev/null 2>&1 || true
  t5=$(now)
  awk -v p="$pkg" -v d="$(echo "$t1 - $t0" | bc)" -v k="$(echo "$t2 - $t1" | bc)" -v c="$(echo "$t3 - $t2" | bc)" \
    -v w="$(echo "$t4 - $t3" | bc)" -v n="$(echo "$t5 - $t4" | bc)" \
    'BEGIN { printf "%-20s %9.1f %11.1f %6.2fx %11.1f %6.2fx %11.1f %13.2f %8.1f%%\n", p, d, k, k / d, c, c / d, w, n, 100 * n / k }'
done
echo
echo "ratio = kmpack wall time / dkms wall time (target <= 0.6x); +ccache = kmpack --compile-cache, cold;"
echo "warm = kmpack --compile-cache --no-cache after it; vs first = no-change rebuild / first kmpack build (target < 5%)"
