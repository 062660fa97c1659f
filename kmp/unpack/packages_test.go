package unpack_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/unpack"
)

// buildHello builds the test module against tree with the tree's own kbuild and returns the .ko.
func buildHello(t *testing.T, tree string) *module.ModuleInfo {
	t.Helper()
	src := filepath.Join(t.TempDir(), "hello")
	testenv.CopyTreeDereferenced(t, "../../testdata/modules/hello", src)
	cmd := exec.Command("make", "-C", tree, "M="+src, "modules")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make -C %s: %v\n%s", tree, err, out)
	}
	m, err := module.ReadModule(filepath.Join(src, "kmpack_hello.ko"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestTreeFromDebFilesAlone describes and builds against headers that exist only as the three
// .deb files, never installed.
func TestTreeFromDebFilesAlone(t *testing.T) {
	if _, err := os.Stat("/usr/src/linux-headers-" + testenv.ReleaseDebOnly); err == nil {
		t.Fatalf("%s headers are installed; this test needs them as package files only", testenv.ReleaseDebOnly)
	}
	debs := testenv.Debs(t, "linux-headers-"+testenv.ReleaseDebOnly, "linux-headers-6.1.0-55-common", "linux-kbuild-6.1")
	cache := t.TempDir()
	set, d, err := unpack.OpenPackageTrees(cache, debs)
	if err != nil {
		t.Fatal(err)
	}
	if set.Cached || len(d.Trees) != 1 {
		t.Fatalf("cached=%v trees=%d", set.Cached, len(d.Trees))
	}
	tr := d.Trees[0]
	if tr.Release != testenv.ReleaseDebOnly || tr.Flavor != "amd64" || tr.Layout != "debian" || len(tr.Packages) != 3 {
		t.Fatalf("tree %+v", tr)
	}
	if !strings.HasPrefix(tr.Dir, set.Root+"/") || tr.Symvers == nil || tr.Symvers.Symbols < 20000 {
		t.Fatalf("tree dir %s symvers %+v", tr.Dir, tr.Symvers)
	}
	m := buildHello(t, tr.Dir)
	if !strings.HasPrefix(m.Vermagic, testenv.ReleaseDebOnly+" SMP ") || len(m.Imports) == 0 {
		t.Fatalf("built module: vermagic %q, %d imports", m.Vermagic, len(m.Imports))
	}
	// The same set again is not unpacked again.
	again, d2, err := unpack.OpenPackageTrees(cache, []string{debs[2], debs[0], debs[1]})
	if err != nil || !again.Cached || again.Root != set.Root || d2.Trees[0].Dir != tr.Dir {
		t.Fatalf("second open: %+v %v", again, err)
	}
	entries, _ := os.ReadDir(filepath.Join(cache, "trees"))
	if len(entries) != 1 {
		t.Fatalf("cache holds %d entries, want 1", len(entries))
	}
}

func TestCommonPackageAloneIsNotATree(t *testing.T) {
	debs := testenv.Debs(t, "linux-headers-6.1.0-55-common")
	_, _, err := unpack.OpenPackageTrees(t.TempDir(), debs)
	if err == nil || !kmp.IsInputError(err) || !strings.Contains(err.Error(), "no configured kernel tree") {
		t.Fatalf("got %v", err)
	}
}

// TestTreesFromRPMs builds SUSE- and RHEL-style devel RPMs with the real rpmbuild from a real
// headers tree, then has kmpack find, describe and build against the trees in them.
func TestTreesFromRPMs(t *testing.T) {
	out := t.TempDir()
	common, flavor := testenv.StageSUSEDevel(t)
	suse := []string{
		testenv.BuildRPM(t, testenv.RPMSpec{Name: "kernel-devel", Version: "6.1.0.53", Arch: "noarch", Stage: common}, out),
		testenv.BuildRPM(t, testenv.RPMSpec{Name: "kernel-default-devel", Version: "6.1.0.53", Arch: "x86_64", Stage: flavor}, out),
	}
	rhel := []string{testenv.BuildRPM(t, testenv.RPMSpec{Name: "kernel-devel", Version: "6.1.0.53.el9", Arch: "x86_64", Stage: testenv.StageRHELDevel(t)}, out)}
	cache := t.TempDir()
	for _, c := range []struct {
		name, layout, flavor, dirSuffix string
		rpms                            []string
	}{
		{"suse", "suse", "default", "/usr/src/linux-6.1.0-53-obj/x86_64/default", suse},
		{"rhel", "rhel", "default", "/usr/src/kernels/" + testenv.Release53, rhel},
	} {
		t.Run(c.name, func(t *testing.T) {
			set, d, err := unpack.OpenPackageTrees(cache, c.rpms)
			if err != nil {
				t.Fatal(err)
			}
			if len(d.Trees) != 1 {
				t.Fatalf("%d trees: %+v", len(d.Trees), d)
			}
			tr := d.Trees[0]
			if tr.Dir != set.Root+c.dirSuffix || tr.Layout != c.layout || tr.Flavor != c.flavor || tr.Release != testenv.Release53 {
				t.Fatalf("tree %s layout %s flavor %s release %s", tr.Dir, tr.Layout, tr.Flavor, tr.Release)
			}
			if tr.Symvers == nil || tr.Symvers.Symbols != 24643 || !tr.Modversions {
				t.Fatalf("symvers %+v", tr.Symvers)
			}
			// Absolute links from the packages point inside the unpacked root.
			build := filepath.Join(set.Root, "lib/modules", testenv.Release53, "build")
			if l, err := os.Readlink(build); err != nil || strings.HasPrefix(l, "/") {
				t.Fatalf("build link %q %v", l, err)
			}
			m := buildHello(t, tr.Dir)
			if !strings.HasPrefix(m.Vermagic, testenv.Release53+" SMP ") {
				t.Fatalf("vermagic %q", m.Vermagic)
			}
		})
	}
}
