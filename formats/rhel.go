package formats

import (
	"fmt"
	"strings"

	"github.com/kmpack/kmpack/formats/names"
)

// rhelProfile writes kmod packages the way Red Hat's kmodtool (kernel-srpm-macros) and the
// find-*.ksyms generators make them.
type rhelProfile struct{}

func (rhelProfile) Name() string   { return "rhel" }
func (rhelProfile) Format() string { return "rpm" }

// rhelStateDir is where kmpack kmods mark kernels whose initramfs %posttrans must rebuild.
const rhelStateDir = "/var/lib/rpm-state/kmpack-initramfs"

func (rhelProfile) KernelPackage(in *Input, k *Kernel, opts Options) (*Package, error) {
	if k.Symvers == nil {
		return nil, fmt.Errorf("the rhel profile needs kernel %s's Module.symvers to tell kernel() from ksym() requirements", k.Release)
	}
	md := in.Meta
	kdir := "/lib/modules/" + k.Release
	moddir := kdir + "/extra/" + md.Name
	files, err := moduleFiles(k, moddir)
	if err != nil {
		return nil, err
	}
	// kmodtool builds for one kernel; kmpack may build for several, so the release carries the
	// kernel (as vendors' multi-kernel kmods do) and every kernel's package has its own NEVRA.
	ktag := names.RHELKernelTag(k.Release, k.Arch)
	p := &Package{
		Profile: "rhel", Kernel: k.Release,
		Name: names.RHEL(md.Name), Version: packageVersion("rpm", md.Version), Release: md.Release + "." + ktag, Arch: k.Arch,
		Summary: md.Summary, Description: md.Description, License: md.License,
		Vendor: md.Vendor, Maintainer: md.Maintainer, URL: md.URL, Group: "System Environment/Kernel",
		Files: files,
	}
	// kmodtool's %files is the whole /lib/modules/<verrel> tree with %defattr(644,root,root,755).
	p.addDirs(ownedDirsBetween(kdir, files)...)

	p.Provides = []Relation{
		{Name: "kernel-modules", Sense: GreatEq, Version: k.Release},
		RelEq(md.Name+"-kmod", p.Version+"-"+p.Release),
	}
	for _, m := range k.Modules {
		p.Provides = append(p.Provides, Rel(kmodName(m.FileName)))
		if !strings.HasSuffix(m.FileName, ".ko") {
			p.Provides = append(p.Provides, Rel("kmod("+m.FileName+")"))
		}
	}
	syms := symbolsOf(k.Modules)
	for _, e := range syms.Exports {
		p.Provides = append(p.Provides, RelEq("ksym("+e.Name+")", rhelCRC(e.CRC)))
	}
	for _, tool := range []string{"/usr/sbin/depmod", "/usr/sbin/weak-modules"} {
		p.Requires = append(p.Requires,
			Relation{Name: tool, Phases: []string{"post"}},
			Relation{Name: tool, Phases: []string{"postun"}})
	}
	// find-requires.ksyms joins on symbol and CRC: a symbol the kernel has with another CRC
	// becomes a ksym() requirement that only a module package could satisfy.
	for _, i := range syms.Imports {
		kind := "ksym"
		if s, ok := k.Symvers.Lookup(i.Name); ok && s.CRC == i.CRC {
			kind = "kernel"
		}
		p.Requires = append(p.Requires, RelEq(kind+"("+i.Name+")", rhelCRC(i.CRC)))
	}

	var s scriptlets
	data := map[string]any{"Name": p.Name, "Version": p.Version, "Release": p.Release, "Arch": p.Arch,
		"Kernel": k.Release, "ModuleDir": moddir, "StateDir": rhelStateDir}
	p.Scripts = Scripts{
		PostInstall: s.render("rhel-post", data),
		PreRemove:   s.render("rhel-preun", data),
		PostRemove:  s.render("rhel-postun", data),
		PostTrans:   s.render("rhel-posttrans", data),
	}
	return p, s.err
}

func (rhelProfile) SourcePackage(in *Input, opts Options) (*Package, error) {
	return rpmSourcePackage("rhel", in, "System Environment/Kernel")
}
