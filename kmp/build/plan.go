package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/proc"
	"github.com/kmpack/kmpack/kmp/source"
)

// prepareSource is the first step Build and PlanBuild share: it checks the trees (one per
// release), finds each tree's compiler, identifies a dkms.conf source, and returns the source
// as builds see it. A dkms.conf source is identified on the caller's Source (its name and
// version are the source's own, learnt once); otherwise the caller's Source is not changed:
// the build works on a copy that also leaves out the output (out, absolute, or ""), the
// secrets, the caches and kmpack's own directories.
func prepareSource(ctx context.Context, src *source.Source, trees []*kernel.KernelTree, opts BuildOptions, out string) (*source.Source, error) {
	seen := map[string]bool{}
	for _, t := range trees {
		if seen[t.Release] {
			return nil, kmp.InputErrorf(t.Dir, "kernel release %s is given twice (one build per release)", t.Release)
		}
		seen[t.Release] = true
		// make would run the tree's fixdep and modpost: one built for another machine must not
		// get that far (with binfmt_misc it might even run, emulated). A plan says so too.
		// A RHEL/SUSE devel tree of another architecture has its tools' sources: they are
		// rebuilt for this host, in a cached copy of the tree that t then names.
		if err := kernel.CheckHostTools(t); err != nil {
			if err := prepareHostTools(ctx, t, opts, err); err != nil {
				return nil, err
			}
		}
		// Describing a tree runs nothing; building runs its (checked, PATH-found) compiler anyway.
		ProbeCompiler(&t.Compiler)
	}
	if src.Kind == source.SourceDKMS {
		if err := src.Identify(ctx, trees[0], opts.Jobs); err != nil {
			return nil, err
		}
	}
	var excl []string
	if out != "" {
		excl = append(excl, out)
	}
	excl = append(excl, opts.Secrets...) // signing keys kept in the source are no build input
	for _, d := range []string{opts.CacheDir, opts.CompileCache} {
		if d != "" {
			if c, err := filepath.Abs(d); err == nil {
				excl = append(excl, c)
			}
		}
	}
	return src.Excluding(excl...), nil
}

// probePrivateMounts reports whether builds can run in private mount namespaces (unless
// NoPrivateMounts), warning when they cannot.
func (b *builder) probePrivateMounts(ctx context.Context, work string, tree *kernel.KernelTree) bool {
	if b.opts.NoPrivateMounts {
		return false
	}
	if err := probePrivateMounts(ctx, filepath.Join(work, "probe"), tree); err != nil {
		b.warn(fmt.Sprintf("no private mount namespace for builds (%v): building in $TMPDIR workspaces instead of at dkms's paths; a source that embeds its build path (a configure step) or hard-codes /usr/src or /var/lib/dkms may build differently from dkms, and not reproducibly", err))
		return false
	}
	return true
}

// planKernels plans every kernel's build (a dkms.conf or spec problem stops everything before
// any build) in workspaces under work, and hashes the source: what the cache keys need.
func (b *builder) planKernels(ctx context.Context, trees []*kernel.KernelTree, work string, private bool) error {
	src := b.src
	// Plans are made side by side (a dkms.conf is evaluated by bash for every kernel), kept in
	// the trees' order; the first error in that order wins.
	jobs := make([]*kernelJob, len(trees))
	errs := make([]error, len(trees))
	sem := make(chan struct{}, max(b.opts.Jobs, 1))
	var wg sync.WaitGroup
	for i, t := range trees {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			defer func() {
				if r := recover(); r != nil {
					errs[i] = fmt.Errorf("internal error planning for %s: %v", t.Release, r)
				}
			}()
			ws := source.NewWorkspace(filepath.Join(work, t.Release), src.Name, src.Version)
			if private {
				ws = source.NewPrivateWorkspace(filepath.Join(work, t.Release), t, src.Name, src.Version)
			}
			plan, err := src.Plan(ctx, t, ws, b.opts.Jobs)
			if err != nil {
				errs[i] = err
				return
			}
			paths := manifest.PathsWorkspace
			if ws.Private {
				paths = manifest.PathsDKMS
			}
			jobs[i] = &kernelJob{tree: t, ws: ws, plan: plan,
				result: &manifest.KernelBuild{Release: t.Release, Tree: t.Dir, Flavor: t.Flavor, Arch: t.Arch, Status: manifest.StatusQueued,
					Paths: paths, Modules: []*manifest.BuiltModule{}}}
		}()
	}
	wg.Wait()
	for i := range trees {
		if errs[i] != nil {
			return errs[i]
		}
	}
	for _, j := range jobs {
		for _, w := range j.plan.Warnings {
			b.warn(w)
		}
		b.jobs = append(b.jobs, j)
	}
	var err error
	if b.srcHash, err = src.Hash(); err != nil {
		return fmt.Errorf("hashing the source: %w", err)
	}
	return nil
}

// PlanOptions tune PlanBuild: the build's options (those that make the cache keys: jobs,
// compression, stripping, private mounts, the output and cache directories), the number of
// shards and the costs file.
type PlanOptions struct {
	BuildOptions
	// Shards splits the kernels into this many groups (0 or 1: one).
	Shards int
	// Costs is an earlier build's manifest (kmpack plan/build --costs): the kernels' build
	// durations there are the costs the shards are balanced by.
	Costs *manifest.Manifest
}

// Plan is the work a build would do: every kernel's build with its cache key, whether the
// local cache already has it, and its estimated cost; and, sharded, which shard builds it.
type Plan struct {
	Source  manifest.ManifestSource `json:"source"`
	Kernels []*PlannedKernel        `json:"kernels"`
	// Misses counts the kernels the local cache does not have (skipped ones aside), MissCost
	// their estimated cost.
	Misses   int     `json:"misses"`
	MissCost float64 `json:"miss_cost_seconds"`
	// ShardPlan identifies the sharding (manifest.ShardInfo.Plan); Shards are the groups.
	ShardPlan string          `json:"shard_plan"`
	Shards    []*PlannedShard `json:"shards,omitempty"`
}

// PlannedKernel is one kernel of a Plan.
type PlannedKernel struct {
	Release string `json:"release"`
	Tree    string `json:"tree"`
	Flavor  string `json:"flavor"`
	Arch    string `json:"arch"`
	// Skip is why the build would skip the kernel (BUILD_EXCLUSIVE); such a kernel has no key.
	Skip     string `json:"skip,omitempty"`
	CacheKey string `json:"cache_key,omitempty"`
	// Cached: the local build cache holds a result (a success or a reproducible failure) for
	// the key (and --no-cache was not given).
	Cached bool `json:"cached"`
	// Cost is what sharding balances: from the costs file (CostFrom "costs"), the mean of the
	// known costs for a kernel it lacks ("mean"), or 1 when there is no costs file ("equal").
	Cost     float64 `json:"cost_seconds"`
	CostFrom string  `json:"cost_from"`
	// Previous is the kernel's last build duration in the output directory's manifest, if it
	// holds one that built it (a hint; sharding never reads it).
	Previous float64 `json:"previous_seconds,omitempty"`
	Shard    int     `json:"shard,omitempty"`
}

// PlannedShard is one group of a sharded Plan.
type PlannedShard struct {
	Shard    string   `json:"shard"` // "I/N", as kmpack build --shard takes it
	Index    int      `json:"index"`
	Kernels  []string `json:"kernels"`
	Cost     float64  `json:"cost_seconds"`
	Misses   int      `json:"misses"`
	MissCost float64  `json:"miss_cost_seconds"`
}

// PlanBuild computes the work Build would do with the same arguments, without building or
// writing anything but a scratch workspace: the kernels' plans, the source's hash and the cache
// keys are Build's own. Sharding depends only on the kernel releases and opts.Costs, never on
// the cache: every runner given the same kernels and costs file computes the same groups.
func PlanBuild(ctx context.Context, src *source.Source, trees []*kernel.KernelTree, opts PlanOptions) (*Plan, error) {
	if len(trees) == 0 {
		return nil, errors.New("no kernel trees to build against")
	}
	if opts.Jobs <= 0 {
		opts.Jobs = min(runtime.NumCPU(), MaxJobs)
	}
	if opts.Jobs > MaxJobs {
		return nil, fmt.Errorf("%d jobs: at most %d", opts.Jobs, MaxJobs)
	}
	out := ""
	if opts.OutputDir != "" {
		var err error
		if out, err = filepath.Abs(opts.OutputDir); err != nil {
			return nil, err
		}
	}
	releases := make([]string, len(trees))
	for i, t := range trees {
		releases[i] = t.Release
	}
	sh, err := NewSharding(releases, opts.Costs, max(opts.Shards, 1))
	if err != nil {
		return nil, err
	}
	src, err = prepareSource(ctx, src, trees, opts.BuildOptions, out)
	if err != nil {
		return nil, err
	}
	work, err := makeWorkDir()
	if err != nil {
		return nil, err
	}
	defer work.Remove(false)
	src.Exclude = append(src.Exclude, work.Path)
	b := &builder{opts: opts.BuildOptions, src: src, out: out, warned: map[string]bool{}, workTag: work.TagEnv()}
	private := b.probePrivateMounts(ctx, work.Path, trees[0])
	if err := b.planKernels(ctx, trees, work.Path, private); err != nil {
		return nil, err
	}
	if opts.CacheDir != "" && !opts.Refresh {
		// Only read: a cache that does not exist holds nothing.
		if b.cache, err = os.OpenRoot(opts.CacheDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("cache directory: %w", err)
		}
		if b.cache != nil {
			defer b.cache.Close()
		}
	}
	var previous *manifest.Manifest
	if out != "" {
		previous, _ = manifest.Read(out) // a hint only: none, or not a build output, is no plan
	}

	p := &Plan{Source: manifest.ManifestSource{Dir: src.Dir, Kind: string(src.Kind), Name: src.Name, Version: src.Version, SHA256: b.srcHash},
		ShardPlan: sh.ID}
	for i := 1; i <= sh.Count && sh.Count > 1; i++ {
		p.Shards = append(p.Shards, &PlannedShard{Shard: fmt.Sprintf("%d/%d", i, sh.Count), Index: i, Kernels: []string{}})
	}
	for i, j := range b.jobs {
		k := &PlannedKernel{Release: j.tree.Release, Tree: j.tree.Dir, Flavor: j.tree.Flavor, Arch: j.tree.Arch,
			Skip: j.plan.Skip, Cost: sh.Costs[i], CostFrom: sh.CostFrom[i]}
		if k.Skip == "" {
			if k.CacheKey, err = b.cacheKey(j); err != nil {
				return nil, err
			}
			if b.cache != nil {
				fi, err := b.cache.Lstat(path.Join(cacheEntryPath(k.CacheKey), "result.json"))
				k.Cached = err == nil && fi.Mode().IsRegular()
			}
		}
		if previous != nil {
			if pk := previous.Kernel(k.Release); pk != nil && (pk.Status == manifest.StatusBuilt || pk.Status == manifest.StatusFailed) && buildCost(pk) >= 0 {
				k.Previous = buildCost(pk)
			}
		}
		miss := k.Skip == "" && !k.Cached
		if miss {
			p.Misses++
			p.MissCost += k.Cost
		}
		if sh.Count > 1 {
			k.Shard = sh.Shard[i]
			s := p.Shards[k.Shard-1]
			s.Kernels = append(s.Kernels, k.Release)
			s.Cost += k.Cost
			if miss {
				s.Misses++
				s.MissCost += k.Cost
			}
		}
		p.Kernels = append(p.Kernels, k)
	}
	return p, nil
}

// Sharding is the split of a build's kernels into groups of balanced cost: longest processing
// time first (the costliest kernel goes to the least loaded shard; ties go to the lower
// release and the lower shard). It depends only on the releases, their order and the costs.
type Sharding struct {
	Count    int
	Releases []string  // every kernel, in build order
	Costs    []float64 // by Releases' index
	CostFrom []string  // "costs", "mean" or "equal"
	Shard    []int     // by Releases' index, 1-based
	// ID is a digest of the count, the releases and their costs: manifest.ShardInfo.Plan.
	ID string
}

// NewSharding splits releases (in build order) into n groups by the costs an earlier build's
// manifest (nil: none) records. A kernel it built (not from the cache) costs its duration;
// one it skipped costs 0; any other kernel costs the mean of the known costs (1 when none is
// known: without a costs file every kernel costs the same).
func NewSharding(releases []string, costs *manifest.Manifest, n int) (*Sharding, error) {
	if n < 1 {
		return nil, fmt.Errorf("%d shards: at least 1", n)
	}
	if n > len(releases) {
		return nil, fmt.Errorf("%d shards for %d kernels: at most one shard per kernel", n, len(releases))
	}
	s := &Sharding{Count: n, Releases: releases, Costs: make([]float64, len(releases)),
		CostFrom: make([]string, len(releases)), Shard: make([]int, len(releases))}
	known, sum := 0, 0.0
	for i, r := range releases {
		var k *manifest.KernelBuild
		if costs != nil {
			k = costs.Kernel(r)
		}
		switch {
		case k == nil:
			continue
		case k.Status == manifest.StatusSkipped:
			s.Costs[i] = 0
		case (k.Status == manifest.StatusBuilt || k.Status == manifest.StatusFailed) && buildCost(k) >= 0:
			s.Costs[i] = math.Round(buildCost(k)*1000) / 1000
		default:
			continue
		}
		s.CostFrom[i] = "costs"
		known++
		sum += s.Costs[i]
	}
	fill, from := 1.0, "equal"
	if known > 0 {
		fill, from = math.Round(sum/float64(known)*1000)/1000, "mean"
	}
	for i := range releases {
		if s.CostFrom[i] == "" {
			s.Costs[i], s.CostFrom[i] = fill, from
		}
	}
	order := make([]int, len(releases))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		ia, ib := order[a], order[b]
		if s.Costs[ia] != s.Costs[ib] {
			return s.Costs[ia] > s.Costs[ib]
		}
		if c := kernel.CompareReleases(releases[ia], releases[ib]); c != 0 {
			return c < 0
		}
		return releases[ia] < releases[ib]
	})
	load := make([]float64, n)
	count := make([]int, n)
	for _, i := range order {
		best := 0
		for g := 1; g < n; g++ {
			// The least loaded shard; among equals the one with fewer kernels, then the first.
			if load[g] < load[best] || load[g] == load[best] && count[g] < count[best] {
				best = g
			}
		}
		load[best] += s.Costs[i]
		count[best]++
		s.Shard[i] = best + 1
	}
	h := sha256.New()
	fmt.Fprintf(h, "kmpack-shards-1\x00count %d\x00", n)
	for i, r := range releases {
		fmt.Fprintf(h, "%s %s\x00", r, strconv.FormatFloat(s.Costs[i], 'g', -1, 64))
	}
	s.ID = hex.EncodeToString(h.Sum(nil))
	return s, nil
}

// ParseShard parses kmpack build --shard's I/N.
func ParseShard(v string) (index, count int, err error) {
	a, b, ok := strings.Cut(v, "/")
	index, err1 := strconv.Atoi(a)
	count, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || count < 1 || index < 1 || index > count {
		return 0, 0, fmt.Errorf("shard %q is not I/N with 1 <= I <= N", v)
	}
	return index, count, nil
}

// SelectShard returns the releases of shard index of count (releases in build order, split as
// NewSharding splits them by costs), and the ShardInfo its build's manifest records. It needs
// no tree: a runner picks its kernels before downloading any.
func SelectShard(releases []string, costs *manifest.Manifest, index, count int) ([]string, *manifest.ShardInfo, error) {
	sh, err := NewSharding(releases, costs, count)
	if err != nil {
		return nil, nil, err
	}
	if index < 1 || index > count {
		return nil, nil, fmt.Errorf("shard %d of %d", index, count)
	}
	var out []string
	for i, r := range releases {
		if sh.Shard[i] == index {
			out = append(out, r)
		}
	}
	return out, &manifest.ShardInfo{Index: index, Count: count, Plan: sh.ID, Kernels: slices.Clone(releases)}, nil
}

// makeWorkDir checks TMPDIR and makes this run's $TMPDIR/kmpack-build-<pid>-* directory,
// locked while this kmpack lives: what a kmpack killed with -9 left (and the make and cc1 it
// orphaned) goes first.
func makeWorkDir() (*proc.OwnedDir, error) {
	if !kbuildSafePath(os.TempDir()) {
		return nil, kmp.InputErrorf(os.TempDir(), "TMPDIR: kernel builds (make, Kbuild) cannot run under a path with spaces or shell or make special characters; set TMPDIR to a plain directory")
	}
	proc.CleanStale(os.TempDir(), workPrefix)
	return proc.MkdirOwned("", workPrefix)
}

// buildCost is what compiling k's result cost, -1 when its manifest does not say: the recorded
// compile time (kept through caches), or the duration of a result compiled in that run.
func buildCost(k *manifest.KernelBuild) float64 {
	c := k.BuildSeconds
	if c <= 0 {
		if k.Cached {
			return -1
		}
		c = k.Duration
	}
	if c < 0 || math.IsInf(c, 0) || math.IsNaN(c) {
		return -1
	}
	return c
}
