package formats

import (
	"regexp"
)

// alpineProfile writes apk packages as Alpine's own out-of-tree module packages are laid
// out: modules under /lib/modules/<release>/extra/, tied to the kernel package of the flavor.
type alpineProfile struct{}

func (alpineProfile) Name() string   { return "alpine" }
func (alpineProfile) Format() string { return "apk" }

func apkArch(arch string) string {
	switch arch {
	case "i386":
		return "x86"
	case "arm":
		return "armv7"
	}
	return arch
}

// alpineRelease is Alpine's kernel release: <pkgver>-<pkgrel>-<flavor> (6.6.31-0-lts).
var alpineRelease = regexp.MustCompile(`^([0-9][0-9.]*)-([0-9]+)-([a-z0-9]+)$`)

func (alpineProfile) KernelPackage(in *Input, k *Kernel, opts Options) (*Package, error) {
	p, err := perKernelPackage("alpine", in, k, "/lib/modules/"+k.Release+"/extra/"+in.Meta.Name, apkArch(k.Arch))
	if err != nil {
		return nil, err
	}
	// The kernel package of the flavor at exactly the version the modules were built for.
	if m := alpineRelease.FindStringSubmatch(k.Release); m != nil {
		p.Requires = []Relation{RelEq("linux-"+m[3], m[1]+"-r"+m[2])}
	}
	var s scriptlets
	depmod := s.render("alpine-depmod", map[string]any{"Kernel": k.Release})
	p.Scripts = Scripts{PostInstall: depmod, PostRemove: depmod}
	return p, s.err
}

// SourcePackage returns nil: Alpine has no dkms (it has akms, with its own AKMBUILD format).
func (alpineProfile) SourcePackage(in *Input, opts Options) (*Package, error) { return nil, nil }
