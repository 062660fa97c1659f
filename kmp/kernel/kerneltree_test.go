package kernel_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/module"
)

func TestOpenInstalledTrees(t *testing.T) {
	cases := []struct {
		release, flavor string
		compression     module.Compression
	}{
		{testenv.Release53, "amd64", module.CompressNone},
		{testenv.Release53Cloud, "cloud-amd64", module.CompressNone},
		{testenv.Release54, "amd64", module.CompressNone},
		{testenv.Release612, "amd64", module.CompressXZ},
	}
	for _, c := range cases {
		t.Run(c.release, func(t *testing.T) {
			dir := testenv.HeadersDir(t, c.release)
			tr, err := kernel.OpenKernelTree(dir)
			if err != nil {
				t.Fatal(err)
			}
			// Debian's kernel.release is the upstream version, not the release: it must not win.
			kr, _ := os.ReadFile(filepath.Join(dir, "include/config/kernel.release"))
			if tr.Release != c.release || strings.HasPrefix(c.release, "6.1.0-") && strings.TrimSpace(string(kr)) == c.release {
				t.Errorf("release %q (kernel.release says %q), want %q", tr.Release, strings.TrimSpace(string(kr)), c.release)
			}
			if tr.Flavor != c.flavor || tr.Layout != "debian" || tr.Arch != "x86_64" {
				t.Errorf("flavor/layout/arch = %s/%s/%s", tr.Flavor, tr.Layout, tr.Arch)
			}
			if !tr.Modversions || tr.ModuleCompression != c.compression {
				t.Errorf("modversions %v compression %s", tr.Modversions, tr.ModuleCompression)
			}
			if s := tr.Signing; !s.Enabled || s.Force || !s.All || s.Hash != "sha256" {
				t.Errorf("signing %+v", s)
			}
			raw, _ := os.ReadFile(filepath.Join(dir, "Module.symvers"))
			if tr.Symvers == nil || tr.Symvers.Symbols != strings.Count(string(raw), "\n") || tr.Symvers.Vmlinux < 9000 {
				t.Errorf("symvers %+v", tr.Symvers)
			}
			// The compiler is the distro's gcc-12, which setup installs.
			cc := tr.Compiler
			if cc.HostVersion != "" {
				t.Errorf("describing a tree ran its compiler: %+v", cc)
			}
			build.ProbeCompiler(&cc)
			if cc.Kind != "gcc" || cc.Version != "12.2.0" || !cc.Available || !cc.Exact || !strings.HasPrefix(filepath.Base(cc.Path), "x86_64-linux-gnu-gcc-12") && filepath.Base(cc.Path) != "gcc-12" {
				t.Errorf("compiler %+v", cc)
			}
			if len(tr.Warnings) != 0 {
				t.Errorf("warnings %v", tr.Warnings)
			}
		})
	}
}

func TestDiscoverSystemTrees(t *testing.T) {
	d, err := kernel.DiscoverKernelTrees("/")
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]string{}
	for _, tr := range d.Trees {
		found[tr.Release] = tr.Dir
	}
	for _, r := range []string{testenv.Release53, testenv.Release53Cloud, testenv.Release54, testenv.Release612} {
		if found[r] != "/usr/src/linux-headers-"+r {
			t.Errorf("%s: found at %q", r, found[r])
		}
	}
	// Each tree once, though /lib/modules/<krel>/build and /usr/src both lead to it.
	if len(d.Trees) != len(found) {
		t.Errorf("%d trees for %d releases", len(d.Trees), len(found))
	}
	skippedCommon := false
	for _, s := range d.Skipped {
		if strings.HasSuffix(s.Dir, "-common") {
			skippedCommon = true
		}
	}
	if !skippedCommon {
		t.Errorf("the -common halves should be listed as skipped: %+v", d.Skipped)
	}
}

// TestDiscoverUnderRoot discovers trees in a root whose build links are absolute, as installed
// packages make them: they must resolve inside the root, not on the host.
func TestDiscoverUnderRoot(t *testing.T) {
	root := t.TempDir()
	src := testenv.HeadersDir(t, testenv.Release54)
	tree := filepath.Join(root, "usr/src/kernels/"+testenv.Release54)
	testenv.CopyTreeDereferenced(t, src, tree)
	lib := filepath.Join(root, "lib/modules", testenv.Release54)
	os.MkdirAll(lib, 0o755)
	os.Symlink("/usr/src/kernels/"+testenv.Release54, filepath.Join(lib, "build"))
	// A build link for a release whose tree is absent in root but present on the host.
	lib53 := filepath.Join(root, "lib/modules", testenv.Release53)
	os.MkdirAll(lib53, 0o755)
	os.Symlink("/usr/src/linux-headers-"+testenv.Release53, filepath.Join(lib53, "build"))

	d, err := kernel.DiscoverKernelTrees(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Trees) != 1 || d.Trees[0].Dir != tree || d.Trees[0].Layout != "rhel" || d.Trees[0].Release != testenv.Release54 {
		t.Fatalf("trees: %+v", d.Trees)
	}
}

func TestOpenKernelTreeErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := kernel.OpenKernelTree(dir); err == nil || !strings.Contains(err.Error(), dir+": not a kernel devel tree: no Makefile") {
		t.Errorf("empty dir: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "Makefile"), []byte("all:\n"), 0o644)
	if _, err := kernel.OpenKernelTree(dir); err == nil || !strings.Contains(err.Error(), "no .config") {
		t.Errorf("no config: %v", err)
	}
	os.WriteFile(filepath.Join(dir, ".config"), []byte("CONFIG_X=y\nthis is not kconfig\n"), 0o644)
	if _, err := kernel.OpenKernelTree(dir); err == nil || !strings.Contains(err.Error(), ".config: line 2: not a CONFIG_ assignment") {
		t.Errorf("bad config: %v", err)
	}
	os.WriteFile(filepath.Join(dir, ".config"), []byte("CONFIG_X=y\n"), 0o644)
	if _, err := kernel.OpenKernelTree(dir); err == nil || !strings.Contains(err.Error(), "no include/generated/utsrelease.h") {
		t.Errorf("no release: %v", err)
	}
	if _, err := kernel.OpenKernelTree(filepath.Join(dir, "missing")); err == nil || !kmp.IsInputError(err) {
		t.Errorf("missing dir: %v", err)
	}
}

func TestFlavorsOfOtherDistros(t *testing.T) {
	root := t.TempDir()
	src := testenv.HeadersDir(t, testenv.Release53)
	cases := map[string]struct{ layout, flavor, release string }{
		"usr/src/linux-5.14.21-150500.55.39-obj/x86_64/default": {"suse", "default", "5.14.21-150500.55.39-default"},
		"usr/src/linux-6.4.0-150600.21-obj/x86_64/rt":           {"suse", "rt", "6.4.0-150600.21-rt"},
		"usr/src/kernels/5.14.0-427.13.1.el9_4.x86_64":          {"rhel", "default", "5.14.0-427.13.1.el9_4.x86_64"},
		"usr/src/kernels/5.14.0-427.13.1.el9_4.x86_64+debug":    {"rhel", "debug", "5.14.0-427.13.1.el9_4.x86_64+debug"},
		"usr/src/linux-headers-6.8.0-45-generic":                {"debian", "generic", "6.8.0-45-generic"},
	}
	for rel, want := range cases {
		dir := filepath.Join(root, rel)
		os.MkdirAll(filepath.Join(dir, "include/generated"), 0o755)
		for _, f := range []string{"Makefile", ".config"} {
			b, _ := os.ReadFile(filepath.Join(src, f))
			os.WriteFile(filepath.Join(dir, f), b, 0o644)
		}
		os.WriteFile(filepath.Join(dir, "include/generated/utsrelease.h"), []byte("#define UTS_RELEASE \""+want.release+"\"\n"), 0o644)
		tr, err := kernel.OpenKernelTree(dir)
		if err != nil {
			t.Fatal(err)
		}
		if tr.Layout != want.layout || tr.Flavor != want.flavor || tr.Release != want.release {
			t.Errorf("%s: %s/%s/%s, want %+v", rel, tr.Layout, tr.Flavor, tr.Release, want)
		}
		if tr.Symvers != nil || len(tr.Warnings) == 0 {
			t.Errorf("%s: a tree without Module.symvers must say so: %+v %v", rel, tr.Symvers, tr.Warnings)
		}
	}
}

func TestCompilerMissingWarns(t *testing.T) {
	dir := t.TempDir()
	src := testenv.HeadersDir(t, testenv.Release53)
	testenv.CopyTreeDereferenced(t, src, dir)
	cfg, _ := os.ReadFile(filepath.Join(dir, ".config"))
	cfg = []byte(strings.NewReplacer(
		`CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"`, `CONFIG_CC_VERSION_TEXT="gcc-97 (Debian 97.1.0-1) 97.1.0"`,
		"CONFIG_GCC_VERSION=120200", "CONFIG_GCC_VERSION=970100").Replace(string(cfg)))
	os.WriteFile(filepath.Join(dir, ".config"), cfg, 0o644)
	tr, err := kernel.OpenKernelTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Compiler.Available || tr.Compiler.Version != "97.1.0" || len(tr.Warnings) != 1 || !strings.Contains(tr.Warnings[0], "gcc-97") {
		t.Fatalf("compiler %+v warnings %v", tr.Compiler, tr.Warnings)
	}
}

func TestCompareReleases(t *testing.T) {
	ordered := []string{"5.14.0-427.el9.x86_64", "6.1.0-9-amd64", "6.1.0-53-amd64", "6.1.0-54-amd64", "6.1.0-54-cloud-amd64", "6.12.9+deb12-amd64", "6.12.117+deb12-amd64"}
	for i := 1; i < len(ordered); i++ {
		if kernel.CompareReleases(ordered[i-1], ordered[i]) >= 0 || kernel.CompareReleases(ordered[i], ordered[i-1]) <= 0 {
			t.Errorf("%s should sort before %s", ordered[i-1], ordered[i])
		}
	}
	if kernel.CompareReleases("6.1.0-053", "6.1.0-53") != 0 {
		t.Errorf("leading zeros")
	}
}

// TestDescribingRunsNothing: a tree's .config naming a program (CONFIG_CC_VERSION_TEXT's first
// word, here a path containing "gcc") must not get that program run, by describing or probing;
// and a release that is not a safe identifier is refused where it is read.
func TestDescribingRunsNothing(t *testing.T) {
	dir := t.TempDir()
	testenv.CopyTreeDereferenced(t, testenv.HeadersDir(t, testenv.Release53), dir)
	marker := filepath.Join(t.TempDir(), "ran")
	evil := filepath.Join(t.TempDir(), "evilgcc")
	os.WriteFile(evil, []byte("#!/bin/sh\ntouch "+marker+"\necho 12.2.0\n"), 0o755)
	cfg, _ := os.ReadFile(filepath.Join(dir, ".config"))
	cfg = []byte(strings.Replace(string(cfg), `CONFIG_CC_VERSION_TEXT="gcc-12 `, `CONFIG_CC_VERSION_TEXT="`+evil+` `, 1))
	os.WriteFile(filepath.Join(dir, ".config"), cfg, 0o644)
	tr, err := kernel.OpenKernelTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	build.ProbeCompiler(&tr.Compiler)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("describing or probing a tree ran the program its .config names")
	}
	if tr.Compiler.Path == evil || filepath.Base(tr.Compiler.Path) != "gcc-12" && !strings.HasSuffix(tr.Compiler.Path, "gcc-12") {
		t.Fatalf("compiler %+v", tr.Compiler)
	}

	uts := filepath.Join(dir, "include/generated/utsrelease.h")
	for _, bad := range []string{"../../../../tmp/victim", "6.1.0 53", "x;rm -rf"} {
		os.WriteFile(uts, []byte(`#define UTS_RELEASE "`+bad+`"`+"\n"), 0o644)
		if _, err := kernel.OpenKernelTree(dir); err == nil || !kmp.IsInputError(err) || !strings.Contains(err.Error(), "invalid kernel release") || !strings.HasPrefix(err.Error(), uts+": ") {
			t.Errorf("release %q: %v", bad, err)
		}
	}
	// A FIFO in place of a file the description reads must not hang it.
	os.WriteFile(uts, []byte(`#define UTS_RELEASE "6.1.0-53-amd64"`+"\n"), 0o644)
	os.Remove(filepath.Join(dir, "Module.symvers"))
	syscall.Mkfifo(filepath.Join(dir, "Module.symvers"), 0o644)
	if _, err := kernel.OpenKernelTree(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("FIFO Module.symvers: %v", err)
	}
}
