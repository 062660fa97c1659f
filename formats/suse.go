package formats

import (
	"fmt"

	"github.com/kmpack/kmpack/formats/names"
)

// suseProfile writes KMPs the way kernel-source's rpm/kernel-module-subpackage and
// rpm-config-SUSE's find-*.ksyms generators make them on OBS.
type suseProfile struct{}

func (suseProfile) Name() string   { return "suse" }
func (suseProfile) Format() string { return "rpm" }

func suseModuleRoot(opts Options) (string, string) {
	if opts.UsrMerge {
		return "/usr/lib/modules", "1"
	}
	return "/lib/modules", "0"
}

func (suseProfile) KernelPackage(in *Input, k *Kernel, opts Options) (*Package, error) {
	kver, flavor, err := names.SUSEKernel(k.Release)
	if err != nil {
		return nil, err
	}
	md := in.Meta
	name, _ := names.SUSE(md.Name, k.Release)
	kverTag, _ := names.SUSEKernelTag(k.Release)
	root, usrmerged := suseModuleRoot(opts)
	kdir := root + "/" + k.Release
	files, err := moduleFiles(k, kdir+"/updates")
	if err != nil {
		return nil, err
	}
	p := &Package{
		Profile: "suse", Kernel: k.Release,
		Name: name, Version: packageVersion("rpm", md.Version) + "_" + kverTag, Release: md.Release, Arch: k.Arch,
		Summary: md.Summary, Description: md.Description, License: md.License,
		Vendor: md.Vendor, Maintainer: md.Maintainer, URL: md.URL, Group: "System/Kernel",
		Files: files,
	}
	// The template's %files owns the whole <kver>-<flavor> directory tree.
	p.addDirs(ownedDirsBetween(kdir, files)...)

	p.Provides = []Relation{
		RelEq(md.Name+"-kmp", p.Version),
		RelEq(md.Name+"-kmp", packageVersion("rpm", md.Version)),
		Rel("multiversion(kernel)"),
		Rel(p.Name + "-" + kverTag),
	}
	for _, m := range k.Modules {
		p.Provides = append(p.Provides, Rel(kmodName(m.FileName)))
	}
	syms := symbolsOf(k.Modules)
	for _, e := range syms.Exports {
		p.Provides = append(p.Provides, RelEq(fmt.Sprintf("ksym(%s:%s)", flavor, e.Name), suseCRC(e.CRC)))
	}
	p.Requires = []Relation{Rel("coreutils"), Rel("grep"), Rel("suse-kernel-rpm-scriptlets")}
	for _, phase := range []string{"pre", "post", "preun", "postun"} {
		p.Requires = append(p.Requires, Relation{Name: "suse-kernel-rpm-scriptlets", Phases: []string{phase}})
	}
	for _, i := range syms.Imports {
		p.Requires = append(p.Requires, RelEq(fmt.Sprintf("ksym(%s:%s)", flavor, i.Name), suseCRC(i.CRC)))
	}
	p.Enhances = []Relation{Rel("kernel-" + flavor)}
	p.Supplements = []Relation{Rel(fmt.Sprintf("(kernel-%s and %s)", flavor, md.Name))}
	for _, a := range suseModaliases(flavor, k.Modules) {
		p.Supplements = append(p.Supplements, Rel(a))
	}
	p.Conflicts = []Relation{Rel(p.Name + "-" + kverTag)}

	var s scriptlets
	data := func(op string) map[string]any {
		return map[string]any{"Op": op, "Name": p.Name, "Version": p.Version, "Release": p.Release,
			"KernelVersion": kver, "Flavor": flavor, "UsrMerged": usrmerged, "NeedsInitrd": false}
	}
	p.Scripts = Scripts{
		PreInstall:  s.render("suse", data("pre")),
		PostInstall: s.render("suse", data("post")),
		PreRemove:   s.render("suse", data("preun")),
		PostRemove:  s.render("suse", data("postun")),
		PostTrans:   s.render("suse", data("posttrans")),
	}
	return p, s.err
}

func (suseProfile) SourcePackage(in *Input, opts Options) (*Package, error) {
	return rpmSourcePackage("suse", in, "System/Kernel")
}
