package main

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/repo"
)

// repoSelectFlags select kernels from --repo / --kernel-repo repositories.
func repoSelectFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "flavor", Usage: "with a repository: only kernels of this flavor (repeatable; amd64, cloud-amd64, default, rt, ...)"},
		&cli.StringFlag{Name: "release", Usage: "with a repository: only kernel releases matching this regular expression"},
		&cli.IntFlag{Name: "latest", Usage: "with a repository: only the N newest kernels of each flavor"},
		&cli.StringFlag{Name: "keyring", Usage: "with a repository: verify its metadata (InRelease or Release.gpg, repomd.xml.asc) with this OpenPGP keyring, binary or armored (an apt source's own signed-by= wins)"},
	}
}

// repoResult is one repository's selected kernels, as `kmpack kernels --repo --json` prints it.
type repoResult struct {
	Repo     string         `json:"repo"`
	Verified bool           `json:"verified"`
	Notes    []string       `json:"notes,omitempty"`
	Kernels  []repo.Kernel  `json:"kernels"`
	Skipped  []repo.Skipped `json:"skipped,omitempty"`
}

// repoKernels reads each repository and selects kernels; nothing is downloaded but metadata.
func repoKernels(c *cli.Context, specs []string) ([]repoResult, *repo.Fetcher, error) {
	sel := repo.Selector{Flavors: c.StringSlice("flavor"), Latest: c.Int("latest")}
	if c.Int("latest") < 0 {
		return nil, nil, cli.Exit("--latest must be at least 1", exitUsage)
	}
	if re := c.String("release"); re != "" {
		r, err := regexp.Compile(re)
		if err != nil {
			return nil, nil, cli.Exit(fmt.Sprintf("--release: %v", err), exitUsage)
		}
		sel.Release = r
	}
	f := &repo.Fetcher{CacheDir: c.String("cache-dir"), Progress: os.Stderr}
	var out []repoResult
	for _, spec := range specs {
		src, err := repo.ParseSource(spec)
		if err != nil {
			return nil, nil, err
		}
		if src.Keyring == "" {
			src.Keyring = c.String("keyring")
		}
		idx, err := repo.Load(c.Context, f, src)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, repoResult{Repo: spec, Verified: idx.Verified, Notes: idx.Notes, Kernels: repo.Select(idx.Kernels, sel), Skipped: idx.Skipped})
	}
	return out, f, nil
}

func printRepoKernels(w io.Writer, res []repoResult) {
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

// fetchRepoKernels downloads the packages of the selected kernels into the cache and returns
// their files (each once), for unpack.FindKernels.
func fetchRepoKernels(c *cli.Context, specs []string) ([]string, error) {
	res, f, err := repoKernels(c, specs)
	if err != nil {
		return nil, err
	}
	var pkgs []repo.Package
	for _, r := range res {
		for _, n := range r.Notes {
			fmt.Fprintf(os.Stderr, "kmpack: note: %s\n", n)
		}
		if len(r.Kernels) == 0 {
			return nil, kmp.InputErrorf(r.Repo, "no kernel matches the selection")
		}
		for _, k := range r.Kernels {
			fmt.Fprintf(os.Stderr, "kmpack: %s from %s (%s)\n", k.Release, r.Repo, mib(k.Size))
			pkgs = append(pkgs, k.Packages...)
		}
	}
	files, err := f.FetchAll(c.Context, pkgs)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, p := range files {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out, nil
}
