package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/source"
	"github.com/kmpack/kmpack/kmp/unpack"
)

var (
	shardFlag = &cli.StringFlag{Name: "shard", Usage: "build only shard I of N (I/N): the kernels split into N groups of balanced cost as kmpack plan --shards N splits them (by release and --costs only); combine the shards' outputs with kmpack merge"}
	costsFlag = &cli.StringFlag{Name: "costs", Usage: "an earlier build's manifest.json (or its output directory) whose build durations balance the shards; give every shard the same file"}
)

// findTrees finds the kernel trees a build of src uses: --kernel, else the spec's kernels,
// else the installed ones, plus --kernel-repo's; sorted by release.
func findTrees(c *cli.Context, src *source.Source) ([]*kernel.KernelTree, error) {
	kernelArgs := c.StringSlice("kernel")
	root := "/"
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
	if len(queries) > 0 {
		files, err := fetchRepoKernels(c, queries)
		if err != nil {
			return nil, err
		}
		kernelArgs = append(kernelArgs, files...)
	}
	found, err := unpack.FindKernels(c.String("cache-dir"), root, kernelArgs)
	if err != nil {
		return nil, err
	}
	if len(found.Errors) > 0 {
		return nil, cli.Exit(strings.Join(found.Errors, "\nkmpack: "), exitInput)
	}
	if len(found.Trees) == 0 {
		return nil, cli.Exit("no kernel devel trees to build against (install linux-headers-*, kernel-devel, or pass --kernel)", exitInput)
	}
	return filterArch(c, found.Trees)
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

// shardTrees is build --shard: the trees of shard I/N, and what the manifest records of it.
func shardTrees(c *cli.Context, v string, trees []*kernel.KernelTree) ([]*kernel.KernelTree, *manifest.ShardInfo, error) {
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
	sel, info, err := build.SelectShard(trees, costs, index, count)
	if err != nil {
		return nil, nil, usagef("--shard %s: %v", v, err)
	}
	return sel, info, nil
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
	trees, err := findTrees(c, src)
	if err != nil {
		return err
	}
	if n := c.Int("shards"); n > len(trees) {
		return usagef("--shards %d for %d kernels: at most one shard per kernel", n, len(trees))
	}
	costs, err := readCosts(c)
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
	switch c.String("ci") {
	case "github":
		return githubMatrix(os.Stdout, p, opts.Shards)
	case "gitlab":
		return gitlabPipeline(os.Stdout, p, opts.Shards, planBuildArgs(c, srcPath))
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
func githubMatrix(w io.Writer, p *build.Plan, n int) error {
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
	if c.IsSet("versions") {
		args = append(args, "--versions", fmt.Sprint(c.Value("versions")))
	}
	if c.Bool("latest") {
		args = append(args, "--latest")
	}
	for _, f := range []string{"compress", "jobs"} {
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
func gitlabPipeline(w io.Writer, p *build.Plan, n int, args string) error {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) } // a YAML double-quoted scalar
	var shards []string
	for _, s := range shardNames(n) {
		shards = append(shards, q(s))
	}
	fmt.Fprintf(w, "# kmpack plan --ci gitlab: %d shards of %s %s (plan %.12s)\n", n, p.Source.Name, p.Source.Version, p.ShardPlan)
	fmt.Fprintf(w, "stages: [build, merge]\n\n")
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
