package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/source"
)

// packagingFlags are shared by build (package after building) and package (package an
// existing build output).
func packagingFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "format", Aliases: []string{"f"}, Usage: "package formats: rpm, deb, apk, archlinux, oci (comma-separated or repeated)"},
		&cli.StringSliceFlag{Name: "profile", Aliases: []string{"p"}, Usage: "distro conventions: suse, rhel (rpm), debian (deb), alpine (apk), arch (archlinux), kmm (oci: Kernel Module Management kmod images and Module)"},
		&cli.BoolFlag{Name: "usrmerge", Usage: "suse: install modules under /usr/lib/modules (Tumbleweed, SLE 16)"},
		&cli.BoolFlag{Name: "no-source-package", Usage: "do not emit the <name>-dkms source fallback packages"},
		&cli.StringFlag{Name: "served", Usage: "what a kernel served by another kernel's build (build --classes) gets: package (a package of its own carrying that build) or weak-updates (none: the build's package reaches it); default per profile: weak-updates for suse and rhel, package for the others"},
		&cli.StringFlag{Name: "kmm-image", Usage: "kmm: the image repository the Module resource names, REGISTRY/PATH without tag (default kmpack/<name>); each kernel's image is tagged with its release"},
		&cli.StringFlag{Name: "kmm-base", Usage: "kmm: layer the kmod images on this base image, an OCI image layout DIR[:TAG] (skopeo copy docker://busybox:stable oci:DIR:stable): KMM's worker runs sh, mkdir and cp in the kmod image"},
		&cli.StringFlag{Name: "kmm-module-name", Usage: "kmm: the module KMM's worker loads with modprobe (default: the first module built that no other module depends on)"},
		&cli.BoolFlag{Name: "no-runtime-package", Usage: "debian, rhel, suse: do not emit the kmpack runtime packages (the deb the debian module packages depend on; the rpm with the kernel-install plugin and boot unit that autoinstall new kernels)"},
		&cli.StringSliceFlag{Name: "runtime-binary", Usage: "debian, rhel, suse: the kmpack binary (this kmpack's version, CGO_ENABLED=0) the runtime package of its architecture carries, for kernels of another architecture than this host's (repeatable: one per architecture)"},
		&cli.StringFlag{Name: "gpg-key", EnvVars: []string{"KMPACK_GPG_KEY"}, Usage: "sign RPMs with this OpenPGP secret key (gpg --armor --export-secret-keys)"},
		&cli.StringFlag{Name: "gpg-passphrase-file", EnvVars: []string{"KMPACK_GPG_PASSPHRASE_FILE"}, Usage: "read a protected --gpg-key's passphrase from this file's first line (or set KMPACK_GPG_PASSPHRASE)"},
		&cli.StringFlag{Name: "apk-key", EnvVars: []string{"KMPACK_APK_KEY"}, Usage: "sign apk packages with this RSA PEM private key (abuild-keygen's NAME.rsa)"},
		&cli.StringFlag{Name: "apk-key-name", EnvVars: []string{"KMPACK_APK_KEY_NAME"}, Usage: "the public key's name in /etc/apk/keys (default: the --apk-key file's, NAME.rsa.pub)"},
		&cli.StringFlag{Name: "apk-passphrase-file", EnvVars: []string{"KMPACK_APK_PASSPHRASE_FILE"}, Usage: "read an encrypted --apk-key's passphrase from this file's first line (or set KMPACK_APK_PASSPHRASE)"},
	}
}

// packageSigning loads the package signing keys of --gpg-key and --apk-key, passphrases as for
// --sign-key: from an environment variable or a file, never from the command line.
func packageSigning(c *cli.Context) (*formats.PackageSigning, error) {
	var s formats.PackageSigning
	if f := c.String("gpg-key"); f != "" {
		pass, err := passphrase(c, "KMPACK_GPG_PASSPHRASE", "gpg-passphrase-file")
		if err != nil {
			return nil, err
		}
		if s.RPM, err = formats.LoadPGPKey(f, pass); err != nil {
			return nil, err
		}
	}
	if f := c.String("apk-key"); f != "" {
		pass, err := passphrase(c, "KMPACK_APK_PASSPHRASE", "apk-passphrase-file")
		if err != nil {
			return nil, err
		}
		if s.APK, err = formats.LoadAPKKey(f, c.String("apk-key-name"), pass); err != nil {
			return nil, err
		}
	} else if c.String("apk-key-name") != "" {
		return nil, usagef("--apk-key-name without --apk-key")
	}
	if s.RPM == nil && s.APK == nil {
		return nil, nil
	}
	return &s, nil
}

// selfRuntime is this kmpack as the runtime package carries it. It sets cache's Salt to the
// binary's sha256 (the emitters are part of the binary) and keeps the stripped binary there.
func selfRuntime(cache *formats.PackageCache) (*formats.Runtime, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("runtime package: locating kmpack's own binary: %v", err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		return nil, fmt.Errorf("runtime package: %v", err)
	}
	sum := sha256.Sum256(b)
	cache.Salt = hex.EncodeToString(sum[:])
	if strip, err := exec.LookPath("strip"); err == nil {
		if stripped, err := strippedCopy("runtime binary "+exe, exe, cache.Salt, strip, cache); err == nil {
			b = stripped
		}
	}
	rt := &formats.Runtime{Binary: b, Version: version, Arch: kernel.HostMachine(), Completions: map[string][]byte{}}
	app := newApp()
	man, err := manPage(app)
	if err != nil {
		return nil, fmt.Errorf("runtime package: manual page: %v", err)
	}
	rt.ManPage = []byte(man)
	for _, sh := range []string{"bash", "zsh", "fish"} {
		c, err := completion(app, sh)
		if err != nil {
			return nil, fmt.Errorf("runtime package: %s completion: %v", sh, err)
		}
		rt.Completions[sh] = []byte(c)
	}
	return rt, nil
}

// stripArgs strip symbols and debug information the way Debian's dh_strip does for
// executables (Debian policy 10.1).
var stripArgs = []string{"--remove-section=.comment", "--remove-section=.note"}

// strippedCopy is exe (whose sha256 is sum) stripped with strip (binutils' strip for exe's
// architecture) as dh_strip does; a kmpack built with -ldflags=-s -w is unchanged. The result
// is kept in cache's slot, keyed by the binary's and strip's own sha256.
func strippedCopy(slot, exe, sum, strip string, cache *formats.PackageCache) ([]byte, error) {
	tool, err := os.ReadFile(strip)
	if err != nil {
		return nil, err
	}
	toolSum := sha256.Sum256(tool)
	keySum := sha256.Sum256([]byte(strings.Join(append([]string{"strip", sum, hex.EncodeToString(toolSum[:])}, stripArgs...), "\x00")))
	key := hex.EncodeToString(keySum[:])
	if b := cache.Get(slot, key); b != nil {
		return b, nil
	}
	tmp, err := os.MkdirTemp("", "kmpack-strip-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "kmpack")
	if err := exec.Command(strip, append(append([]string{}, stripArgs...), "-o", out, exe)...).Run(); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	cache.Put(slot, key, b)
	return b, nil
}

// packagingProfiles reads --format/--profile, falling back to the spec's formats and profile.
func packagingProfiles(c *cli.Context, spec *source.Spec) ([]string, error) {
	fs, ps := splitList(c.StringSlice("format")), splitList(c.StringSlice("profile"))
	if len(fs) == 0 && len(ps) == 0 && spec != nil {
		fs = spec.Formats
		if spec.Profile != "" {
			ps = []string{spec.Profile}
		}
	}
	profiles, err := formats.ResolveProfiles(fs, ps)
	if err != nil {
		return nil, usagef("%v", err)
	}
	return profiles, nil
}

func splitList(vals []string) []string {
	var out []string
	for _, v := range vals {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// writePackages packages a build and prints what was written. Metadata a format forbids is bad
// input (exit 3); the packages directory is only replaced when every package was written.
func writePackages(c *cli.Context, src *source.Source, m *manifest.Manifest, outDir string, trees []*kernel.KernelTree, profiles []string, signing *formats.PackageSigning, w io.Writer) error {
	opts := formats.Options{UsrMerge: c.Bool("usrmerge"), NoSource: c.Bool("no-source-package"), Signing: signing, Served: c.String("served"),
		KMMImage: c.String("kmm-image"), KMMModuleName: c.String("kmm-module-name")}
	if ref := c.String("kmm-base"); ref != "" {
		base, err := formats.LoadOCIBase(ref)
		if err != nil {
			return err
		}
		opts.KMMBase = base
	}
	if opts.KMMImage != "" {
		if err := formats.CheckKMMImage(opts.KMMImage); err != nil {
			return usagef("%v", err)
		}
	}
	switch opts.Served {
	case "", formats.ServedPackage, formats.ServedWeakUpdates:
	default:
		return usagef("--served: %q is neither package nor weak-updates", opts.Served)
	}
	if formats.WantsRuntime(profiles) && !c.Bool("no-runtime-package") {
		// The runtime package's payload is the kmpack binary: stripping it and compressing it
		// take most of packaging's time, so both are kept in the cache directory.
		opts.Cache = &formats.PackageCache{Dir: c.String("cache-dir"), Refresh: c.Bool("no-cache"),
			Warn: func(s string) { fmt.Fprintln(os.Stderr, "kmpack: warning:", s) }}
		if secret, err := kmp.HostSecret(); err != nil {
			opts.Cache.Warn(fmt.Sprintf("no package cache (its entries are authenticated with a secret of this user: %v)", err))
		} else {
			opts.Cache.Secret = secret
		}
		rts, err := runtimes(c, profiles, m, opts.Cache)
		if err != nil {
			return err
		}
		opts.Runtimes = rts
	} else if len(c.StringSlice("runtime-binary")) > 0 {
		return usagef("%s", errRuntimeBinaryUnused)
	}
	written, err := formats.PackageBuild(formats.Request{
		Source: src, Manifest: m, OutputDir: outDir, Trees: trees, Profiles: profiles, Options: opts,
	})
	if err != nil {
		if formats.IsInvalid(err) {
			return cli.Exit("packaging: "+err.Error(), exitInput)
		}
		return err
	}
	if w != nil {
		fmt.Fprintf(w, "\npackages in %s:\n", filepath.Join(outDir, formats.PackagesDir))
		for _, p := range written {
			fmt.Fprintf(w, "  %-8s %-7s %s\n", p.Profile, p.Format, p.File)
		}
	}
	return nil
}

func packageCommand() *cli.Command {
	return &cli.Command{
		Name:      "package",
		Usage:     "turn an existing build output into packages",
		ArgsUsage: "[OUTPUT]",
		Description: `OUTPUT is a directory kmpack build wrote (default kmpack-out). Its manifest names the source
and the kernel trees; packages go to OUTPUT/packages/, replaced as a whole, with
packages.json listing them. Same inputs and SOURCE_DATE_EPOCH give byte-identical packages.`,
		Flags:  append(packagingFlags(), jsonFlag),
		Action: runPackage,
	}
}

func runPackage(c *cli.Context) error {
	if c.NArg() > 1 {
		return usagef("package takes one OUTPUT directory, got %d arguments", c.NArg())
	}
	outDir := c.Args().First()
	if outDir == "" {
		outDir = "kmpack-out"
	}
	mp, err := manifest.Read(outDir)
	if err != nil {
		return err
	}
	// A build into the same output must not replace it while its packages are written.
	unlock, err := build.LockOutput(outDir)
	if err != nil {
		return err
	}
	defer unlock()
	if mp, err = manifest.Read(outDir); err != nil {
		return err
	}
	m := *mp
	src, err := source.OpenSource(m.Source.Dir)
	if err != nil {
		return err
	}
	if src.Kind == source.SourceDKMS {
		// A dkms.conf names its source only when evaluated: take what the build learnt.
		if err := src.SetIdentity(m.Source.Name, m.Source.Version); err != nil {
			return cli.Exit(fmt.Sprintf("%s: %v", filepath.Join(outDir, "manifest.json"), err), exitInput)
		}
	}
	if abs, err := filepath.Abs(outDir); err == nil {
		src.Exclude = append(src.Exclude, abs)
	}
	profiles, err := packagingProfiles(c, src.Spec)
	if err != nil {
		return err
	}
	if len(profiles) == 0 {
		return usagef("no packages asked for: give --format or --profile (or formats/profile in kmpack.yaml)")
	}
	signing, err := packageSigning(c)
	if err != nil {
		return err
	}
	trees, err := openBuiltTrees(m.Kernels, slices.Contains(profiles, "rhel"))
	if err != nil {
		return err
	}
	var w io.Writer = os.Stdout
	if c.Bool("json") {
		w = nil
	}
	if err := writePackages(c, src, &m, outDir, trees, profiles, signing, w); err != nil {
		return err
	}
	if c.Bool("json") {
		idx, err := os.ReadFile(filepath.Join(outDir, formats.PackagesDir, "packages.json"))
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(idx)
		return err
	}
	return nil
}

// openBuiltTrees opens the kernel trees of the kernels that built. Opening a tree parses its
// Module.symvers: they are opened side by side, as discovery does, and with keepSymvers (the
// rhel profile reads them) the parsed tables are kept for packaging.
func openBuiltTrees(kernels []*manifest.KernelBuild, keepSymvers bool) ([]*kernel.KernelTree, error) {
	open := kernel.OpenKernelTree
	if keepSymvers {
		open = kernel.OpenKernelTreeWithSymvers
	}
	trees := make([]*kernel.KernelTree, len(kernels))
	errs := make([]error, len(kernels))
	var wg sync.WaitGroup
	for i, k := range kernels {
		if k.Status != manifest.StatusBuilt && k.Status != manifest.StatusServed {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if trees[i], errs[i] = open(k.Tree); errs[i] != nil {
				errs[i] = fmt.Errorf("kernel tree of %s: %w", k.Release, errs[i])
			}
		}()
	}
	wg.Wait()
	var out []*kernel.KernelTree
	for i := range kernels {
		if errs[i] != nil {
			return nil, errs[i]
		}
		if trees[i] != nil {
			out = append(out, trees[i])
		}
	}
	return out, nil
}

func ksymsCommand() *cli.Command {
	return &cli.Command{
		Name:  "ksyms",
		Usage: "print (or package) the symbol Provides a kernel's packages carry, for checking module package dependencies",
		Description: `Prints one Provides per line, as rpm -q --provides shows them: for --profile suse
ksym(<flavor>:<symbol>) = <crc> for vmlinux and every in-tree module, for rhel
kernel(<symbol>) = 0x<crc>; both with kernel-uname-r. --package DIR writes them as an RPM
without files (kernel-<flavor>-ksyms or kernel-ksyms) that a test root or a vendor's own
kernel build can install.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kernel", Aliases: []string{"k"}, Required: true, Usage: "kernel tree directory, or a symvers file (Module.symvers, symvers-<release>.gz) with --release"},
			&cli.StringFlag{Name: "release", Usage: "kernel release, when --kernel is a symvers file"},
			&cli.StringFlag{Name: "profile", Aliases: []string{"p"}, Required: true, Usage: "suse or rhel"},
			&cli.StringFlag{Name: "package", Usage: "write an RPM carrying the Provides into this directory"},
		},
		Action: runKsyms,
	}
}

func runKsyms(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("ksyms takes no arguments")
	}
	profile := c.String("profile")
	if profile != "suse" && profile != "rhel" {
		return usagef("--profile must be suse or rhel, not %q", profile)
	}
	tree, sv, err := kernelSymbols(c.String("kernel"), c.String("release"))
	if err != nil {
		return err
	}
	if dir := c.String("package"); dir != "" {
		mtime, err := formats.SourceDateEpoch()
		if err != nil {
			return usagef("%v", err)
		}
		p, err := formats.KernelSymbolsPackage(tree, sv, profile, mtime)
		if err != nil {
			return cli.Exit(err.Error(), exitInput)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		var buf bytes.Buffer
		e, _ := formats.EmitterFor("rpm")
		if err := e.Write(p, &buf); err != nil {
			return err
		}
		out := filepath.Join(dir, p.FileName)
		if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "kmpack: wrote", out)
		return nil
	}
	provides, err := formats.KernelProvides(tree.Release, sv, profile)
	if err != nil {
		return cli.Exit(err.Error(), exitInput)
	}
	w := bufio.NewWriter(os.Stdout)
	for _, p := range provides {
		fmt.Fprintln(w, p)
	}
	return w.Flush()
}

// kernelSymbols opens a kernel tree, or a bare symvers file named with its release.
func kernelSymbols(path, release string) (*kernel.KernelTree, *module.Symvers, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, cli.Exit(fmt.Sprintf("%s: %v", path, err), exitInput)
	}
	if !fi.IsDir() {
		if release == "" {
			return nil, nil, usagef("--kernel %s is a file: give the kernel's --release too", path)
		}
		sv, err := module.ReadSymvers(path)
		if err != nil {
			return nil, nil, err
		}
		arch, ok := kernel.MachineFromRelease(release)
		if !ok {
			arch = kernel.HostMachine()
		}
		return &kernel.KernelTree{Release: release, Arch: arch}, sv, nil
	}
	t, err := kernel.OpenKernelTree(path)
	if err != nil {
		return nil, nil, err
	}
	if t.Symvers == nil || t.Symvers.Path == "" {
		return nil, nil, cli.Exit(fmt.Sprintf("%s: no Module.symvers in the kernel tree", path), exitInput)
	}
	sv, err := module.ReadSymvers(t.Symvers.Path)
	if err != nil {
		return nil, nil, err
	}
	if release != "" && release != t.Release {
		return nil, nil, usagef("--release %s does not match the tree's release %s", release, t.Release)
	}
	return t, sv, nil
}
