#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (idempotently), builds kmpack and runs it on the bundled
# example module (testdata/modules/hello): describe every installed kernel devel tree, build the
# module against each, and inspect what was built.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH=/usr/local/go/bin:$PATH
mkdir -p out
go build -o out/kmpack ./cmd/kmpack
./out/kmpack kernels
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for tree in $(./out/kmpack kernels --dirs); do
  rel=$(basename "$tree")
  cp -r testdata/modules/hello "$work/$rel"
  make -s -C "$tree" M="$work/$rel" modules >/dev/null
  echo
  ./out/kmpack inspect "$work/$rel/kmpack_hello.ko"
done
