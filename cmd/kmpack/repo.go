package main

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/repo"
)

// repoSelectFlags select kernels from --repo / --kernel-repo repositories.
func repoSelectFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "flavor", Usage: "with a repository: only kernels of this flavor (repeatable; amd64, cloud-amd64, default, rt, ...)"},
		&cli.StringFlag{Name: "release", Usage: "with a repository: only kernel releases matching this regular expression"},
		&cli.StringFlag{Name: "versions", Usage: "with a repository: only kernels whose headers/devel package version is in this range, in dpkg's or rpm's order ('>=6.1.140, <6.1.160')"},
		&cli.IntFlag{Name: "latest", Usage: "with a repository: only the N newest kernels of each flavor"},
		&cli.StringFlag{Name: "keyring", Usage: "with a repository: verify its metadata (InRelease or Release.gpg, repomd.xml.asc) with this OpenPGP keyring, binary or armored (an apt source's own signed-by= wins)"},
		&cli.StringSliceFlag{Name: "arch", Usage: "only kernels of this architecture (repeatable; aarch64 or arm64, x86_64 or amd64, ppc64le, s390x, ...): of trees and package files, the trees whose .config says so; of a repository, its packages for it (unless the source names an arch=)"},
	}
}

// archFlag is --arch in uname -m spelling; none given is every architecture.
func archFlag(c *cli.Context) ([]string, error) {
	var out []string
	for _, a := range c.StringSlice("arch") {
		m, err := kernel.ParseMachine(a)
		if err != nil {
			return nil, usagef("--arch: %v", err)
		}
		out = append(out, m)
	}
	return out, nil
}

// filterArch keeps the trees --arch selects. Selecting none is the input's fault: a build
// must not succeed against no kernel.
func filterArch(c *cli.Context, trees []*kernel.KernelTree) ([]*kernel.KernelTree, error) {
	arches, err := archFlag(c)
	if err != nil || len(arches) == 0 {
		return trees, err
	}
	kept := kernel.FilterArch(trees, arches)
	if len(kept) == 0 && len(trees) > 0 {
		var found []string
		for _, t := range trees {
			if !slices.Contains(found, t.Arch) {
				found = append(found, t.Arch)
			}
		}
		return nil, cli.Exit(fmt.Sprintf("no kernel tree of architecture %s among the %d found (%s)", strings.Join(arches, ", "), len(trees), strings.Join(found, ", ")), exitInput)
	}
	return kept, nil
}

// repoQueries builds the queries of --repo / --kernel-repo from the selection flags.
func repoQueries(c *cli.Context, specs []string) ([]repo.Query, error) {
	sel := repo.Selector{Flavors: c.StringSlice("flavor"), Latest: c.Int("latest")}
	if c.Int("latest") < 0 {
		return nil, cli.Exit("--latest must be at least 1", exitUsage)
	}
	if re := c.String("release"); re != "" {
		r, err := regexp.Compile(re)
		if err != nil {
			return nil, cli.Exit(fmt.Sprintf("--release: %v", err), exitUsage)
		}
		sel.Release = r
	}
	if v := c.String("versions"); v != "" {
		vr, err := repo.ParseVersionRange(v)
		if err != nil {
			return nil, cli.Exit(fmt.Sprintf("--versions: %v", err), exitUsage)
		}
		sel.Versions = &vr
	}
	arches, err := archFlag(c)
	if err != nil {
		return nil, err
	}
	var qs []repo.Query
	for _, spec := range specs {
		src, err := repo.ParseSource(spec)
		if err != nil {
			return nil, err
		}
		if src.Keyring == "" {
			src.Keyring = c.String("keyring")
		}
		if src.Arch != "" || len(arches) == 0 {
			qs = append(qs, repo.Query{Source: src, Selector: sel})
			continue
		}
		// One query per architecture: a repository's index is per architecture.
		for _, m := range arches {
			s := *src
			s.Arch = m // rpm's names are uname -m's
			if s.Kind == "apt" {
				s.Arch = kernel.DebianArch(m)
			}
			qs = append(qs, repo.Query{Source: &s, Selector: sel})
		}
	}
	return qs, nil
}

func repoFetcher(c *cli.Context) *repo.Fetcher {
	return &repo.Fetcher{CacheDir: c.String("cache-dir"), Progress: os.Stderr}
}

func printRepoKernels(w io.Writer, res []repo.Result) {
	for i, r := range res {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s\n", r.Repo)
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
		for _, k := range r.Kernels {
			fmt.Fprintf(w, "  %s  (%s layout, flavor %s, %s, %s)\n", k.Release, k.Layout, k.Flavor, k.Arch, mib(k.Size))
			for _, p := range k.Packages {
				fmt.Fprintf(w, "    %s %s (%s)\n", p.Name, p.Version, mib(p.Size))
			}
		}
		if len(r.Kernels) == 0 {
			fmt.Fprintf(w, "  no kernel matches\n")
		}
		for _, s := range r.Skipped {
			fmt.Fprintf(w, "  skipped %s: %s\n", s.Name, s.Reason)
		}
	}
}

func mib(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// resolveRepoKernels reads the repositories' metadata (verified) and selects their kernels,
// downloading no package.
func resolveRepoKernels(c *cli.Context, qs []repo.Query) ([]repo.Result, error) {
	res, err := repo.Resolve(c.Context, repoFetcher(c), qs)
	if err != nil {
		return nil, err
	}
	for _, r := range res {
		for _, n := range r.Notes {
			fmt.Fprintf(os.Stderr, "kmpack: note: %s\n", n)
		}
	}
	return res, nil
}
