package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/sign"
	"github.com/kmpack/kmpack/weakupdates"
)

func compatCommand() *cli.Command {
	return &cli.Command{
		Name:      "compat",
		Usage:     "decide which kernels can load modules: symbol CRCs, namespaces, vermagic, struct module size",
		ArgsUsage: "MODULE.ko... ",
		Description: `The modules are one package's worth: imports one of them exports are resolved to it.
Each --kernel is a devel tree, a symvers file (Module.symvers, symvers-<release>.gz; --release
names the kernel when the file name does not), or an installed /lib/modules/<release>. For a
devel tree kmpack builds a tiny probe module (cached) to learn the size of its struct module.

Prints the module x kernel matrix and every reason a module cannot load; --json prints it as
JSON, --html as one self-contained page. With --trusted-cert, a kernel that enforces module
signatures (CONFIG_MODULE_SIG_FORCE in its config, or any with --enforce-signatures) cannot
load a module that is unsigned or whose signers (issuer and serial, as the kernel looks keys
up) are none of those certificates: reason "signature". Exit status 0 whatever the verdicts,
3 for bad input.`,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "kernel", Aliases: []string{"k"}, Required: true, Usage: "kernel tree, symvers file or /lib/modules/<release> (repeatable)"},
			&cli.StringFlag{Name: "release", Usage: "kernel release of a symvers file whose name does not say it"},
			&cli.BoolFlag{Name: "no-probe", Usage: "do not build the probe module (struct module size is then not checked)"},
			&cli.StringSliceFlag{Name: "trusted-cert", Usage: "a certificate the kernels trust (PEM or DER, repeatable): a kernel that enforces module signatures gets a signature reason for a module none of whose signers it trusts"},
			&cli.BoolFlag{Name: "enforce-signatures", Usage: "judge signatures as for kernels that enforce them whatever their config says (Secure Boot lockdown, module.sig_enforce=1)"},
			jsonFlag,
			&cli.BoolFlag{Name: "html", Usage: "print a self-contained HTML page"},
		},
		Action: runCompat,
	}
}

func runCompat(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("compat needs at least one MODULE.ko")
	}
	var mods []*module.ModuleInfo
	for _, p := range c.Args().Slice() {
		m, err := module.ReadModule(p)
		if err != nil {
			return err
		}
		mods = append(mods, m)
	}
	var trusted []*x509.Certificate
	for _, p := range c.StringSlice("trusted-cert") {
		cert, err := sign.LoadCertificate(p)
		if err != nil {
			return err
		}
		trusted = append(trusted, cert)
	}
	if c.Bool("enforce-signatures") && trusted == nil {
		return usagef("--enforce-signatures needs --trusted-cert: which keys the kernels trust")
	}
	var targets []*weakupdates.Target
	for _, k := range c.StringSlice("kernel") {
		t, err := openTarget(c.Context, k, weakupdates.TargetOptions{
			Release: c.String("release"), CacheDir: c.String("cache-dir"), NoProbe: c.Bool("no-probe"),
			Trusted: trusted, EnforceSignatures: c.Bool("enforce-signatures")})
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	mx := weakupdates.CheckMatrix(mods, targets)
	switch {
	case c.Bool("json"):
		return writeJSON(os.Stdout, mx)
	case c.Bool("html"):
		return weakupdates.WriteHTML(os.Stdout, mx)
	}
	w := bufio.NewWriter(os.Stdout)
	printMatrix(w, mx)
	return w.Flush()
}

// openTarget opens a kernel for compat and build --siblings: a kernel that cannot be read is
// bad input (exit 3), named in the message.
func openTarget(ctx context.Context, path string, opts weakupdates.TargetOptions) (*weakupdates.Target, error) {
	t, err := weakupdates.OpenTarget(ctx, path, opts)
	if err != nil && !kmp.IsInputError(err) {
		return nil, cli.Exit(fmt.Sprintf("%s: %v", path, err), exitInput)
	}
	return t, err
}

// printMatrix writes the table, then each incompatible cell's reasons.
func printMatrix(w io.Writer, mx *weakupdates.Matrix) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "MODULE")
	for _, k := range mx.Kernels {
		fmt.Fprint(tw, "\t", k.Release)
	}
	fmt.Fprintln(tw)
	for i, m := range mx.Modules {
		fmt.Fprint(tw, m)
		for _, v := range mx.Cells[i] {
			if v.Compatible {
				fmt.Fprint(tw, "\tyes")
			} else {
				fmt.Fprintf(tw, "\tno (%d)", len(v.Reasons))
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	for i := range mx.Modules {
		for _, v := range mx.Cells[i] {
			if len(v.Reasons) > 0 {
				fmt.Fprintf(w, "\n%s in %s:\n", v.Module, v.Kernel)
				for _, r := range v.Reasons {
					fmt.Fprintf(w, "  %-16s %s\n", r.Kind, r.Detail)
				}
			}
		}
	}
	for _, k := range mx.Kernels {
		if len(k.Notes) > 0 {
			fmt.Fprintf(w, "\nnote: %s: %s\n", k.Release, strings.Join(k.Notes, "; "))
		}
	}
}
