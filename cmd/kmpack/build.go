package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/source"
	"github.com/kmpack/kmpack/weakupdates"
)

// Exit codes of kmpack build beyond the common ones, documented in the README.
const (
	exitBuildFailed = 4 // at least one kernel failed to build; the others' results are in the output
	exitAllSkipped  = 5 // no kernel was built: BUILD_EXCLUSIVE rules skipped every one (dkms's 77)
)

func buildCommand() *cli.Command {
	return &cli.Command{
		Name:      "build",
		Usage:     "build a module source against kernel trees, in parallel, into an output directory with a manifest",
		ArgsUsage: "[SOURCE]",
		Description: `SOURCE is a directory holding a kmpack.yaml, a dkms.conf or a bare Kbuild tree (looked for in
that order), or the path of a kmpack.yaml or dkms.conf. It defaults to the current directory.

Kernels come from --kernel (a tree directory, a glob, or .deb/.rpm files unpacked into the
cache), else from the spec's kernels list, else from the trees installed on this machine;
--arch keeps those of the architectures named. A kernel of another architecture than this
host's is built with make ARCH=<kernel arch> CROSS_COMPILE=<triplet>- and the cross gcc its
CONFIG_CC_VERSION_TEXT names (aarch64-linux-gnu-gcc-12: Debian's gcc-12-aarch64-linux-gnu; a
missing one fails that kernel, naming the package); one run may mix architectures.

Each kernel builds in its own copy of the source, which its commands see at dkms's own paths
(/usr/src/<name>-<version>, /var/lib/dkms/<name>/<version>/build, /lib/modules/<release>/build)
in a private mount namespace, with the host's /usr/src, /var/lib/dkms and /lib/modules
read-only around it; nothing is mounted or written there on the host. Where namespaces are
unavailable (or with --no-private-mounts) builds run in $TMPDIR workspaces, with a note. All
builds share one job budget (--jobs) through a make jobserver. Results go to OUTPUT/modules/<release>/, logs to OUTPUT/logs/,
and OUTPUT/manifest.json describes every kernel's outcome and module. A build whose inputs
did not change is taken from the cache and not rebuilt.

With --format/--profile (or formats/profile in kmpack.yaml), every kernel's modules are then
packaged into OUTPUT/packages/ (see kmpack package), when no kernel failed.

OUTPUT is locked (flock on .OUTPUT.lock beside it) while a build writes it: a second build
into the same OUTPUT fails at once (exit 1). An existing OUTPUT is only replaced when it is
empty or a previous kmpack build output (its manifest.json says "format": "kmpack-build-output").

Exit status: 0 every kernel built or skipped (at least one built), 4 at least one kernel
failed, 5 every kernel was skipped by BUILD_EXCLUSIVE rules (not for a --shard), 3 bad input (nothing written;
but when packaging after a successful build refuses the metadata, the build output stays and
only OUTPUT/packages is not written), 2 wrong command line, 1 kmpack or the machine failed,
130 interrupted (SIGINT/SIGTERM: builds killed, nothing written).`,
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "kernel", Aliases: []string{"k"}, Usage: "kernel tree directory, glob, or package file (repeatable)"},
			&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, Value: min(runtime.NumCPU(), build.MaxJobs), Usage: "job budget shared by all kernels' builds (1 to 1024)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "kmpack-out", Usage: "output directory (replaced if it holds a previous kmpack output)"},
			&cli.StringFlag{Name: "compress", Value: "auto", Usage: "module compression: auto (the kernel's CONFIG_MODULE_COMPRESS_*), none, gzip, xz, zstd"},
			&cli.BoolFlag{Name: "no-strip", Usage: "keep debug info in all modules (default: strip -g as dkms does, unless STRIP says no)"},
			&cli.BoolFlag{Name: "no-cache", Usage: "rebuild everything, ignoring cached results (fresh results replace the cache's)"},
			&cli.StringFlag{Name: "cache-url", EnvVars: []string{"KMPACK_CACHE_URL"}, Usage: "share the build cache through this OCI registry repository: oci://HOST/REPO (HTTPS) or oci+http://HOST/REPO (plain HTTP); local misses are pulled from it, fresh builds pushed to it (credentials as docker and podman find them). Never read from kmpack.yaml"},
			&cli.BoolFlag{Name: "trust-cache-url", Usage: "let a signing build sign modules pulled from --cache-url (by default it rebuilds them: whoever can push to the repository would otherwise choose what is signed)"},
			&cli.BoolFlag{Name: "compile-cache", Usage: "reuse compiled objects whose compiler input did not change (ccache, in <cache-dir>/ccache; same modules, byte for byte)"},
			&cli.DurationFlag{Name: "timeout", Usage: "fail a kernel whose build takes longer than this (e.g. 30m; 0: no limit)"},
			&cli.BoolFlag{Name: "keep-work", Usage: "keep the build workspace of failed kernels (its path is in the log)"},
			&cli.BoolFlag{Name: "no-private-mounts", Usage: "build in $TMPDIR workspaces instead of at dkms's paths in private mount namespaces"},
			&cli.BoolFlag{Name: "ignore-build-depends", Usage: "build even when dkms.conf lists BUILD_DEPENDS"},
			&cli.BoolFlag{Name: "json", Usage: "print the manifest as JSON on stdout instead of a summary"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress lines"},
			&cli.StringSliceFlag{Name: "siblings", Usage: "also judge whether each kernel's modules load in these kernels (trees, symvers files, /lib/modules/<release>; see kmpack compat) and record it in the manifest"},
			&cli.BoolFlag{Name: "classes", Usage: "build one kernel per class: in each flavor and series, build the oldest kernel, serve every other kernel its modules load in (the compat check) from that build, and build only for kernels it cannot serve; the manifest says which build serves which kernel, with the verdicts"},
			&cli.StringSliceFlag{Name: "kernel-repo", Usage: "also build against kernels from this repository, downloaded and unpacked into the cache (repeatable; see kmpack kernels --repo, and --flavor, --release, --latest)"},
			shardFlag, costsFlag,
		}, append(append(packagingFlags(), signingFlags()...), repoSelectFlags()...)...),
		Action: runBuild,
	}
}

func runBuild(c *cli.Context) error {
	if c.NArg() > 1 {
		return usagef("build takes one SOURCE, got %d arguments", c.NArg())
	}
	srcPath := c.Args().First()
	if srcPath == "" {
		srcPath = "."
	}
	if c.Duration("timeout") < 0 {
		return usagef("--timeout must not be negative")
	}
	if j := c.Int("jobs"); j < 1 || j > build.MaxJobs {
		return usagef("--jobs must be between 1 and %d, not %d", build.MaxJobs, j)
	}
	if u := c.String("cache-url"); u != "" {
		if _, _, err := build.ParseCacheURL(u); err != nil {
			return usagef("--cache-url (or KMPACK_CACHE_URL): %v", err)
		}
	} else if c.Bool("trust-cache-url") {
		return usagef("--trust-cache-url applies to a --cache-url")
	}
	// Keys are loaded (and a passphrase checked) before anything is built or written.
	signers, err := signersFromFlags(c)
	if err != nil {
		return err
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
	if signers, err = specSigners(c, src, signers); err != nil {
		return err
	}
	profiles, err := packagingProfiles(c, src.Spec)
	if err != nil {
		return err
	}
	var pkgSigning *formats.PackageSigning
	if len(profiles) > 0 {
		// Package signing keys too are loaded, and checked, before anything is built.
		if pkgSigning, err = packageSigning(c); err != nil {
			return err
		}
	}
	sel, err := selectKernels(c, src)
	if err != nil {
		return err
	}
	var trees []*kernel.KernelTree
	var shard *manifest.ShardInfo
	if v := c.String("shard"); v != "" {
		if trees, shard, err = shardTrees(c, v, sel); err != nil {
			return err
		}
		if len(profiles) > 0 {
			// One shard's packages would lack the other shards' kernels: package the merge.
			fmt.Fprintln(os.Stderr, "kmpack: note: a shard is not packaged: package the output of kmpack merge")
			profiles = nil
		}
	} else if c.IsSet("costs") {
		return usagef("--costs balances shards: it goes with --shard")
	} else if trees, err = sel.trees(c, nil); err != nil {
		return err
	}

	if formats.WantsRuntime(profiles) && !c.Bool("no-runtime-package") {
		// The runtime packages' binaries are checked before anything is built.
		arches := map[string]string{}
		for _, t := range trees {
			addArch(arches, t.Arch, t.Release)
		}
		if _, err := checkRuntimeBinaries(c, profiles, arches); err != nil {
			return err
		}
	} else if len(c.StringSlice("runtime-binary")) > 0 {
		return usagef("%s", errRuntimeBinaryUnused)
	}

	ctx := c.Context
	var siblings []*weakupdates.Target
	for _, s := range c.StringSlice("siblings") {
		t, err := openTarget(ctx, s, weakupdates.TargetOptions{CacheDir: c.String("cache-dir")})
		if err != nil {
			return err
		}
		siblings = append(siblings, t)
	}
	opts := build.BuildOptions{
		Signers:            signers,
		Secrets:            secretFiles(c, src),
		Jobs:               c.Int("jobs"),
		OutputDir:          c.String("output"),
		Compression:        comp,
		NoStrip:            c.Bool("no-strip"),
		KeepWork:           c.Bool("keep-work"),
		NoPrivateMounts:    c.Bool("no-private-mounts"),
		Timeout:            c.Duration("timeout"),
		IgnoreBuildDepends: c.Bool("ignore-build-depends"),
		Shard:              shard,
		Warn:               func(s string) { fmt.Fprintln(os.Stderr, "kmpack: warning:", s) },
	}
	opts.CacheDir, opts.Refresh = c.String("cache-dir"), c.Bool("no-cache")
	// Where builds are pushed is the operator's choice (command line, environment), never a
	// source's: kmpack.yaml has no such setting.
	opts.CacheURL, opts.TrustCacheURL = c.String("cache-url"), c.Bool("trust-cache-url")
	if c.Bool("classes") {
		opts.Classes = weakupdates.ClassJudge(ctx, weakupdates.TargetOptions{CacheDir: c.String("cache-dir")})
	}
	if c.Bool("compile-cache") {
		opts.CompileCache = filepath.Join(c.String("cache-dir"), "ccache")
	}
	if len(siblings) > 0 {
		opts.Siblings = func(release string, mods []*module.ModuleInfo) []manifest.SiblingVerdict {
			return weakupdates.Siblings(release, mods, siblings)
		}
	}
	var prog *progress
	if !c.Bool("quiet") {
		prog = newProgress(os.Stderr, trees)
		opts.Progress = prog.update
		defer prog.stop()
	}
	m, err := build.Build(ctx, src, trees, opts)
	if prog != nil {
		prog.stop()
	}
	if err != nil && !errors.Is(err, build.ErrBuildFailed) {
		return err
	}
	if c.Bool("json") {
		if err := writeJSON(os.Stdout, m); err != nil {
			return err
		}
	} else {
		printBuildSummary(os.Stdout, m, opts.OutputDir)
	}
	switch {
	case m.Summary.Failed > 0:
		for _, k := range m.Kernels {
			if k.Status == manifest.StatusFailed && len(k.LogTail) > 0 {
				fmt.Fprintf(os.Stderr, "\n--- %s: last lines of %s\n%s\n", k.Release, filepath.Join(opts.OutputDir, k.Log), strings.Join(k.LogTail, "\n"))
			}
		}
		return cli.Exit(fmt.Sprintf("build failed for %d of %d kernels", m.Summary.Failed, len(m.Kernels)), exitBuildFailed)
	case m.Summary.Built == 0 && shard == nil: // a shard of skipped kernels is no failure
		return cli.Exit("nothing built: every kernel was skipped by BUILD_EXCLUSIVE rules", exitAllSkipped)
	}
	if len(profiles) > 0 {
		var w io.Writer = os.Stdout
		if c.Bool("json") {
			w = os.Stderr
		}
		return writePackages(c, src, m, opts.OutputDir, trees, profiles, pkgSigning, w)
	}
	return nil
}

func printBuildSummary(w io.Writer, m *manifest.Manifest, outDir string) {
	fmt.Fprintf(w, "%s %s (%s) -> %s\n", m.Source.Name, m.Source.Version, m.Source.Kind, outDir)
	width := 0
	for _, k := range m.Kernels {
		width = max(width, len(k.Release))
	}
	for _, k := range m.Kernels {
		status := string(k.Status)
		if k.Cached && k.Status == manifest.StatusBuilt {
			status = "cached"
		}
		var detail string
		switch k.Status {
		case manifest.StatusBuilt:
			var names []string
			for _, mod := range k.Modules {
				names = append(names, filepath.Base(mod.File))
			}
			detail = fmt.Sprintf("%5.1fs  %s", k.Duration, strings.Join(names, " "))
		case manifest.StatusServed:
			detail = "by the build for " + k.ServedBy + " (its modules load here)"
		default:
			detail = k.Reason
			if k.Status == manifest.StatusFailed && k.Log != "" {
				detail += "  (log: " + filepath.Join(outDir, k.Log) + ")"
			}
			if k.Status == manifest.StatusFailed && k.Cached {
				detail += "  [same inputs as a failed build in the cache; --no-cache retries]"
			}
		}
		fmt.Fprintf(w, "  %-*s  %-7s  %s\n", width, k.Release, status, detail)
		for _, e := range k.Excluded {
			if k.Status != manifest.StatusSkipped {
				fmt.Fprintf(w, "  %-*s  %-7s  %s: %s\n", width, "", "", e.Name, e.Reason)
			}
		}
		for _, sv := range k.Siblings {
			verdict := "loads in " + sv.Kernel
			if !sv.Compatible {
				verdict = fmt.Sprintf("cannot load in %s (%d reasons, see the manifest)", sv.Kernel, len(sv.Reasons))
			}
			fmt.Fprintf(w, "  %-*s  %-7s  %s %s\n", width, "", "", sv.Module, verdict)
		}
	}
	s := m.Summary
	served := ""
	if s.Served > 0 {
		served = fmt.Sprintf(", %d served by another kernel's build", s.Served)
	}
	fmt.Fprintf(w, "%d built (%d from cache)%s, %d skipped, %d failed\n", s.Built, s.Cached, served, s.Skipped, s.Failed)
	allCached := s.Built+s.Failed > 0
	for _, k := range m.Kernels {
		allCached = allCached && (k.Cached || k.Status == manifest.StatusSkipped || k.Status == manifest.StatusServed)
	}
	if allCached {
		fmt.Fprintln(w, "nothing rebuilt: every build was up to date in the cache")
	}
}

// progress shows each kernel's state: redrawn in place on a terminal, one line per change otherwise.
type progress struct {
	w       io.Writer
	tty     bool
	mu      sync.Mutex
	order   []string
	state   map[string]build.ProgressEvent
	started map[string]time.Time
	drawn   int
	done    chan struct{}
	once    sync.Once
}

func newProgress(f *os.File, trees []*kernel.KernelTree) *progress {
	p := &progress{w: f, tty: term.IsTerminal(int(f.Fd())), state: map[string]build.ProgressEvent{},
		started: map[string]time.Time{}, done: make(chan struct{})}
	for _, t := range trees {
		p.order = append(p.order, t.Release)
	}
	sort.SliceStable(p.order, func(i, j int) bool { return kernel.CompareReleases(p.order[i], p.order[j]) < 0 })
	if p.tty {
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-p.done:
					return
				case <-t.C:
					p.mu.Lock()
					p.redraw()
					p.mu.Unlock()
				}
			}
		}()
	}
	return p
}

func (p *progress) update(ev build.ProgressEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state[ev.Release] = ev
	if ev.Status == manifest.StatusBuilding {
		p.started[ev.Release] = time.Now()
	}
	if p.tty {
		p.redraw()
		return
	}
	if ev.Status == manifest.StatusQueued {
		return
	}
	fmt.Fprintf(p.w, "kmpack: %s: %s\n", ev.Release, describeEvent(ev))
}

func describeEvent(ev build.ProgressEvent) string {
	switch {
	case ev.Status == manifest.StatusBuilt && ev.Cached:
		return "up to date (from cache)"
	case ev.Status == manifest.StatusFailed && ev.Cached:
		return "failed (cached result of the same inputs): " + ev.Detail
	case ev.Status == manifest.StatusBuilt:
		return fmt.Sprintf("built in %.1fs", ev.Elapsed.Seconds())
	case ev.Detail != "":
		return string(ev.Status) + ": " + ev.Detail
	}
	return string(ev.Status)
}

func (p *progress) redraw() {
	if p.drawn > 0 {
		fmt.Fprintf(p.w, "\x1b[%dA", p.drawn)
	}
	for _, rel := range p.order {
		ev := p.state[rel]
		line := describeEvent(ev)
		if ev.Status == manifest.StatusBuilding {
			line = fmt.Sprintf("building %ds", int(time.Since(p.started[rel]).Seconds()))
		}
		if ev.Status == "" {
			line = "queued"
		}
		fmt.Fprintf(p.w, "\x1b[2K  %-28s %s\n", rel, truncate(line, 100))
	}
	p.drawn = len(p.order)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}

func (p *progress) stop() {
	p.once.Do(func() {
		close(p.done)
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.tty {
			p.redraw()
		}
	})
}
