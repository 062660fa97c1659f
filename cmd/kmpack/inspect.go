package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp/module"
)

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "read kernel modules: modinfo fields, imported and exported symbols with CRCs, signature",
		ArgsUsage: "FILE.ko[.gz|.xz|.zst] ...",
		Description: `Reads modules directly from their ELF, without kmod's tools. --modinfo and
--dump-modversions print exactly what 'modinfo FILE' and 'modprobe --dump-modversions FILE' print.
Only regular files starting with ELF's magic (after gzip/xz/zstd decompression) are read, at most
1 GiB on disk and 1 GiB decompressed; a file that fails is reported, the others still are, and
the exit status is then 3.`,
		Flags: []cli.Flag{
			jsonFlag,
			&cli.BoolFlag{Name: "imports", Usage: "list every imported symbol with its CRC"},
			&cli.BoolFlag{Name: "exports", Usage: "list every exported symbol with its CRC"},
			&cli.BoolFlag{Name: "modinfo", Usage: "print as kmod's modinfo does"},
			&cli.BoolFlag{Name: "dump-modversions", Usage: "print as modprobe --dump-modversions does"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usagef("inspect: no module files given")
			}
			var mods []*module.ModuleInfo
			bad := 0
			for _, f := range c.Args().Slice() {
				// Every per-file failure (malformed, not a regular file, too large, unreadable)
				// is reported and the other files still are: exit 3 at the end.
				m, err := module.ReadModule(f)
				if err != nil {
					fmt.Fprintln(os.Stderr, "kmpack:", err)
					bad++
					continue
				}
				mods = append(mods, m)
			}
			switch {
			case c.Bool("json"):
				if mods == nil {
					mods = []*module.ModuleInfo{}
				}
				if err := writeJSON(os.Stdout, mods); err != nil {
					return err
				}
			case c.Bool("modinfo"):
				for _, m := range mods {
					fmt.Print(m.ModinfoText(kmodPath(m.Path)))
				}
			case c.Bool("dump-modversions"):
				for _, m := range mods {
					fmt.Print(m.ModversionsText())
				}
			default:
				for i, m := range mods {
					if i > 0 {
						fmt.Println()
					}
					printModule(os.Stdout, m, c.Bool("imports"), c.Bool("exports"))
				}
			}
			if bad > 0 {
				return cli.Exit("", exitInput)
			}
			return nil
		},
	}
}

func printModule(w io.Writer, m *module.ModuleInfo, imports, exports bool) {
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "  %-14s%s\n", k+":", v)
		}
	}
	fmt.Fprintf(w, "%s\n", m.Path)
	kv("name", m.Name)
	kv("version", m.Version)
	kv("description", m.Description)
	kv("license", m.License)
	kv("vermagic", m.Vermagic)
	kv("srcversion", m.SrcVersion)
	kv("depends", strings.Join(m.Depends, ","))
	kv("import_ns", strings.Join(m.ImportNS, ","))
	kv("compression", string(m.Compression))
	kv("machine", m.Machine)
	kv("this_module", fmt.Sprintf("%d bytes (.gnu.linkonce.this_module)", m.ThisModuleSize))
	if m.ImportsSource != "" {
		kv("imports", fmt.Sprintf("%d symbols with CRCs (%s)", len(m.Imports), m.ImportsSource))
	} else {
		kv("imports", "no CRCs recorded (built without CONFIG_MODVERSIONS)")
	}
	gpl, ns := 0, 0
	for _, e := range m.Exports {
		if e.GPLOnly {
			gpl++
		}
		if e.Namespace != "" {
			ns++
		}
	}
	kv("exports", fmt.Sprintf("%d symbols (%d GPL-only, %d in namespaces)", len(m.Exports), gpl, ns))
	if len(m.Aliases) > 0 {
		kv("aliases", fmt.Sprintf("%d (first: %s)", len(m.Aliases), m.Aliases[0]))
	}
	for _, p := range m.Params {
		desc := p.Description
		if p.Type != "" {
			desc += " (" + p.Type + ")"
		}
		kv("parm", p.Name+": "+strings.TrimSpace(desc))
	}
	if s := m.Signature; s != nil {
		kv("signature", fmt.Sprintf("%s, signer %q, key %s, hash %s", s.IDType, s.Signer, s.KeyID, s.HashAlgo))
	} else {
		kv("signature", "none")
	}
	if imports {
		fmt.Fprintf(w, "  imported symbols:\n")
		for _, s := range m.Imports {
			fmt.Fprintf(w, "    0x%08x  %s\n", s.CRC, s.Name)
		}
	}
	if exports {
		fmt.Fprintf(w, "  exported symbols:\n")
		for _, e := range m.Exports {
			crc := "          "
			if e.HasCRC {
				crc = fmt.Sprintf("0x%08x", e.CRC)
			}
			extra := ""
			if e.Namespace != "" {
				extra = "  namespace " + e.Namespace
			}
			fmt.Fprintf(w, "    %s  %-18s %s%s\n", crc, e.ExportType(), e.Name, extra)
		}
	}
}

// kmodPath is the filename modinfo shows: relative paths get the working directory prefixed,
// uncleaned, as libkmod's path_make_absolute_cwd does.
func kmodPath(p string) string {
	if strings.HasPrefix(p, "/") {
		return p
	}
	wd, err := os.Getwd()
	if err != nil {
		return p
	}
	return wd + "/" + p
}
