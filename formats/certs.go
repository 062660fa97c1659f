package formats

import (
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/manifest"
)

// Cert is a module signing certificate the packages ship to the machines that must trust the
// modules, with the scriptlets that queue its enrollment in shim's MOK list.
type Cert struct {
	// DER is the certificate; KeyID its serial as modinfo's sig_key prints it.
	DER   []byte
	KeyID string
}

// ShortID is the first 8 hex digits (upper case, as openssl prints a fingerprint) of the
// certificate's SHA-1 fingerprint: the name SUSE's kernel-source gives a KMP's certificate
// (/etc/uefi/certs/<ShortID>.crt), and kmpack's for the other profiles too.
func (c Cert) ShortID() string {
	sum := sha1.Sum(c.DER)
	return strings.ToUpper(hex.EncodeToString(sum[:4]))
}

// CertsFromBuild reads the certificates a build wrote (manifest certificates, OUT/certs/) that
// sign at least one of its built modules.
func CertsFromBuild(outDir string, m *manifest.Manifest) ([]Cert, error) {
	used := map[string]bool{}
	for _, k := range m.Kernels {
		if k.Status != manifest.StatusBuilt {
			continue
		}
		for _, bm := range k.Modules {
			if bm.Signature != nil {
				for _, s := range bm.Signature.Signers {
					used[s.KeyID] = true
				}
			}
		}
	}
	if len(used) == 0 {
		return nil, nil
	}
	root, err := os.OpenRoot(outDir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	var out []Cert
	found := map[string]bool{}
	for _, c := range m.Certificates {
		if !used[c.KeyID] {
			continue
		}
		p := filepath.Join(outDir, filepath.FromSlash(c.File))
		der, err := manifest.ReadOutputFile(root, c.File, p)
		if err != nil {
			return nil, err
		}
		if _, err := x509.ParseCertificate(der); err != nil {
			return nil, kmp.InputErrorf(p, "not a DER certificate: %v", err)
		}
		out = append(out, Cert{DER: der, KeyID: c.KeyID})
		found[c.KeyID] = true
	}
	for id := range used {
		if !found[id] {
			return nil, kmp.InputErrorf(filepath.Join(outDir, "manifest.json"),
				"modules are signed by key %s, whose certificate the build did not record (an output of an older kmpack? build again)", id)
		}
	}
	return out, nil
}

// certProfile is a profile with a convention for shipping module signing certificates.
type certProfile interface {
	// CertPackage describes the package of in.Certs; RequireCert is the relation a module
	// package adds on it.
	CertPackage(in *Input) (*Package, error)
	RequireCert(cert *Package) Relation
}

// kernelSigned reports whether any of a kernel's modules carries a signature.
func kernelSigned(k *Kernel) bool {
	for _, m := range k.Modules {
		if m.Info != nil && m.Info.Signature != nil {
			return true
		}
	}
	return false
}

// certPackage is what the three profiles' certificate packages share: one file per
// certificate in dir, named by name(cert), and the directories owned.
func certPackage(profile string, in *Input, name, arch, dir string, fileName func(Cert) string, owned ...string) *Package {
	md := in.Meta
	format := profiles[profile].Format()
	p := &Package{
		Profile: profile, Name: name, Version: packageVersion(format, md.Version), Release: md.Release, Arch: arch,
		Summary: "UEFI Secure Boot certificate for " + md.Name + "'s kernel modules", License: md.License,
		Vendor: md.Vendor, Maintainer: md.Maintainer, URL: md.URL, certDir: dir,
		Description: "This package contains the UEFI Secure Boot certificate used to sign the kernel modules in " +
			md.Name + "'s packages, and queues its enrollment in shim's MOK list (mokutil --import), which is " +
			"confirmed at the next boot in MokManager.",
	}
	for _, c := range in.Certs {
		p.Files = append(p.Files, File{Path: path.Join(dir, fileName(c)), Body: c.DER, Mode: 0o644})
	}
	p.addDirs(owned...)
	return p
}

// certData is what the certificate scriptlets interpolate: the package, the certificates' paths
// and (suse) their short ids.
func certData(p *Package, op string) map[string]any {
	var paths, ids []string
	for _, f := range p.Files {
		if f.Kind == RegularFile && path.Dir(f.Path) == p.certDir {
			paths = append(paths, f.Path)
			ids = append(ids, strings.TrimSuffix(path.Base(f.Path), path.Ext(f.Path)))
		}
	}
	return map[string]any{"Op": op, "Package": p.Name, "Certs": paths, "CertIDs": ids,
		"CertIDList": strings.Join(ids, " "), "CertDir": p.certDir}
}

// SUSE: kernel-source's kernel-cert-subpackage. <name>-ueficert owns /etc/uefi/certs/<id>.crt
// (DER); its scriptlets hand over to suse-module-tools' kernel-scriptlets/cert-<op>.
const suseCertDir = "/etc/uefi/certs"

func (suseProfile) CertPackage(in *Input) (*Package, error) {
	p := certPackage("suse", in, in.Meta.Name+"-ueficert", "noarch", suseCertDir,
		func(c Cert) string { return c.ShortID() + ".crt" }, "/etc/uefi", suseCertDir)
	p.Summary = "UEFI Secure Boot Certificate For Package " + in.Meta.Name + "-kmp"
	p.Group = "System/Kernel"
	var s scriptlets
	p.Scripts = Scripts{
		PostInstall: s.render("suse-ueficert", certData(p, "post")),
		PreRemove:   s.render("suse-ueficert", certData(p, "preun")),
		PostRemove:  s.render("suse-ueficert", certData(p, "postun")),
	}
	return p, s.err
}

// The KMP requires its ueficert package by name, as kernel-source's template does.
func (suseProfile) RequireCert(cert *Package) Relation { return Rel(cert.Name) }

// RHEL/Fedora: akmods keeps module signing certificates in /etc/pki/akmods/certs (its own key
// as public_key.der); vendors that ship prebuilt signed kmods put theirs beside it under their
// own name (ublue-os's akmods-ublue.der), named <name>-<id>.der here.
const rhelCertDir = "/etc/pki/akmods/certs"

func (rhelProfile) CertPackage(in *Input) (*Package, error) {
	p := certPackage("rhel", in, in.Meta.Name+"-kmod-cert", "noarch", rhelCertDir,
		func(c Cert) string { return in.Meta.Name + "-" + strings.ToLower(c.ShortID()) + ".der" }, "/etc/pki/akmods", rhelCertDir)
	p.Group = "System Environment/Kernel"
	var s scriptlets
	p.Scripts = Scripts{PostInstall: s.render("rhel-cert-post", certData(p, "post"))}
	return p, s.err
}

func (rhelProfile) RequireCert(cert *Package) Relation {
	return RelEq(cert.Name, cert.Version+"-"+cert.Release)
}

// Debian has no place for packaged module certificates (dkms keeps its own key in /var/lib/dkms,
// shim-signed's tools theirs in /var/lib/shim-signed/mok): the package keeps them in its
// /usr/share directory.
func (debianProfile) CertPackage(in *Input) (*Package, error) {
	name := packageName("deb", in.Meta.Name+"-modules-cert")
	dir := "/usr/share/" + name
	p := certPackage("debian", in, name, "all", dir, func(c Cert) string { return strings.ToLower(c.ShortID()) + ".der" }, dir)
	p.Section = "kernel"
	p.Description = debDescription(p.Summary, p.Description)
	p.Files = append(p.Files, debDocs(p, in.MTime, moduleCopyright(p, in.MTime))...)
	var s scriptlets
	p.Scripts = Scripts{PostInstall: s.render("debian-cert-postinst", certData(p, "configure"))}
	return p, s.err
}

func (debianProfile) RequireCert(cert *Package) Relation {
	return RelEq(cert.Name, cert.Version+"-"+cert.Release)
}

// addCertPackage describes prof's certificate package when in has certificates, and makes
// every package of signed modules among kernelPkgs require it.
func addCertPackage(prof Profile, in *Input, kernelPkgs []*Package) (*Package, error) {
	cp, ok := prof.(certProfile)
	if !ok || len(in.Certs) == 0 {
		return nil, nil
	}
	p, err := cp.CertPackage(in)
	if err != nil {
		return nil, fmt.Errorf("%s certificate package: %w", prof.Name(), err)
	}
	for i, kp := range kernelPkgs {
		if kernelSigned(&in.Kernels[i]) && !slices.ContainsFunc(kp.Requires, func(r Relation) bool { return r.Name == p.Name }) {
			kp.Requires = append(kp.Requires, cp.RequireCert(p))
		}
	}
	return p, nil
}
