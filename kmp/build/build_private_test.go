package build_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/sign"
	"github.com/kmpack/kmpack/kmp/source"
	"github.com/kmpack/kmpack/kmp/unpack"
)

// pathsSource is a dkms.conf source that does what iptables-netflow and west-chamber do: a
// configure step writes its build directory into a header the module embeds (modinfo
// builddir), and MAKE hard-codes dkms's paths, building in /usr/src/<name>-<version> against
// /lib/modules/<release>/build and moving the module to /var/lib/dkms/<name>/<version>/build.
// configure also fails the build when it can write where a build must not.
func pathsSource(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "kmpack-paths-1.0")
	files := map[string]string{
		"dkms.conf": `PACKAGE_NAME=kmpack-paths
PACKAGE_VERSION=1.0
BUILT_MODULE_NAME[0]=kmpack_paths
DEST_MODULE_LOCATION[0]=/updates
PRE_BUILD="configure $kernelver"
PSRC=/usr/src/$PACKAGE_NAME-$PACKAGE_VERSION
MAKE[0]="make -C /lib/modules/$kernelver/build M=$PSRC modules && mv $PSRC/kmpack_paths.ko /var/lib/dkms/$PACKAGE_NAME/$PACKAGE_VERSION/build/"
`,
		"configure": `#!/bin/sh
set -e
printf '#define BUILD_DIR "%s"\n' "$(pwd)" > /usr/src/kmpack-paths-1.0/paths.h
for p in /usr/src/kmpack-paths-escape /var/lib/dkms/kmpack-paths-escape /lib/modules/kmpack-paths-escape \
	/lib/modules/$1/build/kmpack-paths-escape; do
	if touch "$p" 2>/dev/null; then echo "configure: could write $p" >&2; exit 1; fi
done
test -f /lib/modules/$1/build/Module.symvers
test "$(readlink /var/lib/dkms/kmpack-paths/1.0/source)" = /usr/src/kmpack-paths-1.0
`,
		"Kbuild": "obj-m := kmpack_paths.o\n",
		"kmpack_paths.c": `#include <linux/module.h>
#include "paths.h"
MODULE_INFO(builddir, BUILD_DIR);
MODULE_LICENSE("GPL");
`,
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		mode := os.FileMode(0o644)
		if name == "configure" {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// hostState is what a build must leave as it found it: the listings of the directories
// builds see at dkms's paths, and this process's mount table.
func hostState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, d := range []string{"/usr/src", "/var/lib/dkms", "/lib/modules"} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			b.WriteString(filepath.Join(d, e.Name()) + "\n")
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	b.Write(mounts)
	return b.String()
}

// Every kernel's build sees its own copy of the source at dkms's paths, in parallel, with the
// host's directories read-only around it: a source that embeds its build path builds
// byte-identically on every run with dkms's path in it, a source that hard-codes dkms's
// paths builds, also against a tree unpacked from packages (no /lib/modules/<release> on the
// host), and nothing is left on the host, mounted or written.
func TestPrivateMountsAtDKMSPaths(t *testing.T) {
	testenv.Need(t, "make", "strip")
	debs := testenv.Debs(t, "linux-headers-"+testenv.ReleaseDebOnly, "linux-headers-6.1.0-55-common", "linux-kbuild-6.1")
	set, err := unpack.UnpackPackages(t.TempDir(), debs)
	if err != nil {
		t.Fatal(err)
	}
	fromDebs, err := kernel.OpenKernelTree(filepath.Join(set.Root, "usr/src/linux-headers-"+testenv.ReleaseDebOnly))
	if err != nil {
		t.Fatal(err)
	}
	trees := append(testenv.KernelTrees(t, testenv.Release53, testenv.Release612), fromDebs)
	before := hostState(t)

	var outputs [][]byte
	for run := 0; run < 2; run++ {
		src, err := source.OpenSource(pathsSource(t))
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "out")
		m, err := build.Build(context.Background(), src, trees, build.BuildOptions{Jobs: 2, OutputDir: out})
		if err != nil {
			for _, k := range m.Kernels {
				t.Logf("%s: %s %s\n%s", k.Release, k.Status, k.Reason, strings.Join(k.LogTail, "\n"))
			}
			t.Fatal(err)
		}
		var all []byte
		for _, k := range m.Kernels {
			if k.Paths != manifest.PathsDKMS || len(k.Modules) != 1 {
				t.Fatalf("%s: paths %q, %d modules", k.Release, k.Paths, len(k.Modules))
			}
			f := filepath.Join(out, k.Modules[0].File)
			info, err := module.ReadModule(f)
			if err != nil {
				t.Fatal(err)
			}
			if got := info.Field("builddir"); len(got) != 1 || got[0] != "/var/lib/dkms/kmpack-paths/1.0/build" {
				t.Errorf("%s: configure ran in %q, not dkms's build directory", k.Release, got)
			}
			all = append(all, testenv.MustRead(t, f)...)
		}
		outputs = append(outputs, all)
	}
	if !bytes.Equal(outputs[0], outputs[1]) {
		t.Error("two builds of the same source and trees gave different modules")
	}
	if after := hostState(t); after != before {
		t.Errorf("the host's /usr/src, /var/lib/dkms, /lib/modules or mounts changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// With --no-private-mounts, builds run in $TMPDIR workspaces, say so in the manifest, and
// their cache entries are not those of builds at dkms's paths.
func TestNoPrivateMountsUsesWorkspaces(t *testing.T) {
	testenv.Need(t, "make", "strip")
	trees := testenv.KernelTrees(t, testenv.Release53)
	cache := t.TempDir()
	keys := map[string]string{}
	for _, private := range []bool{false, true} {
		src, err := source.OpenSource(testenv.ExampleSource(t, true))
		if err != nil {
			t.Fatal(err)
		}
		m, err := build.Build(context.Background(), src, trees, build.BuildOptions{Jobs: 2, CacheDir: cache,
			OutputDir: filepath.Join(t.TempDir(), "out"), NoPrivateMounts: !private})
		if err != nil {
			t.Fatal(err)
		}
		k := m.Kernels[0]
		if k.Cached {
			t.Errorf("private=%v: taken from the other kind of build's cache entry", private)
		}
		keys[k.Paths] = k.CacheKey
	}
	var got []string
	for p := range keys {
		got = append(got, p)
	}
	sort.Strings(got)
	if strings.Join(got, " ") != "dkms workspace" || keys["dkms"] == keys["workspace"] {
		t.Errorf("paths/keys: %v", keys)
	}
}

// A build's commands get none of kmpack's secrets: no KMPACK_* variable (passphrases, PINs),
// the signing key reads as empty, and the build cache and the staged output are read-only, so
// a build cannot plant a module that kmpack would take from the cache and sign.
func TestBuildCannotReachSecretsOrCache(t *testing.T) {
	testenv.Need(t, "make", "strip", "ccache")
	s, kp := signerFor(t, "kmpack secret test key")
	cache := t.TempDir()
	t.Setenv("KMPACK_SIGN_PASSPHRASE", "hunter2-secret")
	t.Setenv("CCACHE_HARDLINK", "1") // the caller's ccache settings do not reach a build
	dir := filepath.Join(t.TempDir(), "kmpack-secrets-1.0")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	check := `#!/bin/sh
if env | grep -q hunter2-secret; then echo "secret in the environment" >&2; exit 1; fi
if env | grep -v '^KMPACK_WORK=' | grep -q '^KMPACK_'; then echo "KMPACK_ variable in the environment" >&2; exit 1; fi
test -e '` + kp.Key + `' || { echo "key file not there at all" >&2; exit 1; }
if test -s '` + kp.Key + `'; then echo "signing key readable" >&2; exit 1; fi
if touch '` + cache + `/planted' 2>/dev/null; then echo "cache writable" >&2; exit 1; fi
# The compile cache: this source's partition is writable, the rest is not.
case "$CCACHE_DIR" in '` + cache + `/ccache/'*) ;; *) echo "CCACHE_DIR=$CCACHE_DIR" >&2; exit 1;; esac
if test -n "$CCACHE_HARDLINK"; then echo "caller's CCACHE_HARDLINK in the environment" >&2; exit 1; fi
touch "$CCACHE_DIR/written" || { echo "compile cache partition not writable" >&2; exit 1; }
if touch "$CCACHE_DIR/../planted" 2>/dev/null; then echo "compile cache writable outside the partition" >&2; exit 1; fi
echo checked > checked.txt
`
	for name, body := range map[string]string{
		"kmpack.yaml":      "name: kmpack-secrets\nversion: \"1.0\"\nbuild:\n  pre-build: ./check.sh\n  commands:\n    - run: test -s checked.txt && make -C ${kernel_source_dir} M=${build_dir} modules\n",
		"check.sh":         check,
		"Kbuild":           "obj-m := kmpack_secrets.o\n",
		"kmpack_secrets.c": "#include <linux/module.h>\nMODULE_LICENSE(\"GPL\");\n",
	} {
		mode := os.FileMode(0o644)
		if name == "check.sh" {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	src, err := source.OpenSource(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := build.Build(context.Background(), src, testenv.KernelTrees(t, testenv.Release53), build.BuildOptions{Jobs: 2,
		OutputDir: filepath.Join(t.TempDir(), "out"), CacheDir: cache, CompileCache: filepath.Join(cache, "ccache"),
		Signers: []sign.Signer{*s}, Secrets: []string{kp.Key}})
	if err != nil {
		for _, k := range m.Kernels {
			t.Logf("%s: %s\n%s", k.Reason, k.Paths, strings.Join(k.LogTail, "\n"))
		}
		t.Fatal(err)
	}
	if m.Kernels[0].Paths != manifest.PathsDKMS || m.Kernels[0].Modules[0].Signature == nil {
		t.Fatalf("paths %s, signature %+v", m.Kernels[0].Paths, m.Kernels[0].Modules[0].Signature)
	}
	for _, p := range []string{filepath.Join(cache, "planted"), filepath.Join(cache, "ccache", "planted")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("the build wrote %s", p)
		}
	}
	if _, err := os.Stat(filepath.Join(build.CompileCachePartition(filepath.Join(cache, "ccache"), "kmpack-secrets"), "written")); err != nil {
		t.Errorf("the build's compile cache partition: %v", err)
	}
	if len(testenv.MustRead(t, kp.Key)) == 0 {
		t.Error("the key file on the host is empty")
	}
}
