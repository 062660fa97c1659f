package weakupdates_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/source"
	"github.com/kmpack/kmpack/weakupdates"
)

// systemRoot is a root holding Debian's real kernels (testenv.InstallKernel).
func systemRoot(t *testing.T, releases ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, rel := range releases {
		testenv.InstallKernel(t, root, rel)
	}
	return root
}

// install puts a build's modules where the debian profile's package puts them and returns the
// registration add-kmp would make.
func install(t *testing.T, root, name, version, release string, mods []string) weakupdates.KMP {
	t.Helper()
	k := weakupdates.KMP{Name: name, Package: name + "-modules-" + release, Version: version, Kernel: release}
	dir := filepath.Join("/lib/modules", release, "updates", name)
	os.MkdirAll(filepath.Join(root, dir), 0o755)
	for _, m := range mods {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(m))
		os.WriteFile(filepath.Join(root, p), b, 0o644)
		k.Modules = append(k.Modules, p)
	}
	return k
}

func links(t *testing.T, root, release string) map[string]string {
	return testenv.WeakUpdatesLinks(root, release)
}

// modulesDep is the kernel's modules.dep; a missing or empty one fails the test, so checks
// that a module is absent from it cannot pass on an index that is not there.
func modulesDep(t *testing.T, root, release string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "lib/modules", release, "modules.dep"))
	if err != nil || !strings.Contains(string(b), "kernel/") {
		t.Fatalf("%s's modules.dep is missing or lists none of the kernel's modules: %v", release, err)
	}
	return string(b)
}

func builtModules(t *testing.T, name, release string) []string {
	t.Helper()
	src := testenv.TestModuleSource(t, name)
	s, err := source.OpenSource(src)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	m, err := build.Build(t.Context(), s, testenv.KernelTrees(t, release), build.BuildOptions{Jobs: 2, OutputDir: out, CacheDir: probeDir})
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, bm := range m.Kernels[0].Modules {
		files = append(files, filepath.Join(out, bm.File))
	}
	return files
}

// The engine's life cycle on a root with two real kernels: a module importing only stable
// symbols, built for 53, is linked into 54 (and depmod indexes it there); one whose imports
// changed is not, and status says why; a build for 54 itself needs no link; removal unlinks;
// runs are idempotent; real files are never replaced; a killed run's debris is repaired.
func TestEngineLifeCycle(t *testing.T) {
	testenv.Need(t, "depmod")
	r53, r54 := testenv.Release53, testenv.Release54
	root := systemRoot(t, r53, r54)
	var log bytes.Buffer
	e := &weakupdates.Engine{Root: root, Log: &log}

	hello := install(t, root, "kmpack-hello", "1.0-1", r53, builtModules(t, "hello", r53))
	if err := e.AddKMP(hello); err != nil {
		t.Fatal(err)
	}
	want := "/lib/modules/" + r53 + "/updates/kmpack-hello/kmpack_hello.ko"
	if got := links(t, root, r54); got["kmpack-hello/kmpack_hello.ko"] != want || len(got) != 1 {
		t.Fatalf("54's weak-updates: %v", got)
	}
	if len(links(t, root, r53)) != 0 {
		t.Errorf("53 got weak links to its own build")
	}
	if !strings.Contains(modulesDep(t, root, r54), "weak-updates/kmpack-hello/kmpack_hello.ko:") {
		t.Errorf("depmod did not index the link in %s", r54)
	}

	abi := install(t, root, "kmpack-abichange", "1.0-1", r53, builtModules(t, "abi", r53))
	if err := e.AddKMP(abi); err != nil {
		t.Fatal(err)
	}
	if _, ok := links(t, root, r54)["kmpack-abichange/kmpack_abi.ko"]; ok {
		t.Errorf("the module whose imports changed was linked into %s", r54)
	}
	plans, err := e.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range plans {
		if p.Kernel == r54 && !strings.Contains(strings.Join(p.Rejected["kmpack-abichange"], " "), "_dev_info") {
			t.Errorf("status does not say why kmpack-abichange is not linked: %+v", p)
		}
	}

	// Idempotent: nothing to do the second time.
	log.Reset()
	if err := e.AddKernel(r54); err != nil {
		t.Fatal(err)
	}
	if log.Len() != 0 {
		t.Errorf("second run changed things: %s", log.String())
	}

	// A killed run: debris of an unfinished link and a link that should not be there.
	wu := filepath.Join(root, "lib/modules", r54, "weak-updates")
	os.Symlink("/lib/modules/"+r53+"/updates/kmpack-hello/kmpack_hello.ko", filepath.Join(wu, "kmpack-hello/kmpack_hello.ko.kmpack-tmp"))
	os.MkdirAll(filepath.Join(wu, "kmpack-abichange"), 0o755)
	os.Symlink("/lib/modules/"+r53+"/updates/kmpack-abichange/kmpack_abi.ko", filepath.Join(wu, "kmpack-abichange/kmpack_abi.ko"))
	if err := e.AddKernel(r54); err != nil {
		t.Fatal(err)
	}
	if got := links(t, root, r54); len(got) != 1 || got["kmpack-hello/kmpack_hello.ko"] != want {
		t.Errorf("after repair: %v", got)
	}

	// A real file in weak-updates is the administrator's: never replaced or removed.
	if err := e.RemoveKMP(hello.Package); err != nil {
		t.Fatal(err)
	}
	if got := links(t, root, r54); len(got) != 0 {
		t.Errorf("links left after remove-kmp: %v", got)
	}
	if strings.Contains(modulesDep(t, root, r54), "kmpack_hello") {
		t.Errorf("depmod not rerun after remove-kmp")
	}
	real := filepath.Join(wu, "kmpack-hello/kmpack_hello.ko")
	os.MkdirAll(filepath.Dir(real), 0o755)
	os.WriteFile(real, []byte("admin's"), 0o644)
	if err := e.AddKMP(hello); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(real); string(b) != "admin's" {
		t.Errorf("a real file was replaced")
	}
	os.Remove(real)

	// The same package for 54 itself: 54 uses its own build, so no link for it.
	hello54 := install(t, root, "kmpack-hello", "1.0-1", r54, builtModules(t, "hello", r54))
	if err := e.AddKMP(hello54); err != nil {
		t.Fatal(err)
	}
	if got := links(t, root, r54); len(got) != 0 {
		t.Errorf("54 has its own build, yet: %v", got)
	}
	if got := links(t, root, r53); len(got) != 0 {
		t.Errorf("53 has its own build, yet: %v", got)
	}

	// Kernel removal drops its weak-updates.
	if err := e.RemoveKMP(hello54.Package); err != nil {
		t.Fatal(err)
	}
	if len(links(t, root, r54)) != 1 {
		t.Fatalf("53's build not relinked into 54 after 54's own build left")
	}
	os.RemoveAll(filepath.Join(root, "lib/modules", r54, "kernel"))
	if err := e.RemoveKernel(r54); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(wu); err == nil {
		t.Errorf("removed kernel's weak-updates left behind")
	}
}

// Concurrent runs (two packages' maintainer scripts, a kernel hook) serialize on the lock and
// leave the state one run alone would.
func TestEngineConcurrentRuns(t *testing.T) {
	testenv.Need(t, "depmod")
	r53, r54 := testenv.Release53, testenv.Release54
	root := systemRoot(t, r53, r54)
	hello := install(t, root, "kmpack-hello", "1.0-1", r53, builtModules(t, "hello", r53))
	abi := install(t, root, "kmpack-abichange", "1.0-1", r53, builtModules(t, "abi", r53))
	errs := make(chan error, 3)
	for _, run := range []func(*weakupdates.Engine) error{
		func(e *weakupdates.Engine) error { return e.AddKMP(hello) },
		func(e *weakupdates.Engine) error { return e.AddKMP(abi) },
		func(e *weakupdates.Engine) error { return e.AddKernel(r54) },
	} {
		go func() { errs <- run(&weakupdates.Engine{Root: root}) }()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := links(t, root, r54); len(got) != 1 || got["kmpack-hello/kmpack_hello.ko"] == "" {
		t.Errorf("after concurrent runs: %v", got)
	}
	if !strings.Contains(modulesDep(t, root, r54), "weak-updates/kmpack-hello/kmpack_hello.ko:") {
		t.Errorf("modules.dep does not have the link")
	}
}

// TestInstalledModulesDefault: add-kmp with no modules named takes the debian layout's
// updates/<name>/ under the root, and says so (an input error) when there is nothing there.
func TestInstalledModulesDefault(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "lib/modules/6.1.0-53-amd64/updates/acme")
	os.MkdirAll(dir, 0o755)
	for _, f := range []string{"b.ko", "a.ko.xz", "README"} {
		os.WriteFile(filepath.Join(dir, f), nil, 0o644)
	}
	e := &weakupdates.Engine{Root: root}
	mods, err := e.InstalledModules(weakupdates.KMP{Name: "acme", Package: "acme-modules-6.1.0-53-amd64", Kernel: "6.1.0-53-amd64"})
	want := []string{"/lib/modules/6.1.0-53-amd64/updates/acme/a.ko.xz", "/lib/modules/6.1.0-53-amd64/updates/acme/b.ko"}
	if err != nil || !slices.Equal(mods, want) {
		t.Fatalf("got %v %v, want %v", mods, err, want)
	}
	_, err = e.InstalledModules(weakupdates.KMP{Name: "other", Package: "other-modules", Kernel: "6.1.0-53-amd64"})
	if err == nil || !kmp.IsInputError(err) || !strings.Contains(err.Error(), "none in /lib/modules/6.1.0-53-amd64/updates/other") {
		t.Fatalf("empty: %v", err)
	}
	if _, err := e.InstalledModules(weakupdates.KMP{Name: "../../x", Package: "p", Kernel: "6.1.0-53-amd64"}); err == nil || !kmp.IsInputError(err) {
		t.Fatalf("hostile name: %v", err)
	}
}
