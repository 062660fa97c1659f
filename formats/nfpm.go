package formats

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/apk"
	_ "github.com/goreleaser/nfpm/v2/arch"
	_ "github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

// nfpmEmitter writes deb, apk and archlinux packages through nfpm, which wants file bodies and
// scriptlets as paths: they are staged in a temporary directory with the package's mtime.
type nfpmEmitter struct{ format string }

func (e nfpmEmitter) Format() string { return e.format }

func (e nfpmEmitter) FileName(p *Package) string {
	switch e.format {
	case "deb":
		return fmt.Sprintf("%s_%s-%s_%s.deb", p.Name, p.Version, p.Release, p.Arch)
	case "apk":
		return fmt.Sprintf("%s-%s-r%s.%s.apk", p.Name, p.Version, p.Release, p.Arch)
	default:
		return fmt.Sprintf("%s-%s-%s-%s.pkg.tar.zst", p.Name, p.Version, p.Release, p.Arch)
	}
}

func (e nfpmEmitter) Write(p *Package, w io.Writer) error {
	if err := checkMetadata(p, e.format); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "kmpack-nfpm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	stage := func(name string, body []byte, mode os.FileMode) (string, error) {
		f := filepath.Join(tmp, name)
		if err := os.WriteFile(f, body, mode); err != nil {
			return "", err
		}
		// apk records the scriptlet files' own mtimes: pin them for reproducible packages.
		return f, os.Chtimes(f, p.MTime, p.MTime)
	}

	info := &nfpm.Info{
		Name: p.Name, Arch: p.Arch, Platform: "linux",
		Version: p.Version, Release: p.Release, VersionSchema: "none",
		Section: p.Section, Priority: "optional",
		Maintainer: p.Maintainer, Description: p.Description, Vendor: p.Vendor,
		Homepage: p.URL, License: p.License, MTime: p.MTime,
		DisableGlobbing: true,
	}
	info.Deb.Arch, info.APK.Arch, info.ArchLinux.Arch = p.Arch, p.Arch, p.Arch
	info.ArchLinux.Packager = p.Maintainer
	info.Deb.Compression = "xz"
	if p.runtime {
		// xz (pure Go in nfpm) takes ~15 s over a 25 MB binary; gzip is fast and every dpkg reads it.
		info.Deb.Compression = "gzip"
	}
	info.Umask = 0o022
	info.Provides = e.relations(p.Provides)
	info.Depends = e.relations(p.Requires)
	info.Conflicts = e.relations(p.Conflicts)
	info.Replaces = e.relations(p.Obsoletes)
	info.Recommends = e.relations(p.Recommends)
	if len(p.Enhances) > 0 && e.format == "deb" {
		info.Deb.Fields = map[string]string{"Enhances": strings.Join(e.relations(p.Enhances), ", ")}
	}

	for i, f := range p.Files {
		c := &files.Content{Destination: f.Path, FileInfo: &files.ContentFileInfo{
			Owner: "root", Group: "root", Mode: os.FileMode(f.Mode), MTime: p.MTime}}
		switch f.Kind {
		case Directory:
			c.Type = files.TypeDir
		case Symlink:
			c.Type = files.TypeSymlink
			c.Source = f.Target
			// With a size and mode given nfpm does not stat Source, which for a symlink is the
			// target: relative to kmpack's working directory, so a target that happens to exist
			// there (".", "..") made the entry a directory.
			c.FileInfo.Mode = os.ModeSymlink | 0o777
			c.FileInfo.Size = int64(len(f.Target))
		default:
			if c.Source, err = stage(fmt.Sprintf("file-%d", i), f.Body, os.FileMode(f.Mode)); err != nil {
				return err
			}
			if f.Config {
				c.Type = files.TypeConfig
			}
		}
		info.Contents = append(info.Contents, c)
	}
	for _, s := range []struct {
		text string
		dst  *string
	}{
		{p.Scripts.PreInstall, &info.Scripts.PreInstall},
		{p.Scripts.PostInstall, &info.Scripts.PostInstall},
		{p.Scripts.PreRemove, &info.Scripts.PreRemove},
		{p.Scripts.PostRemove, &info.Scripts.PostRemove},
	} {
		if s.text == "" {
			continue
		}
		if *s.dst, err = stage(fmt.Sprintf("script-%p", s.dst), []byte(s.text), 0o755); err != nil {
			return err
		}
	}
	if p.Scripts.PostTrans != "" {
		return fmt.Errorf("%s: %s packages have no post-transaction scriptlet", p.Name, e.format)
	}

	if e.format == "apk" && p.signing != nil && p.signing.APK != nil {
		info.APK.Signature.SignFn = p.signing.APK.sign
		info.APK.Signature.KeyName = p.signing.APK.Name
	}
	packager, err := nfpm.Get(e.format)
	if err != nil {
		return err
	}
	if err := packager.Package(info, w); err != nil {
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	return nil
}

// relations spells dependencies the way each format's control data does.
func (e nfpmEmitter) relations(rs []Relation) []string {
	var out []string
	for _, r := range rs {
		out = append(out, e.relation(r))
	}
	return out
}

func (e nfpmEmitter) relation(r Relation) string {
	if r.Sense == Any {
		return r.Name
	}
	op := string(r.Sense)
	switch e.format {
	case "deb":
		switch r.Sense {
		case Less:
			op = "<<"
		case Greater:
			op = ">>"
		}
		return fmt.Sprintf("%s (%s %s)", r.Name, op, r.Version)
	default: // apk and archlinux: name<op>version, no spaces
		return r.Name + op + r.Version
	}
}
