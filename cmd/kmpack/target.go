package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/target"
	"github.com/kmpack/kmpack/weakupdates"
)

// Exit codes of the target commands beyond the common ones, documented in the README.
const (
	exitAutoinstallFailed = 7 // autoinstall: a module is not available in a kernel (recorded; status says why)
	exitGateClosed        = 8 // gate: a registered module will not be available in the kernel
	exitLoadRefused       = 9 // load: the running kernel refused the module (modprobe failed)
)

var (
	rootFlag        = &cli.StringFlag{Name: "root", Value: "/", Usage: "act on the system installed under this directory"}
	lockTimeoutFlag = &cli.DurationFlag{Name: "lock-timeout", Value: weakupdates.DefaultLockTimeout, Usage: "give up when another run holds the lock this long"}
)

func targetOptions(c *cli.Context) target.Options {
	return target.Options{Root: c.String("root"), Log: os.Stdout, Warn: os.Stderr, LockTimeout: c.Duration("lock-timeout")}
}

// kernelArgs validates kernel releases where they enter: each becomes a path under --root.
func kernelArgs(c *cli.Context) ([]string, error) {
	for _, k := range c.Args().Slice() {
		if err := ident.KernelRelease(k); err != nil {
			return nil, cli.Exit(fmt.Sprintf("%s: %v", c.Command.Name, err), exitInput)
		}
	}
	return c.Args().Slice(), nil
}

func sourceCommand() *cli.Command {
	return &cli.Command{
		Name:  "source",
		Usage: "keep module sources on this machine, for autoinstall to build for new kernels (dkms add)",
		Description: `source add DIR|TARBALL copies a module source (kmpack.yaml, dkms.conf or a Kbuild tree;
a tarball may be gzip, xz, zstd or bzip2, in dkms mktarball's layout or with one top directory)
to /usr/src/<name>-<version> under --root and registers it in /var/lib/kmpack/sources. A
directory that already is /usr/src/<name>-<version> (a *-dkms package's files) is registered in
place. Nothing in the source is run: a dkms.conf's PACKAGE_NAME and PACKAGE_VERSION must be
literal assignments, or be given with --name and --version (which a bare Kbuild tree needs).
source remove NAME[/VERSION] forgets it and takes the modules autoinstall built from it out of
every kernel.`,
		Flags: []cli.Flag{rootFlag, lockTimeoutFlag},
		Subcommands: []*cli.Command{
			{
				Name: "add", Usage: "register a module source", ArgsUsage: "DIR|TARBALL",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "the source's name, when it does not say it"},
					&cli.StringFlag{Name: "version", Usage: "the source's version, when it does not say it"},
					&cli.BoolFlag{Name: "replace", Usage: "forget the other registered versions of the same name (a package upgrade)"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return usagef("source add takes one directory or tarball")
					}
					for _, f := range []struct{ flag, v string }{{"name", c.String("name")}, {"version", c.String("version")}} {
						if f.v == "" {
							continue
						}
						check := ident.PackageName
						if f.flag == "version" {
							check = ident.Version
						}
						if err := check(f.v); err != nil {
							return cli.Exit(fmt.Sprintf("source add: --%s: %v", f.flag, err), exitInput)
						}
					}
					_, err := target.AddSource(target.AddSourceOptions{Options: targetOptions(c), Path: c.Args().First(),
						Name: c.String("name"), Version: c.String("version"), Replace: c.Bool("replace")})
					return err
				},
			},
			{
				Name: "remove", Usage: "forget a module source and the modules built from it", ArgsUsage: "NAME[/VERSION]",
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return usagef("source remove takes NAME or NAME/VERSION")
					}
					name, version, err := target.ParseSourceRef(c.Args().First())
					if err != nil {
						return cli.Exit(fmt.Sprintf("source remove: %v", err), exitInput)
					}
					return target.RemoveSource(targetOptions(c), name, version)
				},
			},
			{
				Name: "list", Usage: "list the registered module sources", Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					if c.NArg() != 0 {
						return usagef("source list takes no arguments")
					}
					srcs, err := target.ListSources(targetOptions(c))
					if err != nil {
						return err
					}
					if c.Bool("json") {
						if srcs == nil {
							srcs = []target.SourceRecord{}
						}
						return writeJSON(os.Stdout, map[string]any{"schema": target.SourcesSchema, "sources": srcs})
					}
					for _, s := range srcs {
						fmt.Printf("%s/%s\t%s\t%s\n", s.Name, s.Version, s.Kind, s.Dir)
					}
					return nil
				},
			},
		},
	}
}

func autoinstallCommand() *cli.Command {
	return &cli.Command{
		Name:      "autoinstall",
		Usage:     "give every registered module a build for each kernel: own build, weak-updates link, local build, or a recorded failure",
		ArgsUsage: "[KERNEL...]",
		Description: `For each kernel (default: every kernel installed under --root's /lib/modules) and every
registered module package and source, in this order, stopping at the first that works: a
package built for that kernel is installed; a build for another kernel loads there (linked by
the weak-updates engine); the machine's configured repositories have the module package for
that kernel (apt: the registered <name>-modules-<kernel> package's name with the new kernel's
release): it is installed with apt-get (name=version, nothing removed) and recorded
installed-from-repo, or, inside a kernel hook run by dpkg, recorded pending until apt has
finished (apt's DPkg::Post-Invoke runs autoinstall again); the source is registered (kmpack source add): it is built with
kmpack's build engine against /lib/modules/<kernel>/build and installed under
/lib/modules/<kernel>/updates/kmpack-built/<name>/, then depmod; else a failure is recorded
with its reason (missing headers name the package to install). The outcome of every kernel ×
module is kept in /var/lib/kmpack/autoinstall/state.json (kmpack status shows it). Runs are
serialized by a lock; a module built from the same source version is not built again.

Exit status: 0 every module is available, 7 at least one failed (recorded; kmpack status says
why), and the common codes. With --hook (what the kernel hooks pass) failures are reported on
stderr and the exit status is 0, so a kernel package's installation never fails because of a
module. --removed is for kernels that were removed (the postrm hooks): autoinstall's builds for
them, their rows and their weak-updates links go.`,
		Flags: []cli.Flag{rootFlag, lockTimeoutFlag,
			&cli.BoolFlag{Name: "hook", Usage: "run from a kernel hook: report failures, exit 0"},
			&cli.BoolFlag{Name: "rebuild", Usage: "build sources again where an earlier build failed (otherwise retried only when the source changes)"},
			&cli.BoolFlag{Name: "removed", Usage: "the kernels were removed: take out what autoinstall built for them and their weak-updates links"},
			&cli.DurationFlag{Name: "build-timeout", Value: target.DefaultBuildTimeout, Usage: "bound on one module's build for one kernel"},
			signPolicyFlag,
			&cli.BoolFlag{Name: "no-initramfs", Usage: "leave initramfs images alone (the kernel hooks pass it: the distribution's initramfs hook runs after them)"},
			&cli.BoolFlag{Name: "no-repo", Usage: "do not install module packages from the configured repositories (step 3)"},
			&cli.DurationFlag{Name: "repo-timeout", Value: target.DefaultRepoTimeout, Usage: "bound on one package manager run (a query, an install)"},
			&cli.IntFlag{Name: "after-pid", Hidden: true, Usage: "first wait until this process's package transaction has ended (the run a deferred step 3 starts)"},
			&cli.Uint64Flag{Name: "after-start", Hidden: true, Usage: "--after-pid's start time: another process with that pid is not it"},
		},
		Action: func(c *cli.Context) error {
			kernels, err := kernelArgs(c)
			if err != nil {
				return err
			}
			if c.Bool("removed") {
				if len(kernels) == 0 {
					return usagef("autoinstall --removed takes the removed kernels' releases")
				}
				err = target.RemoveKernels(targetOptions(c), kernels)
			} else {
				_, err = target.Autoinstall(c.Context, target.AutoinstallOptions{Options: targetOptions(c), Kernels: kernels,
					BuildTimeout: c.Duration("build-timeout"), Rebuild: c.Bool("rebuild"), Sign: c.String("sign"),
					NoInitramfs: c.Bool("no-initramfs"), NoRepo: c.Bool("no-repo"), RepoTimeout: c.Duration("repo-timeout"),
					AfterPID: c.Int("after-pid"), AfterStart: c.Uint64("after-start"), Defer: deferAutoinstall(c)})
			}
			if err == nil {
				return nil
			}
			if c.Bool("hook") {
				fmt.Fprintf(os.Stderr, "kmpack: autoinstall %s: %v; the kernel's installation goes on\n", strings.Join(kernels, " "), err)
				return nil
			}
			if errors.Is(err, target.ErrFailures) {
				return cli.Exit(err.Error(), exitAutoinstallFailed)
			}
			return err
		},
	}
}

// deferAutoinstall starts this kmpack again, detached, as autoinstall --hook --after-pid PID
// for the kernels: it installs once the package manager's transaction that deferred step 3 has
// ended. On a machine run by systemd it is a transient unit (systemd-run), so that it outlives
// the service the package manager may run in (dnf-automatic.service, packagekit.service: their
// cgroup is killed when they stop); elsewhere (and in a --root) its own session (setsid), running
// this very binary (/proc/self/exe: kmpack's own package may be replaced by the same
// transaction). Its output is appended to the root's target.DeferredLog. It does what this run
// was asked to, initramfs included: the distribution's initramfs hook has run by then.
func deferAutoinstall(c *cli.Context) func(int, uint64, []string) error {
	return func(pid int, start uint64, kernels []string) error {
		args := []string{"autoinstall", "--hook", "--after-pid", strconv.Itoa(pid), "--after-start", strconv.FormatUint(start, 10),
			"--repo-timeout", "1h", "--sign", c.String("sign"), "--build-timeout", c.Duration("build-timeout").String()}
		root := c.String("root")
		if root != "" && root != "/" {
			abs, err := filepath.Abs(root)
			if err != nil {
				return err
			}
			args = append(args, "--root", abs)
		}
		args = append(args, kernels...)
		if (root == "" || root == "/") && !chrooted() {
			if _, err := os.Stat("/run/systemd/system"); err == nil {
				if exe, err := os.Executable(); err == nil {
					unit := "kmpack-autoinstall-after-" + strconv.Itoa(pid)
					run := exec.Command("/usr/bin/systemd-run", append([]string{"--no-block", "--collect", "--quiet", "--unit=" + unit,
						"--description=kmpack autoinstall after the package manager's transaction", exe}, args...)...)
					out, err := run.CombinedOutput()
					if err == nil || strings.Contains(string(out), "already") { // another hook of the same transaction started it
						return nil
					}
					fmt.Fprintf(os.Stderr, "kmpack: warning: systemd-run: %v: %s; starting it in its own session\n", err, strings.TrimSpace(string(out)))
				}
			}
		}
		log, err := target.OpenDeferredLog(targetOptions(c))
		if err != nil {
			return err
		}
		defer log.Close()
		cmd := exec.Command("/proc/self/exe", args...)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return err
		}
		return cmd.Process.Release()
	}
}

// chrooted tells whether this process runs in a chroot (a package's scriptlet in an image
// builder's root): there a unit systemd starts would run on the host. As systemd tells it: "/"
// is not PID 1's root.
func chrooted() bool {
	a, errA := os.Stat("/")
	b, errB := os.Stat("/proc/1/root/")
	return errA != nil || errB != nil || !os.SameFile(a, b)
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show, per installed kernel and registered module, whether and how the module is available",
		Description: `One row per kernel × module: built-for-this-kernel, weak-linked (from KERNEL),
installed-from-repo (PACKAGE VERSION), built-locally, skipped (BUILD_EXCLUSIVE), failed (reason, log) or missing. --json prints
{"schema": "kmpack-status/1", "rows": [...]} (see the README).`,
		Flags: []cli.Flag{rootFlag, jsonFlag},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return usagef("status takes no arguments")
			}
			rep, err := target.Status(target.Options{Root: c.String("root"), Warn: os.Stderr})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return writeJSON(os.Stdout, rep)
			}
			for _, r := range rep.Rows {
				fmt.Printf("%-32s %-24s %s\n", r.Kernel, r.Module, describeRow(r))
			}
			return nil
		},
	}
}

// signPolicyFlag is the signing policy of local builds.
var signPolicyFlag = &cli.StringFlag{Name: "sign", Value: target.SignAuto,
	Usage: "sign local builds with the machine's key: auto (when the kernel checks signatures and a key exists; a key is made when the kernel requires them), always, never"}

func describeRow(r target.StatusRow) string {
	s := r.State
	switch {
	case r.State == target.StateWeakLinked:
		s += " (from " + r.From + ")"
	case r.Package != "":
		s += " (" + r.Package + " " + r.Version + ")"
	case r.Version != "":
		s += " (" + r.Version + ")"
	}
	if r.Reason != "" {
		s += ": " + r.Reason
	}
	if r.Log != "" {
		s += " (log: " + r.Log + ")"
	}
	if g := r.Signature; g != nil {
		switch g.State {
		case "signed", "mixed":
			s += " [" + g.State + " by " + g.Signer + " " + g.KeyID
			if g.MachineKey {
				s += ", this machine's key"
			}
			if g.Enrolled != "" {
				s += ", enrolled: " + g.Enrolled
			}
			s += "]"
		default:
			s += " [" + g.State + "]"
		}
	}
	switch {
	case r.RepoPending && r.State != target.StateMissing: // a missing row's reason says it
		s += " [repositories: waiting for " + strings.TrimSpace(r.RepoPackage+" "+r.RepoVersion) + "]"
	case r.RepoReason != "":
		s += " [repositories: " + r.RepoReason + "]"
	}
	return s
}

func gateCommand() *cli.Command {
	return &cli.Command{
		Name:      "gate",
		Usage:     "exit 0 when every registered module will be available in KERNEL, else 8 and say what is missing",
		ArgsUsage: "KERNEL",
		Description: `For a check before rebooting into KERNEL (or before making it the default boot
entry): every registered module must be installed for it, weak-linked, built locally, skipped
by its BUILD_EXCLUSIVE rules, or provably linkable by the compat check. Writes nothing.`,
		Flags: []cli.Flag{rootFlag},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("gate takes one kernel release")
			}
			kernels, err := kernelArgs(c)
			if err != nil {
				return err
			}
			bad, err := target.Gate(target.Options{Root: c.String("root"), Warn: os.Stderr}, kernels[0])
			if err != nil {
				return err
			}
			if len(bad) == 0 {
				fmt.Printf("%s: every registered module is available\n", kernels[0])
				return nil
			}
			for _, r := range bad {
				fmt.Fprintf(os.Stderr, "%s: %s: %s\n", r.Kernel, r.Module, describeRow(r))
			}
			return cli.Exit(fmt.Sprintf("gate %s: %d module(s) will not be available", kernels[0], len(bad)), exitGateClosed)
		},
	}
}

func loadCommand() *cli.Command {
	return &cli.Command{
		Name:      "load",
		Usage:     "make a registered module loadable in the running (or named) kernel by autoinstall's steps, then modprobe it",
		ArgsUsage: "NAME",
		Description: `NAME is a registered module package's or source's name. The module is made available in
the kernel the cheapest way (its package's build, a weak-updates link, or a build of its
registered source) and, in the running kernel of this machine (without --root), loaded with
modprobe. --rebuild builds the source again (izmod -R), unless a package's build or a link
serves the kernel. Exit status: 0 available (and loaded), 3 no such module registered, 7 not
available (headers missing, naming the package to install; the build failed, with its error
and log), 9 the kernel refused it (modprobe's and the kernel's words).`,
		Flags: []cli.Flag{rootFlag, lockTimeoutFlag,
			&cli.StringFlag{Name: "kernel", Usage: "the kernel release (default: the running kernel)"},
			&cli.BoolFlag{Name: "rebuild", Usage: "build the source again (izmod -R)"},
			&cli.DurationFlag{Name: "build-timeout", Value: target.DefaultBuildTimeout, Usage: "bound on the build"},
			signPolicyFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("load takes one module name")
			}
			name := c.Args().First()
			if err := ident.PackageName(name); err != nil {
				return cli.Exit(fmt.Sprintf("load: %v", err), exitInput)
			}
			if k := c.String("kernel"); k != "" {
				if err := ident.KernelRelease(k); err != nil {
					return cli.Exit(fmt.Sprintf("load: --kernel: %v", err), exitInput)
				}
			}
			res, err := target.Load(c.Context, target.LoadOptions{Options: targetOptions(c), Name: name, Kernel: c.String("kernel"),
				Rebuild: c.Bool("rebuild"), BuildTimeout: c.Duration("build-timeout"), Sign: c.String("sign")})
			switch {
			case errors.Is(err, target.ErrFailures):
				return cli.Exit(err.Error(), exitAutoinstallFailed)
			case errors.Is(err, target.ErrRefused):
				return cli.Exit(err.Error(), exitLoadRefused)
			case err != nil:
				return err
			}
			how := res.Result.State
			if res.Result.From != "" {
				how += " from " + res.Result.From
			}
			if res.Loaded {
				fmt.Printf("%s: loaded %s in %s (%s)\n", name, strings.Join(res.Modules, " "), res.Kernel, how)
			} else {
				fmt.Printf("%s: %s available in %s (%s); not loaded: not the running kernel of this machine\n", name, strings.Join(res.Modules, " "), res.Kernel, how)
			}
			return nil
		},
	}
}
