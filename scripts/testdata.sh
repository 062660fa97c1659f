#!/usr/bin/env bash
# Downloads (never installs) the Debian packages the tests read as files, into a cache that
# survives fresh clones on the same machine. Idempotent: a package already there is not fetched again.
# Usage: scripts/testdata.sh   (prints the cache directory on its last line)
set -euo pipefail
cache=${KMPACK_TESTDATA:-/var/cache/kmpack-testdata}
mkdir -p "$cache/debs"
cd "$cache/debs"

# A complete kernel image (several thousand signed, uncompressed .ko) for comparisons with kmod's tools,
# and a headers set that is deliberately not installed: kmpack must make a tree from the .deb files alone.
WANT=(
  linux-image-6.1.0-53-amd64
  # A second image of the same flavor with another ABI: weak-updates tests install both.
  linux-image-6.1.0-54-amd64
  linux-headers-6.1.0-55-amd64
  linux-headers-6.1.0-55-common
  linux-kbuild-6.1
  # Two more ABIs of the same series, for the test apt repository (kmp/repo, kmpack build --kernel-repo --latest 2).
  linux-headers-6.1.0-56-amd64
  linux-headers-6.1.0-56-common
  linux-headers-6.1.0-57-amd64
  linux-headers-6.1.0-57-common
  # Real out-of-tree module sources with their dkms.conf (shared/reference/corpus.md).
  v4l2loopback-dkms
  acpi-call-dkms
  gost-crypto-dkms
  jool-dkms
  # More *-dkms sources for what their dkms.conf exercises (kmp/build's TestBuildMatchesDKMS):
  # configure embedding build paths, hard-coded dkms paths and a second source under /usr/src,
  # BUILD_EXCLUSIVE set by shell logic, modules in subdirectories, a "-" in the version, a "_" in the name.
  iptables-netflow-dkms
  west-chamber-dkms
  xtables-addons-dkms
  ddcci-dkms
  lime-forensics-dkms
  tp-smapi-dkms
  # The Secure Boot chain the e2e signature proof boots: Microsoft-signed shim (and its MokManager),
  # Debian's signed grub; the kernel is linux-image-6.1.0-53-amd64's Debian-signed vmlinuz.
  shim-signed
  shim-helpers-amd64-signed
  grub-efi-amd64-signed
  # Cross builds (kmpack build for another architecture on this host): Debian's arm64 headers
  # (with their arch:all -common half; the host's amd64 linux-kbuild-6.1 above runs their build),
  # and for booting an arm64 kernel under qemu-system-aarch64, two arm64 images of one flavor
  # and an arm64 busybox for the initramfs. NAME:ARCH fetches another architecture's package.
  linux-headers-6.1.0-53-arm64:arm64
  linux-headers-6.1.0-53-common
  linux-image-6.1.0-53-arm64:arm64
  linux-image-6.1.0-54-arm64:arm64
  busybox-static:arm64
  # The 54 arm64 tree, for the compat check's verdicts on the arm64 kernels (e2e).
  linux-headers-6.1.0-54-arm64:arm64
  linux-headers-6.1.0-54-common
)
missing=()
foreign=()
for p in "${WANT[@]}"; do
  name=${p%%:*} arch=
  [[ $p == *:* ]] && arch=${p#*:}
  compgen -G "${name}_*_${arch:-*}.deb" >/dev/null && continue
  missing+=("$p")
  [[ -n $arch ]] && foreign+=("$arch")
done
if ((${#missing[@]})); then
  # apt downloads another architecture's packages only once dpkg knows that architecture and
  # apt has its package lists; this changes no installed package.
  for a in $(printf '%s\n' "${foreign[@]}" | sort -u); do
    if [[ $a != "$(dpkg --print-architecture)" ]] && ! dpkg --print-foreign-architectures | grep -qx "$a"; then
      dpkg --add-architecture "$a"
      apt-get update -qq >&2
    fi
  done
  echo "testdata: downloading ${missing[*]}" >&2
  apt-get download "${missing[@]}" >&2 || { apt-get update -qq >&2 && apt-get download "${missing[@]}" >&2; }
fi
# An interrupted download leaves a *.deb only after it completed (apt renames at the end), so what is here is whole.

# For RHEL/SUSE-style aarch64 devel trees (kmp/build's TestCrossBuildRPMArm64RebuildsHostTools): the
# sources of the host tools at the arm64 headers' exact upstream version (linux-source-6.1 6.1.187-1,
# the version of linux-headers-6.1.0-53-*), and host tools really built for AArch64 (the arm64
# linux-kbuild-6.1). Kept apart from debs/, whose newest-by-name file per package the tests take.
mkdir -p "$cache/foreign"
cd "$cache/foreign"
fmissing=()
compgen -G "linux-source-6.1_6.1.187-1_all.deb" >/dev/null || fmissing+=(linux-source-6.1=6.1.187-1)
compgen -G "linux-kbuild-6.1_*_arm64.deb" >/dev/null || fmissing+=(linux-kbuild-6.1:arm64)
if ((${#fmissing[@]})); then
  echo "testdata: downloading ${fmissing[*]}" >&2
  apt-get download "${fmissing[@]}" >&2 || { apt-get update -qq >&2 && apt-get download "${fmissing[@]}" >&2; }
fi
# Only what kernel-devel packages carry of the source tree for building host programs: scripts/, the
# tools/include headers (sorttable) and SELinux's class map (RHEL 9 ships both "for make scripts").
src="$cache/unpacked/linux-source-6.1.187"
if [[ ! -e $src/.complete ]]; then
  echo "testdata: extracting scripts/ from linux-source-6.1 6.1.187" >&2
  rm -rf "$src.tmp" && mkdir -p "$src.tmp"
  dpkg-deb --fsys-tarfile linux-source-6.1_6.1.187-1_all.deb | tar -xO ./usr/src/linux-source-6.1.tar.xz |
    tar -xJ -C "$src.tmp" --strip-components=1 linux-source-6.1/scripts linux-source-6.1/tools/include linux-source-6.1/security/selinux/include
  touch "$src.tmp/.complete"
  rm -rf "$src" && mv "$src.tmp" "$src"
fi
echo "$cache"
