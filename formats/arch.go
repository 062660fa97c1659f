package formats

import (
	"strings"
)

// archProfile writes Arch Linux packages following the kernel module package guidelines:
// modules under /usr/lib/modules/<release>/updates/, a dependency on the kernel package, and
// no scriptlets, because kmod's and dkms's alpm hooks run depmod and dkms on these paths.
type archProfile struct{}

func (archProfile) Name() string   { return "arch" }
func (archProfile) Format() string { return "archlinux" }

// archKernelPackage names the package of a kernel release: linux for 6.6.1-arch1-1, linux-lts
// for 6.6.1-1-lts, linux-zen for 6.6.1-zen1-1-zen.
func archKernelPackage(krel string) string {
	for _, v := range []string{"lts", "zen", "hardened", "rt", "rt-lts"} {
		if strings.HasSuffix(krel, "-"+v) {
			return "linux-" + v
		}
	}
	return "linux"
}

func (archProfile) KernelPackage(in *Input, k *Kernel, opts Options) (*Package, error) {
	p, err := perKernelPackage("arch", in, k, "/usr/lib/modules/"+k.Release+"/updates/"+in.Meta.Name, k.Arch)
	if err != nil {
		return nil, err
	}
	p.Requires = []Relation{Rel(archKernelPackage(k.Release))}
	return p, nil
}

func (archProfile) SourcePackage(in *Input, opts Options) (*Package, error) {
	p, err := sourcePackage("arch", in)
	if err != nil {
		return nil, err
	}
	p.Arch, p.Description = "any", in.Meta.Summary+" (DKMS source)"
	p.Requires = []Relation{Rel("dkms")}
	return p, nil
}
