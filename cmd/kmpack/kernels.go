package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp/repo"
	"github.com/kmpack/kmpack/kmp/unpack"
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

With --repo, lists the kernels a repository offers (selected by --flavor, --release, --latest),
with the packages each needs and their sizes, downloading only metadata. REPO is an apt source
in sources.list one-line form ('deb [arch=amd64] http://deb.debian.org/debian bookworm main') or
an rpm-md base URL (the directory holding repodata/); http, https and file URLs.`,
		Flags: append([]cli.Flag{
			jsonFlag,
			&cli.StringFlag{Name: "root", Value: "/", Usage: "system root to discover trees under"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "also list candidates that are not usable trees, and why"},
			&cli.BoolFlag{Name: "dirs", Usage: "print only the trees' directories, one per line (for scripts)"},
			&cli.StringSliceFlag{Name: "repo", Usage: "list the kernels this repository offers (repeatable; see above)"},
		}, repoSelectFlags()...),
		Action: func(c *cli.Context) error {
			if specs := c.StringSlice("repo"); len(specs) > 0 {
				if c.Args().Len() > 0 {
					return cli.Exit("--repo lists a repository's kernels: give no DIR or PACKAGE with it", exitUsage)
				}
				qs, err := repoQueries(c, specs)
				if err != nil {
					return err
				}
				res, err := repo.Resolve(c.Context, repoFetcher(c), qs)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return writeJSON(os.Stdout, map[string]any{"repositories": res})
				}
				printRepoKernels(os.Stdout, res)
				return nil
			}
			res, err := unpack.FindKernels(c.String("cache-dir"), c.String("root"), c.Args().Slice())
			if err != nil {
				return err
			}
			switch {
			case c.Bool("json"):
				if err := writeJSON(os.Stdout, res); err != nil {
					return err
				}
			case c.Bool("dirs"):
				for _, t := range res.Trees {
					fmt.Println(t.Dir)
				}
			default:
				printKernels(os.Stdout, res, c.Bool("verbose"))
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
		},
	}
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
