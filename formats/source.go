package formats

import (
	"fmt"
	"path"
	"strings"
)

// sourcePackage is the part of a <name>-dkms package every format shares: the source under
// /usr/src/<name>-<version>/ with the dkms.conf that builds it.
func sourcePackage(profile string, in *Input) (*Package, error) {
	md := in.Meta
	if in.Source.DKMSConf == nil {
		return nil, fmt.Errorf("no dkms.conf for the source")
	}
	root := "/usr/src/" + md.Name + "-" + md.Version
	format := profiles[profile].Format()
	p := &Package{
		Profile: profile, Name: packageName(format, md.Name+"-dkms"), Version: packageVersion(format, md.Version), Release: md.Release,
		sourceRoot: root,
		Summary:    md.Summary + " (DKMS source)", License: md.License,
		Vendor: md.Vendor, Maintainer: md.Maintainer, URL: md.URL,
		Description: md.Description + "\n\nThe module source for DKMS, which builds it for kernels that have no prebuilt package.",
	}
	dirs := []string{root}
	for _, f := range in.Source.Files {
		if f.Path == "dkms.conf" {
			continue
		}
		dst := path.Join(root, f.Path)
		if !strings.HasPrefix(dst, root+"/") {
			return nil, fmt.Errorf("source file %q leaves the source directory", f.Path)
		}
		if f.Link {
			p.Files = append(p.Files, File{Path: dst, Kind: Symlink, Target: f.Target})
		} else {
			p.Files = append(p.Files, File{Path: dst, Body: f.Body, Mode: f.Mode & 0o755})
		}
		for d := path.Dir(dst); d != root; d = path.Dir(d) {
			dirs = append(dirs, d)
		}
	}
	p.Files = append(p.Files, File{Path: root + "/dkms.conf", Body: in.Source.DKMSConf, Mode: 0o644})
	p.addDirs(dirs...)
	return p, nil
}

// rpmSourcePackage is the rpm <name>-dkms: the source plus scriptlets that add, build and
// install it with dkms, as DKMS's own RPM template does.
func rpmSourcePackage(profile string, in *Input, group string) (*Package, error) {
	p, err := sourcePackage(profile, in)
	if err != nil {
		return nil, err
	}
	p.Arch, p.Group = "noarch", group
	// dkms, or kmpack's runtime, whose source registration the %post prefers (as the deb's
	// "dkms | kmpack (>= ...)"): a rich dependency (rpm 4.13+; RHEL 8, SLE 15), also for the
	// scriptlets, which need one of them installed before they run.
	either := fmt.Sprintf("(dkms or %s >= %s)", RuntimePackageName, RuntimeMinVersion)
	p.Requires = []Relation{Rel(either), {Name: either, Phases: []string{"post"}}, {Name: either, Phases: []string{"preun"}}}
	var s scriptlets
	data := map[string]any{"Name": in.Meta.Name, "Version": in.Meta.Version}
	p.Scripts = Scripts{PostInstall: s.render("dkms-rpm-post", data), PreRemove: s.render("dkms-rpm-preun", data)}
	return p, s.err
}
