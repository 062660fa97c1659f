package main

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/manifest"
)

// A build sharded over two runners (two caches), merged, packages byte for byte as the
// single build of every kernel does; the plan says which shard builds which kernel, and the
// shards build exactly that.
func TestShardMergePackagesAsOneBuild(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	rels := []string{testenv.Release53, testenv.Release53Cloud, testenv.Release54, testenv.Release612}
	var kargs []string
	for _, r := range rels {
		kargs = append(kargs, "-k", testenv.HeadersDir(t, r))
	}
	src := testenv.ExampleSource(t, true)
	base := t.TempDir()
	run := func(cache string, args ...string) string {
		t.Helper()
		stdout, stderr, code := kmpackIn(t, cache, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
		return stdout
	}
	pkgArgs := []string{"package", "--profile", "debian,suse,rhel", "--no-runtime-package"}

	// The plan: every kernel a miss in an empty cache, two shards.
	runnerA, runnerB := filepath.Join(base, "cache-a"), filepath.Join(base, "cache-b")
	var p build.Plan
	out := run(runnerA, append(append([]string{"plan", "--shards", "2"}, kargs...), src)...)
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("plan: %v\n%s", err, out)
	}
	if len(p.Kernels) != 4 || p.Misses != 4 || len(p.Shards) != 2 || len(p.Shards[0].Kernels)+len(p.Shards[1].Kernels) != 4 {
		t.Fatalf("plan: %s", out)
	}
	if gh := run(runnerA, append(append([]string{"plan", "--shards", "2", "--ci", "github"}, kargs...), src)...); gh != `{"include":[{"shard":"1/2"},{"shard":"2/2"}]}`+"\n" {
		t.Errorf("--ci github: %q", gh)
	}
	gl := run(runnerA, append(append([]string{"plan", "--shards", "2", "--ci", "gitlab"}, kargs...), src)...)
	if !strings.Contains(gl, `KMPACK_SHARD: ["1/2", "2/2"]`) || !strings.Contains(gl, `--shard \"$KMPACK_SHARD\"`) || !strings.Contains(gl, "kmpack merge -o kmpack-out kmpack-shard-*") {
		t.Errorf("--ci gitlab:\n%s", gl)
	}

	// One build of every kernel, packaged.
	single := filepath.Join(base, "single")
	run(runnerA, append(append([]string{"build", "-q", "-o", single}, kargs...), src)...)
	run(runnerA, append(pkgArgs, single)...)

	// Its durations are costs; in the single build's cache every kernel is a hit.
	var pc build.Plan
	out = run(runnerA, append(append([]string{"plan", "--shards", "2", "-o", single, "--costs", filepath.Join(single, "manifest.json")}, kargs...), src)...)
	if err := json.Unmarshal([]byte(out), &pc); err != nil {
		t.Fatalf("plan --costs: %v\n%s", err, out)
	}
	if pc.Misses != 0 || pc.ShardPlan == p.ShardPlan || pc.Kernels[0].CostFrom != "costs" || pc.Kernels[0].Previous == 0 || pc.Kernels[0].CacheKey != p.Kernels[0].CacheKey {
		t.Errorf("plan --costs after the build: %s", out)
	}

	// The CI pipeline of examples/ci, run here: the matrix from plan --ci github, one
	// concurrent kmpack build --shard process per entry, each with a cache of its own, sharing
	// only a real registry; then merge and package. The first pipeline builds every kernel and
	// pushes it; the second, on fresh runners, pulls every kernel from the registry.
	registry := "oci+http://" + testenv.Registry(t) + "/ci/kmpack-cache"
	pipeline := func(round string, wantCached bool) string {
		t.Helper()
		var matrix struct{ Include []struct{ Shard string } }
		gh := run(runnerA, append(append([]string{"plan", "--shards", "2", "--ci", "github"}, kargs...), src)...)
		if err := json.Unmarshal([]byte(gh), &matrix); err != nil || len(matrix.Include) != 2 {
			t.Fatalf("--ci github: %v: %q", err, gh)
		}
		type result struct {
			dir, stderr string
			err         error
		}
		results := make([]result, len(matrix.Include))
		var wg sync.WaitGroup
		for i, e := range matrix.Include {
			dir := filepath.Join(base, round, "shard-"+strings.Split(e.Shard, "/")[0])
			results[i].dir = dir
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := exec.Command(bin, append(append([]string{"build", "-q", "--shard", e.Shard, "-o", dir}, kargs...), src)...)
				cmd.Env = append(os.Environ(), "KMPACK_CACHE_DIR="+filepath.Join(base, round, "cache-"+strings.Split(e.Shard, "/")[0]), "KMPACK_CACHE_URL="+registry)
				var stderr strings.Builder
				cmd.Stderr = &stderr
				results[i].err, results[i].stderr = cmd.Run(), stderr.String()
			}()
		}
		wg.Wait()
		var dirs []string
		for i, r := range results {
			if r.err != nil || strings.Contains(r.stderr, "warning") {
				t.Fatalf("%s: shard %s: %v\n%s", round, matrix.Include[i].Shard, r.err, r.stderr)
			}
			m, err := manifest.Read(r.dir)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, k := range m.Kernels {
				got = append(got, k.Release)
				if k.Cached != wantCached || k.Status != manifest.StatusBuilt || k.BuildSeconds <= 0 {
					t.Errorf("%s: shard %s: %s cached %v (want %v) status %s build_seconds %v", round, matrix.Include[i].Shard, k.Release, k.Cached, wantCached, k.Status, k.BuildSeconds)
				}
			}
			if want := p.Shards[i].Kernels; !slices.Equal(got, want) || m.Shard == nil || m.Shard.Plan != p.ShardPlan {
				t.Errorf("%s: shard %s built %v (shard record %+v), the plan says %v (plan %s)", round, matrix.Include[i].Shard, got, m.Shard, want, p.ShardPlan)
			}
			dirs = append(dirs, r.dir)
		}
		if round == "cold" {
			if _, stderr, code := kmpackIn(t, runnerB, "merge", "-o", filepath.Join(base, "half"), dirs[0]); code != exitInput || !strings.Contains(stderr, "shard 2/2 is missing") {
				t.Errorf("merging one shard of two: exit %d: %s", code, stderr)
			}
		}
		merged := filepath.Join(base, round, "merged")
		slices.Reverse(dirs) // the order of the arguments is not the order of the kernels
		if out := run(runnerB, append([]string{"merge", "-o", merged}, dirs...)...); !strings.Contains(out, "4 built") {
			t.Errorf("%s: merge summary:\n%s", round, out)
		}
		run(runnerB, append(pkgArgs, merged)...)
		return merged
	}
	for _, round := range []struct {
		name   string
		cached bool
	}{{"cold", false}, {"warm", true}} {
		merged := pipeline(round.name, round.cached)
		comparePackages(t, single, merged)
	}
}

// comparePackages compares a merged output's manifest and packages with a single build's.
func comparePackages(t *testing.T, single, merged string) {
	t.Helper()
	// The manifests agree but for how long each build took and what the caches had.
	ms, _ := manifest.Read(single)
	mm, _ := manifest.Read(merged)
	for _, m := range []*manifest.Manifest{ms, mm} {
		for _, k := range m.Kernels {
			k.Duration, k.BuildSeconds, k.Cached = 0, 0, false
		}
		m.Summary.Cached = 0
	}
	a, _ := json.Marshal(ms)
	b, _ := json.Marshal(mm)
	if !bytes.Equal(a, b) {
		t.Errorf("merged manifest differs from the single build's:\n%s\n%s", a, b)
	}
	want, got := packagesDirFiles(t, filepath.Join(single, formats.PackagesDir)), packagesDirFiles(t, filepath.Join(merged, formats.PackagesDir))
	if len(want) < 9 || !slices.Equal(slices.Sorted(maps.Keys(want)), slices.Sorted(maps.Keys(got))) {
		t.Fatalf("packages: single build %v, merged %v", slices.Sorted(maps.Keys(want)), slices.Sorted(maps.Keys(got)))
	}
	for name, data := range want {
		if !bytes.Equal(data, got[name]) {
			t.Errorf("%s differs between the single build and the merged shards", name)
		}
	}
}

func packagesDirFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel], err = os.ReadFile(p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// build --shard and plan --shards refuse what they cannot do before building anything.
func TestShardUsage(t *testing.T) {
	h53 := testenv.HeadersDir(t, testenv.Release53)
	src := testenv.ExampleSource(t, true)
	o := filepath.Join(t.TempDir(), "o")
	for _, args := range [][]string{
		{"build", "-q", "--shard", "3/2", "-k", h53, "-o", o, src},
		{"build", "-q", "--shard", "2/2", "-k", h53, "-o", o, src}, // two shards of one kernel
		{"build", "-q", "--shard", "1/1", "--classes", "-k", h53, "-o", o, src},
		{"build", "-q", "--costs", o, "-k", h53, "-o", o, src},
		{"plan", "--shards", "2", "-k", h53, src},
		{"plan", "--ci", "jenkins", "-k", h53, src},
		{"merge"},
	} {
		if _, stderr, code := kmpack(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d: %s", args, code, exitUsage, stderr)
		}
	}
	if _, err := os.Stat(o); err == nil {
		t.Error("a refused command wrote the output")
	}
}

// Signed shards merge with their certificate once, and package as the signed single build
// does; a shard built without the key is refused.
func TestShardMergeSigned(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	keys := t.TempDir()
	if _, stderr, code := kmpack(t, "keygen", "--out", keys, "--cn", "shard key"); code != 0 {
		t.Fatalf("keygen: exit %d: %s", code, stderr)
	}
	sign := []string{"--sign-key", filepath.Join(keys, "kmpack-signing.key"), "--sign-cert", filepath.Join(keys, "kmpack-signing.crt")}
	kargs := []string{"-k", testenv.HeadersDir(t, testenv.Release53), "-k", testenv.HeadersDir(t, testenv.Release54)}
	src := testenv.ExampleSource(t, true)
	base := t.TempDir()
	run := func(cache string, args ...string) {
		t.Helper()
		if _, stderr, code := kmpackIn(t, cache, args...); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
	}
	pkg := []string{"package", "--profile", "debian,suse", "--no-runtime-package"}
	single := filepath.Join(base, "single")
	run(filepath.Join(base, "c0"), slices.Concat([]string{"build", "-q", "-o", single}, sign, kargs, []string{src})...)
	run(filepath.Join(base, "c0"), slices.Concat(pkg, []string{single})...)
	var shards []string
	for i, s := range []string{"1/2", "2/2"} {
		dir := filepath.Join(base, "shard"+s[:1])
		run(filepath.Join(base, "c"+s[:1]), slices.Concat([]string{"build", "-q", "--shard", s, "-o", dir}, sign, kargs, []string{src})...)
		shards = append(shards, dir)
		if i == 1 {
			// The same shard unsigned does not merge with a signed one.
			unsigned := filepath.Join(base, "unsigned")
			run(filepath.Join(base, "c"+s[:1]), slices.Concat([]string{"build", "-q", "--shard", s, "-o", unsigned}, kargs, []string{src})...)
			if _, stderr, code := kmpack(t, "merge", "-o", filepath.Join(base, "m"), shards[0], unsigned); code != exitInput || !strings.Contains(stderr, "same keys") {
				t.Errorf("merging an unsigned shard with a signed one: exit %d: %s", code, stderr)
			}
		}
	}
	merged := filepath.Join(base, "merged")
	run(filepath.Join(base, "c1"), slices.Concat([]string{"merge", "-o", merged}, shards)...)
	run(filepath.Join(base, "c1"), slices.Concat(pkg, []string{merged})...)
	mm, err := manifest.Read(merged)
	if err != nil || len(mm.Certificates) != 1 {
		t.Fatalf("merged manifest: %v %+v", err, mm)
	}
	if !bytes.Equal(testenv.MustRead(t, filepath.Join(merged, mm.Certificates[0].File)), testenv.MustRead(t, filepath.Join(single, mm.Certificates[0].File))) {
		t.Error("the merged certificate differs from the single build's")
	}
	want, got := packagesDirFiles(t, filepath.Join(single, formats.PackagesDir)), packagesDirFiles(t, filepath.Join(merged, formats.PackagesDir))
	if len(want) < 4 || len(want) != len(got) {
		t.Fatalf("packages: single %v, merged %v", slices.Sorted(maps.Keys(want)), slices.Sorted(maps.Keys(got)))
	}
	for name, data := range want {
		if !bytes.Equal(data, got[name]) {
			t.Errorf("%s differs between the signed single build and the merged signed shards", name)
		}
	}
}

// The build command a generated GitLab pipeline runs repeats the plan's kernel selection,
// every value flag with its value.
func TestPlanBuildArgs(t *testing.T) {
	cmd := planCommand()
	var got string
	cmd.Action = func(c *cli.Context) error { got = planBuildArgs(c, c.Args().First()); return nil }
	app := &cli.App{Commands: []*cli.Command{cmd}}
	err := app.Run([]string{"kmpack", "plan", "--kernel-repo", "https://deb.example/debian", "--flavor", "amd64", "--arch", "arm64", "--latest", "2",
		"--versions", ">=6.1.140", "--jobs", "3", "--no-strip", "src dir"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `--kernel-repo https://deb.example/debian --flavor amd64 --arch arm64 --versions '>=6.1.140' --latest 2 --jobs 3 --no-strip 'src dir'`; got != want {
		t.Errorf("planBuildArgs:\n got %s\nwant %s", got, want)
	}
}
