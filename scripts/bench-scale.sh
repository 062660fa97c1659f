#!/usr/bin/env bash
# Predicts the wall time of a sharded release pipeline on a matrix no test machine holds
# (issue 17: 3 distros x 40 kernels x 2 architectures = 240 kernels, on 20 runners), cold (an
# empty registry) and warm (every kernel in the registry), from costs measured here on real
# builds, by internal/scalesim (kmpack's own sharding, build.NewSharding).
#
# Usage: scripts/bench-scale.sh [PACKAGE]   (a Debian *-dkms package of scripts/testdata.sh;
#        default gost-crypto-dkms)   SCALE_KERNELS=240 SCALE_RUNNERS=1,5,10,20 SCALE_SETUP=90
#
# Measured here, with a real registry (Debian's docker-registry on 127.0.0.1):
# - per-kernel compile seconds (the manifest's build_seconds) and the parallelism of one runner
#   (their sum over the cold build's wall time, pushes to the registry included), building the
#   source for every installed tree (53, 54, cloud, rt, 6.12) and 55, 56, 57 from their .debs;
# - pull: a build of the same kernels with an empty local build cache and the registry warm,
#   per kernel;
# - fetch: unpacking one kernel's header packages (kmpack kernels on the .debs, fresh cache),
#   plus downloading them at SCALE_MBPS (default 40 MB/s; not measurable without the network);
# - plan: kmpack plan --ci github on the selection; release: merge, package (debian, suse,
#   rhel) and publish, per kernel.
# Assumed (a property of the CI service): SCALE_SETUP seconds per job before kmpack runs.
# The matrix's kernels take the measured costs in turn; distros' and arm64's kernels are
# assumed to cost what these amd64 Debian ones do (cross builds: issue 19).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cache=$(bash scripts/testdata.sh 2>/dev/null | tail -1)
export PATH=/usr/local/go/bin:$PATH
go build -o out/kmpack ./cmd/kmpack
kmpack=$PWD/out/kmpack
pkg=${1:-gost-crypto-dkms}
work=$(mktemp -d)
regpid=
cleanup() {
  [ -n "$regpid" ] && kill "$regpid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# The registry, as the tests run it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $work/registry}
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
regpid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
export KMPACK_CACHE_URL=oci+http://127.0.0.1:$port/bench/kmpack-cache

deb=$(ls "$cache"/debs/"${pkg}"_*.deb | tail -1)
mkdir -p "$work/unpacked"
dpkg-deb -x "$deb" "$work/unpacked"
src=$(ls -d "$work"/unpacked/usr/src/*)

# fetch: the header packages of three kernels, unpacked by kmpack into a fresh cache.
debs=()
for abi in 55 56 57; do debs+=("$cache"/debs/linux-headers-6.1.0-$abi-amd64_*.deb "$cache"/debs/linux-headers-6.1.0-$abi-common_*.deb); done
bytes=$(du -cb "${debs[@]}" | tail -1 | cut -f1)
t0=$(now)
"$kmpack" --cache-dir "$work/trees" kernels --dirs "${debs[@]}" "$cache"/debs/linux-kbuild-6.1_*.deb >/dev/null
unpack=$(echo "$(since "$t0") / 3" | bc -l)
fetch=$(echo "$unpack + $bytes / 3 / (${SCALE_MBPS:-40} * 1000000)" | bc -l)

kflags=()
while read -r t; do kflags+=(-k "$t"); done < <("$kmpack" kernels --dirs | grep -E -- '-(53|54)-amd64$|cloud|-rt-|6\.12')
while read -r t; do kflags+=(-k "$t"); done < <("$kmpack" --cache-dir "$work/trees" kernels --dirs "${debs[@]}" "$cache"/debs/linux-kbuild-6.1_*.deb)
n=$((${#kflags[@]} / 2))

t0=$(now)
"$kmpack" --cache-dir "$work/plan-cache" plan --shards 4 --ci github "${kflags[@]}" "$src" >/dev/null
plan=$(since "$t0")
# Cold: every kernel compiled and pushed; warm: another runner's empty build cache, every
# kernel pulled. Both are given the tree directories (unpacked above).
t0=$(now)
# A kernel the source does not build for (gost-crypto on 6.12) fails the run but is measured
# (and cached) all the same.
"$kmpack" --cache-dir "$work/c1" build -q "${kflags[@]}" -o "$work/cold" "$src" >/dev/null 2>&1 || [ -f "$work/cold/manifest.json" ]
wall=$(since "$t0")
t0=$(now)
"$kmpack" --cache-dir "$work/c2" build -q "${kflags[@]}" -o "$work/warm" "$src" >/dev/null 2>&1 || [ -f "$work/warm/manifest.json" ]
pull=$(echo "$(since "$t0") / $n" | bc -l)
grep -q '"cached": true' "$work/warm/manifest.json" || { echo "the warm build pulled nothing from the registry" >&2; exit 1; }
t0=$(now)
"$kmpack" merge -o "$work/merged" "$work/cold" >/dev/null
SOURCE_DATE_EPOCH=1700000000 "$kmpack" package --profile debian,suse,rhel "$work/merged" >/dev/null
"$kmpack" publish --repo "$work/repo" "$work/merged" >/dev/null
release=$(echo "$(since "$t0") / $n" | bc -l)

echo "$pkg on $n kernels, $(nproc) CPUs; kernel headers per kernel: $((bytes / 3 / 1000000)) MB (fetch = unpack $(printf %.2f "$unpack") s + download at ${SCALE_MBPS:-40} MB/s)"
go run ./internal/scalesim/cmd/scalesim -manifest "$work/cold" -wall "$wall" -pull "$pull" -fetch "$fetch" \
  -plan "$plan" -release "$release" -setup "${SCALE_SETUP:-90}" -kernels "${SCALE_KERNELS:-240}" -runners "${SCALE_RUNNERS:-1,5,10,20}"
