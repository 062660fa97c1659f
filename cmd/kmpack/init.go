package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp/source"
	"github.com/kmpack/kmpack/kmp/unpack"
)

func initCommand() *cli.Command {
	return &cli.Command{
		Name:      "init",
		Usage:     "write a kmpack.yaml from an existing dkms.conf",
		ArgsUsage: "[SOURCE]",
		Description: `Evaluates SOURCE's dkms.conf (default: the current directory) for every kernel given with
--kernel (default: the installed trees), writes the first kernel's result as SOURCE/kmpack.yaml,
and warns about everything that differs between kernels or that a spec cannot express.`,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "kernel", Aliases: []string{"k"}, Usage: "kernel tree or package file to evaluate dkms.conf for (repeatable)"},
			&cli.BoolFlag{Name: "force", Usage: "replace an existing kmpack.yaml"},
			&cli.BoolFlag{Name: "stdout", Usage: "print the spec instead of writing it"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usagef("init takes one SOURCE")
			}
			dir := c.Args().First()
			if dir == "" {
				dir = "."
			}
			if fi, err := os.Stat(filepath.Join(dir, "dkms.conf")); err != nil || fi.IsDir() {
				return cli.Exit(fmt.Sprintf("%s: no dkms.conf to convert", dir), exitInput)
			}
			src, err := source.OpenSource(filepath.Join(dir, "dkms.conf"))
			if err != nil {
				return err
			}
			found, err := unpack.FindKernels(c.String("cache-dir"), "/", c.StringSlice("kernel"))
			if err != nil {
				return err
			}
			if len(found.Errors) > 0 {
				return cli.Exit(found.Errors[0], exitInput)
			}
			if len(found.Trees) == 0 {
				return cli.Exit("no kernel tree to evaluate dkms.conf for (pass --kernel)", exitInput)
			}
			spec, warnings, err := source.SpecFromDKMS(c.Context, src, found.Trees)
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			fmt.Fprintf(&buf, "# kmpack.yaml written by kmpack init from %s (evaluated for %s)\n", "dkms.conf", found.Trees[0].Release)
			if err := source.WriteSpec(&buf, spec); err != nil {
				return err
			}
			target := filepath.Join(src.Dir, source.SpecFileName)
			if _, err := source.ParseSpec(target, buf.Bytes()); err != nil {
				return fmt.Errorf("the converted spec is not valid (%v): fix dkms.conf or write kmpack.yaml by hand", err)
			}
			for _, w := range warnings {
				fmt.Fprintln(os.Stderr, "kmpack: warning:", w)
			}
			if c.Bool("stdout") {
				_, err := os.Stdout.Write(buf.Bytes())
				return err
			}
			if _, err := os.Stat(target); err == nil && !c.Bool("force") {
				return cli.Exit(fmt.Sprintf("%s exists; use --force to replace it", target), exitInput)
			}
			if err := writeSpecFile(src.Dir, source.SpecFileName, buf.Bytes()); err != nil {
				return err
			}
			fmt.Println("wrote", target)
			return nil
		},
	}
}

// writeSpecFile replaces dir/name with data atomically, through an os.Root at dir: the
// temporary file gets a random name and is created exclusively without following a symlink,
// so a link planted in the source directory (kmpack runs as root) redirects nothing.
func writeSpecFile(dir, name string, data []byte) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	var f *os.File
	var tmp string
	for range 10 {
		tmp = "." + name + ".tmp-" + rand.Text()[:16]
		f, err = root.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o644)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Rename(tmp, name)
	}
	if err != nil {
		root.Remove(tmp)
		return fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
	}
	return nil
}
