#!/usr/bin/env bash
# The end-to-end suite: kmpack build (debian, suse, rhel profiles) of the test modules and
# Debian's v4l2loopback-dkms source for the 6.1.0-53 and -54 amd64 kernels, the debs and the
# runtime package installed with the real dpkg into a root holding both kernels, each kernel
# booted under qemu with an initramfs made from that root, and the RPMs installed with the real
# rpm and resolved with depmod and modprobe. Then the signature proof: the 6.1.0-53 kernel, booted
# by OVMF with kmpack keygen's certificate in UEFI db and module.sig_enforce=1, and through
# shim -> grub under Secure Boot with it in MokList, must refuse unsigned and untrusted builds
# and load trusted and two-signer ones. Then the arm64 rows: arm64 debs cross-built here for
# Debian's arm64 6.1.0-53 kernel, installed into a root with the arm64 53 and 54 kernels and
# booted under qemu-system-aarch64, 54's verdicts from the compat check. Prints the kernel x module
# tables (expected, observed) and fails on any disagreement. Part of scripts/test.sh (and so of CI).
# Usage: scripts/e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export PATH=/usr/local/go/bin:$PATH
export KMPACK_TESTDATA=$(bash scripts/testdata.sh | tail -n1)
go test -count=1 -timeout 15m -v -run . ./e2e
