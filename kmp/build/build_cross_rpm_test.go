package build_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/unpack"
)

// builtArm64 builds the example module (it has a MODULE_VERSION, so a srcversion) for one
// arm64 tree and returns its module, checked to be AArch64 by file(1).
func builtArm64(t *testing.T, tree *kernel.KernelTree, cache string) *module.ModuleInfo {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	m, err := runBuild(t, testenv.ExampleSource(t, false), []*kernel.KernelTree{tree}, build.BuildOptions{OutputDir: out, CacheDir: cache})
	if err != nil {
		for _, k := range m.Kernels {
			t.Logf("%s: %s %s\n%s", k.Release, k.Status, k.Reason, strings.Join(k.LogTail, "\n"))
		}
		t.Fatal(err)
	}
	k := m.Kernels[0]
	if k.Status != manifest.StatusBuilt || len(k.Modules) != 1 {
		t.Fatalf("%s: %s, %d modules", k.Release, k.Status, len(k.Modules))
	}
	p := filepath.Join(out, k.Modules[0].File)
	if f, _ := exec.Command("file", "-b", p).Output(); !strings.Contains(string(f), "ARM aarch64") {
		t.Errorf("%s: file says %q", p, f)
	}
	info, err := module.ReadModule(p)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*"))
	return m
}

// An aarch64 RHEL-style kernel-devel RPM (staged from real parts: Debian's arm64 6.1.0-53
// tree with RHEL's scripts/ layout, the 6.1.187 tool sources and the arm64 kbuild's AArch64
// programs; see testenv.StageRHELDevelArm64) is unpacked by kmpack, its host tools are rebuilt
// for this host from the tree's own sources once (cached), and the module built against it is
// the AArch64 module built against the Debian arm64 tree with the amd64 kbuild (the reference
// TestCrossBuildArm64MatchesPlainMake proves equal to a plain cross make): same vermagic,
// srcversion and imported CRCs. The same tree as a directory builds too, from a cached copy,
// leaving the directory as it was; without the sources it is refused as before.
func TestCrossBuildRPMArm64RebuildsHostTools(t *testing.T) {
	testenv.Need(t, "make", "gcc", "flex", "bison", "rpmbuild", "dpkg-deb", "aarch64-linux-gnu-gcc-12", "file")
	ref := builtArm64(t, testenv.Arm64Tree(t), "")

	stage, dir := testenv.StageRHELDevelArm64(t, true)
	rpm := testenv.BuildRPM(t, testenv.RPMSpec{Name: "kernel-devel", Version: "6.1.187", Arch: "aarch64", Stage: stage}, t.TempDir())
	cache := t.TempDir()
	start := time.Now()
	trees := openRPMTrees(t, cache, rpm)
	t.Logf("unpacked %s in %v", filepath.Base(rpm), time.Since(start).Round(time.Millisecond))
	rt := trees[0]
	if rt.Layout != "rhel" || rt.Arch != "aarch64" || !strings.HasPrefix(rt.Dir, cache) {
		t.Fatalf("tree %s: layout %s arch %s", rt.Dir, rt.Layout, rt.Arch)
	}
	if err := kernel.CheckHostTools(rt); err == nil || !strings.Contains(err.Error(), "is built for AArch64") {
		t.Fatalf("the unpacked tree's tools: %v", err)
	}
	unpacked := rt.Dir
	start = time.Now()
	got := builtArm64(t, rt, cache)
	first := time.Since(start)
	if rt.Dir == unpacked || !strings.HasPrefix(rt.Dir, filepath.Join(cache, "hosttools")) {
		t.Errorf("the build used %s", rt.Dir)
	}
	if err := kernel.CheckHostTools(&kernel.KernelTree{Dir: unpacked}); err == nil {
		t.Errorf("the unpacked tree itself was changed: its tools now run here")
	}
	for _, p := range []string{"scripts/basic/fixdep", "scripts/mod/modpost", "scripts/genksyms/genksyms"} {
		if f, _ := exec.Command("file", "-b", filepath.Join(rt.Dir, p)).Output(); !strings.Contains(string(f), "x86-64") {
			t.Errorf("rebuilt %s: %s", p, f)
		}
	}
	if got.Vermagic != ref.Vermagic || got.SrcVersion != ref.SrcVersion || got.SrcVersion == "" {
		t.Errorf("vermagic %q srcversion %s, the Debian tree's %q %s", got.Vermagic, got.SrcVersion, ref.Vermagic, ref.SrcVersion)
	}
	if a, b := importsText(got), importsText(ref); a != b || len(got.Imports) == 0 {
		t.Errorf("imports differ:\nRPM tree:\n%sDebian tree:\n%s", a, b)
	}

	// Again, from the unpack cache: the rebuilt tools are reused, not rebuilt.
	start = time.Now()
	again := builtArm64(t, openRPMTrees(t, cache, rpm)[0], cache)
	t.Logf("first build (with the host tools rebuild) %v, second %v", first.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if n := entries(t, filepath.Join(cache, "hosttools")); len(n) != 1 {
		t.Errorf("hosttools cache: %v", n)
	}
	if importsText(again) != importsText(ref) || again.SrcVersion != ref.SrcVersion {
		t.Errorf("second build differs")
	}

	// The staged directory itself (kmpack build -k DIR): a cached copy is rebuilt, the
	// directory is left as it was.
	before, _ := exec.Command("bash", "-c", "cd "+dir+" && find . -printf '%p %m %s %T@\\n' | sort | sha256sum").Output()
	dt, err := kernel.OpenKernelTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d := builtArm64(t, dt, cache); importsText(d) != importsText(ref) || d.SrcVersion != ref.SrcVersion {
		t.Errorf("directory tree build differs")
	}
	after, _ := exec.Command("bash", "-c", "cd "+dir+" && find . -printf '%p %m %s %T@\\n' | sort | sha256sum").Output()
	if string(before) != string(after) || len(before) == 0 {
		t.Errorf("the directory tree was changed")
	}

	// Without the sources of its tools, such a tree is refused as before, naming the tool.
	_, bare := testenv.StageRHELDevelArm64(t, false)
	bt, err := kernel.OpenKernelTree(bare)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := os.MkdirTemp(t.TempDir(), "src")
	testenv.CopyTree(t, testenv.ExampleSource(t, false), filepath.Join(src, "hello"))
	_, err = runBuild(t, filepath.Join(src, "hello"), []*kernel.KernelTree{bt}, build.BuildOptions{OutputDir: filepath.Join(t.TempDir(), "out"), CacheDir: cache})
	if err == nil || !strings.Contains(err.Error(), bare+": host tool scripts/basic/fixdep is built for AArch64, which this x86_64 machine cannot run") {
		t.Errorf("a tree without tool sources: %v", err)
	}
}

// openRPMTrees unpacks package files into cache as kmpack build --kernel FILE does.
func openRPMTrees(t *testing.T, cache string, files ...string) []*kernel.KernelTree {
	t.Helper()
	_, d, err := unpack.OpenPackageTrees(cache, files)
	if err != nil {
		t.Fatal(err)
	}
	return d.Trees
}

// SUSE's pair for an aarch64 kernel (staged from the same real parts: see
// testenv.StageSUSEDevelArm64): the noarch kernel-devel holds the tools' sources in the source
// tree, kernel-default-devel the AArch64 programs in the -obj tree, whose Makefile includes the
// source tree's. kmpack rebuilds the programs into a copy of the -obj tree from the source
// tree's scripts/, and the module equals the Debian arm64 tree's.
func TestCrossBuildSUSERPMArm64RebuildsHostTools(t *testing.T) {
	testenv.Need(t, "make", "gcc", "flex", "bison", "rpmbuild", "dpkg-deb", "aarch64-linux-gnu-gcc-12", "file")
	start := time.Now()
	ref := builtArm64(t, testenv.Arm64Tree(t), "")
	t.Logf("the Debian arm64 tree's build: %v", time.Since(start).Round(time.Millisecond))
	devel, flavor := testenv.StageSUSEDevelArm64(t)
	out := t.TempDir()
	rpms := []string{
		testenv.BuildRPM(t, testenv.RPMSpec{Name: "kernel-devel", Version: "6.1.187", Arch: "noarch", Stage: devel}, out),
		testenv.BuildRPM(t, testenv.RPMSpec{Name: "kernel-default-devel", Version: "6.1.187", Arch: "aarch64", Stage: flavor}, out),
	}
	cache := t.TempDir()
	trees := openRPMTrees(t, cache, rpms...)
	if len(trees) != 1 || trees[0].Layout != "suse" || trees[0].Arch != "aarch64" || trees[0].Flavor != "default" {
		t.Fatalf("trees %+v", trees)
	}
	st := trees[0]
	obj := st.Dir
	start = time.Now()
	got := builtArm64(t, st, cache)
	t.Logf("the SUSE tree's first build (with the host tools rebuild): %v", time.Since(start).Round(time.Millisecond))
	if st.Dir == obj {
		t.Errorf("the build used the unpacked tree %s", obj)
	}
	for _, p := range []string{"scripts/basic/fixdep", "scripts/mod/modpost", "scripts/genksyms/genksyms"} {
		if f, _ := exec.Command("file", "-b", filepath.Join(st.Dir, p)).Output(); !strings.Contains(string(f), "x86-64") {
			t.Errorf("rebuilt %s: %s", p, f)
		}
	}
	if got.Vermagic != ref.Vermagic || got.SrcVersion != ref.SrcVersion || importsText(got) != importsText(ref) {
		t.Errorf("vermagic %q srcversion %s imports\n%s\nthe Debian tree's %q %s\n%s", got.Vermagic, got.SrcVersion, importsText(got), ref.Vermagic, ref.SrcVersion, importsText(ref))
	}
}

// A rebuild that fails (here genksyms' grammar is missing from the tree's sources) is one line
// naming the tree, the make arguments and the make log's telling line; nothing is cached and
// the tree is left as it was.
func TestHostToolsRebuildFailureIsOneLine(t *testing.T) {
	testenv.Need(t, "make", "gcc", "flex", "bison", "dpkg-deb", "aarch64-linux-gnu-gcc-12")
	_, dir := testenv.StageRHELDevelArm64(t, true)
	if err := os.Remove(filepath.Join(dir, "scripts/genksyms/parse.y")); err != nil {
		t.Fatal(err)
	}
	tr, err := kernel.OpenKernelTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	_, err = runBuild(t, testenv.ExampleSource(t, false), []*kernel.KernelTree{tr}, build.BuildOptions{OutputDir: filepath.Join(t.TempDir(), "out"), CacheDir: cache})
	want := dir + ": rebuilding its host tools (built for aarch64) for this machine failed: make ARCH=arm64 HOSTCC=gcc CROSS_COMPILE=aarch64-linux-gnu- CC=aarch64-linux-gnu-gcc-12: "
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "No rule to make target 'scripts/genksyms/parse.tab.c'") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v", err)
	}
	t.Log(err)
	if e, _ := filepath.Glob(filepath.Join(cache, "hosttools", "*")); len(e) != 0 {
		t.Errorf("left in the cache: %v", e)
	}
	if e, _ := filepath.Glob(filepath.Join(cache, "hosttools", ".rebuild-*")); len(e) != 0 {
		t.Errorf("left in the cache: %v", e)
	}
	if tr.Dir != dir {
		t.Errorf("the tree is now %s", tr.Dir)
	}
}
