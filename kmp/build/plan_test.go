package build_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/source"
)

// Sharding is longest processing time first over every kernel, by the costs file only:
// deterministic, balanced, every shard non-empty, identified by its inputs.
func TestNewSharding(t *testing.T) {
	rels := []string{"6.1.0-53-amd64", "6.1.0-54-amd64", "6.1.0-55-amd64", "6.12.1-amd64", "6.12.2-amd64"}
	// Equal costs (no costs file): kernels dealt out in release order.
	sh, err := build.NewSharding(rels, nil, 2)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 2, 1, 2, 1}; !slices.Equal(sh.Shard, want) || sh.CostFrom[0] != "equal" {
		t.Errorf("equal costs: shards %v (%v), want %v", sh.Shard, sh.CostFrom, want)
	}
	costs := &manifest.Manifest{Kernels: []*manifest.KernelBuild{
		{Release: rels[0], Status: manifest.StatusBuilt, Duration: 100},
		{Release: rels[1], Status: manifest.StatusBuilt, Duration: 10},
		{Release: rels[2], Status: manifest.StatusBuilt, Duration: 40, Cached: true}, // no cost: from an old cache entry
		{Release: rels[3], Status: manifest.StatusFailed, Duration: 60},
	}}
	sh2, err := build.NewSharding(rels, costs, 2)
	if err != nil {
		t.Fatal(err)
	}
	// By cost: 100 to 1, 60 and 56.667 (rels[2]) to 2, 56.667 (rels[4]) to 1, 10 to 2.
	if want := []int{1, 2, 2, 2, 1}; !slices.Equal(sh2.Shard, want) {
		t.Errorf("costed: shards %v costs %v, want %v", sh2.Shard, sh2.Costs, want)
	}
	if sh2.CostFrom[2] != "mean" || sh2.Costs[2] != 56.667 || sh2.CostFrom[3] != "costs" {
		t.Errorf("costs %v from %v", sh2.Costs, sh2.CostFrom)
	}
	// A cached result that kept its compile time costs that, not its (short) duration.
	costs.Kernels[2].BuildSeconds = 30
	sh4, _ := build.NewSharding(rels, costs, 2)
	if sh4.CostFrom[2] != "costs" || sh4.Costs[2] != 30 || sh4.Costs[4] != 50 {
		t.Errorf("a cached result's build_seconds: costs %v from %v", sh4.Costs, sh4.CostFrom)
	}
	costs.Kernels[2].BuildSeconds = 0
	again, _ := build.NewSharding(rels, costs, 2)
	if again.ID != sh2.ID || !slices.Equal(again.Shard, sh2.Shard) || sh.ID == sh2.ID {
		t.Error("sharding is not a function of its inputs")
	}
	// Zero costs: still one kernel at least per shard.
	zero := &manifest.Manifest{Kernels: []*manifest.KernelBuild{{Release: rels[0], Status: manifest.StatusSkipped}}}
	sh3, _ := build.NewSharding(rels[:3], zero, 3)
	if got := slices.Sorted(slices.Values(sh3.Shard)); !slices.Equal(got, []int{1, 2, 3}) {
		t.Errorf("an empty shard: %v", sh3.Shard)
	}
	if _, err := build.NewSharding(rels, nil, 6); err == nil {
		t.Error("6 shards for 5 kernels")
	}
	for _, bad := range []string{"0/2", "3/2", "1", "a/b", "1/0", "-1/2"} {
		if _, _, err := build.ParseShard(bad); err == nil {
			t.Errorf("shard %q accepted", bad)
		}
	}
}

// PlanBuild's keys and cache state are Build's: before a build every kernel is a miss; after
// it, every kernel is cached under the key the manifest records, with the build's duration.
func TestPlanBuildMatchesBuild(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release54)
	srcDir := testenv.ExampleSource(t, true)
	cache := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	plan := func() *build.Plan {
		src, err := source.OpenSource(srcDir)
		if err != nil {
			t.Fatal(err)
		}
		p, err := build.PlanBuild(context.Background(), src, trees, build.PlanOptions{
			BuildOptions: build.BuildOptions{Jobs: 2, CacheDir: cache, OutputDir: out}, Shards: 2})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := plan()
	if p.Misses != 2 || len(p.Shards) != 2 || p.Shards[0].Shard != "1/2" || p.Kernels[0].Shard != 1 || p.Kernels[1].Shard != 2 || p.Source.Name != "kmpack-hello" {
		t.Fatalf("plan before building: %+v", p)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("planning wrote the output")
	}
	m, err := runBuild(t, srcDir, trees, build.BuildOptions{CacheDir: cache, OutputDir: out})
	if err != nil {
		t.Fatal(err)
	}
	p2 := plan()
	if p2.Misses != 0 || p2.Source.SHA256 != m.Source.SHA256 || p2.ShardPlan != p.ShardPlan {
		t.Errorf("plan after building: %+v", p2)
	}
	for i, k := range p2.Kernels {
		if k.CacheKey != m.Kernels[i].CacheKey || k.CacheKey != p.Kernels[i].CacheKey || !k.Cached || k.Previous != m.Kernels[i].BuildSeconds || k.Previous <= 0 {
			t.Errorf("%s: plan key %s cached %v previous %v, build key %s build_seconds %v", k.Release, k.CacheKey, k.Cached, k.Previous, m.Kernels[i].CacheKey, m.Kernels[i].BuildSeconds)
		}
	}
	// A rebuild from the cache keeps each result's compile time: its manifest is still a
	// costs file, and the plan's hint is unchanged.
	m2, err := runBuild(t, srcDir, trees, build.BuildOptions{CacheDir: cache, OutputDir: out})
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range m2.Kernels {
		if !k.Cached || k.BuildSeconds != m.Kernels[i].BuildSeconds {
			t.Errorf("%s from the cache: cached %v build_seconds %v, want %v", k.Release, k.Cached, k.BuildSeconds, m.Kernels[i].BuildSeconds)
		}
	}
	if p3 := plan(); p3.Kernels[0].Previous != m.Kernels[0].BuildSeconds {
		t.Errorf("plan after a cached rebuild: previous %v", p3.Kernels[0].Previous)
	}
}

// fakeOutput writes a build output of src for releases (one module each, whose bytes are
// body+release), as a shard when shard is set.
func fakeOutput(t *testing.T, dir string, src manifest.ManifestSource, shard *manifest.ShardInfo, body string, releases ...string) {
	t.Helper()
	m := &manifest.Manifest{Format: manifest.OutputFormat, FormatVersion: manifest.OutputFormatVersion, Tool: "kmpack " + build.BuildEngineVersion,
		Source: src, Shard: shard, Certificates: []manifest.Certificate{}}
	for _, r := range releases {
		mod := []byte(body + r)
		sum := sha256.Sum256(mod)
		os.MkdirAll(filepath.Join(dir, "modules", r), 0o755)
		os.MkdirAll(filepath.Join(dir, "logs"), 0o755)
		os.WriteFile(filepath.Join(dir, "modules", r, "m.ko"), mod, 0o644)
		os.WriteFile(filepath.Join(dir, "modules", r, "Module.symvers"), []byte("symvers "+r), 0o644)
		os.WriteFile(filepath.Join(dir, "logs", r+".log"), []byte("log "+r), 0o644)
		m.Kernels = append(m.Kernels, &manifest.KernelBuild{Release: r, Status: manifest.StatusBuilt, Log: "logs/" + r + ".log",
			Symvers: "modules/" + r + "/Module.symvers",
			Modules: []*manifest.BuiltModule{{Name: "m", File: "modules/" + r + "/m.ko", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(mod))}}})
	}
	cert := []byte("DER " + body)
	sum := sha256.Sum256(cert)
	os.MkdirAll(filepath.Join(dir, "certs"), 0o755)
	os.WriteFile(filepath.Join(dir, "certs", "01.der"), cert, 0o644)
	m.Certificates = append(m.Certificates, manifest.Certificate{File: "certs/01.der", KeyID: "01", Signer: "s", SHA256: hex.EncodeToString(sum[:])})
	data, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Merge combines every shard of one plan, in the plan's kernel order, and refuses anything
// else as bad input, writing nothing.
func TestMerge(t *testing.T) {
	rels := []string{"6.1.0-53-amd64", "6.1.0-54-amd64", "6.12.1-amd64"}
	src := manifest.ManifestSource{Dir: "/src", Kind: "kmpack.yaml", Name: "hello", Version: "1.0", SHA256: "aa"}
	sh := func(i int) *manifest.ShardInfo {
		return &manifest.ShardInfo{Index: i, Count: 2, Plan: "p", Kernels: rels}
	}
	base := t.TempDir()
	s1, s2 := filepath.Join(base, "s1"), filepath.Join(base, "s2")
	fakeOutput(t, s1, src, sh(1), "x", rels[0], rels[2])
	fakeOutput(t, s2, src, sh(2), "x", rels[1])
	out := filepath.Join(base, "out")
	m, err := build.Merge([]string{s2, s1}, out)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, k := range m.Kernels {
		got = append(got, k.Release)
	}
	if !slices.Equal(got, rels) || m.Summary.Built != 3 || m.Shard != nil || len(m.Certificates) != 1 {
		t.Errorf("merged %v %+v shard %v certs %v", got, m.Summary, m.Shard, m.Certificates)
	}
	read, err := manifest.Read(out)
	if err != nil || len(read.Kernels) != 3 {
		t.Fatalf("merged output: %v", err)
	}
	for _, r := range rels {
		for _, f := range []string{"modules/" + r + "/m.ko", "modules/" + r + "/Module.symvers", "logs/" + r + ".log"} {
			if _, err := os.Stat(filepath.Join(out, f)); err != nil {
				t.Error(err)
			}
		}
	}
	// Merging again replaces the previous merge.
	if _, err := build.Merge([]string{s1, s2}, out); err != nil {
		t.Errorf("merge over a previous merge: %v", err)
	}

	bad := func(name, want string, setup func(dir string) []string) {
		t.Helper()
		dir := filepath.Join(t.TempDir(), "case")
		os.MkdirAll(dir, 0o755)
		ins := setup(dir)
		o := filepath.Join(dir, "merged")
		_, err := build.Merge(ins, o)
		if !kmp.IsInputError(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an input error with %q", name, err, want)
		}
		if _, err := os.Stat(o); err == nil {
			t.Errorf("%s: the output was written", name)
		}
	}
	bad("another source", "different sources", func(dir string) []string {
		other := src
		other.SHA256 = "bb"
		fakeOutput(t, filepath.Join(dir, "a"), other, sh(2), "x", rels[1])
		return []string{s1, filepath.Join(dir, "a")}
	})
	bad("overlap", "must not share a kernel", func(dir string) []string {
		fakeOutput(t, filepath.Join(dir, "a"), src, nil, "x", rels[0])
		fakeOutput(t, filepath.Join(dir, "b"), src, nil, "x", rels[0], rels[1])
		return []string{filepath.Join(dir, "a"), filepath.Join(dir, "b")}
	})
	bad("missing shard", "shard 2/2 is missing", func(dir string) []string { return []string{s1} })
	bad("same shard twice", "again", func(dir string) []string {
		fakeOutput(t, filepath.Join(dir, "a"), src, sh(1), "x", rels[1])
		return []string{s1, filepath.Join(dir, "a")}
	})
	bad("another plan", "not of the plan", func(dir string) []string {
		s := sh(2)
		s.Plan = "q"
		fakeOutput(t, filepath.Join(dir, "a"), src, s, "x", rels[1])
		return []string{s1, filepath.Join(dir, "a")}
	})
	bad("different certificate", "different keys", func(dir string) []string {
		fakeOutput(t, filepath.Join(dir, "a"), src, sh(2), "y", rels[1])
		return []string{s1, filepath.Join(dir, "a")}
	})
	bad("unsigned shard", "signed with the same keys", func(dir string) []string {
		a := filepath.Join(dir, "a")
		fakeOutput(t, a, src, sh(2), "x", rels[1])
		m, err := manifest.Read(a)
		if err != nil {
			t.Fatal(err)
		}
		m.Certificates = nil
		data, _ := json.Marshal(m)
		os.WriteFile(filepath.Join(a, "manifest.json"), data, 0o644)
		return []string{s1, a}
	})
	bad("altered module", "does not match", func(dir string) []string {
		a := filepath.Join(dir, "a")
		fakeOutput(t, a, src, sh(2), "x", rels[1])
		os.WriteFile(filepath.Join(a, "modules", rels[1], "m.ko"), []byte("planted"), 0o644)
		return []string{s1, a}
	})
	bad("linked module", "m.ko", func(dir string) []string {
		a := filepath.Join(dir, "a")
		fakeOutput(t, a, src, sh(2), "x", rels[1])
		p := filepath.Join(a, "modules", rels[1], "m.ko")
		os.Remove(p)
		os.Symlink("/etc/passwd", p)
		return []string{s1, a}
	})
	bad("escaping log", "is not one kmpack writes", func(dir string) []string {
		a := filepath.Join(dir, "a")
		fakeOutput(t, a, src, sh(2), "x", rels[1])
		mp := filepath.Join(a, "manifest.json")
		os.WriteFile(mp, []byte(strings.Replace(string(testenv.MustRead(t, mp)), `"logs/`+rels[1]+`.log"`, `"../../etc/passwd"`, 1)), 0o644)
		return []string{s1, a}
	})
	bad("not an output", "not a kmpack build output", func(dir string) []string { return []string{s1, dir} })
}
