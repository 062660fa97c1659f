package kernel

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/module"
)

// KernelTree is a kernel devel tree: what `make -C DIR M=... modules` builds external modules
// against (Debian's linux-headers-*, RHEL's /usr/src/kernels/*, SUSE's linux-obj/<arch>/<flavor>).
type KernelTree struct {
	Dir string `json:"dir"`
	// Layout is the distro convention the tree follows: "debian", "rhel", "suse" or "kbuild".
	Layout string `json:"layout"`
	// Packages are the package files the tree was unpacked from, when it came from packages.
	Packages []string `json:"packages,omitempty"`
	// Release is the kernel release modules must match (vermagic, /lib/modules/<release>).
	Release string `json:"release"`
	// Flavor is the distro's name for the kernel configuration: amd64, cloud-amd64, default, rt ...
	Flavor            string             `json:"flavor"`
	Arch              string             `json:"arch"`
	Symvers           *SymversInfo       `json:"symvers"`
	Modversions       bool               `json:"modversions"`
	ModuleCompression module.Compression `json:"module_compression"`
	Signing           SigningConfig      `json:"signing"`
	Compiler          CompilerInfo       `json:"compiler"`
	Warnings          []string           `json:"warnings,omitempty"`
	Config            KernelConfig       `json:"-"`
}

// SymversInfo locates a tree's Module.symvers.
type SymversInfo struct {
	Path    string `json:"path"`
	Symbols int    `json:"symbols"`
	// Vmlinux counts the symbols the kernel image itself exports.
	Vmlinux int `json:"vmlinux"`
	// Parsed is the table itself, kept only by OpenKernelTreeWithSymvers (nil otherwise: a
	// build over many trees would hold every table for its whole run).
	Parsed *module.Symvers `json:"-"`
}

// SigningConfig is the kernel's module signing setup (CONFIG_MODULE_SIG*).
type SigningConfig struct {
	Enabled bool   `json:"enabled"`
	Force   bool   `json:"force"`
	All     bool   `json:"all"`
	Hash    string `json:"hash,omitempty"`
	Key     string `json:"key,omitempty"`
}

// CompilerInfo is the compiler the kernel was built with and what this host has of it.
type CompilerInfo struct {
	// VersionText is CONFIG_CC_VERSION_TEXT.
	VersionText string `json:"version_text"`
	Kind        string `json:"kind"`
	Version     string `json:"version"`
	// Command is the compiler to build modules with, Path where it is on this host.
	Command     string `json:"command,omitempty"`
	Path        string `json:"path,omitempty"`
	HostVersion string `json:"host_version,omitempty"`
	// Available is true when a compiler of the kernel's kind and major version is on this host;
	// Exact when its full version equals the kernel's too.
	Available bool `json:"available"`
	Exact     bool `json:"exact"`
	// CrossCompile is Kbuild's CROSS_COMPILE= for a tree of another architecture than the
	// host's ("aarch64-linux-gnu-"); Package is then the Debian package that has the cross
	// compiler Command names, for the message when it is missing (gcc-12-aarch64-linux-gnu).
	CrossCompile string `json:"cross_compile,omitempty"`
	Package      string `json:"package,omitempty"`
}

// Bounds on what describing a tree reads (real values: .config ~260 KB, Module.symvers ~2 MB).
const (
	maxKernelConfig = 16 << 20
	maxSymvers      = 256 << 20
	maxSmallFile    = 64 << 10
)

// OpenKernelTree describes the kernel devel tree at dir. It fails with an *InputError when dir
// is not one. It runs nothing, and reads the tree's files through an os.Root at the tree's
// directory: regular files only (a FIFO cannot hang it), bounded in size, never through a
// symlink that leaves the tree.
func OpenKernelTree(dir string) (*KernelTree, error) { return openKernelTree(dir, false) }

// OpenKernelTreeWithSymvers is OpenKernelTree keeping the parsed Module.symvers in
// Symvers.Parsed, for a caller that reads the table next (packaging for the rhel profile).
func OpenKernelTreeWithSymvers(dir string) (*KernelTree, error) { return openKernelTree(dir, true) }

func openKernelTree(dir string, keepSymvers bool) (*KernelTree, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, kmp.InputErrorf(dir, "not a kernel devel tree: %v", err)
	}
	if fi, err := os.Stat(real); err != nil || !fi.IsDir() {
		return nil, kmp.InputErrorf(dir, "not a kernel devel tree: not a directory")
	}
	root, err := os.OpenRoot(real)
	if err != nil {
		return nil, kmp.InputErrorf(dir, "not a kernel devel tree: %v", err)
	}
	defer root.Close()
	if _, err := root.Stat("Makefile"); err != nil {
		return nil, kmp.InputErrorf(dir, "not a kernel devel tree: no Makefile")
	}
	t := &KernelTree{Dir: real}
	cfgRel := ".config"
	if _, err := root.Lstat(cfgRel); err != nil {
		cfgRel = "include/config/auto.conf"
	}
	if _, err := root.Lstat(cfgRel); err != nil {
		return nil, kmp.InputErrorf(dir, "not a kernel devel tree: no .config or include/config/auto.conf")
	}
	cfgPath := filepath.Join(real, cfgRel)
	data, _, err := kmp.ReadRootFile(root, cfgRel, maxKernelConfig)
	if err != nil {
		return nil, kmp.InputErrorf(cfgPath, "%v", trimRel(err, cfgRel))
	}
	if t.Config, err = ParseKernelConfig(cfgPath, data); err != nil {
		return nil, err
	}
	if t.Release, err = readRelease(root, real); err != nil {
		return nil, err
	}
	_, kvErr := root.Lstat(".kernelvariables")
	t.Layout, t.Flavor = layoutAndFlavor(real, t.Release, kvErr == nil)
	if err := ident.Flavor(t.Flavor); err != nil {
		return nil, kmp.InputErrorf(dir, "%v", err)
	}
	t.Arch = t.Config.Arch()
	t.Modversions = t.Config.Enabled("CONFIG_MODVERSIONS")
	t.ModuleCompression = t.Config.ModuleCompression()
	t.Signing = SigningConfig{
		Enabled: t.Config.Enabled("CONFIG_MODULE_SIG"),
		Force:   t.Config.Enabled("CONFIG_MODULE_SIG_FORCE"),
		All:     t.Config.Enabled("CONFIG_MODULE_SIG_ALL"),
		Hash:    t.Config["CONFIG_MODULE_SIG_HASH"],
		Key:     t.Config["CONFIG_MODULE_SIG_KEY"],
	}
	t.Compiler = describeCompiler(t.Config, t.CrossCompile())
	switch {
	case t.Cross() && !t.Compiler.Available:
		t.Warnings = append(t.Warnings, t.Compiler.Missing(t.Arch))
	case !t.Compiler.Available && t.Compiler.VersionText != "":
		t.Warnings = append(t.Warnings, fmt.Sprintf("the kernel was built with %q, which is not on this host", t.Compiler.VersionText))
	}
	if err := CheckHostTools(t); err != nil {
		w := strings.TrimPrefix(err.Error(), t.Dir+": ")
		var fe *ForeignToolError
		if errors.As(err, &fe) && ToolSources(t.Dir) != "" {
			w += ": kmpack build rebuilds them for this machine from the tree's scripts/ sources, once (cached)"
		}
		t.Warnings = append(t.Warnings, w)
	}
	sv := filepath.Join(real, "Module.symvers")
	if _, err := root.Lstat("Module.symvers"); err == nil {
		data, _, err := kmp.ReadRootFile(root, "Module.symvers", maxSymvers)
		if err != nil {
			return nil, kmp.InputErrorf(sv, "%v", trimRel(err, "Module.symvers"))
		}
		// Without keeping the table it is checked as thoroughly and only counted: a build of
		// many kernels needs to know each table is sound (a third of a no-change rebuild was
		// building them).
		info := &SymversInfo{Path: sv}
		var c module.SymversCount
		if keepSymvers {
			if info.Parsed, err = module.ParseSymvers(sv, bytes.NewReader(data)); err != nil {
				return nil, err
			}
			c = info.Parsed.Count()
		} else if c, err = module.CountSymvers(sv, data); err != nil {
			return nil, err
		}
		info.Symbols, info.Vmlinux = c.Symbols, c.Vmlinux
		t.Symvers = info
	} else if t.Modversions {
		t.Warnings = append(t.Warnings, "no Module.symvers: modules built here get no imported CRCs checked, and symbol dependencies cannot be computed")
	}
	return t, nil
}

// trimRel drops the "rel: " readRootFile puts before its own errors: the caller names the file.
func trimRel(err error, rel string) string {
	return strings.TrimPrefix(err.Error(), rel+": ")
}

var utsReleaseRE = regexp.MustCompile(`(?m)^#define UTS_RELEASE "([^"]+)"`)

// readRelease takes the release from include/generated/utsrelease.h, which is what vermagic
// uses. Debian's include/config/kernel.release holds the upstream version instead (6.1.187 for
// 6.1.0-53-amd64), so it is only a fallback for trees without utsrelease.h. The release names
// directories and packages, so it is validated here, where it enters.
func readRelease(root *os.Root, dir string) (string, error) {
	const uts, kr = "include/generated/utsrelease.h", "include/config/kernel.release"
	if _, err := root.Lstat(uts); err == nil {
		b, _, err := kmp.ReadRootFile(root, uts, maxSmallFile)
		if err != nil {
			return "", kmp.InputErrorf(filepath.Join(dir, uts), "%v", trimRel(err, uts))
		}
		m := utsReleaseRE.FindSubmatch(b)
		if m == nil {
			return "", kmp.InputErrorf(filepath.Join(dir, uts), "no UTS_RELEASE definition")
		}
		if err := ident.KernelRelease(string(m[1])); err != nil {
			return "", kmp.InputErrorf(filepath.Join(dir, uts), "%v", err)
		}
		return string(m[1]), nil
	}
	if b, _, err := kmp.ReadRootFile(root, kr, maxSmallFile); err == nil {
		r := strings.TrimSpace(string(b))
		if err := ident.KernelRelease(r); err != nil {
			return "", kmp.InputErrorf(filepath.Join(dir, kr), "%v", err)
		}
		return r, nil
	}
	return "", kmp.InputErrorf(dir, "not a kernel devel tree: no include/generated/utsrelease.h (run `make modules_prepare` in it?)")
}

var suseObjRE = regexp.MustCompile(`/linux-[^/]*-obj/[^/]+/([^/]+)$`)

func layoutAndFlavor(dir, release string, kernelVariables bool) (layout, flavor string) {
	switch {
	case suseObjRE.MatchString(dir):
		return "suse", suseObjRE.FindStringSubmatch(dir)[1]
	case strings.Contains(dir, "/usr/src/kernels/"):
		// RHEL variants are "+debug", "+rt", "+64k" after the release (".debug" on RHEL 7).
		if _, v, ok := strings.Cut(release, "+"); ok {
			return "rhel", v
		}
		for _, v := range []string{"debug", "kdump", "PAE"} {
			if strings.HasSuffix(release, "."+v) {
				return "rhel", v
			}
		}
		return "rhel", "default"
	}
	layout = "kbuild"
	if kernelVariables || strings.Contains(dir, "/linux-headers-") {
		layout = "debian"
	}
	return layout, FlavorFromRelease(release)
}

// FlavorFromRelease is the flavor of a kernel known only by its release: the localversion part,
// everything from the first '-'-separated component that starts with a letter
// ("6.1.0-53-cloud-amd64" gives "cloud-amd64", "5.14.21-150500.55.39-default" gives "default").
// It is the one flavor rule of trees, compat and weak-updates; a tree's layout may know better
// (SUSE's linux-obj/<arch>/<flavor>, RHEL's +variant).
func FlavorFromRelease(release string) string {
	parts := strings.Split(release, "-")
	for i := 1; i < len(parts); i++ {
		if p := parts[i]; p != "" && (p[0] >= 'a' && p[0] <= 'z' || p[0] >= 'A' && p[0] <= 'Z') {
			return strings.Join(parts[i:], "-")
		}
	}
	return "default"
}

var (
	// compilerNameRE is what a compiler named by a tree's CONFIG_CC_VERSION_TEXT may look like
	// to be looked up on PATH: a bare command name (gcc-12, x86_64-linux-gnu-gcc-12), never a path.
	compilerNameRE = regexp.MustCompile(`^[A-Za-z0-9_.+-]*(gcc|clang)(-[0-9]+)?$`)
	trailingMajor  = regexp.MustCompile(`-([0-9]+)$`)
)

// describeCompiler finds, without running anything, the host compiler to build a tree's
// modules with: a command name kmpack derives from the tree's configuration and checks (the
// first word of CONFIG_CC_VERSION_TEXT when it is a bare compiler name, else <kind>-<major>,
// else <kind>), found on PATH. Its major version is read from its name or, for a bare gcc,
// from the name it links to (/usr/bin/gcc -> gcc-12); the build engine runs it to learn the
// exact version (build.ProbeCompiler).
//
// With cross (a tree of another architecture: "aarch64-linux-gnu-"), only that architecture's
// gcc will do, named as Debian's cross toolchains are (aarch64-linux-gnu-gcc-12): the host's
// own gcc would make host objects. clang targets every architecture itself (Kbuild derives its
// --target from CROSS_COMPILE), so its names stay the same.
func describeCompiler(cfg KernelConfig, cross string) CompilerInfo {
	ci := CompilerInfo{VersionText: cfg["CONFIG_CC_VERSION_TEXT"], CrossCompile: cross}
	var num int
	switch {
	case cfg.Enabled("CONFIG_CC_IS_CLANG"):
		ci.Kind = "clang"
		num, _ = strconv.Atoi(cfg["CONFIG_CLANG_VERSION"])
	case cfg.Enabled("CONFIG_CC_IS_GCC") || strings.Contains(ci.VersionText, "gcc"):
		ci.Kind = "gcc"
		num, _ = strconv.Atoi(cfg["CONFIG_GCC_VERSION"])
	default:
		return ci
	}
	if num > 0 {
		ci.Version = fmt.Sprintf("%d.%d.%d", num/10000, num/100%100, num%100)
	}
	major := strings.Split(ci.Version, ".")[0]
	prefix := ""
	if ci.Kind == "gcc" && cross != "" {
		prefix = cross
		ci.Package = "gcc-" + strings.TrimSuffix(cross, "-")
		if major != "" {
			ci.Package = "gcc-" + major + "-" + strings.TrimSuffix(cross, "-")
		}
	}
	var candidates []string
	if f := strings.Fields(ci.VersionText); len(f) > 0 {
		if m := compilerNameRE.FindStringSubmatch(f[0]); m != nil && m[1] == ci.Kind {
			switch {
			case prefix == "":
				candidates = append(candidates, f[0]) // e.g. gcc-12, x86_64-linux-gnu-gcc-12
			case strings.HasPrefix(f[0], prefix):
				candidates = append(candidates, f[0]) // a kernel cross-built itself
			case !strings.Contains(f[0], "-linux-"):
				candidates = append(candidates, prefix+f[0]) // gcc-12 for arm64: aarch64-linux-gnu-gcc-12
			}
		}
	}
	if major != "" {
		candidates = append(candidates, prefix+ci.Kind+"-"+major)
	}
	candidates = append(candidates, prefix+ci.Kind)
	for _, c := range candidates {
		p := lookPath(c)
		if p == "" {
			continue
		}
		if major != "" && compilerMajor(c, p) != major {
			continue
		}
		ci.Command, ci.Path, ci.Available = c, p, true
		break
	}
	return ci
}

// lookPath finds a bare command name in PATH's absolute directories: an executable regular
// file, as the shell would run it. (os/exec's LookPath would do; this package runs nothing
// and does not import it.)
func lookPath(name string) string {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		if !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// Missing says that a cross compiler for a kernel of arch is not on this host, and which
// package has it.
func (ci CompilerInfo) Missing(arch string) string {
	want := ci.CrossCompile + ci.Kind
	if major := strings.Split(ci.Version, ".")[0]; major != "" {
		want += "-" + major
	}
	msg := fmt.Sprintf("the %s kernel was built with %q: its cross compiler %s is not on this host", arch, ci.VersionText, want)
	if ci.Package != "" {
		msg += " (install Debian's " + ci.Package + ")"
	}
	return msg
}

// compilerMajor reads a compiler's major version from its command name or, failing that, from
// the name its path resolves to.
func compilerMajor(name, path string) string {
	if m := trailingMajor.FindStringSubmatch(name); m != nil {
		return m[1]
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		if m := trailingMajor.FindStringSubmatch(filepath.Base(real)); m != nil {
			return m[1]
		}
	}
	return ""
}

// VermagicFlags are the words after the release in the vermagic of modules built for this
// tree, computed from its configuration as include/linux/vermagic.h does, with the
// architecture's MODULE_ARCH_VERMAGIC (arch/*/include/asm/module.h) where kmpack knows it:
// empty on x86_64 and s390, "aarch64" on arm64.
func (t *KernelTree) VermagicFlags() []string {
	var out []string
	c := t.Config
	if c.Enabled("CONFIG_SMP") {
		out = append(out, "SMP")
	}
	switch {
	case c.Enabled("CONFIG_PREEMPT_BUILD"):
		out = append(out, "preempt")
	case c.Enabled("CONFIG_PREEMPT_RT"):
		out = append(out, "preempt_rt")
	}
	if c.Enabled("CONFIG_MODULE_UNLOAD") {
		out = append(out, "mod_unload")
	}
	if c.Enabled("CONFIG_MODVERSIONS") {
		out = append(out, "modversions")
	}
	switch KernelArch(t.Arch) {
	case "arm64":
		out = append(out, "aarch64")
	case "riscv":
		out = append(out, "riscv")
	case "powerpc":
		if c.Enabled("CONFIG_MPROFILE_KERNEL") {
			out = append(out, "mprofile-kernel")
		}
		if c.Enabled("CONFIG_RELOCATABLE") {
			out = append(out, "relocatable")
		}
	}
	return out
}
