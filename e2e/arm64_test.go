package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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
// The runtime package is the arm64 one, carrying an arm64 kmpack built here (GOARCH=arm64,
// --runtime-binary): the root's dpkg knows arm64 as a foreign architecture and installs it and
// the module packages with their dependencies met. This host cannot run that binary (no
// binfmt_misc here), so while the module packages' scripts run here (chrootless) the host's
// kmpack stands in at /usr/bin/kmpack, and the packaged binary is put back after. Each guest
// runs the packaged arm64 kmpack against the kernel it booted: its version, and its compat
// check of the hello, abichange and v4l2loopback builds for 53, which must say what the
// host's check predicted and the kernel then did (54 refuses abichange, naming _dev_info).
func TestArm64PackagesLoadInArm64Kernels(t *testing.T) {
	testenv.Need(t, "qemu-system-aarch64", "aarch64-linux-gnu-gcc-12", "cpio", "gzip", "dpkg")
	start := time.Now()
	r53, r54 := testenv.ReleaseArm64, "6.1.0-54-arm64"
	kernels := []string{r53, r54}
	bin := filepath.Join(t.TempDir(), "kmpack")
	run(t, "go", "build", "-o", bin, "../cmd/kmpack")
	armBin := filepath.Join(t.TempDir(), "kmpack-arm64")
	cmd := exec.Command("go", "build", "-trimpath", "-o", armBin, "../cmd/kmpack")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOARCH=arm64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build for arm64: %v\n%s", err, out)
	}
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
		args := []string{"--cache-dir", cache, "build", "-q", "-o", p.outDir, "--profile", "debian", "--no-source-package", "--runtime-binary", armBin}
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
	if a := strings.TrimSpace(run(t, "dpkg-deb", "-f", runtime, "Architecture")); a != "arm64" {
		t.Fatalf("%s: Architecture %s", runtime, a)
	}
	dpkg("-i", runtime)
	rtPath := filepath.Join(root, formats.RuntimeBinary)
	packaged := testenv.MustRead(t, rtPath)
	if m, err := formats.RuntimeMachine(packaged); err != nil || m != "aarch64" {
		t.Fatalf("%s in %s: %s %v", formats.RuntimeBinary, runtime, m, err)
	}
	testenv.CopyTree(t, bin, rtPath+".host")
	if err := os.Rename(rtPath+".host", rtPath); err != nil {
		t.Fatal(err)
	}
	dpkg(append([]string{"-i"}, debs...)...)
	if err := os.WriteFile(rtPath, packaged, 0o755); err != nil {
		t.Fatal(err)
	}

	gk := &guestKmpack{binary: rtPath, version: strings.TrimSpace(run(t, bin, "--version")), candidates: map[string][]string{}}
	for _, name := range names {
		gk.candidates[name] = pkgs[name].modules[r53]
	}
	results := bootAll(t, root, kernels, names, pkgs, expect, refusedFor, gk)
	report(t, results, start)
}

// guestKmpack is the kmpack a guest runs against the kernel it booted: the binary (from the
// runtime package for the guest's architecture) and, by package, the module files it checks
// with compat (each package's build for the other kernel).
type guestKmpack struct {
	binary     string
	version    string // what kmpack --version must print
	candidates map[string][]string
}

// rows turns what the guest's kmpack printed (the fields after "E2E kmpack") into table rows:
// its version, and for each package the compat verdict on its module in the booted kernel,
// which must be what the host's compat check predicted (expect: yes where the package loads
// from updates/ or weak-updates/, no where absent, with the symbols whose CRCs differ) and
// must have checked vermagic and struct module size from the kernel's own modules.
func (gk *guestKmpack) rows(t *testing.T, k string, names []string, pkgs map[string]*testPackage, expect map[[2]string]string, refusedFor map[[2]string]refusal, lines [][]string) []result {
	version, verdict, crcs, notes := "", map[string]string{}, map[string][]string{}, map[string][]string{}
	var t0, t1 float64
	for _, f := range lines {
		switch pkg := f[0]; {
		case pkg == "version":
			version = strings.Join(f[1:], " ")
		case pkg == "time" && len(f) == 3:
			t0, _ = strconv.ParseFloat(f[1], 64)
			t1, _ = strconv.ParseFloat(f[2], 64)
		case pkgs[pkg] != nil && len(f) >= 3 && f[1] == pkgs[pkg].probe && (f[2] == "yes" || f[2] == "no"):
			verdict[pkg] = f[2]
		case pkgs[pkg] != nil && len(f) >= 3 && f[1] == "crc":
			crcs[pkg] = append(crcs[pkg], strings.TrimSuffix(f[2], ":"))
		case pkgs[pkg] != nil && f[1] == "note:":
			notes[pkg] = append(notes[pkg], strings.Join(f[2:], " "))
		case pkgs[pkg] != nil && f[1] == "kmpack:":
			notes[pkg] = append(notes[pkg], strings.Join(f[1:], " ")) // an error
		}
	}
	t.Logf("%s: the guest's kmpack commands took %.2fs", k, t1-t0)
	rows := []result{{"kmpack", k, "version", gk.version, version}}
	for _, name := range names {
		if len(gk.candidates[name]) == 0 {
			continue
		}
		want := "yes"
		if expect[[2]string{k, name}] == "absent" {
			want = "no"
			if r, ok := refusedFor[[2]string{k, name}]; ok {
				want += ": crc " + strings.Join(slices.Sorted(slices.Values(r.symbols)), ",")
			}
		}
		got := verdict[name]
		if got == "" {
			got = "-"
		}
		if strings.Contains(want, "crc") {
			got += ": crc " + strings.Join(slices.Sorted(slices.Values(crcs[name])), ",")
		}
		if len(notes[name]) > 0 {
			got += " (" + strings.Join(notes[name], "; ") + ")"
		}
		rows = append(rows, result{"kmpack", k, "compat " + pkgs[name].probe, want, got})
	}
	return rows
}
