#!/usr/bin/env bash
# Compares `kmpack build` with `dkms build` side by side, in one run, on the same module sources
# and the same kernel header trees (every tree scripts/setup.sh installs: four), and a no-change
# `kmpack build` against kmpack's first build.
#
# Usage: scripts/bench-build.sh [PACKAGE...]   (Debian *-dkms packages from scripts/testdata.sh;
#        default: acpi-call-dkms gost-crypto-dkms v4l2loopback-dkms; add jool-dkms for a large one)
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
mapfile -t trees < <("$kmpack" kernels --dirs)
kernels=()
for t in "${trees[@]}"; do kernels+=("$("$kmpack" kernels --json "$t" | sed -n 's/.*"release": "\(.*\)",/\1/p' | head -1)"); done
jobs=$(nproc)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
printf '%s kernels: %s; %d CPUs\n\n' "${#kernels[@]}" "${kernels[*]}" "$jobs"
printf '%-20s %10s %10s %8s %12s %10s\n' module "dkms (s)" "kmpack (s)" ratio "no-change (s)" "vs first"
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
  for k in "${kernels[@]}"; do
    dkms build --dkmstree "$work/$pkg/dkms-tree" --sourcetree "$work/$pkg/dkms-source" -m "$name" -v "$ver" -k "$k" \
      >"$work/$pkg/dkms-$k.log" 2>&1 || true
  done
  t1=$(now)
  "$kmpack" --cache-dir "$work/$pkg/cache" build -q --jobs "$jobs" -o "$work/$pkg/out" "$src" >/dev/null 2>&1 || true
  t2=$(now)
  "$kmpack" --cache-dir "$work/$pkg/cache" build -q --jobs "$jobs" -o "$work/$pkg/out" "$src" >/dev/null 2>&1 || true
  t3=$(now)
  awk -v p="$pkg" -v d="$(echo "$t1 - $t0" | bc)" -v k="$(echo "$t2 - $t1" | bc)" -v n="$(echo "$t3 - $t2" | bc)" \
    'BEGIN { printf "%-20s %10.1f %10.1f %7.2fx %12.2f %9.1f%%\n", p, d, k, k / d, n, 100 * n / k }'
done
echo
echo "ratio = kmpack wall time / dkms wall time (target <= 0.6x); vs first = no-change rebuild / first kmpack build (target < 5%)"
