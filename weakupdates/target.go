// Package weakupdates decides which kernels can load a module built for another one (the
// modversions CRCs of every import, symbol namespaces, vermagic and the size of struct module
// must all agree) and keeps a system's weak-updates symlinks in line with that decision.
package weakupdates

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/source"
	"github.com/kmpack/kmpack/templates"
)

// Target is a kernel modules are checked against.
type Target struct {
	Release string `json:"release"`
	Flavor  string `json:"flavor"`
	// Arch is the kernel's architecture in uname -m spelling (a module's ELF machine must be
	// it); "" when unknown (a bare symvers file).
	Arch string `json:"arch,omitempty"`
	// Source says where the kernel's facts came from (a devel tree, a symvers file, an
	// installed modules directory).
	Source string `json:"source"`
	// VermagicFlags are the words after the release in the vermagic of the kernel's modules;
	// nil when unknown (a bare symvers file).
	VermagicFlags []string        `json:"vermagic_flags"`
	Symvers       *module.Symvers `json:"-"`
	// ThisModuleSize is the size of the kernel's struct module (.gnu.linkonce.this_module of
	// its modules); 0 when unknown.
	ThisModuleSize uint64 `json:"this_module_size"`
	// Extra are symbols other module packages provide in this kernel (weak-updates resolves
	// packages that need each other); looked up after Symvers.
	Extra map[string]module.Symbol `json:"-"`
	// SigEnforced is "yes" when the kernel refuses unsigned modules and modules signed by keys
	// it does not trust (CONFIG_MODULE_SIG_FORCE), "no" when it does not, "" when unknown.
	SigEnforced string `json:"signatures_enforced,omitempty"`
	// Trusted are the certificates the user says the kernel trusts (compat --trusted-cert);
	// nil: signatures are not judged.
	Trusted []*x509.Certificate `json:"-"`
	// Notes say which checks could not be made and why.
	Notes []string `json:"notes,omitempty"`
}

// TargetOptions say how to learn what a kernel tree does not record.
type TargetOptions struct {
	// Release names the kernel of a bare symvers file whose name does not say it.
	Release string
	// CacheDir keeps the probe builds that measure a devel tree's struct module ("" builds
	// each time).
	CacheDir string
	// NoProbe skips building the probe module: the struct module size is then not checked.
	NoProbe bool
	// Trusted are certificates the kernel trusts, for judging module signatures.
	Trusted []*x509.Certificate
	// EnforceSignatures judges signatures as for a kernel that enforces them whatever its
	// config says: a machine booted with Secure Boot (lockdown) or module.sig_enforce=1.
	EnforceSignatures bool
}

// OpenTarget reads a kernel from a devel tree, a symvers file (Module.symvers,
// symvers-<release>.gz ...), or an installed /lib/modules/<release> directory.
func OpenTarget(ctx context.Context, path string, opts TargetOptions) (*Target, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	var t *Target
	switch {
	case !fi.IsDir():
		t, err = targetFromSymvers(path, opts.Release)
	case isInstalledModulesDir(path):
		t, err = targetFromInstalled(path)
	default:
		var tree *kernel.KernelTree
		if tree, err = kernel.OpenKernelTree(path); err != nil {
			return nil, err
		}
		t, err = TargetFromTree(ctx, tree, opts)
	}
	if err != nil {
		return nil, err
	}
	t.Trusted = opts.Trusted
	if opts.EnforceSignatures {
		t.SigEnforced = "yes"
	}
	if t.Trusted != nil && t.SigEnforced == "" {
		t.Notes = append(t.Notes, "module signatures not judged: whether this kernel enforces them is unknown (no kernel config here)")
	}
	return t, nil
}

// sigEnforced reads CONFIG_MODULE_SIG_FORCE from a kernel config.
func sigEnforced(c kernel.KernelConfig) string {
	if c.Enabled("CONFIG_MODULE_SIG_FORCE") {
		return "yes"
	}
	return "no"
}

// TargetFromTree describes a devel tree's kernel. The tree records its symvers and config but
// no module, so the size of struct module comes from building a probe module against it.
func TargetFromTree(ctx context.Context, tree *kernel.KernelTree, opts TargetOptions) (*Target, error) {
	if tree.Symvers == nil || tree.Symvers.Path == "" {
		return nil, fmt.Errorf("%s: the kernel tree has no Module.symvers", tree.Dir)
	}
	sv, err := module.ReadSymvers(tree.Symvers.Path)
	if err != nil {
		return nil, err
	}
	t := &Target{Release: tree.Release, Flavor: kernel.FlavorFromRelease(tree.Release), Arch: tree.Arch, Source: tree.Dir,
		VermagicFlags: tree.VermagicFlags(), Symvers: sv, SigEnforced: sigEnforced(tree.Config), Trusted: opts.Trusted}
	if opts.NoProbe {
		t.Notes = append(t.Notes, "struct module size not checked (probe build disabled)")
		return t, nil
	}
	size, err := probeThisModuleSize(ctx, tree, opts.CacheDir)
	if err != nil {
		t.Notes = append(t.Notes, "struct module size not checked: "+err.Error())
	} else {
		t.ThisModuleSize = size
	}
	return t, nil
}

func probeThisModuleSize(ctx context.Context, tree *kernel.KernelTree, cacheDir string) (uint64, error) {
	tmp, err := os.MkdirTemp("", "kmpack-probe-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "kmpack-probe")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return 0, err
	}
	for _, name := range []string{"Kbuild", "kmpack_probe.c"} {
		b, err := templates.Probe.ReadFile("probe/" + name)
		if err != nil {
			return 0, err
		}
		if err := os.WriteFile(filepath.Join(src, name), b, 0o644); err != nil {
			return 0, err
		}
	}
	s, err := source.OpenSource(src)
	if err != nil {
		return 0, err
	}
	out := filepath.Join(tmp, "out")
	m, err := build.Build(ctx, s, []*kernel.KernelTree{tree}, build.BuildOptions{Jobs: 1, OutputDir: out, CacheDir: cacheDir,
		Compression: module.CompressNone})
	if err != nil {
		return 0, fmt.Errorf("probe module build failed (%v)", err)
	}
	if len(m.Kernels) != 1 || len(m.Kernels[0].Modules) != 1 {
		return 0, fmt.Errorf("probe module build made no module")
	}
	info, err := module.ReadModule(filepath.Join(out, m.Kernels[0].Modules[0].File))
	if err != nil {
		return 0, err
	}
	return info.ThisModuleSize, nil
}

// targetFromSymvers reads a bare symvers file; its release comes from opts or the file name.
func targetFromSymvers(path, release string) (*Target, error) {
	if release == "" {
		base := filepath.Base(path)
		for _, ext := range []string{".gz", ".xz", ".zst"} {
			base = strings.TrimSuffix(base, ext)
		}
		release = strings.TrimPrefix(base, "symvers-")
		if release == base {
			return nil, fmt.Errorf("%s: cannot tell the kernel release of a symvers file from its name: give it", path)
		}
	}
	sv, err := module.ReadSymvers(path)
	if err != nil {
		return nil, err
	}
	return &Target{Release: release, Flavor: kernel.FlavorFromRelease(release), Source: path, Symvers: sv,
		Notes: []string{"vermagic and struct module size not checked: a symvers file does not record them"}}, nil
}

func isInstalledModulesDir(dir string) bool {
	for _, f := range []string{"modules.order", "modules.builtin", "kernel"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return filepath.Base(filepath.Dir(dir)) == "modules"
		}
	}
	return false
}

// SymversLocations are where distributions keep an installed kernel's symvers, relative to
// the root: SUSE and Red Hat's /boot/symvers-<release>.gz, Red Hat's and others'
// /lib/modules/<release>/symvers.*, and the devel tree (Debian's linux-headers-<release>).
func SymversLocations(root, release string) []string {
	mod := filepath.Join(root, "lib/modules", release)
	var out []string
	for _, ext := range []string{".gz", ".xz", ".zst", ""} {
		out = append(out, filepath.Join(root, "boot", "symvers-"+release+ext))
	}
	for _, ext := range []string{".gz", ".xz", ".zst"} {
		out = append(out, filepath.Join(mod, "symvers"+ext))
	}
	// The devel tree, where the build link points (Debian's images ship no symvers), looked
	// up inside the root: the link itself is absolute.
	return append(out, filepath.Join(root, "usr/src/linux-headers-"+release, "Module.symvers"),
		filepath.Join(root, "usr/src/kernels", release, "Module.symvers"))
}

// targetFromInstalled reads an installed kernel: symvers from wherever the distro keeps them,
// vermagic and struct module size from one of its own modules.
func targetFromInstalled(dir string) (*Target, error) {
	dir, _ = filepath.Abs(dir)
	root := filepath.Dir(filepath.Dir(filepath.Dir(dir))) // <root>/lib/modules/<release>
	if strings.HasSuffix(filepath.Dir(filepath.Dir(dir)), "/usr/lib") {
		root = filepath.Dir(root)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	modDir, err := filepath.Rel(root, dir)
	if err != nil {
		return nil, err
	}
	// The directory was named by the user: its kernel/ may be a link anywhere (an unpacked
	// image), which is followed here as the user asked; the engine opens it inside the root.
	kernelDir, err := filepath.EvalSymlinks(filepath.Join(dir, "kernel"))
	if err != nil {
		kernelDir = filepath.Join(dir, "kernel")
	}
	kernelRoot, err := os.OpenRoot(kernelDir)
	if err == nil {
		defer kernelRoot.Close()
	}
	return installedTarget(r, root, filepath.ToSlash(modDir), kernelRoot)
}

// installedTarget reads the installed kernel in modDir (lib/modules/<release>) under r, a
// root opened at rootDir, and its own modules under kernel (its kernel/ directory, nil when
// missing): every file it reads, symvers and modules, is reached through r or kernel, so
// links in the tree cannot lead it outside them, and only regular files of bounded size are
// read.
func installedTarget(r *os.Root, rootDir, modDir string, kernelRoot *os.Root) (*Target, error) {
	release := path.Base(modDir)
	dir := filepath.Join(rootDir, modDir)
	t := &Target{Release: release, Flavor: kernel.FlavorFromRelease(release), Source: dir}
	// The installed kernel's config, where distributions keep it.
	if b, _, err := kmp.ReadRootFile(r, path.Join("boot", "config-"+release), 16<<20); err == nil {
		if c, err := kernel.ParseKernelConfig(filepath.Join(rootDir, "boot", "config-"+release), b); err == nil {
			t.SigEnforced = sigEnforced(c)
		}
	}
	var tried []string
	for _, p := range SymversLocations("/", release) {
		b, _, err := kmp.ReadRootFile(r, rel(p), MaxModuleSize)
		if err != nil {
			tried = append(tried, filepath.Join(rootDir, p))
			continue
		}
		full := filepath.Join(rootDir, p)
		data, _, err := module.Decompress(full, b)
		if err != nil {
			return nil, err
		}
		sv, err := module.ParseSymvers(full, bytes.NewReader(data))
		if err != nil {
			return nil, err
		}
		t.Symvers = sv
		break
	}
	if t.Symvers == nil {
		return nil, fmt.Errorf("%s: no symvers for kernel %s (Debian's images ship none: install linux-headers-%s); looked at %s",
			dir, release, release, strings.Join(tried, ", "))
	}
	if kernelRoot == nil {
		t.Notes = append(t.Notes, "vermagic and struct module size not checked: no module of the kernel itself found under "+filepath.Join(dir, "kernel"))
		return t, nil
	}
	err := fs.WalkDir(kernelRoot.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || !module.IsModuleFileName(d.Name()) {
			return nil // unreadable parts of the tree only narrow the search
		}
		full := filepath.Join(dir, "kernel", p)
		b, _, err := kmp.ReadRootFile(kernelRoot, p, MaxModuleSize)
		if err != nil {
			return nil
		}
		data, _, err := module.Decompress(full, b)
		if err != nil {
			return nil
		}
		m, err := module.ParseModule(full, data)
		if err != nil {
			return nil // one unreadable module does not stop the search
		}
		if words := strings.Fields(m.Vermagic); len(words) > 0 && words[0] == release {
			t.VermagicFlags, t.ThisModuleSize = words[1:], m.ThisModuleSize
			return fs.SkipAll
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if t.VermagicFlags == nil {
		t.Notes = append(t.Notes, "vermagic and struct module size not checked: no module of the kernel itself found under "+filepath.Join(dir, "kernel"))
	}
	return t, nil
}
