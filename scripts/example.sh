#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (idempotently), builds kmpack and runs the main job on the
# bundled example module (testdata/modules/hello, described by its kmpack.yaml): describe every
# installed kernel devel tree, build the module against all of them in parallel and package it
# for Debian, SUSE and Red Hat, build again (nothing changed: served from the cache), and
# inspect one module and one package of each kind.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH=/usr/local/go/bin:$PATH
mkdir -p out
go build -o out/kmpack ./cmd/kmpack
./out/kmpack kernels
echo
./out/kmpack build -o out/example --profile debian,suse,rhel testdata/modules/hello
echo
./out/kmpack build -o out/example --profile debian,suse,rhel testdata/modules/hello
echo
first=$(sed -n 's/.*"file": "\(.*\)",/\1/p' out/example/manifest.json | head -1)
./out/kmpack inspect "out/example/$first"
echo
echo
deb=$(ls out/example/packages/*-modules-*.deb | head -1)
dpkg-deb --info "$deb"
echo
kmp=$(ls out/example/packages/*-kmp-*.rpm | head -1)
rpm -qp --qf '%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n' --provides --requires --supplements --enhances "$kmp"
echo
echo "modules, logs, manifest.json and packages/ are in out/example"
