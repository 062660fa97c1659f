package source

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/kmpack/kmpack/kmp/kernel"
)

// BuildPlan is what to do to build one source for one kernel: the commands, the patches, and
// which module files come out and where they install. Every source kind (dkms.conf,
// kmpack.yaml, a bare Kbuild directory) is reduced to this before anything is built.
type BuildPlan struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Commands run one after the other with bash -c in the build directory. A command that
	// starts with a bare `make` gets KERNELRELEASE (and the kernel's compiler) inserted, as dkms does.
	Commands []string `json:"commands"`
	// Patches are paths relative to the source root, applied in order with patch -p1.
	Patches   []string `json:"patches,omitempty"`
	PreBuild  string   `json:"pre_build,omitempty"`
	PostBuild string   `json:"post_build,omitempty"`
	// Modules are the module files the build must produce. AllModules means "every .ko the
	// build produced" (a bare Kbuild directory, or a spec that lists none).
	Modules      []PlannedModule `json:"modules"`
	AllModules   bool            `json:"all_modules,omitempty"`
	AllModulesTo string          `json:"all_modules_to,omitempty"`
	BuildDepends []string        `json:"build_depends,omitempty"`
	// Skip, when set, is why this kernel is not built at all (BUILD_EXCLUSIVE).
	Skip     string   `json:"skip,omitempty"`
	Warnings []string `json:"-"`
	// DKMSHooks: PRE_BUILD/POST_BUILD are dkms scripts (a path in the build directory that must
	// be executable, run without a shell) rather than shell commands.
	DKMSHooks bool `json:"-"`
}

// PlannedModule is one module file a build produces.
type PlannedModule struct {
	// BuiltName is the file name without .ko, BuiltLocation its directory relative to the build root.
	BuiltName     string `json:"built_name"`
	BuiltLocation string `json:"built_location,omitempty"`
	// DestName is the installed file name without .ko; DestLocation the directory under
	// /lib/modules/<release> it installs to, e.g. /updates or /extra/<name>.
	DestName     string `json:"dest_name"`
	DestLocation string `json:"dest_location"`
	Strip        bool   `json:"strip"`
	// Excluded, when set, is why this module is not built for this kernel.
	Excluded string `json:"excluded,omitempty"`
}

// Workspace is where one kernel's build happens. It mirrors dkms's tree so dkms.conf commands
// that name $dkms_tree/$PACKAGE_NAME/$PACKAGE_VERSION/build find their files.
//
// KernelDir, DKMSTree, SourceDir and BuildDir are the paths the build's commands see. In a
// private workspace (NewPrivateWorkspace) they are dkms's own, /lib/modules/<release>/build,
// /var/lib/dkms, /usr/src/<name>-<version> and /var/lib/dkms/<name>/<version>/build, which
// the build engine mounts, per kernel and out of the host's sight, over directories under Root:
// sources that embed their build path (a configure step) or hard-code dkms's paths build as
// under dkms, and identically on every run. HostSourceDir and HostBuildDir are where kmpack
// itself reads and writes the same directories; without private mounts they are the same paths.
type Workspace struct {
	Root      string // everything of this kernel's build lives under here (a host path)
	Private   bool   // the paths below are dkms's, mounted in a private mount namespace
	KernelDir string // the kernel tree as commands see it ($kernel_source_dir); "" is the tree's own path
	DKMSTree  string // Root/dkms, or /var/lib/dkms
	SourceDir string // pristine copy of the source: Root/src/<name>-<version>, or /usr/src/<name>-<version>
	BuildDir  string // DKMSTree/<name>/<version>/build: where commands run

	HostSourceDir, HostBuildDir string
}

// Kernel is the path of tree as the workspace's commands see it.
func (ws *Workspace) Kernel(tree *kernel.KernelTree) string {
	if ws.KernelDir != "" {
		return ws.KernelDir
	}
	return tree.Dir
}

// DKMS's own paths, which a private workspace shows its commands.
const (
	DKMSSourceTree = "/usr/src"
	DKMSTreeDir    = "/var/lib/dkms"
	ModulesDir     = "/lib/modules"
)

// Exclusion is a BUILD_EXCLUSIVE rule: the kernels (regex on the release, minimum and maximum
// release), architectures (regex) and kernel config options (CONFIG_X, !CONFIG_Y) a module
// builds for.
type Exclusion struct {
	Kernel    string   `yaml:"kernel,omitempty" json:"kernel,omitempty"`
	KernelMin string   `yaml:"kernel-min,omitempty" json:"kernel_min,omitempty"`
	KernelMax string   `yaml:"kernel-max,omitempty" json:"kernel_max,omitempty"`
	Arch      string   `yaml:"arch,omitempty" json:"arch,omitempty"`
	Config    []string `yaml:"config,omitempty" json:"config,omitempty"`
}

func (e Exclusion) empty() bool {
	return e.Kernel == "" && e.KernelMin == "" && e.KernelMax == "" && e.Arch == "" && len(e.Config) == 0
}

func (e Exclusion) validate() error {
	for _, re := range []string{e.Kernel, e.Arch} {
		if _, err := regexp.Compile(re); err != nil {
			return fmt.Errorf("%q is not a regular expression: %v", re, err)
		}
	}
	for _, c := range e.Config {
		if !strings.HasPrefix(strings.TrimPrefix(c, "!"), "CONFIG_") {
			return fmt.Errorf("config %q is not CONFIG_<NAME> or !CONFIG_<NAME>", c)
		}
	}
	return nil
}

// check returns why tree is excluded, or "" when the rule lets it build. Releases are compared
// numerically (as sort -V does), not with dkms's VER, which misorders runs of four digits.
func (e Exclusion) check(tree *kernel.KernelTree) string {
	if e.Kernel != "" && !matches(e.Kernel, tree.Release) {
		return fmt.Sprintf("BUILD_EXCLUSIVE_KERNEL %q does not match %s", e.Kernel, tree.Release)
	}
	if e.KernelMin != "" && kernel.CompareReleases(tree.Release, e.KernelMin) < 0 {
		return fmt.Sprintf("kernel %s is older than BUILD_EXCLUSIVE_KERNEL_MIN %s", tree.Release, e.KernelMin)
	}
	if e.KernelMax != "" && kernel.CompareReleases(tree.Release, e.KernelMax) > 0 {
		return fmt.Sprintf("kernel %s is newer than BUILD_EXCLUSIVE_KERNEL_MAX %s", tree.Release, e.KernelMax)
	}
	if e.Arch != "" && !matches(e.Arch, tree.Arch) {
		return fmt.Sprintf("BUILD_EXCLUSIVE_ARCH %q does not match %s", e.Arch, tree.Arch)
	}
	for _, c := range e.Config {
		if name, neg := strings.CutPrefix(c, "!"); neg {
			if tree.Config.Enabled(name) {
				return fmt.Sprintf("BUILD_EXCLUSIVE_CONFIG: %s is set in the kernel config", name)
			}
		} else if !tree.Config.Enabled(c) {
			return fmt.Sprintf("BUILD_EXCLUSIVE_CONFIG: %s is not set in the kernel config", c)
		}
	}
	return ""
}
