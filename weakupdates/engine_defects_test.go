package weakupdates_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/weakupdates"
)

var (
	modCacheMu sync.Mutex
	modCache   = map[string][]string{}
)

// cachedModules builds a test module once per test binary and returns copies of its files.
func cachedModules(t *testing.T, name, release string) []string {
	t.Helper()
	modCacheMu.Lock()
	defer modCacheMu.Unlock()
	key := name + "@" + release
	if modCache[key] == nil {
		dir, err := os.MkdirTemp("", "kmpack-wu-mods-")
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range builtModules(t, name, release) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(dir, filepath.Base(f))
			if err := os.WriteFile(dst, b, 0o644); err != nil {
				t.Fatal(err)
			}
			modCache[key] = append(modCache[key], dst)
		}
	}
	return modCache[key]
}

// helloSystem is a root with Debian's 53 and 54 kernels and the hello module built for 53
// installed (not registered), with an engine whose log and warnings the test reads.
type helloSystem struct {
	root      string
	e         *weakupdates.Engine
	log, warn *bytes.Buffer
	hello     weakupdates.KMP
}

func newHelloSystem(t *testing.T, root string) *helloSystem {
	t.Helper()
	testenv.Need(t, "depmod")
	for _, rel := range []string{testenv.Release53, testenv.Release54} {
		testenv.InstallKernel(t, root, rel)
	}
	s := &helloSystem{root: root, log: &bytes.Buffer{}, warn: &bytes.Buffer{}}
	s.e = &weakupdates.Engine{Root: root, Log: s.log, Warn: s.warn}
	s.hello = install(t, root, "kmpack-hello", "1.0-1", testenv.Release53, cachedModules(t, "hello", testenv.Release53))
	return s
}

func (s *helloSystem) wu() string {
	return filepath.Join(s.root, "lib/modules", testenv.Release54, "weak-updates")
}

// tree lists everything under root with what would show a change.
func tree(t *testing.T, root string) string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return nil
		}
		target, _ := os.Readlink(p)
		out = append(out, fmt.Sprintf("%s %v %d %d %s", strings.TrimPrefix(p, root), fi.Mode(), fi.Size(), fi.ModTime().UnixNano(), target))
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// treeDiff lists the lines of two trees that differ ("" when none do).
func treeDiff(before, after string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	b, a := in(before), in(after)
	var out []string
	for l := range b {
		if !a[l] {
			out = append(out, "- "+l)
		}
	}
	for l := range a {
		if !b[l] {
			out = append(out, "+ "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// Kernel releases and package names from the command line become paths: names that climb out
// of --root are refused, and nothing outside is removed.
func TestEngineRefusesNamesLeavingRoot(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	os.MkdirAll(filepath.Join(root, "lib/modules"), 0o755)
	os.MkdirAll(filepath.Join(root, "var/lib/kmpack/weak-updates/kmps"), 0o755)
	victim := filepath.Join(parent, "victim/weak-updates/keep")
	os.MkdirAll(filepath.Dir(victim), 0o755)
	os.WriteFile(victim, nil, 0o644)
	e := &weakupdates.Engine{Root: root, Warn: &bytes.Buffer{}}
	if err := e.RemoveKernel("../../../victim"); err == nil || !strings.Contains(err.Error(), "invalid kernel release") {
		t.Errorf("remove-kernel ../../../victim: %v", err)
	}
	if err := e.AddKernel("../x"); err == nil || !strings.Contains(err.Error(), "invalid kernel release") {
		t.Errorf("add-kernel ../x: %v", err)
	}
	for _, pkg := range []string{"../../../../etc/x", "../../../../../../victim/x"} {
		f := filepath.Join(root, "var/lib/kmpack/weak-updates/kmps", pkg+".json")
		os.MkdirAll(filepath.Dir(f), 0o755)
		os.WriteFile(f, []byte("{}"), 0o644)
		if err := e.RemoveKMP(pkg); err == nil || !strings.Contains(err.Error(), "invalid package name") {
			t.Errorf("remove-kmp %s: %v", pkg, err)
		}
		if _, err := os.Stat(f); err != nil {
			t.Errorf("remove-kmp %s removed %s", pkg, f)
		}
	}
	if err := e.AddKMP(weakupdates.KMP{Name: "x", Package: "../x", Version: "1", Kernel: "k", Modules: []string{"/lib/modules/k/updates/x.ko"}}); err == nil ||
		!strings.Contains(err.Error(), "invalid package name") {
		t.Errorf("add-kmp of package ../x: %v", err)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("a file outside the root was removed: %v", err)
	}
}

// A dry run prints the changes the real run makes and writes nothing, not even the lock.
func TestEngineDryRun(t *testing.T) {
	s := newHelloSystem(t, t.TempDir())
	link := "link /lib/modules/" + testenv.Release54 + "/weak-updates/kmpack-hello/kmpack_hello.ko -> /lib/modules/" + testenv.Release53 + "/updates/kmpack-hello/kmpack_hello.ko"
	dry := &weakupdates.Engine{Root: s.root, DryRun: true, Log: s.log, Warn: s.warn}
	before := tree(t, s.root)
	if err := dry.AddKMP(s.hello); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.log.String(), link) {
		t.Errorf("dry-run add-kmp does not print the link it would make:\n%s", s.log)
	}
	if d := treeDiff(before, tree(t, s.root)); d != "" {
		t.Errorf("dry-run add-kmp wrote:\n%s", d)
	}
	if err := s.e.AddKMP(s.hello); err != nil {
		t.Fatal(err)
	}
	before = tree(t, s.root)
	s.log.Reset()
	if err := dry.RemoveKMP(s.hello.Package); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.log.String(), "un"+link) {
		t.Errorf("dry-run remove-kmp does not print the link it would remove:\n%s", s.log)
	}
	if d := treeDiff(before, tree(t, s.root)); d != "" {
		t.Errorf("dry-run remove-kmp wrote:\n%s", d)
	}
}

// A package whose modules are in extra/ (not updates/) gets links in weak-updates/extra/,
// and its removal takes them away.
func TestEngineRemovesLinksOutsideUpdates(t *testing.T) {
	s := newHelloSystem(t, t.TempDir())
	r53 := testenv.Release53
	m := "/lib/modules/" + r53 + "/extra/kmpack_hello.ko"
	os.MkdirAll(filepath.Join(s.root, filepath.Dir(m)), 0o755)
	if err := os.Rename(filepath.Join(s.root, s.hello.Modules[0]), filepath.Join(s.root, m)); err != nil {
		t.Fatal(err)
	}
	k := s.hello
	k.Modules = []string{m}
	if err := s.e.AddKMP(k); err != nil {
		t.Fatal(err)
	}
	if got := links(t, s.root, testenv.Release54); len(got) != 1 || got["extra/kmpack_hello.ko"] != m {
		t.Fatalf("links for a module in extra/: %v", got)
	}
	if err := s.e.RemoveKMP(k.Package); err != nil {
		t.Fatal(err)
	}
	if got := links(t, s.root, testenv.Release54); len(got) != 0 {
		t.Errorf("links left after remove-kmp: %v", got)
	}
	if _, err := os.Lstat(filepath.Join(s.wu(), "extra")); err == nil {
		t.Errorf("empty weak-updates/extra left behind")
	}
}

// Registrations that cannot be used are skipped with a warning naming each file; every
// command, kernel hooks included, goes on with the others.
func TestEngineSkipsBadRegistrations(t *testing.T) {
	s := newHelloSystem(t, t.TempDir())
	kmps := filepath.Join(s.root, "var/lib/kmpack/weak-updates/kmps")
	os.MkdirAll(filepath.Join(kmps, "dir.json"), 0o755)
	os.WriteFile(filepath.Join(kmps, "syntax.json"), []byte("{"), 0o644)
	os.WriteFile(filepath.Join(kmps, "other.json"), []byte(`{"name":"x","package":"x","version":"1","kernel":"k","modules":["/lib/modules/k/updates/x.ko"]}`), 0o644)
	if err := syscall.Mkfifo(filepath.Join(kmps, "fifo.json"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := []string{"dir.json", "syntax.json", "other.json", "fifo.json"}
	for _, run := range []struct {
		name string
		f    func() error
	}{
		{"add-kmp", func() error { return s.e.AddKMP(s.hello) }},
		{"add-kernel", func() error { return s.e.AddKernel(testenv.Release54) }},
		{"sync", s.e.Sync},
		{"status", func() error { _, err := s.e.Status(); return err }},
	} {
		s.warn.Reset()
		if err := run.f(); err != nil {
			t.Errorf("%s: %v", run.name, err)
		}
		for _, b := range bad {
			if !strings.Contains(s.warn.String(), "skipping registration "+filepath.Join(kmps, b)) {
				t.Errorf("%s: no warning naming %s:\n%s", run.name, b, s.warn)
			}
		}
		if got := links(t, s.root, testenv.Release54); len(got) != 1 {
			t.Errorf("%s: 54's links: %v", run.name, got)
		}
	}
	if err := s.e.RemoveKMP("syntax"); err != nil {
		t.Errorf("remove-kmp of a malformed registration: %v", err)
	}
	if _, err := os.Stat(filepath.Join(kmps, "syntax.json")); err == nil {
		t.Errorf("remove-kmp left its malformed registration")
	}
	entries, _ := os.ReadDir(kmps)
	for _, d := range entries {
		if strings.HasSuffix(d.Name(), ".tmp") {
			t.Errorf("temporary file left: %s", d.Name())
		}
	}
}

// A registration whose module path climbs out of the root is refused: nothing outside the
// root is read or linked.
func TestEngineModulePathsStayInRoot(t *testing.T) {
	parent := t.TempDir()
	s := newHelloSystem(t, filepath.Join(parent, "root"))
	os.MkdirAll(filepath.Join(parent, "outside"), 0o755)
	if err := os.Rename(filepath.Join(s.root, s.hello.Modules[0]), filepath.Join(parent, "outside/kmpack_hello.ko")); err != nil {
		t.Fatal(err)
	}
	reg := filepath.Join(s.root, "var/lib/kmpack/weak-updates/kmps/evil.json")
	os.MkdirAll(filepath.Dir(reg), 0o755)
	os.WriteFile(reg, []byte(`{"name":"evil","package":"evil","version":"1.0-1","kernel":"`+testenv.Release53+
		`","modules":["/lib/modules/`+testenv.Release53+`/updates/../../../../../outside/kmpack_hello.ko"]}`), 0o644)
	if err := s.e.Sync(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.warn.String(), reg) {
		t.Errorf("no warning naming %s:\n%s", reg, s.warn)
	}
	filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSymlink != 0 {
			t.Errorf("link made: %s", p)
		}
		return nil
	})
	plans, _ := s.e.Status()
	for _, p := range plans {
		if len(p.Chosen) != 0 {
			t.Errorf("status of %s chose %v", p.Kernel, p.Chosen)
		}
	}
}

// A weak-updates directory that is a symbolic link, absolute (to the host) or relative, is
// refused: no link is made through it, the run says why and fails, and remove-kernel removes
// the link, not what it points to.
func TestEngineRefusesSymlinkedWeakUpdates(t *testing.T) {
	s := newHelloSystem(t, t.TempDir())
	outside := t.TempDir()
	inside := filepath.Join(s.root, "elsewhere")
	os.MkdirAll(inside, 0o755)
	for _, target := range []string{outside, "../../../elsewhere"} {
		os.Remove(s.wu())
		if err := os.Symlink(target, s.wu()); err != nil {
			t.Fatal(err)
		}
		s.warn.Reset()
		if err := s.e.AddKMP(s.hello); err == nil {
			t.Errorf("weak-updates -> %s: no error", target)
		}
		if !strings.Contains(s.warn.String(), s.wu()+" is a symbolic link") {
			t.Errorf("weak-updates -> %s: warning: %s", target, s.warn)
		}
		for _, d := range []string{outside, inside} {
			if entries, _ := os.ReadDir(d); len(entries) != 0 {
				t.Errorf("weak-updates -> %s: %s got %v", target, d, entries)
			}
		}
		plans, _ := s.e.Status()
		for _, p := range plans {
			if p.Kernel == testenv.Release54 && !strings.Contains(strings.Join(p.Unlinked["kmpack-hello"], " "), "symbolic link") {
				t.Errorf("status does not say why nothing is linked: %+v", p)
			}
		}
	}
	os.WriteFile(filepath.Join(inside, "keep"), nil, 0o644)
	os.RemoveAll(filepath.Join(s.root, "lib/modules", testenv.Release54, "kernel"))
	if err := s.e.RemoveKernel(testenv.Release54); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(s.wu()); err == nil {
		t.Errorf("remove-kernel left the weak-updates link")
	}
	if _, err := os.Stat(filepath.Join(inside, "keep")); err != nil {
		t.Errorf("remove-kernel removed what weak-updates pointed to")
	}
}

// A real file where a link belongs is never replaced, and status says the build is not
// linked and why.
func TestEngineStatusTellsRealFiles(t *testing.T) {
	s := newHelloSystem(t, t.TempDir())
	if err := s.e.AddKMP(s.hello); err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(s.wu(), "kmpack-hello/kmpack_hello.ko")
	os.Remove(real)
	os.WriteFile(real, []byte("admin's"), 0o644)
	if err := s.e.Sync(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(real); string(b) != "admin's" {
		t.Errorf("a real file was replaced")
	}
	plans, err := s.e.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range plans {
		if p.Kernel == testenv.Release54 && !strings.Contains(strings.Join(p.Unlinked["kmpack-hello"], " "), "is a real file") {
			t.Errorf("status does not tell the real file: %+v", p)
		}
	}
	os.Remove(real)
	plans, _ = s.e.Status()
	for _, p := range plans {
		if p.Kernel == testenv.Release54 && !strings.Contains(strings.Join(p.Unlinked["kmpack-hello"], " "), "missing") {
			t.Errorf("status does not tell the missing link: %+v", p)
		}
	}
}

// A stray file where a package's directory belongs skips that package's links with a
// warning; the others are linked.
func TestEngineStrayFileInWeakUpdates(t *testing.T) {
	s := newHelloSystem(t, t.TempDir())
	hello2 := install(t, s.root, "kmpack-hello2", "1.0-1", testenv.Release53, cachedModules(t, "hello", testenv.Release53))
	os.MkdirAll(s.wu(), 0o755)
	stray := filepath.Join(s.wu(), "kmpack-hello")
	os.WriteFile(stray, []byte("stray"), 0o644)
	for _, k := range []weakupdates.KMP{s.hello, hello2} {
		if err := s.e.AddKMP(k); err != nil {
			t.Errorf("add-kmp %s: %v", k.Package, err)
		}
	}
	if got := links(t, s.root, testenv.Release54); len(got) != 1 || got["kmpack-hello2/kmpack_hello.ko"] == "" {
		t.Errorf("54's links: %v", got)
	}
	if b, _ := os.ReadFile(stray); string(b) != "stray" {
		t.Errorf("the stray file was touched")
	}
	if !strings.Contains(s.warn.String(), stray+" is not a directory") {
		t.Errorf("no warning naming %s:\n%s", stray, s.warn)
	}
}

// A FIFO named like a module neither hangs add-kmp nor later runs; a run that cannot get the
// lock gives up after the timeout with a clear error.
func TestEngineFIFOModuleAndLockTimeout(t *testing.T) {
	root := t.TempDir()
	rel := testenv.Release53
	m := "/lib/modules/" + rel + "/updates/kmpack-fifo/kmpack_fifo.ko"
	os.MkdirAll(filepath.Join(root, filepath.Dir(m)), 0o755)
	if err := syscall.Mkfifo(filepath.Join(root, m), 0o644); err != nil {
		t.Fatal(err)
	}
	var warn bytes.Buffer
	e := &weakupdates.Engine{Root: root, Warn: &warn}
	k := weakupdates.KMP{Name: "kmpack-fifo", Package: "kmpack-fifo-modules", Version: "1.0-1", Kernel: rel, Modules: []string{m}}
	for _, run := range []func() error{func() error { return e.AddKMP(k) }, e.Sync} {
		done := make(chan error, 1)
		go func() { done <- run() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a FIFO module hangs the engine")
		}
	}
	if !strings.Contains(warn.String(), filepath.Join(root, m)+": ") || !strings.Contains(warn.String(), "not a regular file") {
		t.Errorf("no warning about the FIFO: %s", warn.String())
	}

	f, err := os.Open(filepath.Join(root, "var/lib/kmpack/weak-updates/lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.LockTimeout = 300 * time.Millisecond
	if err := e.Sync(); err == nil || !strings.Contains(err.Error(), "still holds the lock") {
		t.Errorf("sync while the lock is held: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v", d)
	}
}

// The newest build is the newest in dpkg's order: 1.0-1 over 1.0~rc1-1, an epoch over any
// version without one.
func TestEngineNewestFollowsPackageVersions(t *testing.T) {
	s := newHelloSystem(t, t.TempDir())
	chosen := func() string {
		t.Helper()
		plans, err := s.e.Status()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range plans {
			if p.Kernel == testenv.Release54 {
				return p.Chosen["kmpack-hello"]
			}
		}
		return ""
	}
	reg := func(pkg, version string) {
		t.Helper()
		k := s.hello
		k.Package, k.Version = pkg, version
		if err := s.e.AddKMP(k); err != nil {
			t.Fatal(err)
		}
	}
	reg("kmpack-hello-final", "1.0-1")
	if b, _ := os.ReadFile(filepath.Join(s.root, "var/lib/kmpack/weak-updates/kmps/kmpack-hello-final.json")); !strings.Contains(string(b), `"format": "deb"`) {
		t.Errorf("the registration does not record its package format:\n%s", b)
	}
	reg("kmpack-hello-rc", "1.0~rc1-1")
	if c := chosen(); !strings.HasPrefix(c, "kmpack-hello-final 1.0-1 ") {
		t.Errorf("chosen: %s, want 1.0-1 over 1.0~rc1-1", c)
	}
	reg("kmpack-hello-epoch", "1:0.9-1")
	if c := chosen(); !strings.HasPrefix(c, "kmpack-hello-epoch 1:0.9-1 ") {
		t.Errorf("chosen: %s, want 1:0.9-1 over 1.0-1", c)
	}
}

// A kernel's directory, lib/modules/<release>, that is a symbolic link is refused:
// remove-kernel does not empty the weak-updates of the directory it points to (real files
// included) nor remove the link, and sync makes no links through it; both warn and fail.
func TestEngineRefusesSymlinkedKernelDir(t *testing.T) {
	s := newHelloSystem(t, t.TempDir())
	const gone = "6.1.0-99-amd64"
	vendor := filepath.Join(s.root, "opt/vendor")
	if err := os.MkdirAll(filepath.Join(vendor, "weak-updates"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(vendor, "weak-updates", "real-file"), []byte("keep"), 0o644)
	link := filepath.Join(s.root, "lib/modules", gone)
	if err := os.Symlink("../../opt/vendor", link); err != nil {
		t.Fatal(err)
	}
	before := tree(t, vendor)
	err := s.e.RemoveKernel(gone)
	if err == nil {
		t.Errorf("remove-kernel through a symlinked kernel directory: no error")
	}
	if !strings.Contains(s.warn.String(), link+" is a symbolic link") {
		t.Errorf("remove-kernel: warning: %q", s.warn)
	}
	if d := treeDiff(before, tree(t, vendor)); d != "" {
		t.Errorf("remove-kernel changed what %s points to:\n%s", link, d)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("remove-kernel removed the kernel directory link (%v)", err)
	}

	// A symlinked kernel directory with a kernel in it (here, a sibling's) is not linked into.
	os.Remove(link)
	if err := os.Symlink(testenv.Release54, link); err != nil {
		t.Fatal(err)
	}
	s.warn.Reset()
	if err := s.e.AddKMP(s.hello); err == nil {
		t.Errorf("add-kmp with a symlinked kernel directory: no error")
	}
	if !strings.Contains(s.warn.String(), link+" is a symbolic link") {
		t.Errorf("add-kmp: warning: %q", s.warn)
	}
	if _, err := os.Lstat(link + "/weak-updates/" + gone); err == nil {
		t.Errorf("add-kmp made links through the symlinked kernel directory")
	}
}
