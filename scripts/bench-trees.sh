#!/usr/bin/env bash
# Prints issue 16's kernel matrix, one tree directory a line, for the bench-*.sh scripts:
# Debian 12's six amd64 ABIs of the 6.1 series, 47, 50, 53, 54, 55 and 56 (53 and 54 as
# scripts/setup.sh installs them; the others unpacked by kmpack from their .deb files, which this
# script downloads with apt-get download), plus the installed cloud, rt and 6.12 trees.
#
# Usage: scripts/bench-trees.sh KMPACK CACHE   (CACHE: the directory scripts/testdata.sh prints)
#        BENCH_TREES='DIR...' prints those trees instead.
set -euo pipefail
kmpack=$1 cache=$2
if [ -n "${BENCH_TREES:-}" ]; then
  printf '%s\n' $BENCH_TREES
  exit 0
fi
for abi in 47 50 55 56; do
  for p in linux-headers-6.1.0-$abi-amd64 linux-headers-6.1.0-$abi-common; do
    compgen -G "$cache/debs/${p}_*.deb" >/dev/null ||
      (cd "$cache/debs" && { apt-get download "$p" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$p" >/dev/null; }; })
  done
  "$kmpack" --cache-dir "$cache/bench-trees" kernels --dirs "$cache"/debs/linux-headers-6.1.0-$abi-amd64_*.deb \
    "$cache"/debs/linux-headers-6.1.0-$abi-common_*.deb "$cache"/debs/linux-kbuild-6.1_*.deb
done
"$kmpack" kernels --dirs | grep -E -- '-(53|54)-amd64$|cloud|-rt-|6\.12'
