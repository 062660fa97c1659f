#!/usr/bin/env bash
# What signing costs: `kmpack build --no-cache` of a Debian *-dkms source (default gost-crypto,
# six modules) against every installed header tree, unsigned and signed (a kmpack keygen key),
# alternately ROUNDS times, side by side with dkms build, which signs every module with its MOK
# key (Debian's default); and a no-change rebuild, where signed output re-signs cached modules.
#
# Usage: scripts/bench-sign.sh [PACKAGE] [ROUNDS]   (default: gost-crypto-dkms 2)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cache=$(bash scripts/testdata.sh 2>/dev/null | tail -1)
export PATH=/usr/local/go/bin:$PATH
go build -o out/kmpack ./cmd/kmpack
kmpack=$PWD/out/kmpack
pkg=${1:-gost-crypto-dkms}
rounds=${2:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }

deb=$(ls "$cache"/debs/"${pkg}"_*.deb | tail -1)
dpkg-deb -x "$deb" "$work/unpacked"
src=$(ls -d "$work"/unpacked/usr/src/*)
name=$(bash -c ". '$src/dkms.conf' >/dev/null 2>&1; echo \$PACKAGE_NAME")
ver=$(bash -c ". '$src/dkms.conf' >/dev/null 2>&1; echo \$PACKAGE_VERSION")
"$kmpack" keygen --out "$work/key" --cn "kmpack bench key" >/dev/null
mapfile -t trees < <("$kmpack" kernels --dirs)
kargs=()
for t in "${trees[@]}"; do kargs+=(-k "$t"); done
jobs=$(nproc)
sign=(--sign-key "$work/key/kmpack-signing.key" --sign-cert "$work/key/kmpack-signing.crt")

build() { # label, extra args...
  local label=$1; shift
  local t0 t1
  t0=$(now)
  "$kmpack" --cache-dir "$work/cache" build -q --jobs "$jobs" -o "$work/out-$label" "${kargs[@]}" "$@" "$src" >/dev/null 2>&1 || true
  t1=$(now)
  echo "$t1 - $t0" | bc
}

printf '%s: %s kernels, %d CPUs, %d rounds\n\n' "$pkg" "${#trees[@]}" "$jobs" "$rounds"
unsigned=0 signed=0
for ((r = 1; r <= rounds; r++)); do
  u=$(build unsigned --no-cache)
  s=$(build signed --no-cache "${sign[@]}")
  printf 'round %d: unsigned %6.1f s   signed %6.1f s\n' "$r" "$u" "$s"
  unsigned=$(echo "$unsigned + $u" | bc); signed=$(echo "$signed + $s" | bc)
done
nu=$(build unsigned)
ns=$(build signed "${sign[@]}")
mods=$(ls "$work"/out-signed/modules/*/*.ko* | wc -l)
"$kmpack" verify --cert "$work/key/kmpack-signing.crt" "$work"/out-signed/modules/*/*.ko* >/dev/null

mkdir -p "$work/dkms-source" "$work/dkms-tree"
cp -a "$src" "$work/dkms-source/$name-$ver"
t0=$(now)
for t in "${trees[@]}"; do
  k=$("$kmpack" kernels --json "$t" | sed -n 's/.*"release": "\(.*\)",/\1/p' | head -1)
  dkms build --dkmstree "$work/dkms-tree" --sourcetree "$work/dkms-source" -m "$name" -v "$ver" -k "$k" >/dev/null 2>&1 || true
done
t1=$(now)
echo
awk -v u="$unsigned" -v s="$signed" -v r="$rounds" -v nu="$nu" -v ns="$ns" -v m="$mods" -v d="$(echo "$t1 - $t0" | bc)" 'BEGIN {
  printf "kmpack build, mean of %d:  unsigned %.1f s, signed %.1f s: signing adds %+.1f%% (%d modules signed, verified)\n", r, u / r, s / r, 100 * (s - u) / u, m
  printf "no-change rebuild:          unsigned %.2f s, signed %.2f s (cached modules re-signed)\n", nu, ns
  printf "dkms build (signs with its MOK key), one kernel after another: %.1f s\n", d
}'
