package formats

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"strings"
	"time"

	"github.com/kmpack/kmpack/kmp/kernel"
)

// debianProfile writes one deb per kernel release, the way Debian's own prebuilt module
// packages (and Ubuntu's linux-modules-*) are split: the package name carries the release.
type debianProfile struct{}

func (debianProfile) Name() string   { return "debian" }
func (debianProfile) Format() string { return "deb" }

func (debianProfile) KernelPackage(in *Input, k *Kernel, opts Options) (*Package, error) {
	md := in.Meta
	p, err := perKernelPackage("debian", in, k, "/lib/modules/"+k.Release+"/updates/"+md.Name, kernel.DebianArch(k.Arch))
	if err != nil {
		return nil, err
	}
	p.Section = "kernel"
	p.Description = debDescription(fmt.Sprintf("%s (kernel %s)", md.Summary, k.Release),
		md.Description+"\n\nThis package holds the modules built for Linux "+k.Release+".")
	p.Files = append(p.Files, debDocs(p, in.MTime, moduleCopyright(p, in.MTime))...)
	// Debian's signed image, its -unsigned twin, and Ubuntu's linux-image-unsigned-<release>.
	p.Requires = []Relation{Rel(fmt.Sprintf("linux-image-%[1]s | linux-image-%[1]s-unsigned | linux-image-unsigned-%[1]s", k.Release))}
	// The runtime carries the weak-updates engine the maintainer scripts call.
	p.Requires = append(p.Requires, Relation{Name: RuntimePackageName, Sense: GreatEq, Version: RuntimeMinVersion})
	p.Provides = []Relation{Rel(packageName("deb", md.Name+"-modules"))}

	var s scriptlets
	data := map[string]any{"Kernel": k.Release, "Name": md.Name, "Package": p.Name,
		"Version": p.Version + "-" + p.Release, "Runtime": RuntimeBinary}
	p.Scripts = Scripts{
		PostInstall: s.render("debian-postinst", data),
		PostRemove:  s.render("debian-postrm", data),
	}
	return p, s.err
}

func (debianProfile) SourcePackage(in *Input, opts Options) (*Package, error) {
	md := in.Meta
	p, err := sourcePackage("debian", in)
	if err != nil {
		return nil, err
	}
	p.Arch, p.Section = "all", "kernel"
	p.Description = debDescription(md.Summary+" (DKMS source)",
		md.Description+"\n\nThis package provides the source for DKMS, which builds the modules for kernels that have no prebuilt package.")
	p.Files = append(p.Files, debDocs(p, in.MTime, moduleCopyright(p, in.MTime))...)
	// dkms, or kmpack's runtime, whose source registration the postinst prefers: apt installs
	// the first alternative when neither is there, so a machine without kmpack keeps dkms.
	p.Requires = []Relation{Rel(fmt.Sprintf("dkms | %s (>= %s)", RuntimePackageName, RuntimeMinVersion))}
	var s scriptlets
	data := map[string]any{"Name": md.Name, "Version": md.Version}
	p.Scripts = Scripts{
		PostInstall: s.render("dkms-deb-postinst", data),
		PreRemove:   s.render("dkms-deb-prerm", data),
	}
	return p, s.err
}

// debDescription is a synopsis line and an extended description, which Debian wants as two
// parts (nfpm writes the first line as the synopsis).
func debDescription(synopsis, long string) string {
	return synopsis + "\n" + strings.TrimSpace(long)
}

// moduleCopyright is the machine-readable copyright file of a package of modules (or their
// source): the license the source declares.
func moduleCopyright(p *Package, mtime time.Time) string {
	return fmt.Sprintf(`Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: %s
Source: %s

Files: *
Copyright: %d %s
License: %s
 The modules in this package are distributed under the license their
 source declares (MODULE_LICENSE): %s.
 On Debian systems, the GPL 2 is in /usr/share/common-licenses/GPL-2.
`, p.Name, orDefault(p.URL, "not given"), mtime.Year(), orDefault(p.Vendor, p.Name), p.License, p.License)
}

// debDocs are the copyright file and changelog every Debian binary package carries
// (policy 12.5, 12.7), the changelog generated from the metadata and compressed reproducibly.
func debDocs(p *Package, mtime time.Time, copyright string) []File {
	doc := "/usr/share/doc/" + p.Name
	changelog := fmt.Sprintf("%s (%s-%s) unstable; urgency=medium\n\n  * Built by kmpack.\n\n -- %s  %s\n",
		p.Name, p.Version, p.Release, p.Maintainer, mtime.UTC().Format(time.RFC1123Z))
	p.addDirs(doc)
	return []File{
		{Path: doc + "/copyright", Body: []byte(copyright), Mode: 0o644},
		{Path: doc + "/changelog.Debian.gz", Body: gzipNoName([]byte(changelog)), Mode: 0o644},
	}
}

// gzipNoName compresses like gzip -9n: no file name and a fixed time, so the bytes depend on
// the content alone.
func gzipNoName(b []byte) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.ModTime = time.Unix(0, 0)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
