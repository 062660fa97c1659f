#!/usr/bin/env bash
# Compares `kmpack weak-updates add-kernel` with the depmod-per-check approach of weak-modules
# (RHEL's validate_weak_links, SUSE's weak-modules2: a sandboxed `depmod -naeE <symvers>` run per
# candidate package, see shared/reference/rhel-kmod.md 5.3), side by side in one run, on one root:
# six real Debian 6.1 amd64 kernels (images and headers' Module.symvers of 6.1.0-47, -50, -53,
# -54, -55, -56, fetched with apt-get download into the testdata cache) and 50 module packages
# built by kmpack for 6.1.0-53, each importing a different mix of real kernel exports. The kernel
# that "arrives" is 6.1.0-54: both approaches decide which of the 50 packages load there, link
# them, and run depmod once; the script checks that both link the same set.
#
# Usage: scripts/bench-weakupdates.sh   (about 700 MB of downloads on the first run)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cache=$(bash scripts/testdata.sh 2>/dev/null | tail -1)
export PATH=/usr/local/go/bin:$PATH
go build -o out/kmpack ./cmd/kmpack
kmpack=$PWD/out/kmpack

abis=(47 50 53 54 55 56)
built=6.1.0-53-amd64
arriving=6.1.0-54-amd64
npkgs=50
cd "$cache/debs"
for n in "${abis[@]}"; do
  for p in linux-image-6.1.0-$n-amd64 linux-headers-6.1.0-$n-amd64; do
    compgen -G "${p}_*.deb" >/dev/null || apt-get download "$p" >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get download "$p" >/dev/null; }
  done
done
cd - >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[[ -z ${KMPACK_BENCH_KEEP:-} ]] || { trap - EXIT; echo "work dir: $work" >&2; }
root=$work/root
now() { date +%s.%N; }

# The modules: one Kbuild tree, 50 modules, module i referencing the exports whose bit is set in
# a mix of i (a reference is enough to import a symbol, with its CRC). _dev_info and cdev_add
# changed their CRCs from -53 to -54, the others did not: about a quarter of the packages load in
# the arriving kernel. (-55 and -56 changed module_layout itself: nothing built for -53 loads there.)
pool=(_printk __kmalloc kfree msleep mutex_lock mutex_unlock jiffies schedule_timeout strscpy
  snprintf queue_work_on alloc_workqueue destroy_workqueue __platform_driver_register proc_create
  seq_printf _dev_info cdev_add)
src=$work/bench-modules
mkdir -p "$src"
: >"$src/Kbuild"
for ((i = 0; i < npkgs; i++)); do
  m=$(printf 'kmpack_bench_%02d' "$i")
  echo "obj-m += $m.o" >>"$src/Kbuild"
  {
    echo '#include <linux/module.h>'
    echo '#include <linux/slab.h>'
    echo '#include <linux/device.h>'
    echo '#include <linux/miscdevice.h>'
    echo '#include <linux/platform_device.h>'
    echo '#include <linux/delay.h>'
    echo '#include <linux/cdev.h>'
    echo '#include <linux/proc_fs.h>'
    echo '#include <linux/seq_file.h>'
    echo '#include <linux/workqueue.h>'
    echo '#include <linux/sched.h>'
    echo 'static const void *refs[] __used = {'
    for ((b = 0; b < ${#pool[@]}; b++)); do
      # Mix the bits so that the packages differ in more than their low bits.
      if (((i * 2654435761 >> b) & 1)) || ((b == 0)); then echo "  (const void *)&${pool[b]},"; fi
    done
    echo '};'
    echo 'static int __init bench_init(void) { return 0; }'
    echo 'static void __exit bench_exit(void) { }'
    echo 'module_init(bench_init);'
    echo 'module_exit(bench_exit);'
    echo 'MODULE_LICENSE("GPL");'
  } >"$src/$m.c"
done
"$kmpack" --cache-dir "$work/cache" build -q --jobs "$(nproc)" -k "/usr/src/linux-headers-$built" -o "$work/out" "$src" >/dev/null

# The root: 6.1.0-53 and the 50 packages' modules in its updates/, registered as the debian
# profile's postinst does; then the four other kernels arrive and are linked (setup).
install_kernel() {
  dpkg-deb -x "$(ls "$cache"/debs/linux-image-"$1"_*.deb | tail -1)" "$root"
  dpkg-deb --fsys-tarfile "$(ls "$cache"/debs/linux-headers-"$1"_*.deb | tail -1)" |
    tar -x -C "$root" "./usr/src/linux-headers-$1/Module.symvers"
  depmod -b "$root" -a "$1"
}
mkdir -p "$root"
install_kernel "$built"
mkdir -p "$root/lib/depmod.d"
printf 'search updates weak-updates built-in\n' >"$root/lib/depmod.d/kmpack-weak-updates.conf"
for ko in $(find "$work/out" -name 'kmpack_bench_*.ko' | sort); do
  m=$(basename "$ko" .ko)
  mkdir -p "$root/lib/modules/$built/updates/$m"
  cp "$ko" "$root/lib/modules/$built/updates/$m/"
  "$kmpack" weak-updates --root "$root" add-kmp --name "$m" --package "$m-modules-$built" --version 1.0-1 --kernel "$built" >/dev/null
done
for n in "${abis[@]}"; do
  r=6.1.0-$n-amd64
  [[ $r == "$built" || $r == "$arriving" ]] || install_kernel "$r"
done
"$kmpack" weak-updates --root "$root" sync >/dev/null
install_kernel "$arriving"
wu=$root/lib/modules/$arriving/weak-updates
symvers=$root/usr/src/linux-headers-$arriving/Module.symvers
reset() { rm -rf "$wu"; depmod -b "$root" -a "$arriving"; }

# weak-modules' way: per package, a sandbox holding its modules as the only external directory,
# `depmod -naeE` against the arriving kernel, incompatible when depmod names a sandboxed module.
t0=$(now)
declare -a wm_linked=()
for ko in "$root/lib/modules/$built"/updates/kmpack_bench_*/*.ko; do
  m=$(basename "$ko" .ko)
  sandbox=$work/sandbox/$m
  mkdir -p "$sandbox"
  ln -sf "$ko" "$sandbox/"
  printf 'search external built-in\nexternal %s %s\n' "$arriving" "$sandbox" >"$work/sandbox/$m.conf"
  if ! depmod -b "$root" -C "$work/sandbox/$m.conf" -naeE "$symvers" "$arriving" 2>&1 >/dev/null | grep -q "$sandbox"; then
    wm_linked+=("$m")
  fi
done
t1=$(now)
for m in "${wm_linked[@]}"; do
  mkdir -p "$wu/$m"
  ln -s "../../../$built/updates/$m/$m.ko" "$wu/$m/$m.ko"
done
depmod -b "$root" -C "$root/lib/depmod.d" -a "$arriving"
t2=$(now)
wm_set=$(printf '%s\n' "${wm_linked[@]}" | sort)

reset
t3=$(now)
"$kmpack" weak-updates --root "$root" --dry-run add-kernel "$arriving" >"$work/plan"
t4=$(now)
reset
t5=$(now)
"$kmpack" weak-updates --root "$root" add-kernel "$arriving" >/dev/null
t6=$(now)
km_set=$(find "$wu" -type l -name '*.ko' -printf '%f\n' | sed 's/\.ko$//' | sort)

printf '%s kernels (%s), %d packages built for %s, %s arriving\n\n' "${#abis[@]}" "${abis[*]}" "$npkgs" "$built" "$arriving"
printf '%-48s %12s %12s %8s\n' "add-kernel $arriving" "decide (s)" "total (s)" linked
awk -v d="$(echo "$t1 - $t0" | bc)" -v t="$(echo "$t2 - $t0" | bc)" -v n="$(grep -c . <<<"$wm_set" || true)" \
  'BEGIN { printf "%-48s %12.3f %12.3f %8d\n", "weak-modules style: depmod -naeE per package", d, t, n }'
awk -v d="$(echo "$t4 - $t3" | bc)" -v t="$(echo "$t6 - $t5" | bc)" -v n="$(grep -c . <<<"$km_set" || true)" \
  'BEGIN { printf "%-48s %12.3f %12.3f %8d\n", "kmpack weak-updates add-kernel", d, t, n }'
awk -v a="$(echo "$t1 - $t0" | bc)" -v b="$(echo "$t4 - $t3" | bc)" -v c="$(echo "$t2 - $t0" | bc)" -v e="$(echo "$t6 - $t5" | bc)" \
  'BEGIN { printf "%-48s %11.0fx %11.1fx\n", "kmpack speed-up", a / b, c / e }'
echo
echo "decide = choosing what to link (kmpack: --dry-run, the whole plan for every kernel of the flavor);"
echo "total = deciding, linking and the one depmod of the arriving kernel both approaches need. Target: decide >= 100x."
if [[ "$wm_set" != "$km_set" ]]; then
  echo "DISAGREEMENT: depmod and kmpack link different packages:" >&2
  diff <(echo "$wm_set") <(echo "$km_set") >&2 || true
  exit 1
fi
echo "both link the same $(grep -c . <<<"$km_set" || true) packages"
