// Package testenv gives tests the real artefacts that scripts/setup.sh installs and
// scripts/testdata.sh downloads: kernel header trees, Debian package files, unpacked kernel
// images. A test that needs one and does not find it fails and says which script to run: these
// tests never skip their way to green.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/unpack"
)

// Kernel releases whose headers scripts/setup.sh installs.
const (
	Release53      = "6.1.0-53-amd64"
	Release53Cloud = "6.1.0-53-cloud-amd64"
	Release53RT    = "6.1.0-53-rt-amd64"
	Release54      = "6.1.0-54-amd64"
	Release612     = "6.12.117+deb12-amd64"
	// ReleaseImage is the kernel whose image package scripts/testdata.sh downloads.
	ReleaseImage = Release53
	// ReleaseDebOnly has headers downloaded as .deb files but never installed.
	ReleaseDebOnly = "6.1.0-55-amd64"
	// ReleaseArm64 is the arm64 kernel whose headers (and images) scripts/testdata.sh
	// downloads, for cross builds on this x86_64 host.
	ReleaseArm64 = "6.1.0-53-arm64"
)

// Arm64Debs are the package files of ReleaseArm64's tree: its arm64 headers, the arch:all
// -common half, and this host's (amd64) linux-kbuild-6.1, whose host tools run here.
func Arm64Debs(t testing.TB) []string {
	t.Helper()
	return Arm64DebsOf(t, ReleaseArm64)
}

// Arm64DebsOf are Arm64Debs for another arm64 release scripts/testdata.sh downloads
// headers for (6.1.0-54-arm64).
func Arm64DebsOf(t testing.TB, release string) []string {
	t.Helper()
	return Debs(t, "linux-headers-"+release, "linux-headers-"+strings.TrimSuffix(release, "-arm64")+"-common", "linux-kbuild-6.1")
}

// Arm64Tree opens ReleaseArm64's tree, unpacked by kmpack from Arm64Debs into a cache beside
// the downloads (once: later calls only verify it).
func Arm64Tree(t testing.TB) *kernel.KernelTree {
	t.Helper()
	return Arm64TreeOf(t, ReleaseArm64)
}

// Arm64TreeOf is Arm64Tree for another arm64 release (Arm64DebsOf).
func Arm64TreeOf(t testing.TB, release string) *kernel.KernelTree {
	t.Helper()
	set, err := unpack.UnpackPackages(filepath.Join(CacheDir(), "kmpack-cache"), Arm64DebsOf(t, release))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := kernel.OpenKernelTree(filepath.Join(set.Root, "usr/src/linux-headers-"+release))
	if err != nil {
		t.Fatal(err)
	}
	tr.Packages = set.Packages
	return tr
}

// CacheDir is where scripts/testdata.sh keeps downloads.
func CacheDir() string {
	if d := os.Getenv("KMPACK_TESTDATA"); d != "" {
		return d
	}
	return "/var/cache/kmpack-testdata"
}

// HeadersDir returns the installed Debian headers tree of krel.
func HeadersDir(t testing.TB, krel string) string {
	t.Helper()
	dir := "/usr/src/linux-headers-" + krel
	if _, err := os.Stat(filepath.Join(dir, "Module.symvers")); err != nil {
		t.Fatalf("kernel headers %s are not installed: run scripts/setup.sh (%v)", krel, err)
	}
	return dir
}

// Debs returns the downloaded .deb files whose names start with each prefix + "_", in order.
func Debs(t testing.TB, prefixes ...string) []string {
	t.Helper()
	var out []string
	for _, p := range prefixes {
		m, _ := filepath.Glob(filepath.Join(CacheDir(), "debs", p+"_*.deb"))
		if len(m) == 0 {
			t.Fatalf("%s_*.deb not in %s/debs: run scripts/testdata.sh", p, CacheDir())
		}
		sort.Strings(m)
		out = append(out, m[len(m)-1])
	}
	return out
}

// KernelImage is a directory holding release's image package files (boot/vmlinuz-K,
// lib/modules/K): its downloaded .deb unpacked, or, for a kernel scripts/setup.sh installs on
// this machine (6.12, which its headers depend on), this machine's root.
func KernelImage(t testing.TB, release string) string {
	t.Helper()
	pkg := "linux-image-" + release
	if m, _ := filepath.Glob(filepath.Join(CacheDir(), "debs", pkg+"_*.deb")); len(m) > 0 {
		return UnpackedDeb(t, pkg)
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}", pkg).Output(); err == nil && string(out) == "install ok installed" {
		return "/"
	}
	t.Fatalf("%s is neither downloaded nor installed: run scripts/setup.sh and scripts/testdata.sh", pkg)
	return ""
}

var unpackMu sync.Mutex

// UnpackedDeb unpacks a downloaded package once (with dpkg-deb, the reference tool) and returns
// the directory it was unpacked into.
func UnpackedDeb(t testing.TB, pkg string) string {
	t.Helper()
	unpackMu.Lock()
	defer unpackMu.Unlock()
	deb := Debs(t, pkg)[0]
	dir := filepath.Join(CacheDir(), "unpacked", filepath.Base(deb))
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("dpkg-deb", "-x", deb, tmp).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x %s: %v\n%s", deb, err, out)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Modules lists every kernel module file under dir, sorted.
func Modules(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && module.IsModuleFileName(d.Name()) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// Need fails the test when a command the test compares against is missing.
func Need(t testing.TB, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("%s not found: run scripts/setup.sh", c)
		}
	}
}

// RPMSpec describes a binary RPM for BuildRPM: the files under Stage become the payload.
type RPMSpec struct {
	Name, Version, Arch string
	Release             string // default "1"
	Stage               string
	// Files are %files lines; the default claims every top-level directory staged.
	Files []string
	// Provides are Provides: lines ("kernel(_printk) = 0x92997ed8").
	Provides []string
}

// BuildRPM builds an RPM with the real rpmbuild (no dependency generation, no stripping) and
// returns its path under outDir.
func BuildRPM(t testing.TB, spec RPMSpec, outDir string) string {
	t.Helper()
	Need(t, "rpmbuild")
	top := t.TempDir()
	files := spec.Files
	if files == nil {
		top, err := os.ReadDir(spec.Stage)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range top {
			files = append(files, "/"+e.Name())
		}
	}
	rel := spec.Release
	if rel == "" {
		rel = "1"
	}
	// BuildArch of another machine than this one is refused ("No compatible architectures
	// found for build"): that package's architecture comes from --target instead (nothing is compiled).
	foreignArch := spec.Arch != "noarch" && spec.Arch != "x86_64"
	buildArch := "BuildArch: " + spec.Arch + "\n"
	if foreignArch {
		buildArch = ""
	}
	provides := ""
	for _, p := range spec.Provides {
		provides += "Provides: " + p + "\n"
	}
	text := "Name: " + spec.Name + "\nVersion: " + spec.Version + "\nRelease: " + rel + "\nSummary: kmpack test package\n" +
		"License: GPL-2.0-only\n" + buildArch + "AutoReqProv: no\n" +
		"%define debug_package %{nil}\n%define __os_install_post %{nil}\n%define _build_id_links none\n" +
		provides + "%define _binary_payload w3.zstdio\n%define _binaries_in_noarch_packages_terminate_build 0\n%description\nkmpack test package\n" +
		"%install\ncp -a " + spec.Stage + "/. %{buildroot}/\n%files\n"
	for _, f := range files {
		text += f + "\n"
	}
	specPath := filepath.Join(top, spec.Name+".spec")
	if err := os.WriteFile(specPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-bb", "--quiet", "--define", "_topdir " + top, "--define", "_rpmdir " + outDir, "--define", "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm"}
	if foreignArch {
		args = append(args, "--target", spec.Arch)
	}
	cmd := exec.Command("rpmbuild", append(args, specPath)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("rpmbuild %s: %v\n%s", spec.Name, err, out)
	}
	return filepath.Join(outDir, spec.Name+"-"+spec.Version+"-"+rel+"."+spec.Arch+".rpm")
}

// InstalledReleases are the kernels whose headers scripts/setup.sh installs.
var InstalledReleases = []string{Release53, Release53Cloud, Release54, Release612}

// Corpus names the Debian *-dkms packages scripts/testdata.sh downloads: the four of
// shared/reference/corpus.md and six more for what their dkms.conf exercises (see
// kmp/build's TestBuildMatchesDKMS).
var Corpus = []string{"acpi-call-dkms", "gost-crypto-dkms", "jool-dkms", "v4l2loopback-dkms",
	"iptables-netflow-dkms", "west-chamber-dkms", "ddcci-dkms", "xtables-addons-dkms", "lime-forensics-dkms", "tp-smapi-dkms"}

// CorpusSource returns a private copy (under dir) of the module source that a Debian *-dkms
// package ships in /usr/src/<name>-<version>, with its dkms.conf.
func CorpusSource(t testing.TB, pkg, dir string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(UnpackedDeb(t, pkg), "usr/src/*"))
	if len(m) != 1 {
		t.Fatalf("%s: expected one directory under /usr/src, found %v", pkg, m)
	}
	dst := filepath.Join(dir, filepath.Base(m[0]))
	CopyTree(t, m[0], dst)
	return dst
}

// ExampleSource returns a private copy of the bundled example module (testdata/modules/hello),
// with its kmpack.yaml or, without withSpec, as a bare Kbuild tree.
func ExampleSource(t testing.TB, withSpec bool) string {
	t.Helper()
	dst := TestModuleSource(t, "hello")
	if !withSpec {
		if err := os.Remove(filepath.Join(dst, "kmpack.yaml")); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestModuleSource copies testdata/modules/<name> into a temporary directory and returns it.
func TestModuleSource(t testing.TB, name string) string {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	dst := filepath.Join(t.TempDir(), name)
	CopyTree(t, filepath.Join(filepath.Dir(here), "../../testdata/modules", name), dst)
	return dst
}

// CopyTree copies src to dst (which must not exist) with cp -a.
func CopyTree(t testing.TB, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("copying %s: %v: %s", src, err, out)
	}
}

// CopyTreeDereferenced copies the contents of src into dst, dereferencing symlinks (cp -rL):
// a writable copy of an installed headers tree that no longer shares its -common half.
func CopyTreeDereferenced(t testing.TB, src, dst string) {
	t.Helper()
	os.MkdirAll(dst, 0o755)
	if out, err := exec.Command("cp", "-rL", src+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -rL %s %s: %v %s", src, dst, err, out)
	}
}

// KernelTrees opens the installed header trees of releases.
func KernelTrees(t testing.TB, releases ...string) []*kernel.KernelTree {
	t.Helper()
	var trees []*kernel.KernelTree
	for _, r := range releases {
		tr, err := kernel.OpenKernelTree(HeadersDir(t, r))
		if err != nil {
			t.Fatal(err)
		}
		trees = append(trees, tr)
	}
	return trees
}

// MustRead reads a file the test itself made or ships, failing the test when it cannot.
func MustRead(tb testing.TB, p string) []byte {
	tb.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
