package main

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/weakupdates"
)

func weakUpdatesCommand() *cli.Command {
	engine := func(c *cli.Context) *weakupdates.Engine {
		return &weakupdates.Engine{Root: c.String("root"), DryRun: c.Bool("dry-run"), Log: os.Stdout, Warn: os.Stderr,
			LockTimeout: c.Duration("lock-timeout")}
	}
	// Identifiers are checked where they enter: a release or package name becomes a path
	// under --root.
	release := func(c *cli.Context) (string, error) {
		if c.NArg() != 1 {
			return "", usagef("%s takes one kernel release", c.Command.Name)
		}
		r := c.Args().First()
		if err := ident.KernelRelease(r); err != nil {
			return "", cli.Exit(fmt.Sprintf("%s: %v", c.Command.Name, err), exitInput)
		}
		return r, nil
	}
	return &cli.Command{
		Name:  "weak-updates",
		Usage: "keep /lib/modules/<release>/weak-updates in line with the installed module packages and kernels",
		Description: `Module packages register with add-kmp (from their maintainer scripts) and leave with
remove-kmp; kernel hooks call add-kernel and remove-kernel. Each run recomputes every kernel
of the flavor: a kernel without its own build of a package gets links to the newest build whose
modules all load there (kmpack compat's check), packages that need each other resolved to a
fixpoint; stale links go, real files are never replaced, links are made atomically, runs are
serialized by a lock, and depmod runs once per kernel that changed. A run killed at any point
is repaired by the next. Kernel symbols come from /boot/symvers-<release>.*,
/lib/modules/<release>/symvers.* or the headers tree (/usr/src/linux-headers-<release>).

Everything under --root is reached through os.Root: nothing there (a name, a registration, a
symbolic link) can lead the engine outside it. An invalid registration is skipped with a
warning naming its file; a weak-updates directory that is a symbolic link is refused; modules
must be regular files of at most 1 GiB. --dry-run writes nothing, not even the lock file.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "root", Value: "/", Usage: "act on the system installed under this directory"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the changes without making them (writes nothing, not even the lock file)"},
			&cli.DurationFlag{Name: "lock-timeout", Value: weakupdates.DefaultLockTimeout, Usage: "give up when another run holds the lock this long"},
		},
		Subcommands: []*cli.Command{
			{
				Name:      "add-kmp",
				Usage:     "register a module package and link its modules where they load",
				ArgsUsage: "[MODULE...]",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Required: true, Usage: "the software's name (shared by its packages for every kernel)"},
					&cli.StringFlag{Name: "package", Required: true, Usage: "the package that installed the modules"},
					&cli.StringFlag{Name: "version", Required: true, Usage: "the package's version"},
					&cli.StringFlag{Name: "kernel", Required: true, Usage: "the release the modules were built for"},
					&cli.StringFlag{Name: "format", Value: weakupdates.FormatDeb, Usage: "the package's format, whose version order picks the newest build (deb or rpm)"},
				},
				Action: func(c *cli.Context) error {
					e := engine(c)
					k := weakupdates.KMP{Name: c.String("name"), Package: c.String("package"), Version: c.String("version"),
						Kernel: c.String("kernel"), Format: c.String("format")}
					for _, check := range []struct {
						flag string
						err  error
					}{{"name", ident.PackageName(k.Name)}, {"package", ident.PackageName(k.Package)}, {"kernel", ident.KernelRelease(k.Kernel)}} {
						if check.err != nil {
							return cli.Exit(fmt.Sprintf("add-kmp: --%s: %v", check.flag, check.err), exitInput)
						}
					}
					k.Modules = c.Args().Slice()
					sort.Strings(k.Modules)
					if len(k.Modules) > 0 {
						if err := k.Validate(); err != nil {
							return cli.Exit(fmt.Sprintf("add-kmp %s: %v", k.Package, err), exitInput)
						}
					}
					return e.AddKMP(k)
				},
			},
			{
				Name:      "remove-kmp",
				Usage:     "forget a module package and relink what it provided",
				ArgsUsage: "PACKAGE",
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return usagef("remove-kmp takes one package name")
					}
					pkg := c.Args().First()
					if err := ident.PackageName(pkg); err != nil {
						return cli.Exit(fmt.Sprintf("remove-kmp: %v", err), exitInput)
					}
					return engine(c).RemoveKMP(pkg)
				},
			},
			{
				Name: "add-kernel", Usage: "link compatible module packages into a new kernel", ArgsUsage: "RELEASE",
				Action: func(c *cli.Context) error {
					r, err := release(c)
					if err != nil {
						return err
					}
					return engine(c).AddKernel(r)
				},
			},
			{
				Name: "remove-kernel", Usage: "drop a removed kernel's links", ArgsUsage: "RELEASE",
				Action: func(c *cli.Context) error {
					r, err := release(c)
					if err != nil {
						return err
					}
					return engine(c).RemoveKernel(r)
				},
			},
			{
				Name: "sync", Usage: "recompute every installed kernel's links (after an upgrade of kmpack, or to repair)",
				Action: func(c *cli.Context) error {
					if c.NArg() != 0 {
						return usagef("sync takes no arguments")
					}
					return engine(c).Sync()
				},
			},
			{
				Name: "status", Usage: "show what is linked into each kernel, and why the rest is not",
				Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					plans, err := engine(c).Status()
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return writeJSON(os.Stdout, plans)
					}
					for _, p := range plans {
						fmt.Printf("%s:\n", p.Kernel)
						for _, n := range sortedKeys(p.Chosen) {
							if why := p.Unlinked[n]; len(why) > 0 {
								fmt.Printf("  %-24s not linked: chosen %s, but %s\n", n, p.Chosen[n], strings.Join(why, "; "))
								continue
							}
							fmt.Printf("  %-24s linked: %s\n", n, p.Chosen[n])
						}
						for _, n := range sortedKeys(p.Rejected) {
							fmt.Printf("  %-24s not linked: %s\n", n, strings.Join(p.Rejected[n], "; "))
						}
						for _, note := range p.Notes {
							fmt.Printf("  note: %s\n", note)
						}
					}
					return nil
				},
			},
		},
	}
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
