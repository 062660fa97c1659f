// Command kmpack turns out-of-tree kernel module sources into distro-native kernel module
// packages. This file wires the CLI; each capability lives in a package (kmp, weakupdates, formats).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "0.1.0-dev"

// Exit codes, documented in the README.
const (
	exitOK      = 0
	exitFailure = 1 // the machine or kmpack failed (I/O, a missing tool)
	exitUsage   = 2 // the command line is wrong
	exitInput   = 3 // an input is malformed or not what it claims to be
	// exitInterrupted: SIGINT or SIGTERM stopped the command (128 + SIGINT, as a shell reports it).
	exitInterrupted = 130
)

// interruptGrace is how long a command has to clean up after SIGINT/SIGTERM.
const interruptGrace = 30 * time.Second

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	// SIGINT and SIGTERM cancel the command's context: every child process group is killed,
	// temporary directories are removed, nothing half-written is left in an output.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case <-sigs:
		case <-ctx.Done():
			return
		}
		cancel()
		// A second signal kills at once; a command that does not return within the grace
		// period is ended.
		signal.Stop(sigs)
		time.Sleep(interruptGrace)
		fmt.Fprintln(os.Stderr, "kmpack: interrupted (did not stop within", interruptGrace, "of the signal)")
		os.Exit(exitInterrupted)
	}()
	app := newApp()
	err := app.RunContext(ctx, intersperse(app, args))
	if err == nil {
		return exitOK
	}
	var ec cli.ExitCoder
	switch {
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || !kmp.IsInputError(err)):
		fmt.Fprintln(os.Stderr, "kmpack: interrupted")
		return exitInterrupted
	case errors.As(err, &ec):
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "kmpack:", msg)
		}
		return ec.ExitCode()
	case kmp.IsInputError(err):
		fmt.Fprintln(os.Stderr, "kmpack:", err)
		return exitInput
	case isUsageError(err):
		fmt.Fprintln(os.Stderr, "kmpack:", err)
		return exitUsage
	}
	fmt.Fprintln(os.Stderr, "kmpack:", err)
	return exitFailure
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func isUsageError(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

func newApp() *cli.App {
	onUsageError := func(c *cli.Context, err error, isSub bool) error {
		return usageError{err.Error()}
	}
	app := &cli.App{
		Name:    "kmpack",
		Usage:   "build out-of-tree kernel modules into distro-native kernel module packages",
		Version: version,
		Description: `kmpack builds kernel module sources (a Kbuild tree, a dkms.conf, or a kmpack.yaml) against
many kernel devel trees and turns the results into SUSE KMP, Red Hat kmod and Debian packages.

Exit status: 0 success, 1 failure of the machine or of kmpack, 2 wrong command line,
3 an input is malformed (the message names the file and the problem; nothing is written),
4 build: at least one kernel failed, 5 build: every kernel was skipped (BUILD_EXCLUSIVE),
6 verify: a module's signature does not check out, 7 autoinstall: a module failed (not with
--hook), 8 gate: a registered module will not be available in the kernel, 9 load: the kernel refused
the module,
130 interrupted by SIGINT or SIGTERM (child processes killed, temporary files removed).`,
		HideHelpCommand:      true,
		EnableBashCompletion: true,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "cache-dir",
				Usage:   "where unpacked kernel packages, build results and the runtime package are kept",
				EnvVars: []string{"KMPACK_CACHE_DIR"},
				Value:   defaultCacheDir(),
			},
		},
		Commands: []*cli.Command{
			kernelsCommand(),
			inspectCommand(),
			buildCommand(),
			planCommand(),
			mergeCommand(),
			initCommand(),
			packageCommand(),
			publishCommand(),
			ksymsCommand(),
			compatCommand(),
			keygenCommand(),
			verifyCommand(),
			weakUpdatesCommand(),
			sourceCommand(),
			autoinstallCommand(),
			statusCommand(),
			gateCommand(),
			loadCommand(),
			completionCommand(),
			manCommand(),
		},
		OnUsageError:   onUsageError,
		ExitErrHandler: func(*cli.Context, error) {}, // run() reports errors and picks the code
	}
	for _, c := range app.Commands {
		c.OnUsageError = onUsageError
		for _, s := range c.Subcommands {
			s.OnUsageError = onUsageError
		}
	}
	return app
}

func defaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return d + "/kmpack"
	}
	return ".kmpack-cache"
}

var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print the report as JSON"}
