package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/repo"
	"github.com/kmpack/kmpack/kmp/source"
	"github.com/kmpack/kmpack/kmp/unpack"
)

var (
	shardFlag = &cli.StringFlag{Name: "shard", Usage: "build only shard I of N (I/N): the kernels split into N groups of balanced cost as kmpack plan --shards N splits them (by release and --costs only); combine the shards' outputs with kmpack merge"}
	costsFlag = &cli.StringFlag{Name: "costs", Usage: "an earlier build's manifest.json (or its output directory) whose build durations balance the shards; give every shard the same file"}
)

// kernelSelection is the kernels of a build before any repository package is downloaded: the
// trees of --kernel (or the spec's paths, or the installed ones), and the repositories' listings.
type kernelSelection struct {
	local  *unpack.Found
	remote []repo.Result
}

func selectKernels(c *cli.Context, src *source.Source) (*kernelSelection, error) {
	kernelArgs := c.StringSlice("kernel")
	repoSpecs := c.StringSlice("kernel-repo")
	if len(repoSpecs) == 0 && (c.IsSet("flavor") || c.IsSet("release") || c.IsSet("versions") || c.IsSet("latest") || c.IsSet("keyring")) {
		return nil, usagef("--flavor, --release, --versions, --latest and --keyring apply to a --kernel-repo")
	}
	queries, err := repoQueries(c, repoSpecs)
	if err != nil {
		return nil, err
	}
	if len(kernelArgs) == 0 && len(repoSpecs) == 0 && src.Spec != nil {
		kernelArgs, queries = src.Spec.KernelSources()
	}
	sel := &kernelSelection{local: &unpack.Found{}}
	// Without arguments FindKernels lists the installed trees; with repositories only, none.
	if len(kernelArgs) > 0 || len(queries) == 0 {
		if sel.local, err = unpack.FindKernels(c.String("cache-dir"), "/", kernelArgs); err != nil {
			return nil, err
		}
		if len(sel.local.Errors) > 0 {
			return nil, cli.Exit(strings.Join(sel.local.Errors, "\nkmpack: "), exitInput)
		}
		// --arch: the repositories' queries ask for those architectures' indexes already.
		if len(queries) == 0 {
			sel.local.Trees, err = filterArch(c, sel.local.Trees)
		} else if arches, aerr := archFlag(c); aerr == nil && len(arches) > 0 {
			sel.local.Trees = kernel.FilterArch(sel.local.Trees, arches)
		}
		if err != nil {
			return nil, err
		}
	}
	if len(queries) > 0 {
		if sel.remote, err = resolveRepoKernels(c, queries); err != nil {
			return nil, err
		}
		for _, r := range sel.remote {
			if len(r.Kernels) == 0 {
				// Named here, before a plan sends runners off to build nothing from it.
				return nil, kmp.InputErrorf(r.Repo, "no kernel matches the selection")
			}
		}
	}
	if len(sel.releases()) == 0 {
		return nil, cli.Exit("no kernel devel trees to build against (install linux-headers-*, kernel-devel, or pass --kernel)", exitInput)
	}
	return sel, nil
}

// releases are the selection's kernel releases, in build order: the local trees' and the
// repositories' listings' (which name the release their packages' trees have).
func (s *kernelSelection) releases() []string {
	seen := map[string]bool{}
	var out []string
	add := func(r string) {
		// A release two repositories list (a mirror, bookworm and bookworm-security) is one
		// kernel: counted twice, two shards would both build it.
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	for _, t := range s.local.Trees {
		add(t.Release)
	}
	for _, r := range s.remote {
		for _, k := range r.Kernels {
			add(k.Release)
		}
	}
	// Releases that compare equal as versions ("6.1.0-1", "6.1.00-1") by their bytes, so the
	// order is a function of the set alone.
	slices.SortFunc(out, func(a, b string) int {
		if c := kernel.CompareReleases(a, b); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return out
}

// trees downloads and unpacks the repositories' kernels (only those whose release want
// holds, when want is not nil) and returns them with the local trees that want holds.
func (s *kernelSelection) trees(c *cli.Context, want map[string]bool) ([]*kernel.KernelTree, error) {
	var out []*kernel.KernelTree
	for _, t := range s.local.Trees {
		if want == nil || want[t.Release] {
			out = append(out, t)
		}
	}
	// The repositories' kernels wanted, each result with only those (none: not fetched).
	var fetch []repo.Result
	listed := map[string]bool{}
	for _, r := range s.remote {
		r.Kernels = slices.DeleteFunc(slices.Clone(r.Kernels), func(k repo.Kernel) bool { return want != nil && !want[k.Release] })
		for _, k := range r.Kernels {
			listed[k.Release] = true
		}
		if len(r.Kernels) > 0 {
			fetch = append(fetch, r)
		}
	}
	if len(fetch) > 0 {
		files, err := repo.FetchKernels(c.Context, repoFetcher(c), fetch)
		if err != nil {
			return nil, err
		}
		found, err := unpack.FindKernels(c.String("cache-dir"), "/", files)
		if err != nil {
			return nil, err
		}
		if len(found.Errors) > 0 {
			return nil, cli.Exit(strings.Join(found.Errors, "\nkmpack: "), exitInput)
		}
		if want != nil {
			// Shards were split by the listings' releases: a tree of another release would
			// be built by no shard or by two, a listed release without its tree by none.
			got := map[string]bool{}
			for _, t := range found.Trees {
				if !listed[t.Release] {
					return nil, kmp.InputErrorf(t.Dir, "a repository's kernel package holds the tree of %s, which its listing does not name: build --shard needs them to agree (shard package files given with -k instead)", t.Release)
				}
				got[t.Release] = true
			}
			for r := range listed {
				if !got[r] {
					return nil, cli.Exit(fmt.Sprintf("the packages a repository lists for kernel %s hold no tree of that release: build --shard needs them to agree (shard package files given with -k instead)", r), exitInput)
				}
			}
		}
		out = append(out, found.Trees...)
	}
	kernel.SortKernelTrees(out)
	return out, nil
}

// readCosts reads --costs: a build output directory or its manifest.json.
func readCosts(c *cli.Context) (*manifest.Manifest, error) {
	p := c.String("costs")
	if p == "" {
		return nil, nil
	}
	fi, err := os.Stat(p)
	if err != nil {
		return nil, kmp.InputErrorf(p, "--costs: %v", kmp.UnwrapPathError(err))
	}
	if fi.IsDir() {
		return manifest.Read(p)
	}
	if filepath.Base(p) != "manifest.json" {
		return nil, kmp.InputErrorf(p, "--costs: not a build output directory nor its manifest.json")
	}
	return manifest.Read(filepath.Dir(p))
}

// shardTrees is build --shard: the trees of shard I/N, and what the manifest records of it. The
// shards are split by release before anything is downloaded: a runner fetches only the
// repository kernels of its own shard.
func shardTrees(c *cli.Context, v string, sel *kernelSelection) ([]*kernel.KernelTree, *manifest.ShardInfo, error) {
	index, count, err := build.ParseShard(v)
	if err != nil {
		return nil, nil, usagef("--shard: %v", err)
	}
	if c.Bool("classes") {
		return nil, nil, usagef("--shard and --classes: a class's kernels must build together; shard without --classes")
	}
	costs, err := readCosts(c)
	if err != nil {
		return nil, nil, err
	}
	mine, info, err := build.SelectShard(sel.releases(), costs, index, count)
	if err != nil {
		return nil, nil, usagef("--shard %s: %v", v, err)
	}
	want := map[string]bool{}
	for _, r := range mine {
		want[r] = true
	}
	trees, err := sel.trees(c, want)
	if err != nil {
		return nil, nil, err
	}
	return trees, info, nil
}

func planCommand() *cli.Command {
	return &cli.Command{
		Name:      "plan",
		Usage:     "print the work a build would do (cache keys, cache hits, costs) and split it into shards",
		ArgsUsage: "[SOURCE]",
		Description: `SOURCE and the kernels are as for kmpack build (--kernel, the spec's kernels, the installed
trees, --kernel-repo). Nothing is built or written: the plan, as JSON, lists each kernel's
build with its cache key (the one kmpack build uses with the same arguments), whether the
local cache has it, and its cost.

With --shards N the kernels are split into N groups of balanced cost, longest first: every
kernel, cache hits included, by its release and the durations of the --costs manifest only
(without one every kernel costs the same), so that each runner of kmpack build --shard I/N,
given the same kernels and --costs, builds exactly group I, whatever its cache holds.
kmpack merge then combines the shards' outputs into one, for kmpack package and publish.

--ci github prints the shards as a GitHub Actions matrix for fromJSON
({"include":[{"shard":"1/N"},...]}); --ci gitlab a child pipeline (parallel:matrix) that
builds every shard with this command's SOURCE and kernel arguments and merges them.`,
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "kernel", Aliases: []string{"k"}, Usage: "kernel tree directory, glob, or package file (repeatable)"},
			&cli.StringSliceFlag{Name: "kernel-repo", Usage: "also plan kernels from this repository (see kmpack build)"},
			&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, Value: min(runtime.NumCPU(), build.MaxJobs), Usage: "as kmpack build's (a dkms.conf may read it: it is part of the cache key)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "kmpack-out", Usage: "the build's output directory (kept out of the source's hash; a previous build's durations there are shown)"},
			&cli.StringFlag{Name: "compress", Value: "auto", Usage: "as kmpack build's"},
			&cli.BoolFlag{Name: "no-strip", Usage: "as kmpack build's"},
			&cli.BoolFlag{Name: "no-cache", Usage: "plan as kmpack build --no-cache: nothing is cached"},
			&cli.BoolFlag{Name: "no-private-mounts", Usage: "as kmpack build's"},
			&cli.IntFlag{Name: "shards", Value: 1, Usage: "split the kernels into this many shards (at most one per kernel)"},
			costsFlag,
			&cli.StringFlag{Name: "ci", Usage: "print the shards for a CI system instead of the plan: github (a matrix for fromJSON) or gitlab (a child pipeline)"},
		}, repoSelectFlags()...),
		Action: runPlan,
	}
}

func runPlan(c *cli.Context) error {
	if c.NArg() > 1 {
		return usagef("plan takes one SOURCE, got %d arguments", c.NArg())
	}
	srcPath := c.Args().First()
	if srcPath == "" {
		srcPath = "."
	}
	switch c.String("ci") {
	case "", "github", "gitlab":
	default:
		return usagef("--ci: %q is neither github nor gitlab", c.String("ci"))
	}
	if j := c.Int("jobs"); j < 1 || j > build.MaxJobs {
		return usagef("--jobs must be between 1 and %d, not %d", build.MaxJobs, j)
	}
	if c.Int("shards") < 1 {
		return usagef("--shards must be at least 1")
	}
	var comp module.Compression
	if v := c.String("compress"); v != "auto" {
		var err error
		if comp, err = module.ParseCompression(v); err != nil {
			return usagef("--compress: %v", err)
		}
	}
	src, err := source.OpenSource(srcPath)
	if err != nil {
		return err
	}
	sel, err := selectKernels(c, src)
	if err != nil {
		return err
	}
	if n, k := c.Int("shards"), len(sel.releases()); n > k {
		return usagef("--shards %d for %d kernels: at most one shard per kernel", n, k)
	}
	costs, err := readCosts(c)
	if err != nil {
		return err
	}
	// A CI pipeline needs the shards only, which releases and costs make: nothing is downloaded
	// (each runner fetches its own shard's kernels).
	switch c.String("ci") {
	case "github":
		return githubMatrix(os.Stdout, c.Int("shards"))
	case "gitlab":
		sh, err := build.NewSharding(sel.releases(), costs, c.Int("shards"))
		if err != nil {
			return usagef("--shards: %v", err)
		}
		return gitlabPipeline(os.Stdout, src, sh, planBuildArgs(c, srcPath))
	}
	trees, err := sel.trees(c, nil)
	if err != nil {
		return err
	}
	opts := build.PlanOptions{
		BuildOptions: build.BuildOptions{
			Jobs: c.Int("jobs"), OutputDir: c.String("output"), Compression: comp, NoStrip: c.Bool("no-strip"),
			NoPrivateMounts: c.Bool("no-private-mounts"), CacheDir: c.String("cache-dir"), Refresh: c.Bool("no-cache"),
			Secrets: secretFiles(c, src),
			Warn:    func(s string) { fmt.Fprintln(os.Stderr, "kmpack: warning:", s) },
		},
		Shards: c.Int("shards"),
		Costs:  costs,
	}
	p, err := build.PlanBuild(c.Context, src, trees, opts)
	if err != nil {
		return err
	}
	return writeJSON(os.Stdout, p)
}

func shardNames(n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("%d/%d", i, n))
	}
	return out
}

// githubMatrix prints {"include":[{"shard":"1/N"},...]} on one line, for
// echo "matrix=$(kmpack plan --shards N --ci github)" >> "$GITHUB_OUTPUT".
func githubMatrix(w io.Writer, n int) error {
	type entry struct {
		Shard string `json:"shard"`
	}
	var m struct {
		Include []entry `json:"include"`
	}
	for _, s := range shardNames(n) {
		m.Include = append(m.Include, entry{s})
	}
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", data)
	return err
}

// planBuildArgs are the SOURCE and kernel arguments of this plan, shell-quoted, for the
// build commands of a generated pipeline.
func planBuildArgs(c *cli.Context, srcPath string) string {
	var args []string
	for _, k := range c.StringSlice("kernel") {
		args = append(args, "-k", k)
	}
	for _, r := range c.StringSlice("kernel-repo") {
		args = append(args, "--kernel-repo", r)
	}
	for _, f := range []string{"release", "keyring"} {
		if c.IsSet(f) {
			args = append(args, "--"+f, c.String(f))
		}
	}
	for _, f := range c.StringSlice("flavor") {
		args = append(args, "--flavor", f)
	}
	for _, a := range c.StringSlice("arch") {
		args = append(args, "--arch", a)
	}
	if c.IsSet("versions") {
		args = append(args, "--versions", fmt.Sprint(c.Value("versions")))
	}
	for _, f := range []string{"latest", "compress", "jobs"} {
		if c.IsSet(f) {
			args = append(args, "--"+f, fmt.Sprint(c.Value(f)))
		}
	}
	for _, f := range []string{"no-strip", "no-private-mounts"} {
		if c.Bool(f) {
			args = append(args, "--"+f)
		}
	}
	if c.String("costs") != "" {
		args = append(args, "--costs", c.String("costs"))
	}
	args = append(args, srcPath)
	for i, a := range args {
		args[i] = kmp.ShellQuote(a)
	}
	return strings.Join(args, " ")
}

// gitlabPipeline prints a child pipeline: a parallel:matrix job building each shard into
// kmpack-shard-<n>, and a job merging them into kmpack-out.
func gitlabPipeline(w io.Writer, src *source.Source, sh *build.Sharding, args string) error {
	n := sh.Count
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) } // a YAML double-quoted scalar
	var shards []string
	for _, s := range shardNames(n) {
		shards = append(shards, q(s))
	}
	fmt.Fprintf(w, "# kmpack plan --ci gitlab: %d shards of %s (plan %.12s)\n", n, cmp.Or(strings.TrimSpace(src.Name+" "+src.Version), "the source in "+src.Dir), sh.ID)
	// package and publish have no jobs here: a pipeline may append its own (examples/ci).
	fmt.Fprintf(w, "stages: [build, merge, package, publish]\n\n")
	fmt.Fprintf(w, "kmpack-shard:\n  stage: build\n  parallel:\n    matrix:\n      - KMPACK_SHARD: [%s]\n", strings.Join(shards, ", "))
	fmt.Fprintf(w, "  script:\n    - %s\n", q(`kmpack build -q --shard "$KMPACK_SHARD" -o "kmpack-shard-${KMPACK_SHARD%/*}" `+args))
	fmt.Fprintf(w, "  artifacts:\n    paths: [%s]\n\n", q("kmpack-shard-*"))
	fmt.Fprintf(w, "kmpack-merge:\n  stage: merge\n  needs: [kmpack-shard]\n  script:\n    - %s\n", q("kmpack merge -o kmpack-out kmpack-shard-*"))
	_, err := fmt.Fprintf(w, "  artifacts:\n    paths: [%s]\n", q("kmpack-out"))
	return err
}

func mergeCommand() *cli.Command {
	return &cli.Command{
		Name:      "merge",
		Usage:     "combine the outputs of a sharded build (kmpack build --shard) into one output",
		ArgsUsage: "OUTPUT...",
		Description: `Each OUTPUT is a build output: the shards of one plan (every shard once), or outputs of one
source for distinct kernels. The merge is one output with one manifest, as a single build of
every kernel would have written it, for kmpack package and publish (which then run once, and
write the packages a single build's output gives, byte for byte).

The outputs are checked as untrusted input: outputs of different sources (name, version,
sha256) or kmpack versions, outputs sharing a kernel, shards of different plans or a missing
shard, outputs not signed with the same certificates, and module files that do not match their
manifest's sha256 are refused (exit 3), with nothing written. --output is replaced as kmpack
build replaces its output (locked, staged, renamed), and must not be one of the OUTPUTs.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "kmpack-out", Usage: "the merged output directory"},
			jsonFlag,
		},
		Action: runMerge,
	}
}

func runMerge(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("merge takes the OUTPUT directories to merge")
	}
	m, err := build.Merge(c.Args().Slice(), c.String("output"))
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(os.Stdout, m)
	}
	printBuildSummary(os.Stdout, m, c.String("output"))
	return nil
}
