package formats

import (
	"bytes"
	"debug/elf"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/weakupdates"
)

// Runtime is the kmpack binary the runtime package carries, so that module packages can run
// the weak-updates engine on target systems.
type Runtime struct {
	// Binary is the kmpack executable, built for Arch (uname -m).
	Binary []byte
	// Version is kmpack's version ("0.1.0-dev", "1.2.0"); both package formats write it with
	// "~" for "-" (0.1.0~dev sorts before 0.1.0 in dpkg and in rpm).
	Version string
	Arch    string
	// ManPage is kmpack(1) in roff, and the completions the scripts for each shell ("bash",
	// "zsh", "fish"); both generated from the command tree (kmpack man, kmpack completion).
	ManPage     []byte
	Completions map[string][]byte
}

// RuntimePackageName is the package module packages of the debian profile depend on.
const RuntimePackageName = "kmpack"

// RuntimeMinVersion is the oldest runtime whose weak-updates command line the debian
// profile's maintainer scripts use; the -dkms packages (deb and rpm) accept it instead of dkms.
const RuntimeMinVersion = "0.1.0~"

// Paths the runtime package installs.
const (
	RuntimeBinary     = "/usr/bin/kmpack"
	RuntimeDepmodConf = "/lib/depmod.d/kmpack-weak-updates.conf"
	// The kernel hooks are named to run before dkms and initramfs-tools (run-parts order), so
	// a new kernel's initramfs is made with its weak-updates links in place.
	RuntimePostinstHook = "/etc/kernel/postinst.d/50-kmpack-weak-updates"
	// RuntimeKernelInstall is systemd's kernel-install plugin, ordered before the initramfs
	// plugins (50-dracut.install, 50-mkinitcpio.install) as dkms's 40-dkms.install is.
	RuntimeKernelInstall = "/usr/lib/kernel/install.d/40-kmpack.install"
	// RuntimeAutoinstallUnit catches up at boot; it is enabled by the link in
	// RuntimeAutoinstallWants, shipped in the package (static enablement, no postinst logic).
	RuntimeAutoinstallUnit  = "/usr/lib/systemd/system/kmpack-autoinstall.service"
	RuntimeAutoinstallWants = "/usr/lib/systemd/system/multi-user.target.wants/kmpack-autoinstall.service"
	RuntimePostrmHook       = "/etc/kernel/postrm.d/50-kmpack-weak-updates"
	// RuntimeHeaderHook runs when a kernel's headers are configured (Debian's linux-headers
	// packages run /etc/kernel/header_postinst.d, as dkms uses it): headers configured after
	// their kernel's image are when a source can be built for it.
	RuntimeHeaderHook = "/etc/kernel/header_postinst.d/50-kmpack"
	RuntimeManPage    = "/usr/share/man/man1/kmpack.1.gz"
	// RuntimeLintianOverrides holds the override of lintian's statically-linked-binary for a
	// static kmpack (CGO_ENABLED=0, as the runtime packages of other architectures require):
	// Go links statically by design, and lintian exempts Go binaries only when it sees the
	// source package's golang build dependency, which a package made by kmpack has none of.
	RuntimeLintianOverrides = "/usr/share/lintian/overrides/kmpack"
	// RuntimeAptHook runs autoinstall once apt's dpkg run has finished, for the module
	// packages a kernel hook found in the repositories but could not install while dpkg ran.
	RuntimeAptHook = "/etc/apt/apt.conf.d/50kmpack-autoinstall"
)

// runtimeAutoinstallUnit catches up at boot on a kernel that arrived without kmpack's hooks
// (installed by an image builder, or while kmpack was absent); with nothing to do it is fast.
// %v is systemd's specifier for the running kernel's release. It orders itself before network
// and graphics, which may need the modules, so it is bounded: a build by --build-timeout, the
// whole unit by TimeoutStartSec (a run killed there is repaired by the next one).
const runtimeAutoinstallUnit = `# Installed by kmpack.
[Unit]
Description=Give registered kernel modules a build for the running kernel (kmpack autoinstall)
Documentation=man:kmpack(1)
After=local-fs.target
Before=network-pre.target graphical.target
ConditionPathIsDirectory=/var/lib/kmpack

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=90min
ExecStart=` + RuntimeBinary + ` autoinstall --hook --build-timeout 30m %v

[Install]
WantedBy=multi-user.target
`

// runtimeAptHook is apt's DPkg::Post-Invoke for autoinstall's step 3 deferred by a kernel
// hook (which runs inside dpkg, whose lock it cannot wait for). It does nothing unless a
// kernel waits for a repository package (target.RepoPendingDir). apt still holds its lock
// while Post-Invoke runs, so kmpack runs detached and its apt-get waits for the lock.
const runtimeAptHook = `// Installed by kmpack: once dpkg has finished, install the kernel module packages a kernel hook
// found in the configured repositories but could not install while dpkg ran (kmpack
// autoinstall, step 3; kmpack status shows them as repo_pending). apt holds its lock until this
// returns: kmpack runs detached and waits for it (for as long as the rest of apt's run takes,
// within --repo-timeout).
DPkg::Post-Invoke { "kmpack=` + RuntimeBinary + `; if [ -d ` + runtimeRepoPending + ` ] && [ -x $kmpack ]; then setsid $kmpack autoinstall --hook --repo-timeout 1h </dev/null >/dev/null 2>&1 & fi; true"; };
`

// runtimeRepoPending is target.RepoPendingDir (formats does not import target).
const runtimeRepoPending = "/var/lib/kmpack/autoinstall/repo-pending"

// runtimeCompletions are where each shell looks for a vendor's completion script.
var runtimeCompletions = map[string]string{
	"bash": "/usr/share/bash-completion/completions/kmpack",
	"zsh":  "/usr/share/zsh/vendor-completions/_kmpack",
	"fish": "/usr/share/fish/vendor_completions.d/kmpack.fish",
}

// debVersion turns kmpack's version into a Debian upstream version: a pre-release suffix
// ("0.1.0-dev") sorts before the release with "~".
func debVersion(v string) string {
	v = strings.TrimPrefix(v, "v")
	return strings.ReplaceAll(v, "-", "~")
}

// RuntimePackage describes the kmpack runtime deb: the binary, the depmod.d file that ranks
// weak-updates between a package's own modules and the kernel's, and the kernel hooks that
// give a kernel installed later its links (and drop them when it goes).
func RuntimePackage(rt *Runtime, in *Input) (*Package, error) {
	if len(rt.Binary) == 0 {
		return nil, fmt.Errorf("runtime package: no kmpack binary")
	}
	p := &Package{
		Profile: "debian", Format: "deb",
		Name: RuntimePackageName, Version: debVersion(rt.Version), Release: "1", Arch: kernel.DebianArch(rt.Arch),
		Summary: "kernel module packages' weak-updates engine (kmpack runtime)",
		License: "NOASSERTION", Maintainer: "kmpack <kmpack@users.noreply.github.com>",
		URL: "https://github.com/kmpack/kmpack", Section: "kernel", MTime: in.MTime, runtime: true,
	}
	p.Description = debDescription(p.Summary, `This package lets kernel module packages built by kmpack serve every
installed kernel of their flavor whose symbol versions their modules match:
the modules are linked into /lib/modules/<release>/weak-updates, a depmod.d
file ranks those links after a kernel's own package builds and before its
built-in modules, and kernel hooks link (and unlink) kernels installed (and
removed) later. For a kernel no installed build serves, the hooks (Debian's
postinst.d, systemd's kernel-install) and a boot-time unit build the module
from a source registered with kmpack source add, or record why not (kmpack
status, kmpack gate). See kmpack weak-updates --help and kmpack autoinstall
--help.`)
	var s scriptlets
	data := map[string]any{"Binary": RuntimeBinary}
	p.Files = []File{
		{Path: RuntimeBinary, Body: rt.Binary, Mode: 0o755},
		{Path: RuntimeDepmodConf, Body: []byte(weakupdates.DepmodConf), Mode: 0o644},
		// The postinst hook keeps its name (a conffile an administrator may have edited) and
		// now runs autoinstall, whose step 2 is what add-kernel did.
		{Path: RuntimePostinstHook, Body: []byte(s.render("runtime-autoinstall-hook", data)), Mode: 0o755, Config: true},
		{Path: RuntimePostrmHook, Body: []byte(s.render("runtime-autoinstall-hook", map[string]any{"Binary": RuntimeBinary, "Removed": true})), Mode: 0o755, Config: true},
		{Path: RuntimeHeaderHook, Body: []byte(s.render("runtime-autoinstall-hook", map[string]any{"Binary": RuntimeBinary, "Headers": true})), Mode: 0o755, Config: true},
		{Path: RuntimeKernelInstall, Body: []byte(s.render("runtime-kernel-install", data)), Mode: 0o755},
		{Path: RuntimeAutoinstallUnit, Body: []byte(runtimeAutoinstallUnit), Mode: 0o644},
		{Path: RuntimeAptHook, Body: []byte(runtimeAptHook), Mode: 0o644, Config: true},
		{Path: RuntimeAutoinstallWants, Kind: Symlink, Target: "../" + path.Base(RuntimeAutoinstallUnit)},
	}
	if len(rt.ManPage) > 0 {
		p.Files = append(p.Files, File{Path: RuntimeManPage, Body: gzipNoName(rt.ManPage), Mode: 0o644})
	}
	if staticELF(rt.Binary) {
		p.Files = append(p.Files, File{Path: RuntimeLintianOverrides, Mode: 0o644,
			Body: []byte(RuntimePackageName + ": statically-linked-binary [" + strings.TrimPrefix(RuntimeBinary, "/") + "]\n")})
	}
	for _, sh := range slices.Sorted(maps.Keys(rt.Completions)) {
		dst, ok := runtimeCompletions[sh]
		if !ok {
			return nil, fmt.Errorf("runtime package: no place for %s completions", sh)
		}
		p.Files = append(p.Files, File{Path: dst, Body: rt.Completions[sh], Mode: 0o644})
	}
	p.Requires = []Relation{Rel("kmod")}
	libc, err := libcRequirement(rt.Binary)
	if err != nil {
		return nil, err
	}
	if libc != nil {
		p.Requires = append(p.Requires, *libc)
	}
	p.Scripts = Scripts{
		PostInstall: s.render("runtime-deb-postinst", data),
		PostRemove:  s.render("runtime-deb-postrm", data),
	}
	if s.err != nil {
		return nil, s.err
	}
	copyright := fmt.Sprintf(`Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kmpack
Source: %s

Files: *
Copyright: %d the kmpack authors
License: NOASSERTION
 kmpack has not chosen its license yet. The binary also holds Go modules
 under their own licenses (BSD-3-Clause, MIT, Apache-2.0); see their sources
 on the Go module proxy.
`, p.URL, in.MTime.Year())
	p.Files = append(p.Files, debDocs(p, in.MTime, copyright)...)
	return p, nil
}

// RuntimeRPMPackage describes the kmpack runtime rpm of profile ("rhel" or "suse"; one rpm
// serves both): the binary, systemd's kernel-install plugin (Fedora's and RHEL's kernel
// packages run kernel-install), and the boot unit, which also catches up where no plugin
// runs (SUSE's kernels). Not the Debian-only files (the /etc/kernel hooks, apt's hook,
// lintian's override, the copyright file), and not the depmod.d file: RHEL and SUSE rank
// weak-updates in their own depmod.d, and their kernel module packages use the
// distribution's weak-modules. No scriptlets: the files need none (the unit is enabled by
// its link, as in the deb), and the -dkms rpm's %post registers its source with kmpack.
func RuntimeRPMPackage(rt *Runtime, in *Input, profile string) (*Package, error) {
	if len(rt.Binary) == 0 {
		return nil, fmt.Errorf("runtime package: no kmpack binary")
	}
	group := "System Environment/Kernel"
	if profile == "suse" {
		group = "System/Kernel"
	}
	p := &Package{
		Profile: profile, Format: "rpm",
		Name: RuntimePackageName, Version: debVersion(rt.Version), Release: "1", Arch: rt.Arch,
		Summary: "Autoinstall engine for kernel module packages (kmpack runtime)",
		License: "NOASSERTION", Maintainer: "kmpack <kmpack@users.noreply.github.com>",
		URL: "https://github.com/kmpack/kmpack", Group: group, MTime: in.MTime, runtime: true,
	}
	p.Description = `This package lets kernel module packages built by kmpack follow the kernels
installed later: systemd's kernel-install plugin and a boot-time unit run
kmpack autoinstall for a new kernel, which installs the matching kernel module
package from the configured dnf or zypper repositories, or builds the module
from a source registered with kmpack source add (the -dkms packages register
theirs), and records what could not be done (kmpack status, kmpack gate). See
kmpack autoinstall --help.`
	var s scriptlets
	p.Files = []File{
		{Path: RuntimeBinary, Body: rt.Binary, Mode: 0o755},
		{Path: RuntimeKernelInstall, Body: []byte(s.render("runtime-kernel-install", map[string]any{"Binary": RuntimeBinary})), Mode: 0o755},
		{Path: RuntimeAutoinstallUnit, Body: []byte(runtimeAutoinstallUnit), Mode: 0o644},
		{Path: RuntimeAutoinstallWants, Kind: Symlink, Target: "../" + path.Base(RuntimeAutoinstallUnit)},
	}
	if s.err != nil {
		return nil, s.err
	}
	if len(rt.ManPage) > 0 {
		p.Files = append(p.Files, File{Path: RuntimeManPage, Body: gzipNoName(rt.ManPage), Mode: 0o644})
	}
	// bash's only: zsh's vendor-completions and fish's vendor_completions.d are Debian's
	// places, which Fedora's and SUSE's shells do not read.
	if c, ok := rt.Completions["bash"]; ok {
		p.Files = append(p.Files, File{Path: runtimeCompletions["bash"], Body: c, Mode: 0o644})
	}
	p.Requires = []Relation{Rel("kmod")}
	libc, err := libcRequirement(rt.Binary)
	if err != nil {
		return nil, err
	}
	if libc != nil {
		// rpm's elfdeps names it by soname and symbol version, marked (64bit) on 64-bit ELF.
		mark := ""
		if f, err := elf.NewFile(bytes.NewReader(rt.Binary)); err == nil && f.Class == elf.ELFCLASS64 {
			mark = "(64bit)"
		}
		name := "libc.so.6()" + mark
		if libc.Version != "" {
			name = "libc.so.6(GLIBC_" + libc.Version + ")" + mark
		}
		p.Requires = append(p.Requires, Rel(name))
	}
	return p, nil
}

// staticELF tells whether an ELF executable is statically linked: no program interpreter, no
// shared library needed.
func staticELF(binary []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		return false
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	libs, _ := f.ImportedLibraries()
	return len(libs) == 0
}

// libcRequirement is the libc6 dependency of a dynamically linked binary (a kmpack built with
// cgo): the newest GLIBC_x.y symbol version it imports, as dpkg-shlibdeps would compute it.
// A static binary needs none.
func libcRequirement(binary []byte) (*Relation, error) {
	f, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		return nil, fmt.Errorf("runtime package: the kmpack binary is not an ELF executable: %v", err)
	}
	libs, _ := f.ImportedLibraries()
	if !slices.Contains(libs, "libc.so.6") {
		return nil, nil
	}
	syms, _ := f.ImportedSymbols()
	newest := ""
	for _, s := range syms {
		if v, ok := strings.CutPrefix(s.Version, "GLIBC_"); ok && kernel.CompareReleases(v, newest) > 0 {
			newest = v
		}
	}
	if newest == "" {
		return &Relation{Name: "libc6"}, nil
	}
	return &Relation{Name: "libc6", Sense: GreatEq, Version: newest}, nil
}

// runtimesFor picks, for every architecture of the kernel packages of profiles in pkgs, the
// runtime built for it, in the order of the architectures' names as arch spells them
// (kernel.DebianArch for the deb; the machine itself for the rpm): a debian module package
// depends on the runtime of its own architecture, and an rpm system gets the runtime of its
// own, so each needs one.
func runtimesFor(pkgs []*Package, rts []*Runtime, profiles []string, arch func(string) string) ([]*Runtime, error) {
	byArch := map[string]*Runtime{}
	for _, rt := range rts {
		a := arch(rt.Arch)
		if _, dup := byArch[a]; dup {
			return nil, fmt.Errorf("runtime package: two kmpack binaries for %s", a)
		}
		byArch[a] = rt
	}
	need := map[string]*Package{} // architecture -> a kernel package of it
	for _, p := range pkgs {
		if slices.Contains(profiles, p.Profile) && p.Kernel != "" && need[p.Arch] == nil {
			need[p.Arch] = p
		}
	}
	var out []*Runtime
	for _, a := range slices.Sorted(maps.Keys(need)) {
		rt, ok := byArch[a]
		if !ok {
			p := need[a]
			return nil, fmt.Errorf("runtime package: the %s package for %s (%s) goes with the kmpack runtime, and no kmpack binary for %s was given", p.Profile, p.Kernel, a, a)
		}
		out = append(out, rt)
	}
	return out, nil
}

// RuntimeMachine reads the architecture (uname -m spelling: x86_64, aarch64, ppc64le) a kmpack
// binary is built for from its ELF header (machine, class, byte order), without running it, and
// refuses one that is no executable or is dynamically linked: kmpack is built with
// CGO_ENABLED=0 for the runtime packages of other architectures, and a binary that needs a
// dynamic loader and libraries may find neither on the target.
func RuntimeMachine(binary []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		return "", fmt.Errorf("not an ELF executable (%v)", err)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return "", fmt.Errorf("not an executable (ELF type %v)", f.Type)
	}
	m := elfMachine(f.FileHeader)
	if m == "" {
		return "", fmt.Errorf("built for %v (%v, %v), an architecture kmpack does not know", f.Machine, f.Class, f.Data)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("dynamically linked (%s): build it with CGO_ENABLED=0", m)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return "", fmt.Errorf("dynamically linked (%s, needs %s): build it with CGO_ENABLED=0", m, strings.Join(libs, ", "))
	}
	return m, nil
}

// elfMachine names an ELF file's machine in uname -m spelling, or "" for one kmpack does not
// build for.
func elfMachine(h elf.FileHeader) string {
	b64, le := h.Class == elf.ELFCLASS64, h.Data == elf.ELFDATA2LSB
	switch {
	case h.Machine == elf.EM_X86_64 && b64 && le:
		return "x86_64"
	case h.Machine == elf.EM_386 && !b64 && le:
		return "i386"
	case h.Machine == elf.EM_AARCH64 && b64 && le:
		return "aarch64"
	case h.Machine == elf.EM_ARM && !b64 && le:
		return "arm"
	case h.Machine == elf.EM_PPC64 && b64 && le:
		return "ppc64le"
	case h.Machine == elf.EM_PPC64 && b64:
		return "ppc64"
	case h.Machine == elf.EM_S390 && b64:
		return "s390x"
	case h.Machine == elf.EM_RISCV && b64 && le:
		return "riscv64"
	case h.Machine == elf.EM_LOONGARCH && b64 && le:
		return "loongarch64"
	}
	return ""
}
