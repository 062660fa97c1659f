package kernel_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/source"
	"github.com/kmpack/kmpack/kmp/unpack"
)

// Debian's arm64 headers, unpacked by kmpack with this host's kbuild, make a tree of another
// architecture that this host can build for: its arch, Kbuild's ARCH and CROSS_COMPILE, the
// cross gcc its CONFIG_CC_VERSION_TEXT names, arm64's vermagic, and host tools that run here.
func TestArm64TreeFromDebs(t *testing.T) {
	if kernel.HostMachine() != "x86_64" {
		t.Fatalf("this test expects an x86_64 host, not %s", kernel.HostMachine())
	}
	tr := testenv.Arm64Tree(t)
	if tr.Arch != "aarch64" || !tr.Cross() || tr.CrossCompile() != "aarch64-linux-gnu-" || kernel.KernelArch(tr.Arch) != "arm64" {
		t.Fatalf("arch %q cross %v %q", tr.Arch, tr.Cross(), tr.CrossCompile())
	}
	cc := tr.Compiler
	if cc.Command != "aarch64-linux-gnu-gcc-12" || !cc.Available || cc.Package != "gcc-12-aarch64-linux-gnu" {
		t.Fatalf("compiler %+v (run scripts/setup.sh for the cross compiler)", cc)
	}
	if got := tr.VermagicFlags(); !slices.Equal(got, []string{"SMP", "mod_unload", "modversions", "aarch64"}) {
		t.Errorf("vermagic flags %q", got)
	}
	if err := kernel.CheckHostTools(tr); err != nil {
		t.Fatal(err)
	}
	if len(tr.Warnings) != 0 {
		t.Errorf("warnings: %q", tr.Warnings)
	}
	// The host's own trees stay native.
	host := testenv.KernelTrees(t, testenv.Release53)[0]
	if host.Cross() || host.CrossCompile() != "" || host.Compiler.Command != "gcc-12" {
		t.Errorf("amd64 tree: cross %v %q, compiler %q", host.Cross(), host.CrossCompile(), host.Compiler.Command)
	}
}

// A tree whose host tools are built for another machine (an arm64 linux-kbuild given with arm64
// headers) is refused, naming the tree and the tool, before anything runs them. The arm64
// program is a real one: busybox from Debian's arm64 busybox-static.
func TestForeignHostToolsRefused(t *testing.T) {
	arm := filepath.Join(testenv.UnpackedDeb(t, "busybox-static"), "bin/busybox")
	arm64 := testenv.Arm64Tree(t).Dir
	dir := filepath.Join(t.TempDir(), "linux-headers-"+testenv.ReleaseArm64)
	for _, f := range []string{".config", "Makefile", "include/generated/utsrelease.h"} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, f), testenv.MustRead(t, filepath.Join(arm64, f)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kbuild := filepath.Join(filepath.Dir(dir), "lib/linux-kbuild-6.1/scripts")
	os.MkdirAll(filepath.Join(kbuild, "basic"), 0o755)
	if err := os.WriteFile(filepath.Join(kbuild, "basic/fixdep"), testenv.MustRead(t, arm), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../lib/linux-kbuild-6.1/scripts", filepath.Join(dir, "scripts")); err != nil {
		t.Fatal(err)
	}
	tr, err := kernel.OpenKernelTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = kernel.CheckHostTools(tr)
	if err == nil || !kmp.IsInputError(err) || strings.Contains(err.Error(), "\n") ||
		!strings.HasPrefix(err.Error(), dir+": host tool scripts/basic/fixdep is built for AArch64") ||
		!strings.Contains(err.Error(), "linux-kbuild-6.1 package (amd64)") {
		t.Fatalf("got %v", err)
	}
	// The build refuses it before it writes anything.
	out := filepath.Join(t.TempDir(), "out")
	src, err := source.OpenSource(testenv.ExampleSource(t, true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := build.Build(context.Background(), src, []*kernel.KernelTree{tr}, build.BuildOptions{OutputDir: out}); err == nil || err.Error() != kernel.CheckHostTools(tr).Error() {
		t.Errorf("build: %v", err)
	}
	if _, err := os.Lstat(out); !os.IsNotExist(err) {
		t.Errorf("the refused build left %s", out)
	}
	if !slices.ContainsFunc(tr.Warnings, func(w string) bool {
		return strings.HasPrefix(w, "host tool scripts/basic/fixdep is built for AArch64")
	}) {
		t.Errorf("warnings %q", tr.Warnings)
	}
}

// Debian's arm64 headers unpacked without a kbuild package: their scripts link leads nowhere,
// and the tree is refused naming the package to add, instead of make's missing Makefile.build.
func TestMissingKbuildRefused(t *testing.T) {
	debs := testenv.Arm64Debs(t)
	set, err := unpack.UnpackPackages(filepath.Join(testenv.CacheDir(), "kmpack-cache"), debs[:2]) // once, as testenv.Arm64Tree
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(set.Root, "usr/src/linux-headers-"+testenv.ReleaseArm64)
	tr, err := kernel.OpenKernelTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := dir + ": no host tools: its scripts link leads to ../../lib/linux-kbuild-6.1/scripts, which is not there: unpack the tree with this host's linux-kbuild-6.1 package (amd64)"
	if err := kernel.CheckHostTools(tr); err == nil || err.Error() != want || !kmp.IsInputError(err) {
		t.Fatalf("got %v", err)
	}
}

func TestMachineFromRelease(t *testing.T) {
	for release, want := range map[string]string{
		"5.14.0-362.el9.aarch64": "aarch64", "5.14.0-362.el9.x86_64": "x86_64", "6.5.6-300.fc39.ppc64le": "ppc64le",
		"6.1.0-53-arm64": "aarch64", "6.1.0-53-cloud-arm64": "aarch64", "6.1.0-53-amd64": "x86_64", "6.1.0-53-rt-amd64": "x86_64",
		"6.1.0-53-powerpc64le": "ppc64le", "5.14.21-150500.55.39-default": "", "6.6.31-0-lts": "",
	} {
		got, ok := kernel.MachineFromRelease(release)
		if got != want || ok != (want != "") {
			t.Errorf("%s: %q %v, want %q", release, got, ok, want)
		}
	}
}
