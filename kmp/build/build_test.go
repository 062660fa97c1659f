package build_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/source"
)

func runBuild(t *testing.T, srcDir string, trees []*kernel.KernelTree, opts build.BuildOptions) (*manifest.Manifest, error) {
	t.Helper()
	src, err := source.OpenSource(srcDir)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Jobs == 0 {
		opts.Jobs = 2
	}
	m, err := build.Build(context.Background(), src, trees, opts)
	// The engine works on its own copy: the caller's Source keeps its excludes.
	if len(src.Exclude) != 0 {
		t.Errorf("Build changed the caller's Source: Exclude = %v", src.Exclude)
	}
	return m, err
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func modinfoField(t *testing.T, path, field string) string {
	t.Helper()
	out, err := exec.Command("modinfo", "-F", field, path).Output()
	if err != nil {
		t.Fatalf("modinfo %s: %v", path, err)
	}
	return strings.TrimSpace(string(out))
}

// The main path: a kmpack.yaml source against three kernels, a no-change rebuild from the
// cache, a rebuild after a source change, and byte-identical results from another workspace.
func TestBuildSpecCacheReproducible(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release54, testenv.Release612)
	srcDir := testenv.ExampleSource(t, true)
	before, _ := (&source.Source{Dir: srcDir}).Hash()
	cache := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	m, err := runBuild(t, srcDir, trees, build.BuildOptions{CacheDir: cache, OutputDir: out})
	if err != nil {
		t.Fatal(err)
	}
	if m.Source.Name != "kmpack-hello" || m.Source.Kind != string(source.SourceSpec) || m.Summary.Built != 3 || m.Summary.Cached != 0 {
		t.Fatalf("manifest %+v", m)
	}
	first := map[string]string{}
	for _, k := range m.Kernels {
		if k.Status != manifest.StatusBuilt || len(k.Modules) != 1 {
			t.Fatalf("%s: %s %s", k.Release, k.Status, k.Reason)
		}
		bm := k.Modules[0]
		ext := map[string]string{testenv.Release612: ".xz"}[k.Release]
		if bm.InstallPath != "/lib/modules/"+k.Release+"/updates/kmpack_hello.ko"+ext {
			t.Errorf("%s: install path %s", k.Release, bm.InstallPath)
		}
		p := filepath.Join(out, bm.File)
		if fileSHA(t, p) != bm.SHA256 {
			t.Errorf("%s: manifest sha256 does not match %s", k.Release, p)
		}
		// kmod reads what kmpack wrote, compressed as the kernel's config says.
		if vm := modinfoField(t, p, "vermagic"); !strings.HasPrefix(vm, k.Release+" ") || vm != strings.TrimSpace(bm.Vermagic) {
			t.Errorf("%s: vermagic %q (manifest %q)", k.Release, vm, bm.Vermagic)
		}
		if modinfoField(t, p, "srcversion") != bm.SrcVersion || bm.Imports == 0 || bm.Version != "1.0" {
			t.Errorf("%s: manifest module %+v", k.Release, bm)
		}
		if out, _ := exec.Command("readelf", "-S", p).Output(); ext == "" && bytes.Contains(out, []byte(".debug_info")) {
			t.Errorf("%s: not stripped", k.Release)
		}
		log, err := os.ReadFile(filepath.Join(out, k.Log))
		if err != nil || !bytes.Contains(log, []byte("KERNELRELEASE="+k.Release)) || bytes.Contains(log, []byte("jobserver unavailable")) {
			t.Errorf("%s: log %s: %v\n%s", k.Release, k.Log, err, log)
		}
		first[k.Release] = bm.SHA256
	}
	if after, _ := (&source.Source{Dir: srcDir}).Hash(); after != before {
		t.Error("the build modified the user's source tree")
	}

	m2, err := runBuild(t, srcDir, trees, build.BuildOptions{CacheDir: cache, OutputDir: out})
	if err != nil {
		t.Fatal(err)
	}
	if m2.Summary.Cached != 3 {
		t.Errorf("no-change rebuild was not served from the cache: %+v", m2.Summary)
	}
	for _, k := range m2.Kernels {
		if !k.Cached || fileSHA(t, filepath.Join(out, k.Modules[0].File)) != first[k.Release] {
			t.Errorf("%s: cached=%v, module differs", k.Release, k.Cached)
		}
	}

	// Another workspace, no cache: the same bytes (the workspace path is mapped away).
	out3 := filepath.Join(t.TempDir(), "out")
	m3, err := runBuild(t, srcDir, trees, build.BuildOptions{OutputDir: out3})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range m3.Kernels {
		if k.Cached || k.Modules[0].SHA256 != first[k.Release] {
			t.Errorf("%s: not reproducible: %s vs %s", k.Release, k.Modules[0].SHA256, first[k.Release])
		}
	}

	// A change to the source is a rebuild.
	if err := os.WriteFile(filepath.Join(srcDir, "hello.c"), append(testenv.MustRead(t, filepath.Join(srcDir, "hello.c")), []byte("\n/* changed */\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	m4, err := runBuild(t, srcDir, trees[:1], build.BuildOptions{CacheDir: cache, OutputDir: out})
	if err != nil {
		t.Fatal(err)
	}
	if m4.Kernels[0].Cached {
		t.Error("a changed source was served from the cache")
	}
}

// One kernel failing and one skipped do not stop the others; the failed one leaves its log and
// no module files.
func TestBuildIsolatesFailures(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release53Cloud, testenv.Release612)
	dir := testenv.ExampleSource(t, false)
	conf := `PACKAGE_NAME=hello
PACKAGE_VERSION=1.0
BUILT_MODULE_NAME[0]=kmpack_hello
DEST_MODULE_LOCATION[0]=/updates
MAKE[0]="make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build"
MAKE[1]="echo this kernel fails on purpose; exit 3"
MAKE_MATCH[1]="^6\.12"
BUILD_EXCLUSIVE_KERNEL="-amd64$"
if [[ $kernelver == *cloud* ]]; then BUILD_EXCLUSIVE_KERNEL="^never$"; fi
`
	os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte(conf), 0o644)
	out := filepath.Join(t.TempDir(), "out")
	cache := t.TempDir()
	m, err := runBuild(t, dir, trees, build.BuildOptions{OutputDir: out, CacheDir: cache})
	if !errors.Is(err, build.ErrBuildFailed) {
		t.Fatalf("error %v, want ErrBuildFailed", err)
	}
	// The same inputs again: nothing is rebuilt, the failure included.
	again, err := runBuild(t, dir, trees, build.BuildOptions{OutputDir: filepath.Join(t.TempDir(), "out"), CacheDir: cache})
	if !errors.Is(err, build.ErrBuildFailed) {
		t.Fatalf("second run: %v", err)
	}
	for i, k := range again.Kernels {
		if k.Status != m.Kernels[i].Status || k.Reason != m.Kernels[i].Reason || (k.Status != manifest.StatusSkipped && !k.Cached) {
			t.Errorf("second run %s: %s cached=%v %q", k.Release, k.Status, k.Cached, k.Reason)
		}
	}
	got := map[string]*manifest.KernelBuild{}
	for _, k := range m.Kernels {
		got[k.Release] = k
	}
	if k := got[testenv.Release53]; k.Status != manifest.StatusBuilt || len(k.Modules) != 1 {
		t.Errorf("53: %+v", k)
	}
	if k := got[testenv.Release53Cloud]; k.Status != manifest.StatusSkipped || !strings.Contains(k.Reason, "BUILD_EXCLUSIVE_KERNEL") {
		t.Errorf("cloud: %+v", k)
	}
	k := got[testenv.Release612]
	if k.Status != manifest.StatusFailed || !strings.Contains(k.Reason, "exit 3") || !strings.Contains(strings.Join(k.LogTail, "\n"), "fails on purpose") {
		t.Errorf("612: %+v", k)
	}
	if _, err := os.Stat(filepath.Join(out, "modules", testenv.Release612)); !os.IsNotExist(err) {
		t.Errorf("failed kernel left module output: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, k.Log)); err != nil {
		t.Errorf("failed kernel's log missing: %v", err)
	}
	if m.Summary != (manifest.BuildSummary{Built: 1, Skipped: 1, Failed: 1}) {
		t.Errorf("summary %+v", m.Summary)
	}
}

// dkms.conf patches apply per kernel (PATCH_MATCH) to the kernel's own copy; PRE_BUILD and
// POST_BUILD scripts run in the build directory; a module that is never built fails the kernel.
func TestBuildPatchesHooksMissingModules(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release612)
	dir := testenv.ExampleSource(t, false)
	os.MkdirAll(filepath.Join(dir, "patches"), 0o755)
	patch := `--- a/hello.c
+++ b/hello.c
@@ -23,4 +23,4 @@
 module_exit(hello_exit);
 MODULE_LICENSE("GPL");
 MODULE_DESCRIPTION("kmpack test module importing only stable symbols");
-MODULE_VERSION("1.0");
+MODULE_VERSION("1.0-patched");
`
	os.WriteFile(filepath.Join(dir, "patches", "version.patch"), []byte(patch), 0o644)
	os.WriteFile(filepath.Join(dir, "pre.sh"), []byte("#!/bin/sh\necho pre-build ran in $(pwd) >&2\ntouch pre-build-ran\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "post.sh"), []byte("#!/bin/sh\nexit 0\n"), 0o644) // not executable: dkms warns and skips
	conf := `PACKAGE_NAME=hello
PACKAGE_VERSION=1.0
BUILT_MODULE_NAME[0]=kmpack_hello
DEST_MODULE_LOCATION[0]=/updates
PATCH[0]=version.patch
PATCH_MATCH[0]="^6\.12"
PRE_BUILD="pre.sh arg"
POST_BUILD=post.sh
`
	os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte(conf), 0o644)
	out := filepath.Join(t.TempDir(), "out")
	m, err := runBuild(t, dir, trees, build.BuildOptions{OutputDir: out})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range m.Kernels {
		want := "1.0"
		if k.Release == testenv.Release612 {
			want = "1.0-patched"
		}
		if v := modinfoField(t, filepath.Join(out, k.Modules[0].File), "version"); v != want {
			t.Errorf("%s: version %q, want %q", k.Release, v, want)
		}
		log := string(testenv.MustRead(t, filepath.Join(out, k.Log)))
		if !strings.Contains(log, "pre-build ran in ") || !strings.Contains(log, "/build") {
			t.Errorf("%s: PRE_BUILD did not run in the build directory:\n%s", k.Release, log)
		}
		if len(k.Warnings) != 1 || !strings.Contains(k.Warnings[0], "POST_BUILD script post.sh is not executable") {
			t.Errorf("%s: warnings %v", k.Release, k.Warnings)
		}
	}
	if b := testenv.MustRead(t, filepath.Join(dir, "hello.c")); bytes.Contains(b, []byte("patched")) {
		t.Error("patch applied to the user's source")
	}
	if _, err := os.Stat(filepath.Join(dir, "pre-build-ran")); err == nil {
		t.Error("PRE_BUILD ran in the user's source")
	}

	// A dkms.conf naming a module the build never makes.
	conf += "BUILT_MODULE_NAME[1]=never_built\nDEST_MODULE_LOCATION[1]=/updates\n"
	os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte(conf), 0o644)
	m, err = runBuild(t, dir, trees[:1], build.BuildOptions{OutputDir: out})
	if !errors.Is(err, build.ErrBuildFailed) || !strings.Contains(m.Kernels[0].Reason, "did not produce never_built.ko") {
		t.Errorf("missing module: %v %+v", err, m.Kernels[0])
	}
}

// A PRE_BUILD or POST_BUILD script that exits non-zero fails the kernel's build, naming the
// hook and its status, as dkms 3.1.5 and later do (Debian 12's dkms 3.0.10 ignores the status
// and builds anyway); a failing PRE_BUILD stops the build before make runs.
func TestBuildFailingHooks(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release53)
	for _, c := range []struct{ hook, want string }{
		{`PRE_BUILD="fail.sh pre 3"`, "PRE_BUILD failed (exit 3)"},
		{`POST_BUILD="fail.sh post 4"`, "POST_BUILD failed (exit 4)"},
	} {
		dir := dkmsSource(t, c.hook+"\n")
		os.WriteFile(filepath.Join(dir, "fail.sh"), []byte("#!/bin/sh\necho \"$1 hook fails on purpose\"\nexit $2\n"), 0o755)
		out := filepath.Join(t.TempDir(), "out")
		m, err := runBuild(t, dir, trees, build.BuildOptions{OutputDir: out})
		if !errors.Is(err, build.ErrBuildFailed) {
			t.Fatalf("%s: error %v, want ErrBuildFailed", c.hook, err)
		}
		k := m.Kernels[0]
		if k.Status != manifest.StatusFailed || k.Reason != c.want || len(k.Modules) != 0 {
			t.Errorf("%s: %s %q %d modules, want failed %q", c.hook, k.Status, k.Reason, len(k.Modules), c.want)
		}
		log := string(testenv.MustRead(t, filepath.Join(out, k.Log)))
		if !strings.Contains(log, "hook fails on purpose") {
			t.Errorf("%s: the script's output is not in the log:\n%s", c.hook, log)
		}
		if ran := strings.Contains(log, "# building\n"); ran != strings.HasPrefix(c.hook, "POST") {
			t.Errorf("%s: make ran: %v:\n%s", c.hook, ran, log)
		}
		if _, err := os.Stat(filepath.Join(out, "modules", testenv.Release53)); !os.IsNotExist(err) {
			t.Errorf("%s: failed kernel left module output: %v", c.hook, err)
		}
	}
}

// Bad input stops before anything is written; an output directory kmpack did not make is
// never replaced.
func TestBuildBadInputWritesNothing(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release53)
	dir := testenv.ExampleSource(t, false)
	os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte("PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=x\nDEST_MODULE_LOCATION=/updates\nPATCH=../../x\n"), 0o644)
	parent := t.TempDir()
	out := filepath.Join(parent, "out")
	if _, err := runBuild(t, dir, trees, build.BuildOptions{OutputDir: out}); !kmp.IsInputError(err) {
		t.Errorf("escaping PATCH: %v", err)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Errorf("bad input left %v behind", entries)
	}
	mine := filepath.Join(parent, "mine")
	os.MkdirAll(mine, 0o755)
	os.WriteFile(filepath.Join(mine, "precious"), []byte("x"), 0o644)
	good := testenv.ExampleSource(t, true)
	if _, err := runBuild(t, good, trees, build.BuildOptions{OutputDir: mine}); !kmp.IsInputError(err) || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("foreign output dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mine, "precious")); err != nil {
		t.Error("foreign output directory was touched")
	}
}

// Compression follows the kernel's config unless overridden; kmod reads every kind kmpack writes.
func TestBuildCompressionOverride(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release53)
	for _, c := range []module.Compression{module.CompressZstd, module.CompressXZ} {
		out := filepath.Join(t.TempDir(), "out")
		m, err := runBuild(t, testenv.ExampleSource(t, true), trees, build.BuildOptions{OutputDir: out, Compression: c})
		if err != nil {
			t.Fatal(err)
		}
		bm := m.Kernels[0].Modules[0]
		if !strings.HasSuffix(bm.File, ".ko"+c.Extension()) || bm.Compression != c {
			t.Errorf("%s: %+v", c, bm)
		}
		if modinfoField(t, filepath.Join(out, bm.File), "srcversion") != bm.SrcVersion {
			t.Errorf("%s: modinfo disagrees", c)
		}
	}
}

// A bare Kbuild directory: every .ko the build made, installed under updates/.
func TestBuildBareKbuild(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release54)
	dir := testenv.ExampleSource(t, false)
	out := filepath.Join(t.TempDir(), "out")
	m, err := runBuild(t, dir, trees, build.BuildOptions{OutputDir: out})
	if err != nil {
		t.Fatal(err)
	}
	if m.Source.Kind != string(source.SourceKbuild) || m.Source.Name != "hello" || len(m.Kernels[0].Modules) != 1 ||
		m.Kernels[0].Modules[0].InstallPath != "/lib/modules/"+testenv.Release54+"/updates/kmpack_hello.ko" {
		t.Errorf("%+v %+v", m.Source, m.Kernels[0])
	}
}
