package build_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"

	"golang.org/x/sys/unix"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/source"
)

const helloConf = "PACKAGE_NAME=hello\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=kmpack_hello\nDEST_MODULE_LOCATION=/updates\n"

// dkmsSource is the example module with the dkms.conf helloConf+extra.
func dkmsSource(t *testing.T, extra string) string {
	t.Helper()
	dir := testenv.ExampleSource(t, false)
	if err := os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte(helloConf+extra), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// privateTmp gives the test a TMPDIR of its own (workspaces go there), and returns it.
func privateTmp(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	t.Setenv("TMPDIR", d)
	return d
}

func cacheEntries(t *testing.T, cache string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(cache, "builds", "[0-9a-f]*"))
	return m
}

func mustJSON(t *testing.T, p string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(testenv.MustRead(t, p), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func writeJSONFile(t *testing.T, p string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A cache entry is checked before use: a result.json naming a path outside the output, or a
// cached module that no longer matches its digest, is a miss that is rebuilt and repaired.
func TestBuildCacheEntriesAreVerified(t *testing.T) {
	privateTmp(t)
	trees := testenv.KernelTrees(t, testenv.Release53)
	src := testenv.ExampleSource(t, true)
	cache := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	m, err := runBuild(t, src, trees, build.BuildOptions{CacheDir: cache, OutputDir: out})
	if err != nil {
		t.Fatal(err)
	}
	good := m.Kernels[0].Modules[0].SHA256
	entries := cacheEntries(t, cache)
	if len(entries) != 1 {
		t.Fatalf("cache entries %v", entries)
	}
	entry := entries[0]
	var warnings []string
	rebuild := func(what string) *manifest.KernelBuild {
		t.Helper()
		warnings = nil
		m, err := runBuild(t, src, trees, build.BuildOptions{CacheDir: cache, OutputDir: out,
			Warn: func(s string) { warnings = append(warnings, s) }})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		k := m.Kernels[0]
		if fileSHA(t, filepath.Join(out, k.Modules[0].File)) != k.Modules[0].SHA256 || k.Modules[0].SHA256 != good {
			t.Errorf("%s: the output's module does not match the manifest's sha256", what)
		}
		return k
	}

	// A result.json whose module file climbs out of the output.
	escape := filepath.Join(t.TempDir(), filepath.Base(m.Kernels[0].Modules[0].File))
	rel, _ := filepath.Rel(out, escape)
	res := mustJSON(t, filepath.Join(entry, "result.json"))
	orig := testenv.MustRead(t, filepath.Join(entry, "result.json"))
	mods := res["result"].(map[string]any)["modules"].([]any)
	mods[0].(map[string]any)["file"] = rel
	writeJSONFile(t, filepath.Join(entry, "result.json"), res)
	if k := rebuild("escaping result.json"); k.Cached {
		t.Error("escaping result.json: served from the cache")
	}
	if _, err := os.Stat(escape); err == nil {
		t.Errorf("a cached result.json wrote %s, outside the output", escape)
	}
	if len(warnings) == 0 || !strings.Contains(warnings[0], "unusable") {
		t.Errorf("no warning about the bad entry: %v", warnings)
	}
	if k := rebuild("repaired entry"); !k.Cached {
		t.Error("the bad entry was not replaced by the rebuild's result")
	}
	if b := testenv.MustRead(t, filepath.Join(entry, "result.json")); string(b) == string(orig) {
		t.Error("the bad entry was not rewritten")
	}

	// A truncated cached module.
	files, _ := filepath.Glob(filepath.Join(entry, "files", "*.ko*"))
	if len(files) != 1 {
		t.Fatalf("cached files %v", files)
	}
	data := testenv.MustRead(t, files[0])
	os.WriteFile(files[0], data[:len(data)/2], 0o644)
	if k := rebuild("truncated module"); k.Cached {
		t.Error("a truncated cached module was used")
	}
	if k := rebuild("repaired entry"); !k.Cached {
		t.Error("the truncated entry was not repaired")
	}

	// A module file in the entry that is a symlink to a file outside it.
	os.Remove(files[0])
	outside := filepath.Join(t.TempDir(), "outside.ko")
	os.WriteFile(outside, data, 0o644)
	os.Symlink(outside, files[0])
	if k := rebuild("symlinked module"); k.Cached {
		t.Error("a cached module reached through a symlink out of the entry was used")
	}

	// A result.json that is a FIFO (the old code blocked on it forever) and one whose text
	// would paint the terminal: both are bad entries, rebuilt.
	rj := filepath.Join(entry, "result.json")
	os.Remove(rj)
	syscall.Mkfifo(rj, 0o644)
	done := make(chan *manifest.KernelBuild, 1)
	go func() { done <- rebuild("FIFO result.json") }()
	select {
	case k := <-done:
		if k.Cached {
			t.Error("a FIFO result.json was used")
		}
	case <-time.After(5 * time.Minute):
		t.Fatal("a FIFO result.json hangs the build")
	}
	res = mustJSON(t, rj)
	res["result"].(map[string]any)["warnings"] = []any{"ok\n\x1b[2J\x1b[31mFAKE: all kernels built fine"}
	writeJSONFile(t, rj, res)
	if k := rebuild("terminal escapes in result.json"); k.Cached || strings.ContainsFunc(strings.Join(k.Warnings, ""), unicode.IsControl) {
		t.Errorf("a result.json with control characters was used: %q", k.Warnings)
	}
}

// TestBuildTreeIdentityIsContained: the tree files hashed into the cache key are read through
// the tree's os.Root: a FIFO there is an input error, not a hang; a link out of the tree is
// not followed.
func TestBuildTreeIdentityIsContained(t *testing.T) {
	privateTmp(t)
	dir := filepath.Join(t.TempDir(), "tree")
	testenv.CopyTreeDereferenced(t, testenv.HeadersDir(t, testenv.Release53), dir)
	tree, err := kernel.OpenKernelTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, plant := range map[string]func(p string){
		"FIFO":          func(p string) { syscall.Mkfifo(p, 0o644) },
		"link to zeros": func(p string) { os.Symlink("/dev/zero", p) },
	} {
		p := filepath.Join(dir, "include/generated/compile.h")
		os.Remove(p)
		plant(p)
		done := make(chan error, 1)
		go func() {
			_, err := runBuild(t, testenv.ExampleSource(t, true), []*kernel.KernelTree{tree},
				build.BuildOptions{OutputDir: filepath.Join(t.TempDir(), "out"), CacheDir: t.TempDir()})
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "compile.h") {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(3 * time.Minute):
			t.Fatalf("%s: the build hangs on the tree", name)
		}
	}
}

// A failure is cached with its cause; a --no-cache (Refresh) success replaces it; temporary
// causes (a signal, ENOSPC) are never cached.
func TestBuildFailuresAreNotPermanent(t *testing.T) {
	privateTmp(t)
	trees := testenv.KernelTrees(t, testenv.Release53)
	flag := filepath.Join(t.TempDir(), "fail")
	os.WriteFile(flag, nil, 0o644)
	// The build fails while a file outside the source (so outside the cache key) exists.
	src := dkmsSource(t, `MAKE="test ! -e '`+flag+`' && make -C ${kernel_source_dir} M=${dkms_tree}/hello/1/build"`+"\n")
	cache := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	run := func(refresh bool) *manifest.KernelBuild {
		t.Helper()
		m, err := runBuild(t, src, trees, build.BuildOptions{CacheDir: cache, OutputDir: out, Refresh: refresh})
		if err != nil && !errors.Is(err, build.ErrBuildFailed) {
			t.Fatal(err)
		}
		return m.Kernels[0]
	}
	if k := run(false); k.Status != manifest.StatusFailed || k.FailureKind != build.FailureBuild {
		t.Fatalf("first build: %s %q %q", k.Status, k.Reason, k.FailureKind)
	}
	if k := run(false); !k.Cached || k.Status != manifest.StatusFailed {
		t.Errorf("an unchanged re-run did not reuse the cached failure: %+v", k)
	}
	os.Remove(flag)
	if k := run(true); k.Status != manifest.StatusBuilt || k.Cached {
		t.Fatalf("--no-cache after the cause went: %s %s", k.Status, k.Reason)
	}
	if k := run(false); k.Status != manifest.StatusBuilt || !k.Cached {
		t.Errorf("the --no-cache success did not replace the cached failure: %s cached=%v %s", k.Status, k.Cached, k.Reason)
	}

	for name, cmd := range map[string]string{
		"signal": `kill -KILL $$`,
		"enospc": `echo "cc1: error: write: No space left on device" >&2; exit 1`,
	} {
		src := dkmsSource(t, "MAKE='"+cmd+"'\n")
		cache := t.TempDir()
		for i := range 2 {
			m, err := runBuild(t, src, trees, build.BuildOptions{CacheDir: cache, OutputDir: filepath.Join(t.TempDir(), "out")})
			if !errors.Is(err, build.ErrBuildFailed) {
				t.Fatalf("%s: %v", name, err)
			}
			k := m.Kernels[0]
			if k.Cached || k.FailureKind != build.FailureTemporary {
				t.Errorf("%s run %d: cached=%v kind %q (%s)", name, i, k.Cached, k.FailureKind, k.Reason)
			}
		}
		if e := cacheEntries(t, cache); len(e) != 0 {
			t.Errorf("%s: a temporary failure was cached: %v", name, e)
		}
	}
}

// Only kmpack's own outputs are replaced: a directory holding someone's manifest.json is not.
func TestBuildRefusesForeignManifest(t *testing.T) {
	privateTmp(t)
	trees := testenv.KernelTrees(t, testenv.Release53)
	src := testenv.ExampleSource(t, true)
	mine := filepath.Join(t.TempDir(), "mine")
	os.MkdirAll(mine, 0o755)
	os.WriteFile(filepath.Join(mine, "manifest.json"), []byte(`{"name":"my web app","version":"3"}`), 0o644)
	os.WriteFile(filepath.Join(mine, "precious"), []byte("x"), 0o644)
	_, err := runBuild(t, src, trees, build.BuildOptions{OutputDir: mine})
	if !kmp.IsInputError(err) || !strings.Contains(err.Error(), "refusing") || strings.Contains(err.Error(), "\n") {
		t.Errorf("foreign manifest.json: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mine, "precious")); err != nil {
		t.Error("a directory with a foreign manifest.json was replaced")
	}
	// kmpack's own output is recognised by content and replaced.
	out := filepath.Join(t.TempDir(), "out")
	if _, err := runBuild(t, src, trees, build.BuildOptions{OutputDir: out}); err != nil {
		t.Fatal(err)
	}
	if m := mustJSON(t, filepath.Join(out, "manifest.json")); m["format"] != manifest.OutputFormat || m["formatVersion"] != float64(manifest.OutputFormatVersion) {
		t.Errorf("manifest has no format marker: %v %v", m["format"], m["formatVersion"])
	}
	if _, err := runBuild(t, src, trees, build.BuildOptions{OutputDir: out}); err != nil {
		t.Errorf("replacing kmpack's own output: %v", err)
	}
}

// A second build into an output that another holds fails at once and touches nothing.
func TestBuildOutputLock(t *testing.T) {
	privateTmp(t)
	trees := testenv.KernelTrees(t, testenv.Release53)
	parent := t.TempDir()
	out := filepath.Join(parent, "out")
	lock, err := os.OpenFile(filepath.Join(parent, ".out.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	_, err = runBuild(t, testenv.ExampleSource(t, true), trees, build.BuildOptions{OutputDir: out})
	if !errors.Is(err, build.ErrOutputLocked) {
		t.Errorf("locked output: %v", err)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 1 {
		t.Errorf("a build into a locked output left %v", entries)
	}
	unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	if _, err := runBuild(t, testenv.ExampleSource(t, true), trees, build.BuildOptions{OutputDir: out}); err != nil {
		t.Errorf("after the lock was released: %v", err)
	}
	if _, err := os.Stat(filepath.Join(parent, ".out.lock")); err == nil {
		// The holder removes the file when done; only the test's own handle kept it.
		t.Log("lock file still there (held by the test's handle)")
	}
}

// deadPid is the pid of a process that has exited.
func deadPid(t *testing.T) int {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// What a kmpack killed with -9 left (workspaces, staging directories, the make it started) is
// cleaned by the next build; what a live kmpack holds is not.
func TestBuildCleansWhatDeadRunsLeft(t *testing.T) {
	tmp := privateTmp(t)
	trees := testenv.KernelTrees(t, testenv.Release53)
	parent := t.TempDir()
	out := filepath.Join(parent, "out")
	dead := strconv.Itoa(deadPid(t))
	staleWork := filepath.Join(tmp, "kmpack-build-"+dead+"-123")
	staleStage := filepath.Join(parent, ".out.tmp-"+dead+"-456")
	liveWork := filepath.Join(tmp, "kmpack-build-1-789") // pid 1 is alive
	for _, d := range []string{staleWork, staleStage, liveWork} {
		os.MkdirAll(filepath.Join(d, "x"), 0o755)
	}
	orphan := exec.Command("sleep", "300")
	orphan.Env = append(os.Environ(), "KMPACK_WORK="+staleWork)
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- orphan.Wait() }()
	t.Cleanup(func() { orphan.Process.Kill() })

	if _, err := runBuild(t, testenv.ExampleSource(t, true), trees, build.BuildOptions{OutputDir: out}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{staleWork, staleStage} {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s was not cleaned", d)
		}
	}
	if _, err := os.Stat(liveWork); err != nil {
		t.Errorf("a live kmpack's workspace was removed")
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("the orphaned build process of the dead kmpack was not killed")
	}
	if m, _ := filepath.Glob(filepath.Join(tmp, "kmpack-build-*")); len(m) != 1 {
		t.Errorf("workspaces left: %v", m)
	}
}

// Cancelling a build kills its process groups (a make's children and background jobs too),
// returns at once, and leaves no output, stage or workspace.
func TestBuildCancelKillsEverything(t *testing.T) {
	tmp := privateTmp(t)
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release54)
	marker := "kmpack-test-" + strconv.Itoa(os.Getpid())
	src := dkmsSource(t, `MAKE="bash -c 'sleep 300; true' `+marker+` & bash -c 'sleep 301; true' `+marker+`"`+"\n")
	parent := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := source.OpenSource(src)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := build.Build(ctx, s, trees, build.BuildOptions{Jobs: 2, OutputDir: filepath.Join(parent, "out")})
		done <- err
	}()
	waitFor(t, marker)
	start := time.Now()
	cancel()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a cancelled build did not return")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled build: %v", err)
	}
	if el := time.Since(start); el > 15*time.Second {
		t.Errorf("cancel took %v", el)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Errorf("cancelled build left %v", entries)
	}
	if m, _ := filepath.Glob(filepath.Join(tmp, "kmpack-build-*")); len(m) != 0 {
		t.Errorf("cancelled build left workspaces %v", m)
	}
	time.Sleep(200 * time.Millisecond)
	if out, _ := exec.Command("pgrep", "-f", marker).Output(); len(out) != 0 {
		t.Errorf("processes survived the cancel: %s", out)
	}
}

// A dkms.conf that leaves a background job, or floods stderr, does not hang kmpack or cost it
// memory; a blank PRE_BUILD does not panic.
func TestDKMSConfEvaluationIsContained(t *testing.T) {
	privateTmp(t)
	trees := testenv.KernelTrees(t, testenv.Release53)
	marker := "kmpack-eval-" + strconv.Itoa(os.Getpid())
	// A background job (named by marker, so pgrep finds it) and 100 MB on stderr.
	dir := dkmsSource(t, "bash -c 'sleep 300; true' "+marker+" &\nhead -c 100000000 /dev/zero >&2\n")
	done := make(chan struct{})
	var conf *source.DKMSConf
	var err error
	go func() {
		defer close(done)
		conf, err = source.EvalDKMSConf(context.Background(), filepath.Join(dir, "dkms.conf"), source.DKMSEnv{KernelVer: testenv.Release53, Dir: dir})
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("evaluating a dkms.conf that starts a background job did not return")
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(conf.Stderr) > 2<<20 || !strings.Contains(conf.Stderr, "not kept") {
		t.Errorf("stderr kept: %d bytes", len(conf.Stderr))
	}
	time.Sleep(200 * time.Millisecond)
	if out, _ := exec.Command("pgrep", "-f", marker).Output(); len(out) != 0 {
		t.Errorf("the dkms.conf's background job survived: %s", out)
	}

	// PRE_BUILD=" " used to panic in the build goroutine.
	out := filepath.Join(t.TempDir(), "out")
	m, err := runBuild(t, dkmsSource(t, `PRE_BUILD=" "`+"\n"), trees, build.BuildOptions{OutputDir: out})
	if err != nil || m.Summary.Built != 1 {
		t.Errorf("blank PRE_BUILD: %v", err)
	}
}

// The default dkms MAKE quotes the workspace path (TMPDIR may hold spaces or $(...)); the
// source is copied and patches read through os.Root, so a symlink chain cannot read host files.
func TestBuildWorkspaceAndSourceContainment(t *testing.T) {
	pwned := filepath.Join(t.TempDir(), "pwned")
	tmp := filepath.Join(t.TempDir(), "a b$(touch "+pwned+")")
	os.MkdirAll(tmp, 0o755)
	t.Setenv("TMPDIR", tmp)
	trees := testenv.KernelTrees(t, testenv.Release53)
	// Kbuild cannot build under such a path at all: a clear error, and nothing run.
	_, err := runBuild(t, dkmsSource(t, ""), trees, build.BuildOptions{OutputDir: filepath.Join(t.TempDir(), "out")})
	if !kmp.IsInputError(err) || !strings.Contains(err.Error(), "TMPDIR") {
		t.Errorf("TMPDIR with a space and $(...): %v", err)
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Error("the workspace path was run as a shell command")
	}
	// The default MAKE quotes what it names.
	t.Setenv("TMPDIR", t.TempDir())
	plan, err := dkmsPlanIn(t, dkmsSource(t, ""), trees[0], "/w s/$(x)")
	if err != nil || !strings.Contains(plan.Commands[0], "M='/w s/$(x)/dkms/hello/1/build'") {
		t.Errorf("default MAKE: %v %q", err, plan.Commands)
	}

	// A patch that is a symlink chain leading to a host file.
	secret := filepath.Join(t.TempDir(), "secret.patch")
	os.WriteFile(secret, []byte("--- /dev/null\n+++ b/stolen\n@@ -0,0 +1 @@\n+stolen\n"), 0o644)
	dir := dkmsSource(t, "PATCH[0]=p.patch\n")
	os.MkdirAll(filepath.Join(dir, "patches", "a", "b", "c"), 0o755)
	os.Symlink("../..", filepath.Join(dir, "patches", "a", "b", "c", "x"))
	os.Symlink("a/b/c/x/"+strings.Repeat("../", 40)+secret[1:], filepath.Join(dir, "patches", "p.patch"))
	os.Symlink(".", filepath.Join(dir, "self"))
	out := filepath.Join(t.TempDir(), "out")
	m, err := runBuild(t, dir, trees, build.BuildOptions{OutputDir: out})
	if !errors.Is(err, build.ErrBuildFailed) || !strings.Contains(m.Kernels[0].Reason, "patch") {
		t.Errorf("escaping patch symlink: %v %+v", err, m.Kernels[0])
	}
	if log := string(testenv.MustRead(t, filepath.Join(out, m.Kernels[0].Log))); strings.Contains(log, "stolen") {
		t.Errorf("patch read a host file:\n%s", log)
	}
}

// -j is bounded: the jobserver's tokens live in one pipe.
func TestBuildJobsBound(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release53)
	done := make(chan error, 1)
	go func() {
		_, err := runBuild(t, testenv.ExampleSource(t, true), trees, build.BuildOptions{Jobs: 65537, OutputDir: filepath.Join(t.TempDir(), "out")})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "at most 1024") {
			t.Errorf("-j 65537: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("-j 65537 hung")
	}
}

func dkmsPlanIn(t *testing.T, dir string, tree *kernel.KernelTree, root string) (*source.BuildPlan, error) {
	t.Helper()
	s, err := source.OpenSource(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Identify(context.Background(), tree, 1); err != nil {
		return nil, err
	}
	return s.Plan(context.Background(), tree, source.NewWorkspace(root, s.Name, s.Version), 1)
}

// waitFor waits until a process whose command line holds marker runs.
func waitFor(t *testing.T, marker string) {
	t.Helper()
	for i := 0; i < 300; i++ {
		if out, _ := exec.Command("pgrep", "-f", marker).Output(); len(out) > 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no process %s started", marker)
}

// A kernel whose build runs out of time fails alone (its processes killed, not cached); the
// other kernel is built; --keep-work keeps the workspace past the next build's clean-up.
func TestBuildTimeoutAndKeepWork(t *testing.T) {
	tmp := privateTmp(t)
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release612)
	marker := "kmpack-timeout-" + strconv.Itoa(os.Getpid())
	src := dkmsSource(t, `MAKE[1]="bash -c 'sleep 300; true' `+marker+`"`+"\nMAKE_MATCH[1]=^6.1.0\n")
	cache := t.TempDir()
	start := time.Now()
	m, err := runBuild(t, src, trees, build.BuildOptions{OutputDir: filepath.Join(t.TempDir(), "out"), CacheDir: cache,
		Timeout: 30 * time.Second, KeepWork: true})
	if !errors.Is(err, build.ErrBuildFailed) || time.Since(start) > 90*time.Second {
		t.Fatalf("%v after %v", err, time.Since(start))
	}
	k53, k612 := m.Kernels[0], m.Kernels[1]
	if k53.Status != manifest.StatusFailed || !strings.Contains(k53.Reason, "did not finish within 30s") || k53.FailureKind != build.FailureTemporary {
		t.Errorf("timed-out kernel: %s %q %q", k53.Status, k53.Reason, k53.FailureKind)
	}
	if k612.Status != manifest.StatusBuilt {
		t.Errorf("the other kernel: %s %s", k612.Status, k612.Reason)
	}
	if out, _ := exec.Command("pgrep", "-f", marker).Output(); len(out) != 0 {
		t.Errorf("the timed-out build's processes survived: %s", out)
	}
	kept, _ := filepath.Glob(filepath.Join(tmp, "kmpack-build-*"))
	if len(kept) != 1 {
		t.Fatalf("kept workspaces %v", kept)
	}
	if _, err := runBuild(t, testenv.ExampleSource(t, true), trees[1:], build.BuildOptions{OutputDir: filepath.Join(t.TempDir(), "out")}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kept[0]); err != nil {
		t.Errorf("the next build removed a --keep-work workspace: %v", err)
	}
}

// A panic in one kernel's build goroutine is an error, not a crash, and a fatal error stops
// the other kernels' builds (their process groups killed) instead of waiting for them.
func TestBuildFatalErrorCancelsOthers(t *testing.T) {
	tmp := privateTmp(t)
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release612)
	marker := "kmpack-fatal-" + strconv.Itoa(os.Getpid())
	src := dkmsSource(t, `MAKE[1]="bash -c 'sleep 300; true' `+marker+`"`+"\nMAKE_MATCH[1]=^6.12\n")
	parent := t.TempDir()
	start := time.Now()
	_, err := runBuild(t, src, trees, build.BuildOptions{OutputDir: filepath.Join(parent, "out"),
		Progress: func(ev build.ProgressEvent) {
			if ev.Release == testenv.Release53 && ev.Status == manifest.StatusBuilt {
				waitFor(t, marker) // the other kernel is building
				panic("injected")
			}
		}})
	if err == nil || !strings.Contains(err.Error(), "internal error building for "+testenv.Release53+": injected") {
		t.Errorf("panic in a build goroutine: %v", err)
	}
	if el := time.Since(start); el > 90*time.Second {
		t.Errorf("the fatal error did not stop the other kernel's build (%v)", el)
	}
	if out, _ := exec.Command("pgrep", "-f", marker).Output(); len(out) != 0 {
		t.Errorf("the other kernel's processes survived: %s", out)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Errorf("left %v", entries)
	}
	if m, _ := filepath.Glob(filepath.Join(tmp, "kmpack-build-*")); len(m) != 0 {
		t.Errorf("left workspaces %v", m)
	}
}

// A build that floods its output gets a capped log (and so a cacheable entry).
func TestBuildLogIsCapped(t *testing.T) {
	privateTmp(t)
	trees := testenv.KernelTrees(t, testenv.Release53)
	src := dkmsSource(t, `MAKE="head -c 100000000 /dev/zero | tr '\\0' x; exit 1"`+"\n")
	out := filepath.Join(t.TempDir(), "out")
	m, err := runBuild(t, src, trees, build.BuildOptions{OutputDir: out})
	if !errors.Is(err, build.ErrBuildFailed) {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(out, m.Kernels[0].Log))
	if err != nil || fi.Size() > build.BuildLogLimit+4096 {
		t.Errorf("log: %v, %d bytes", err, fi.Size())
	}
	if !strings.Contains(strings.Join(m.Kernels[0].LogTail, "\n"), "more bytes of output not logged") {
		t.Errorf("no truncation note: %q", m.Kernels[0].LogTail)
	}
}
