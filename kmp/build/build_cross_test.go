package build_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
)

// handPreparedArm64Tree is the reference tree for cross builds, made the way a person would
// without kmpack: dpkg-deb -x of the arm64 headers, their -common half and this host's amd64
// linux-kbuild-6.1 into one directory, then the flavor tree's one-line Makefile pointed at the
// -common tree there instead of /usr/src (where nothing is installed). The flavor tree's
// scripts and tools links (../../lib/linux-kbuild-6.1/...) then lead to the amd64 kbuild.
func handPreparedArm64Tree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, deb := range testenv.Arm64Debs(t) {
		if out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x %s: %v\n%s", deb, err, out)
		}
	}
	tree := filepath.Join(root, "usr/src/linux-headers-"+testenv.ReleaseArm64)
	common := "/usr/src/linux-headers-6.1.0-53-common"
	if out, err := exec.Command("sed", "-i", "s#"+common+"#"+root+common+"#", filepath.Join(tree, "Makefile")).CombinedOutput(); err != nil {
		t.Fatalf("sed: %v %s", err, out)
	}
	return tree
}

// plainCrossMake builds a source the plain way, for the reference, in each of subdirs in turn
// (a source whose modules live in subdirectories, the later ones importing from the earlier):
// make ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- CC=aarch64-linux-gnu-gcc-12 -C TREE M=SRC/SUB modules
// (CC too: Debian's cross gcc-12 package has no unversioned aarch64-linux-gnu-gcc).
func plainCrossMake(t *testing.T, tree, src string, subdirs []string) map[string]*module.ModuleInfo {
	t.Helper()
	for _, sub := range subdirs {
		cmd := exec.Command("make", "-j2", "ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-", "CC=aarch64-linux-gnu-gcc-12", "-C", tree, "M="+filepath.Join(src, sub), "modules")
		cmd.Env = append(os.Environ(), "LC_ALL=C")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("plain make: %v\n%s", err, out)
		}
	}
	mods := map[string]*module.ModuleInfo{}
	for _, p := range testenv.Modules(t, src) {
		info, err := module.ReadModule(p)
		if err != nil {
			t.Fatal(err)
		}
		mods[module.ModuleNameFromPath(p)] = info
	}
	return mods
}

// Corpus sources built by kmpack for Debian's arm64 6.1.0-53 headers (unpacked from their
// .deb files) on this x86_64 host are AArch64 modules with the same files, srcversion and
// imported CRCs as a plain cross make against the same tree prepared by hand. acpi-call builds
// in one run with an amd64 kernel: one jobserver, each kernel with its own toolchain. ddcci is
// there for srcversion (the others have no MODULE_VERSION, and so none) and for a build that
// reaches the kernel through its own sub-makes and /lib/modules/<release>/build.
func TestCrossBuildArm64MatchesPlainMake(t *testing.T) {
	testenv.Need(t, "make", "dpkg-deb", "aarch64-linux-gnu-gcc-12", "aarch64-linux-gnu-strip", "file")
	arm := testenv.Arm64Tree(t)
	ref := handPreparedArm64Tree(t)
	for _, c := range []struct {
		pkg     string
		trees   []*kernel.KernelTree
		subdirs []string
	}{
		{"acpi-call-dkms", []*kernel.KernelTree{arm, testenv.KernelTrees(t, testenv.Release53)[0]}, []string{"."}},
		{"v4l2loopback-dkms", []*kernel.KernelTree{arm}, []string{"."}},
		{"ddcci-dkms", []*kernel.KernelTree{arm}, []string{"ddcci", "ddcci-backlight"}},
	} {
		t.Run(c.pkg, func(t *testing.T) {
			start := time.Now()
			work := t.TempDir()
			out := filepath.Join(work, "out")
			m, err := runBuild(t, testenv.CorpusSource(t, c.pkg, work), c.trees, build.BuildOptions{OutputDir: out})
			if err != nil {
				for _, k := range m.Kernels {
					t.Logf("%s: %s %s\n%s", k.Release, k.Status, k.Reason, strings.Join(k.LogTail, "\n"))
				}
				t.Fatal(err)
			}
			t.Logf("kmpack built %s for %d kernels in %v", c.pkg, len(c.trees), time.Since(start).Round(time.Millisecond))
			theirs := plainCrossMake(t, ref, testenv.CorpusSource(t, c.pkg, t.TempDir()), c.subdirs)
			for _, k := range m.Kernels {
				want := "ARM aarch64"
				if k.Release == testenv.Release53 {
					want = "x86-64"
				}
				var ours []string
				for _, bm := range k.Modules {
					p := filepath.Join(out, bm.File)
					info, err := module.ReadModule(p)
					if err != nil {
						t.Fatal(err)
					}
					f, _ := exec.Command("file", "-b", p).Output()
					if !strings.Contains(string(f), want) {
						t.Errorf("%s %s: file says %q, not %s", k.Release, bm.File, f, want)
					}
					if k.Release != testenv.ReleaseArm64 {
						if info.Machine != "x86_64" {
							t.Errorf("%s: machine %s", bm.File, info.Machine)
						}
						continue
					}
					name := module.ModuleNameFromPath(p)
					ours = append(ours, name)
					if info.Machine != "aarch64" || info.Vermagic != "6.1.0-53-arm64 SMP mod_unload modversions aarch64" {
						t.Errorf("%s: machine %s, vermagic %q", bm.File, info.Machine, info.Vermagic)
					}
					ref := theirs[name]
					if ref == nil {
						t.Errorf("kmpack built %s, the plain make did not", bm.File)
						continue
					}
					if info.SrcVersion != ref.SrcVersion || (info.SrcVersion == "") != (c.pkg != "ddcci-dkms") {
						t.Errorf("%s: srcversion %s, plain make %s", name, info.SrcVersion, ref.SrcVersion)
					}
					if a, b := importsText(info), importsText(ref); a != b || len(info.Imports) == 0 {
						t.Errorf("%s: imports differ:\nkmpack:\n%splain make:\n%s", name, a, b)
					}
				}
				if k.Release != testenv.ReleaseArm64 {
					continue
				}
				var names []string
				for n := range theirs {
					names = append(names, n)
				}
				sort.Strings(ours)
				sort.Strings(names)
				if strings.Join(ours, " ") != strings.Join(names, " ") {
					t.Errorf("kmpack built [%s], the plain make [%s]", strings.Join(ours, " "), strings.Join(names, " "))
				}
				if k.Status != manifest.StatusBuilt {
					t.Errorf("%s: %s", k.Release, k.Status)
				}
			}
		})
	}
}

// Without the cross compiler its kernel's build fails at once with a reason that names the
// Debian package to install, while the host's kernel in the same run builds: the host's gcc
// would have made x86-64 objects for an arm64 kernel.
func TestCrossBuildWithoutCrossCompiler(t *testing.T) {
	bin := t.TempDir()
	for _, c := range []string{"bash", "make", "gcc-12", "strip", "ld", "as", "objcopy", "nm", "sed", "cat", "rm", "mkdir", "cp", "ln", "mv", "sh", "readelf", "awk", "grep", "uname", "cmp", "expr", "tr", "sort", "dirname", "basename", "touch", "tail", "head", "wc", "xargs", "env", "perl", "realpath", "cut", "find", "chmod", "gcc", "cc"} {
		if p, err := exec.LookPath(c); err == nil {
			os.Symlink(p, filepath.Join(bin, c))
		}
	}
	t.Setenv("PATH", bin)
	arm, err := kernel.OpenKernelTree(testenv.Arm64Tree(t).Dir)
	if err != nil {
		t.Fatal(err)
	}
	const want = "the aarch64 kernel was built with \"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\": its cross compiler aarch64-linux-gnu-gcc-12 is not on this host (install Debian's gcc-12-aarch64-linux-gnu)"
	if len(arm.Warnings) != 1 || arm.Warnings[0] != want {
		t.Errorf("warnings %q", arm.Warnings)
	}
	host, err := kernel.OpenKernelTree(testenv.HeadersDir(t, testenv.Release53))
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	m, err := runBuild(t, testenv.CorpusSource(t, "acpi-call-dkms", work), []*kernel.KernelTree{arm, host}, build.BuildOptions{OutputDir: filepath.Join(work, "out")})
	if err == nil || m == nil || len(m.Kernels) != 2 {
		t.Fatalf("err %v", err)
	}
	if k := m.Kernels[0]; k.Status != manifest.StatusFailed || k.Reason != want {
		t.Errorf("%s: %s %q", k.Release, k.Status, k.Reason)
	}
	if k := m.Kernels[1]; k.Status != manifest.StatusBuilt {
		t.Errorf("%s: %s %s\n%s", k.Release, k.Status, k.Reason, strings.Join(k.LogTail, "\n"))
	}
}
