package weakupdates_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/source"
	"github.com/kmpack/kmpack/weakupdates"
)

var (
	targetsMu sync.Mutex
	targets   = map[string]*weakupdates.Target{}
	// probeDir is this test run's own build cache (probe modules, test builds): a cache shared
	// with earlier runs would let their results, right or wrong, stand in for this run's.
	probeDir string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kmpack-weakupdates-test-cache-")
	if err != nil {
		panic(err)
	}
	probeDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// target opens an installed header tree once per test run (the probe build is cached).
func target(t *testing.T, release string) *weakupdates.Target {
	t.Helper()
	targetsMu.Lock()
	defer targetsMu.Unlock()
	if tg := targets[release]; tg != nil {
		return tg
	}
	tg, err := weakupdates.OpenTarget(context.Background(), testenv.HeadersDir(t, release), weakupdates.TargetOptions{CacheDir: probeDir})
	if err != nil {
		t.Fatal(err)
	}
	if tg.ThisModuleSize == 0 {
		t.Fatalf("%s: struct module size not measured: %v", release, tg.Notes)
	}
	targets[release] = tg
	return tg
}

func readModule(t *testing.T, path string) *module.ModuleInfo {
	t.Helper()
	m, err := module.ReadModule(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// buildFor builds a source for one kernel and returns its modules.
func buildFor(t *testing.T, srcDir, release string) []*module.ModuleInfo {
	t.Helper()
	src, err := source.OpenSource(srcDir)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	m, err := build.Build(context.Background(), src, testenv.KernelTrees(t, release),
		build.BuildOptions{Jobs: 2, OutputDir: out, CacheDir: probeDir})
	if err != nil {
		t.Fatal(err)
	}
	var mods []*module.ModuleInfo
	for _, bm := range m.Kernels[0].Modules {
		mods = append(mods, readModule(t, filepath.Join(out, bm.File)))
	}
	return mods
}

func kinds(v weakupdates.Verdict) string {
	var out []string
	for _, r := range v.Reasons {
		out = append(out, r.Kind+":"+r.Symbol)
	}
	return strings.Join(out, " ")
}

// A module importing only long-stable symbols, built for 6.1.0-53, loads in 6.1.0-54; the
// cloud and rt flavors, and the 6.12 series, are rejected with their reasons.
func TestStableModuleAcrossSiblings(t *testing.T) {
	hello := []*module.ModuleInfo{readModule(t, "../testdata/ko/kmpack_hello-6.1.0-53.ko")}
	v := weakupdates.Check(hello, target(t, testenv.Release54))[0]
	if !v.Compatible {
		t.Fatalf("hello for 53 in 54: %+v", v.Reasons)
	}
	cloud := weakupdates.Check(hello, target(t, testenv.Release53Cloud))[0]
	if cloud.Compatible || !strings.Contains(kinds(cloud), "flavor:") {
		t.Errorf("cloud flavor: %+v", cloud)
	}
	rt := weakupdates.Check(hello, target(t, testenv.Release53RT))[0]
	if rt.Compatible || !strings.Contains(kinds(rt), "flavor:") || !strings.Contains(kinds(rt), "vermagic:") {
		t.Errorf("rt flavor: %s", kinds(rt))
	}
	for _, r := range rt.Reasons {
		if r.Kind == weakupdates.ReasonVermagic && (r.Want != "SMP preempt mod_unload modversions" || r.Have != "SMP preempt_rt mod_unload modversions") {
			t.Errorf("rt vermagic reason: %+v", r)
		}
	}
	new := weakupdates.Check(hello, target(t, testenv.Release612))[0]
	if new.Compatible || !strings.Contains(kinds(new), "this-module-size:") || !strings.Contains(kinds(new), "crc:module_layout") && !strings.Contains(kinds(new), "missing-symbol:module_layout") {
		t.Errorf("6.12: %s", kinds(new))
	}
}

// v4l2loopback 0.12.7 built for 6.1.0-53 cannot load in 6.1.0-54: exactly three imports changed
// CRC (each reason names both values); built for 54 it loads there.
func TestV4L2LoopbackIncompatibleAcrossABIs(t *testing.T) {
	src := testenv.CorpusSource(t, "v4l2loopback-dkms", t.TempDir())
	mods := buildFor(t, src, testenv.Release53)
	v := weakupdates.Check(mods, target(t, testenv.Release54))[0]
	if v.Compatible {
		t.Fatal("v4l2loopback for 53 judged loadable in 54")
	}
	var crcs []string
	for _, r := range v.Reasons {
		if r.Kind != weakupdates.ReasonCRC {
			t.Errorf("unexpected reason %+v", r)
			continue
		}
		sym, _ := module.ReadSymvers(filepath.Join(testenv.HeadersDir(t, testenv.Release54), "Module.symvers"))
		s, _ := sym.Lookup(r.Symbol)
		m, _ := mods[0].Import(r.Symbol)
		if r.Have != hex8(s.CRC) || r.Want != hex8(m) || r.Have == r.Want {
			t.Errorf("%s: reason %+v, symvers 54 has %s, module wants %s", r.Symbol, r, hex8(s.CRC), hex8(m))
		}
		crcs = append(crcs, r.Symbol)
	}
	if len(crcs) != 3 {
		t.Errorf("want 3 changed CRCs, got %v", crcs)
	}
	if v := weakupdates.Check(mods, target(t, testenv.Release53))[0]; !v.Compatible {
		t.Errorf("v4l2loopback for 53 in 53: %+v", v.Reasons)
	}
}

func hex8(v uint64) string { return fmt.Sprintf("0x%08x", v) }

// A symbol moved into a namespace the module does not import is a reason; a package module
// that cannot load takes the modules that import from it along (fixpoint).
func TestNamespaceAndDependencies(t *testing.T) {
	h54 := testenv.HeadersDir(t, testenv.Release54)
	b, err := os.ReadFile(filepath.Join(h54, "Module.symvers"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Split(l, "\t"); len(f) >= 4 && f[1] == "param_ops_int" {
			if len(f) == 4 {
				f = append(f, "")
			}
			f[4] = "KMPACK_TEST"
			l = strings.Join(f, "\t")
		}
		lines = append(lines, l)
	}
	symvers := filepath.Join(t.TempDir(), "symvers-"+testenv.Release54)
	os.WriteFile(symvers, []byte(strings.Join(lines, "\n")), 0o644)
	tg, err := weakupdates.OpenTarget(context.Background(), symvers, weakupdates.TargetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hello := readModule(t, "../testdata/ko/kmpack_hello-6.1.0-53.ko")
	v := weakupdates.Check([]*module.ModuleInfo{hello}, tg)[0]
	if v.Compatible || kinds(v) != "namespace:param_ops_int" {
		t.Errorf("namespaced param_ops_int: %s", kinds(v))
	}

	// mc from Debian's 6.1.0-53 image cannot load in 54 (its imports changed CRCs). The
	// "consumer" is hello (loadable in 54) given one more import, mc's first export, so that
	// the only thing keeping it out is that mc, a module of the same package, cannot load.
	img := testenv.UnpackedDeb(t, "linux-image-"+testenv.ReleaseImage)
	bus := readModule(t, filepath.Join(img, "lib/modules", testenv.ReleaseImage, "kernel/drivers/media/mc/mc.ko"))
	consumer := *hello
	consumer.Name = "consumer"
	consumer.Imports = append(append([]module.SymbolCRC{}, hello.Imports...), module.SymbolCRC{Name: bus.Exports[0].Name, CRC: bus.Exports[0].CRC})
	consumer.ImportNS = []string{bus.Exports[0].Namespace}
	vs := weakupdates.Check([]*module.ModuleInfo{bus, &consumer}, target(t, testenv.Release54))
	if vs[0].Compatible {
		t.Fatalf("mc from 6.1.0-53's image judged loadable in 54")
	}
	if vs[1].Compatible || kinds(vs[1]) != "dependency:" {
		t.Errorf("consumer of an incompatible package module: %s", kinds(vs[1]))
	}
}

// An installed kernel is read from /lib/modules/<release>: vermagic and struct module from its
// own modules, symvers from /boot/symvers-<release>.gz; Debian's images ship no symvers, which
// is said plainly.
func TestInstalledKernelTarget(t *testing.T) {
	img := filepath.Join(testenv.UnpackedDeb(t, "linux-image-"+testenv.ReleaseImage), "lib/modules", testenv.ReleaseImage)
	if _, err := weakupdates.OpenTarget(context.Background(), img, weakupdates.TargetOptions{}); err == nil || !strings.Contains(err.Error(), "ship none") {
		t.Errorf("image without symvers: %v", err)
	}
	root := t.TempDir()
	mods := filepath.Join(root, "lib/modules", testenv.ReleaseImage)
	os.MkdirAll(mods, 0o755)
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	if err := os.Symlink(filepath.Join(img, "kernel"), filepath.Join(mods, "kernel")); err != nil {
		t.Fatal(err)
	}
	sv, err := os.ReadFile(filepath.Join(testenv.HeadersDir(t, testenv.ReleaseImage), "Module.symvers"))
	if err != nil {
		t.Fatal(err)
	}
	gz, err := module.CompressBytes(sv, module.CompressGzip)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "boot", "symvers-"+testenv.ReleaseImage+".gz"), gz, 0o644)
	tg, err := weakupdates.OpenTarget(context.Background(), mods, weakupdates.TargetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(tg.VermagicFlags, " ") != "SMP preempt mod_unload modversions" || tg.ThisModuleSize != target(t, testenv.Release53).ThisModuleSize {
		t.Errorf("installed target: flags %v, struct module %d (the probe build says %d)", tg.VermagicFlags, tg.ThisModuleSize, target(t, testenv.Release53).ThisModuleSize)
	}
	hello := readModule(t, "../testdata/ko/kmpack_hello-6.1.0-53.ko")
	if v := weakupdates.Check([]*module.ModuleInfo{hello}, tg)[0]; !v.Compatible {
		t.Errorf("hello in its own installed kernel: %+v", v.Reasons)
	}
}
