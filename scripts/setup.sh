#!/usr/bin/env bash
# Installs everything kmpack's build, example and tests need on Debian 12, idempotently.
# Usage: scripts/setup.sh            (run as root; safe to run again)
set -euo pipefail

# Kernel header trees the tests and the example build against: two ABIs (53, 54),
# three flavors (amd64, cloud-amd64, rt-amd64) and one 6.12 series (xz-compressed modules).
KERNEL_HEADERS=(
  linux-headers-6.1.0-53-amd64
  linux-headers-6.1.0-53-cloud-amd64
  linux-headers-6.1.0-53-rt-amd64
  linux-headers-6.1.0-54-amd64
  linux-headers-6.12.117+deb12-amd64
)
# dkms is what kmpack's build is compared against (tests, scripts/bench-build.sh); rpm, dpkg,
# rpmlint and lintian judge the packages kmpack writes.
PACKAGES=(
  build-essential gcc-12 make bc kmod rpm dpkg-dev fakeroot xz-utils zstd gzip cpio
  ca-certificates git patch binutils dkms openssl rpmlint lintian "${KERNEL_HEADERS[@]}"
  # The end-to-end suite boots Debian's kernels with a busybox initramfs; the signature proof
  # boots through OVMF (UEFI firmware) with a certificate in db of a copy of its variable store.
  qemu-system-x86 busybox-static ovmf
  # kmpack build --compile-cache reuses compiles through Debian's ccache.
  ccache
  # scripts/bench-*.sh: CPU seconds (GNU time) and kmpack's peak memory (pgrep).
  time procps
  # kmpack man is checked by rendering it with man-db (groff).
  man-db groff-base
  # Build dependencies of the corpus sources compared with dkms (what their -dkms packages
  # depend on): iptables-netflow's configure and xtables-addons/west-chamber need iptables'
  # headers and binary.
  iptables libxtables-dev pkg-config
  # rpm-md repositories for the kmp/repo tests (createrepo_c writes repodata/ as dnf and zypper read it).
  createrepo-c
  # A real PKCS#11 token for the signing tests (softhsm2) and the tool that stores a
  # certificate on it (opensc's pkcs11-tool).
  softhsm2 opensc
  # kmpack status reads shim's MokList (EFI signature lists): its parser is checked against
  # lists that efitools' cert-to-efi-sig-list writes.
  efitools
  # The package managers that judge kmpack publish's repositories: apt (here already), dnf, zypper
  # and pacman install from them into test roots; gpgv checks the signed metadata.
  dnf zypper pacman-package-manager gpgv
  # The kmm profile's kmod images (OCI) are read back with skopeo, unpacked with umoci and
  # pushed to a local registry; kmpack build --cache-url's tests push to and pull from a real
  # OCI registry too: Debian's docker-registry (distribution), which each test starts on
  # 127.0.0.1 with its own configuration (not the package's own service, which systemd may
  # start on port 5000 with htpasswd auth).
  skopeo umoci docker-registry
  # actionlint (built by the tests at a pinned version) checks the run: scripts of
  # examples/ci/github-actions.yml with shellcheck; the GitLab recipe's scripts get it directly.
  shellcheck
  # Cross builds for arm64 trees: Debian's arm64 kernels were built with gcc-12 (their
  # CONFIG_CC_VERSION_TEXT), so kmpack builds their modules with aarch64-linux-gnu-gcc-12, and
  # strips them with aarch64-linux-gnu-strip (binutils).
  gcc-12-aarch64-linux-gnu binutils-aarch64-linux-gnu
  # RHEL/SUSE devel trees of another architecture have their host tools rebuilt from the tree's
  # scripts/ sources: genksyms' (and kconfig's, dtc's) parsers are generated with flex and bison
  # since 6.x ships no *_shipped files; sign-file links libcrypto.
  flex bison libssl-dev
  # The end-to-end suite boots Debian's arm64 kernel too (qemu-system-aarch64, TCG).
  qemu-system-arm
)

need=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || need+=("$p")
done
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The 6.12 headers depend on their kernel image; its initramfs is not needed here.
  INITRD=No apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "setup: system packages already installed"
fi

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    export PATH=/usr/local/go/bin:$PATH
  else
    echo "setup: Go toolchain not found (expected /usr/local/go or go on PATH)" >&2
    exit 1
  fi
fi
echo "setup: $(go version)"
