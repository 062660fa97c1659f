package e2e

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/weakupdates"
)

// The arm64 rows: kmpack on this x86_64 host builds the hello and abichange modules and
// Debian's v4l2loopback source for Debian's arm64 6.1.0-53 kernel (its headers unpacked from
// their .deb files); the arm64 debian packages go with the real dpkg into a root holding the
// arm64 53 and 54 kernels, whose packages' scripts make the weak-updates links for 54; both
// kernels boot under qemu-system-aarch64 (TCG) with an arm64 busybox. 53 loads all three from
// updates/ (hello with its parameter, v4l2loopback with its in-tree dependencies); in 54 each
// loads from weak-updates/ or is absent as kmpack's compat check against the 54 arm64 tree
// (its struct module probe built for arm64) predicts, and the kernel itself refuses a build
// the check refused, naming a symbol it blamed. The check must predict one of each.
//
// The root's dpkg knows arm64 as a foreign architecture; the module packages' dependency on the
// kmpack runtime is forced: the runtime is this host's (amd64) binary, which runs their scripts
// here (chrootless), and an arm64 machine would take it from an arm64 kmpack.
func TestArm64PackagesLoadInArm64Kernels(t *testing.T) {
	testenv.Need(t, "qemu-system-aarch64", "aarch64-linux-gnu-gcc-12", "cpio", "gzip", "dpkg")
	start := time.Now()
	r53, r54 := testenv.ReleaseArm64, "6.1.0-54-arm64"
	kernels := []string{r53, r54}
	bin := filepath.Join(t.TempDir(), "kmpack")
	run(t, "go", "build", "-o", bin, "../cmd/kmpack")
	cache := t.TempDir()
	pkgs := map[string]*testPackage{
		"kmpack-hello": {source: func(t *testing.T) string { return testenv.TestModuleSource(t, "hello") },
			installed: []string{r53}, probe: "kmpack_hello", params: []string{"greeting=4711"}},
		"kmpack-abichange": {source: func(t *testing.T) string { return testenv.TestModuleSource(t, "abi") },
			installed: []string{r53}, probe: "kmpack_abi"},
		"v4l2loopback": {source: func(t *testing.T) string { return testenv.CorpusSource(t, "v4l2loopback-dkms", t.TempDir()) },
			installed: []string{r53}, probe: "v4l2loopback"},
	}
	names := []string{"kmpack-abichange", "kmpack-hello", "v4l2loopback"}
	var debs []string
	runtime := ""
	for _, name := range names {
		p := pkgs[name]
		p.outDir = filepath.Join(t.TempDir(), "out")
		args := []string{"--cache-dir", cache, "build", "-q", "-o", p.outDir, "--profile", "debian", "--no-source-package"}
		for _, d := range testenv.Arm64Debs(t) {
			args = append(args, "-k", d)
		}
		run(t, bin, append(args, p.source(t))...)
		var written []formats.Written
		if err := json.Unmarshal(testenv.MustRead(t, filepath.Join(p.outDir, formats.PackagesDir, "packages.json")), &written); err != nil {
			t.Fatal(err)
		}
		for _, w := range written {
			switch {
			case w.Kernel == r53 && w.Arch == "arm64":
				debs = append(debs, filepath.Join(p.outDir, formats.PackagesDir, w.File))
			case w.Kernel == "" && runtime == "":
				runtime = filepath.Join(p.outDir, formats.PackagesDir, w.File)
			}
		}
		m, err := manifest.Read(p.outDir)
		if err != nil {
			t.Fatal(err)
		}
		p.modules = map[string][]string{}
		for _, kb := range m.Kernels {
			for _, bm := range kb.Modules {
				p.modules[kb.Release] = append(p.modules[kb.Release], filepath.Join(p.outDir, bm.File))
			}
		}
	}
	if len(debs) != len(names) || runtime == "" {
		t.Fatalf("arm64 packages %v, runtime %q", debs, runtime)
	}

	tg, err := weakupdates.OpenTarget(t.Context(), testenv.Arm64TreeOf(t, r54).Dir, weakupdates.TargetOptions{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	expect, refusedFor := expectations(t, names, pkgs, kernels, map[string]*weakupdates.Target{r54: tg})
	if expect[[2]string{r54, "kmpack-hello"}] != "weak-updates" || expect[[2]string{r54, "kmpack-abichange"}] != "absent" {
		t.Fatalf("the compatibility check no longer predicts the cases this test needs on arm64: %v", expect)
	}
	for _, k := range kernels {
		expect[[2]string{k, "kmpack-pair"}] = "absent" // not built here: boot checks no pair
	}

	root := testenv.DpkgRoot(t)
	dpkg := func(args ...string) {
		run(t, "dpkg", append([]string{"--root", root, "--force-script-chrootless"}, args...)...)
	}
	dpkg("--add-architecture", "arm64")
	for _, k := range kernels {
		testenv.InstallKernel(t, root, k)
	}
	dpkg("-i", runtime)
	dpkg(append([]string{"-i", "--force-depends"}, debs...)...)

	results := bootAll(t, root, kernels, names, pkgs, expect, refusedFor)
	report(t, results, start)
}
