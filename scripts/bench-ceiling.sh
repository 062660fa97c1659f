#!/usr/bin/env bash
# How far doing less work could take kmpack on a kernel matrix, whatever the cache or the class
# algorithm: issue 16's compile reuse and --classes targets measured against what the inputs
# allow.
#
# Usage: scripts/bench-ceiling.sh [PACKAGE...]   (Debian *-dkms packages from scripts/testdata.sh;
#        default: acpi-call-dkms gost-crypto-dkms v4l2loopback-dkms jool-dkms)
#        BENCH_TREES='DIR...' scripts/bench-ceiling.sh ...  on other trees (scripts/bench-trees.sh).
#
# For each source it builds every kernel with kmpack (no cache, no private mounts), its compiler
# behind a wrapper that also runs each real compile through the preprocessor alone (-E -P: no line
# markers) and hashes the text with the tree's and the workspace's paths replaced by fixed names.
# Columns:
#   compiles   translation units compiled, summed over the kernels built (the .mod.c files, which
#              carry each kernel's vermagic, left out);
#   distinct   how many different compiler inputs those were. No cache keyed on what the
#              compiler reads, however it treats paths and line markers, can skip more than
#              compiles - distinct of them: "reusable" is that share;
#   groups     the kernels built, grouped by flavor and series: a class never spans two groups;
#   vectors    the kernels built, grouped further by the CRCs their Module.symvers gives the
#              symbols that every build of their group imports (what the compat check compares):
#              one build can serve only kernels of one vector, so --classes builds at least this
#              many.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cache=$(bash scripts/testdata.sh 2>/dev/null | tail -1)
export PATH=/usr/local/go/bin:$PATH
go build -o out/kmpack ./cmd/kmpack
kmpack=$PWD/out/kmpack

pkgs=("$@")
((${#pkgs[@]})) || pkgs=(acpi-call-dkms gost-crypto-dkms v4l2loopback-dkms jool-dkms)
matrix=$(bash scripts/bench-trees.sh "$kmpack" "$cache") || { echo "bench-ceiling: scripts/bench-trees.sh failed" >&2; exit 1; }
mapfile -t trees <<<"$matrix"
kflags=()
for t in "${trees[@]}"; do kflags+=(-k "$t"); done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The workspaces' paths, below, must hold no other /dkms/ or /build/ than kmpack's own.
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"

# The wrapper: every compiler name a kernel of the matrix asks for, ahead of the real one on PATH.
mkdir -p "$work/bin"
# (kmpack passes no KMPACK_* variable to a build: the log's path is written into the wrapper.)
sed "s#@LOG@#$work/compiles#" >"$work/bin/wrap" <<'WRAP'
#!/bin/bash
# Runs the real compiler; for a compile of a C file (not a .mod.c) also the preprocessor alone,
# recording "TREE OBJECT HASH" in @LOG@.
real=$(PATH=${PATH#*:} command -v "$(basename "$0")")
"$real" "$@" || exit
args=() obj="" src="" compile=0
while (($#)); do
  case $1 in
    -c) compile=1; args+=(-E -P) ;;
    -o) obj=$2; args+=(-o -); shift ;;
    -Wp,-MMD,* | -Wp,-MD,*) ;;
    *.c) src=$1; args+=("$1") ;;
    *) args+=("$1") ;;
  esac
  shift
done
# Left out: the .mod.c files (each kernel's vermagic) and 6.12's scripts/module-common.c, which
# Kbuild compiles into every external module: the kernel's code, not the source's.
((compile)) && [ -n "$src" ] && [ -n "$obj" ] && [[ $src != *.mod.c && $src != *scripts/module-common.c ]] || exit 0
tree=$(pwd -P)
rel=${obj#*/dkms/*/*/build/}
hash=$("$real" "${args[@]}" 2>/dev/null | sed -e "s#$tree#TREE#g" -e "s#${obj%"/$rel"}#BUILD#g" \
  -e 's#/[^ "]*/linux-headers-[^/ "]*#HEADERS#g' -e 's#/[^ "]*/linux-kbuild-[^/ "]*#KBUILD#g' | sha256sum | cut -c1-16)
echo "$tree $rel $hash" >>@LOG@
WRAP
chmod +x "$work/bin/wrap"
for t in "${trees[@]}"; do
  c=$("$kmpack" --cache-dir "$cache/bench-trees" kernels --json "$t" | sed -n 's/.*"command": "\(.*\)",*/\1/p' | head -1)
  [ -n "$c" ] && ln -sf wrap "$work/bin/$c"
done

printf '%-18s %8s %9s %9s %9s %7s %15s\n' module kernels compiles distinct reusable groups "vectors (built)"
for pkg in "${pkgs[@]}"; do
  deb=$(ls "$cache"/debs/"${pkg}"_*.deb | tail -1)
  mkdir -p "$work/$pkg/unpacked"
  dpkg-deb -x "$deb" "$work/$pkg/unpacked"
  src=$(ls -d "$work/$pkg"/unpacked/usr/src/*)
  : >"$work/compiles"
  PATH=$work/bin:$PATH "$kmpack" --cache-dir "$work/$pkg/cache" build -q --no-private-mounts --jobs "$(nproc)" \
    "${kflags[@]}" -o "$work/$pkg/out" "$src" >/dev/null 2>&1 || true
  m=$work/$pkg/out/manifest.json
  # release flavor status tree, one kernel a line.
  python3 - "$m" >"$work/$pkg/kernels" <<'PY'
import json, os, sys
for k in json.load(open(sys.argv[1]))["kernels"]:
    print(k["release"], k.get("flavor") or "-", k["status"], os.path.realpath(k["tree"]))
PY
  built=$(awk '$3 == "built"' "$work/$pkg/kernels" | wc -l)
  # Only the compiles of kernels that built count (a failed kernel's would be no reuse to speak of).
  awk 'NR == FNR { if ($3 == "built") ok[$4] = 1; next } ok[$1]' \
    "$work/$pkg/kernels" "$work/compiles" >"$work/$pkg/counted" || true
  compiles=$(wc -l <"$work/$pkg/counted")
  distinct=$(awk '{ print $2, $3 }' "$work/$pkg/counted" | sort -u | wc -l)
  # Each built kernel's imports: the symbols its own modules import.
  awk '$3 == "built" { print $1 }' "$work/$pkg/kernels" | while read -r rel; do
    find "$work/$pkg/out/modules/$rel" -name '*.ko*' -print0 | xargs -0 -r -n1 /sbin/modprobe --dump-modversions 2>/dev/null |
      awk '{ print $2 }' | sort -u >"$work/$pkg/imports.$rel"
  done
  # "groups GROUPS VECTORS": kernels group by flavor and series (a class never spans two); within
  # a group, a build that serves two kernels imports at least what every build of the group
  # imports, so two kernels whose Module.symvers give any of those symbols different CRCs
  # need two builds.
  read -r _ groups vectors < <(python3 - "$work/$pkg/kernels" "$work/$pkg" <<'PY'
import collections, sys
kernels = [l.split() for l in open(sys.argv[1])]
groups = collections.defaultdict(list)
for rel, flavor, status, tree in kernels:
    if status == "built":
        groups[(flavor, ".".join(rel.split(".")[:2]))].append((rel, tree))
vectors = set()
for g, members in groups.items():
    common = set.intersection(*(set(open(f"{sys.argv[2]}/imports.{rel}").read().split()) for rel, _ in members))
    for rel, tree in members:
        crcs = {}
        for line in open(f"{tree}/Module.symvers"):
            f = line.split("\t")
            if len(f) > 1 and f[1] in common:
                crcs[f[1]] = f[0]
        vectors.add((g, tuple(sorted(crcs.items()))))
print("groups", len(groups), len(vectors))
PY
  )
  awk -v p="$pkg" -v k="${#trees[@]}" -v c="$compiles" -v d="$distinct" -v v="$vectors" -v b="$built" -v g="$groups" \
    'BEGIN { printf "%-18s %8d %9d %9d %8.0f%% %7d %15s\n", p, k, c, d, c ? 100 * (c - d) / c : 0, g, v " (" b ")" }'
done
echo
echo "reusable = (compiles - distinct) / compiles: the most any compile cache could skip; groups = flavors and series"
echo "of the kernels that built; vectors = the fewest builds --classes can make for them (issue 16: compile reuse <= 0.3x,"
echo "classes <= 0.15x of dkms)"
