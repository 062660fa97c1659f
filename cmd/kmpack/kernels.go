package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/repo"
	"github.com/kmpack/kmpack/kmp/unpack"
	"github.com/kmpack/kmpack/weakupdates"
)

func kernelsCommand() *cli.Command {
	return &cli.Command{
		Name:      "kernels",
		Usage:     "find and describe kernel devel trees, from directories or from package files",
		ArgsUsage: "[DIR|PACKAGE ...]",
		Description: `With no arguments, looks where distros install devel trees: /lib/modules/*/build,
/usr/src/linux-headers-* (Debian, Ubuntu), /usr/src/kernels/* (RHEL, Fedora) and
/usr/src/linux-obj/<arch>/<flavor> (SUSE), under --root.

DIR is a tree to describe. PACKAGE is a .deb or .rpm: all package files given are unpacked
together, without root and without touching the system, into a content-addressed cache
(--cache-dir), once. A Debian flavor needs linux-headers-<abi>-<flavor>, linux-headers-<abi>-common
and linux-kbuild-<series>; SUSE kernel-<flavor>-devel with kernel-devel; RHEL kernel-devel.
Each tree's architecture comes from its .config; --arch keeps only those architectures. A tree
of another architecture is built with ARCH= and CROSS_COMPILE= (shown) and its host tools must
run here: Debian headers for arm64 go with this host's linux-kbuild-<series> (amd64).

With --repo, lists the kernels a repository offers (selected by --flavor, --release, --latest),
with the packages each needs and their sizes, downloading only metadata. REPO is an apt source
in sources.list one-line form ('deb [arch=amd64] http://deb.debian.org/debian bookworm main') or
an rpm-md base URL (the directory holding repodata/); http, https and file URLs.

With --builds OUT (repeatable, outputs of one source), each kernel found (trees, package files,
or a repository's selection, whose devel packages are then downloaded into the cache, once) is
judged against the builds: "built" (OUT has a build for it), "loads" (a build for another
kernel whose modules all load there: weak-updates serves it; same flavor first, newest first),
or "none" (with the closest build's first reason).`,
		Flags: append([]cli.Flag{
			jsonFlag,
			&cli.StringFlag{Name: "root", Value: "/", Usage: "system root to discover trees under"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "also list candidates that are not usable trees, and why"},
			&cli.BoolFlag{Name: "dirs", Usage: "print only the trees' directories, one per line (for scripts)"},
			&cli.StringSliceFlag{Name: "repo", Usage: "list the kernels this repository offers (repeatable; see above)"},
			&cli.StringSliceFlag{Name: "builds", Usage: "also say, for each kernel, whether these build outputs (kmpack build -o, repeatable) serve it: built for it, or a build of another kernel loads there (the compat check), or none"},
		}, repoSelectFlags()...),
		Action: runKernels,
	}
}

func runKernels(c *cli.Context) error {
	outputs := c.StringSlice("builds")
	var repoRes []repo.Result
	var res *unpack.Found
	if specs := c.StringSlice("repo"); len(specs) > 0 {
		if c.Args().Len() > 0 {
			return cli.Exit("--repo lists a repository's kernels: give no DIR or PACKAGE with it", exitUsage)
		}
		qs, err := repoQueries(c, specs)
		if err != nil {
			return err
		}
		f := repoFetcher(c)
		if repoRes, err = repo.Resolve(c.Context, f, qs); err != nil {
			return err
		}
		if len(outputs) == 0 {
			if c.Bool("json") {
				return writeJSON(os.Stdout, map[string]any{"repositories": repoRes})
			}
			printRepoKernels(os.Stdout, repoRes)
			return nil
		}
		// Judging builds needs each kernel's symbol versions: its devel packages.
		files, err := repo.FetchKernels(c.Context, f, repoRes)
		if err != nil {
			return err
		}
		if res, err = unpack.FindKernels(c.String("cache-dir"), "/", files); err != nil {
			return err
		}
	} else {
		var err error
		if res, err = unpack.FindKernels(c.String("cache-dir"), c.String("root"), c.Args().Slice()); err != nil {
			return err
		}
	}
	trees, err := filterArch(c, res.Trees)
	if err != nil {
		return err
	}
	res.Trees = trees
	var coverage []weakupdates.KernelCoverage
	if len(outputs) > 0 && len(res.Errors) == 0 {
		var targets []*weakupdates.Target
		for _, t := range res.Trees {
			tg, err := openTarget(c.Context, t.Dir, weakupdates.TargetOptions{CacheDir: c.String("cache-dir")})
			if err != nil {
				return err
			}
			targets = append(targets, tg)
		}
		var err error
		if coverage, err = weakupdates.Coverage(targets, outputs); err != nil {
			return err
		}
	}
	switch {
	case c.Bool("json") && repoRes != nil:
		if err := writeJSON(os.Stdout, map[string]any{"repositories": repoRes, "coverage": coverage}); err != nil {
			return err
		}
	case c.Bool("json") && coverage != nil:
		if err := writeJSON(os.Stdout, struct {
			*unpack.Found
			Coverage []weakupdates.KernelCoverage `json:"coverage"`
		}{res, coverage}); err != nil {
			return err
		}
	case c.Bool("json"):
		if err := writeJSON(os.Stdout, res); err != nil {
			return err
		}
	case c.Bool("dirs"):
		for _, t := range res.Trees {
			fmt.Println(t.Dir)
		}
	case repoRes != nil:
		printRepoKernels(os.Stdout, repoRes)
	default:
		printKernels(os.Stdout, res, c.Bool("verbose"))
	}
	if coverage != nil && !c.Bool("json") {
		printCoverage(os.Stdout, coverage)
	}
	for _, e := range res.Errors {
		fmt.Fprintln(os.Stderr, "kmpack:", e)
	}
	if len(res.Errors) > 0 {
		return cli.Exit("", exitInput)
	}
	if len(res.Trees) == 0 {
		return cli.Exit("no kernel devel trees found (install linux-headers-*, kernel-devel, or pass package files)", exitInput)
	}
	return nil
}

// printCoverage is the table of `kmpack kernels --builds`.
func printCoverage(w io.Writer, cov []weakupdates.KernelCoverage) {
	fmt.Fprintln(w, "\nexisting builds (--builds):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, kc := range cov {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", kc.Release, kc.Status, kc.Describe())
	}
	tw.Flush()
	n := 0
	for _, kc := range cov {
		if kc.Status == weakupdates.CoverageNone {
			n++
		}
	}
	fmt.Fprintf(w, "%d of %d kernels need a build of their own\n", n, len(cov))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func printKernels(w io.Writer, res *unpack.Found, verbose bool) {
	for i, t := range res.Trees {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s  (%s layout, flavor %s, %s)\n", t.Release, t.Layout, t.Flavor, t.Arch)
		fmt.Fprintf(w, "  tree:         %s\n", t.Dir)
		if t.Cross() {
			fmt.Fprintf(w, "  cross build:  ARCH=%s CROSS_COMPILE=%s (this host is %s)\n", kernel.KernelArch(t.Arch), t.CrossCompile(), kernel.HostMachine())
		}
		if len(t.Packages) > 0 {
			fmt.Fprintf(w, "  packages:     %s\n", strings.Join(t.Packages, "\n                "))
		}
		if t.Symvers != nil {
			fmt.Fprintf(w, "  symvers:      %s (%d symbols, %d from vmlinux)\n", t.Symvers.Path, t.Symvers.Symbols, t.Symvers.Vmlinux)
		} else {
			fmt.Fprintf(w, "  symvers:      none\n")
		}
		fmt.Fprintf(w, "  modversions:  %s\n", yesNo(t.Modversions))
		fmt.Fprintf(w, "  compression:  %s\n", t.ModuleCompression)
		s := t.Signing
		if s.Enabled {
			var how []string
			if s.Force {
				how = append(how, "enforced")
			}
			if s.All {
				how = append(how, "all modules signed at build")
			}
			how = append(how, "hash "+s.Hash)
			if s.Key != "" {
				how = append(how, "key "+s.Key)
			}
			fmt.Fprintf(w, "  signing:      yes (%s)\n", strings.Join(how, ", "))
		} else {
			fmt.Fprintf(w, "  signing:      no\n")
		}
		cc := t.Compiler
		switch {
		case cc.VersionText == "":
			fmt.Fprintf(w, "  compiler:     unknown (no CONFIG_CC_VERSION_TEXT)\n")
		case cc.Available:
			// Describing runs nothing: the exact host version is learnt when a build runs it.
			match := "same major version"
			if cc.HostVersion != "" && cc.Exact {
				match = "same version"
			} else if cc.HostVersion != "" {
				match = "host has " + cc.HostVersion
			}
			fmt.Fprintf(w, "  compiler:     %s\n                on this host: %s (%s)\n", cc.VersionText, cc.Path, match)
		default:
			fmt.Fprintf(w, "  compiler:     %s\n                on this host: MISSING\n", cc.VersionText)
		}
		for _, warn := range t.Warnings {
			fmt.Fprintf(w, "  warning:      %s\n", warn)
		}
	}
	if verbose {
		for _, s := range res.Skipped {
			fmt.Fprintf(w, "\nskipped %s: %s\n", s.Dir, s.Reason)
		}
	}
}
