#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (idempotently) and runs every test against real kernel
# trees, real modules and kmod's own tools. This is what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH=/usr/local/go/bin:$PATH
export KMPACK_TESTDATA=$(bash scripts/testdata.sh | tail -n1)
go vet ./...
# Parsers of untrusted bytes stay pure and portable: no os/exec in their packages, and they build for another OS.
for p in ./kmp/ident ./kmp/module ./kmp/kernel ./kmp/unpack ./kmp/manifest; do
  if go list -deps "$p" | grep -qx 'os/exec'; then
    echo "$p must not depend on os/exec" >&2
    exit 1
  fi
done
GOOS=darwin go build ./kmp/ident ./kmp/module
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt needed:" $unformatted >&2
  exit 1
fi
# The tests run as root next to real kernels and a real dkms: they must leave the host's module
# and source trees as they found them (packages are unpacked, installed and built in roots of
# their own). Names are compared, before and after.
host_trees() { find /lib/modules /usr/src /var/lib/dkms -mindepth 1 2>/dev/null | sort; }
host_before=$(host_trees)
go test -count=1 -timeout 40m $(go list ./... | grep -v '/e2e$') 2>&1 | tee /tmp/kmpack-test.log
# The end-to-end suite last, alone (it boots two kernels under qemu), printing its table.
bash scripts/e2e.sh 2>&1 | tee -a /tmp/kmpack-test.log
if [ "$(host_trees)" != "$host_before" ]; then
  echo "the tests changed the host's /lib/modules, /usr/src or /var/lib/dkms:" >&2
  diff <(echo "$host_before") <(host_trees) >&2 || true
  exit 1
fi
