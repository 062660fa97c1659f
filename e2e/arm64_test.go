package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
)

// The arm64 row: kmpack on this x86_64 host builds the hello module and Debian's v4l2loopback
// source for Debian's arm64 6.1.0-53 kernel (its headers unpacked from their .deb files), the
// arm64 debian packages are installed with the real dpkg into a root holding that kernel, and
// the kernel, booted under qemu-system-aarch64 (TCG) with an arm64 busybox, loads both from
// updates/, hello with its parameter and v4l2loopback with its in-tree dependencies.
//
// The root's dpkg knows arm64 as a foreign architecture; the module packages' dependency on the
// kmpack runtime is forced: the runtime is this host's (amd64) binary, which runs their scripts
// here (chrootless), and an arm64 machine would take it from an arm64 kmpack.
func TestArm64PackagesLoadInArm64Kernel(t *testing.T) {
	testenv.Need(t, "qemu-system-aarch64", "aarch64-linux-gnu-gcc-12", "cpio", "gzip", "dpkg")
	start := time.Now()
	k := testenv.ReleaseArm64
	bin := filepath.Join(t.TempDir(), "kmpack")
	run(t, "go", "build", "-o", bin, "../cmd/kmpack")
	cache := t.TempDir()
	pkgs := map[string]*testPackage{
		"kmpack-hello": {source: func(t *testing.T) string { return testenv.TestModuleSource(t, "hello") },
			installed: []string{k}, probe: "kmpack_hello", params: []string{"greeting=4711"}},
		"v4l2loopback": {source: func(t *testing.T) string { return testenv.CorpusSource(t, "v4l2loopback-dkms", t.TempDir()) },
			installed: []string{k}, probe: "v4l2loopback"},
	}
	names := []string{"kmpack-hello", "v4l2loopback"}
	expect := map[[2]string]string{{k, "kmpack-hello"}: "updates", {k, "v4l2loopback"}: "updates", {k, "kmpack-pair"}: "absent"}
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
			case w.Kernel == k && w.Arch == "arm64":
				debs = append(debs, filepath.Join(p.outDir, formats.PackagesDir, w.File))
			case w.Kernel == "" && runtime == "":
				runtime = filepath.Join(p.outDir, formats.PackagesDir, w.File)
			}
		}
	}
	if len(debs) != len(names) || runtime == "" {
		t.Fatalf("arm64 packages %v, runtime %q", debs, runtime)
	}

	root := testenv.DpkgRoot(t)
	dpkg := func(args ...string) {
		run(t, "dpkg", append([]string{"--root", root, "--force-script-chrootless"}, args...)...)
	}
	dpkg("--add-architecture", "arm64")
	testenv.InstallKernel(t, root, k)
	dpkg("-i", runtime)
	dpkg(append([]string{"-i", "--force-depends"}, debs...)...)
	if _, err := os.Stat(filepath.Join(root, "lib/modules", k, "updates/kmpack-hello/kmpack_hello.ko")); err != nil {
		t.Fatal(err)
	}
	rows, err := boot(t, root, k, names, pkgs, expect, nil)
	if err != nil {
		t.Fatal(err)
	}
	report(t, rows, start)
}
