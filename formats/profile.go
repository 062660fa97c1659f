package formats

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"strings"
	"text/template"

	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/templates"
)

// Profile is one distribution family's conventions: package names, where modules install,
// dependencies and scriptlets.
type Profile interface {
	Name() string
	// Format is the package format the profile emits.
	Format() string
	// KernelPackage describes the package of one kernel's modules.
	KernelPackage(in *Input, k *Kernel, opts Options) (*Package, error)
	// SourcePackage describes the <name>-dkms source fallback, or returns nil when the
	// distribution has no dkms.
	SourcePackage(in *Input, opts Options) (*Package, error)
}

var profiles = map[string]Profile{}

// RegisterProfile makes a profile available by name.
func RegisterProfile(p Profile) { profiles[p.Name()] = p }

// ProfileFor returns a registered profile.
func ProfileFor(name string) (Profile, error) {
	p, ok := profiles[name]
	if !ok {
		return nil, fmt.Errorf("unknown packaging profile %q (known: %s)", name, strings.Join(Profiles(), ", "))
	}
	return p, nil
}

// Profiles lists the registered profiles.
func Profiles() []string { return slices.Sorted(maps.Keys(profiles)) }

// DefaultProfile is the profile a format implies when none is named: rpm has two families
// and no default.
func DefaultProfile(format string) (string, error) {
	for _, n := range Profiles() {
		if profiles[n].Format() == format && format != "rpm" {
			return n, nil
		}
	}
	if format == "rpm" {
		return "", fmt.Errorf("format rpm needs a profile: suse or rhel")
	}
	return "", fmt.Errorf("unknown package format %q (known: %s)", format, strings.Join(Formats(), ", "))
}

func init() {
	for _, p := range []Profile{suseProfile{}, rhelProfile{}, debianProfile{}, alpineProfile{}, archProfile{}} {
		RegisterProfile(p)
	}
}

// InvalidError is a package the metadata or the modules make impossible: a name or version the
// format forbids, two modules on one path, a file outside the package's directories.
type InvalidError struct{ Err error }

func (e *InvalidError) Error() string { return e.Err.Error() }
func (e *InvalidError) Unwrap() error { return e.Err }

// IsInvalid reports whether err is an *InvalidError.
func IsInvalid(err error) bool {
	var ie *InvalidError
	return errors.As(err, &ie)
}

// Describe describes every package the profiles make from in: one per kernel, plus the
// source fallback of each profile that has one. Every package is validated; nothing is written.
func Describe(in *Input, profileNames []string, opts Options) ([]*Package, error) {
	pkgs, err := describe(in, profileNames, opts)
	if err != nil {
		return nil, &InvalidError{err}
	}
	return pkgs, nil
}

func describe(in *Input, profileNames []string, opts Options) ([]*Package, error) {
	var out []*Package
	for _, name := range profileNames {
		prof, err := ProfileFor(name)
		if err != nil {
			return nil, err
		}
		for i := range in.Kernels {
			p, err := prof.KernelPackage(in, &in.Kernels[i], opts)
			if err != nil {
				return nil, fmt.Errorf("%s package for %s: %w", name, in.Kernels[i].Release, err)
			}
			out = append(out, p)
		}
		if !opts.NoSource && in.Source != nil {
			p, err := prof.SourcePackage(in, opts)
			if err != nil {
				return nil, fmt.Errorf("%s source package: %w", name, err)
			}
			if p != nil {
				out = append(out, p)
			}
		}
	}
	if opts.Runtime != nil && slices.Contains(profileNames, "debian") {
		p, err := RuntimePackage(opts.Runtime, in)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	names := map[string]string{}
	kept := out[:0]
	for _, p := range out {
		p.Format = profiles[p.Profile].Format()
		p.MTime = in.MTime
		if synopsis, long, ok := strings.Cut(p.Description, "\n"); ok && p.Format == "deb" {
			p.Description = synopsis + "\n" + fill(long, 79)
		} else {
			p.Description = fill(p.Description, 79)
		}
		p.sortFiles()
		if err := Validate(p); err != nil {
			return nil, err
		}
		e, err := EmitterFor(p.Format)
		if err != nil {
			return nil, err
		}
		p.FileName = e.FileName(p)
		if other, dup := names[p.FileName]; dup {
			if p.Kernel == "" {
				continue // suse and rhel share one rpm <name>-dkms
			}
			return nil, fmt.Errorf("%s: two packages would be written as %s (%s)", p.Name, p.FileName, other)
		}
		names[p.FileName] = p.String()
		kept = append(kept, p)
	}
	return kept, nil
}

// packageName maps a source's name (or a kernel release) to a package name of format: Debian
// allows neither upper case nor "_" (dh_dkms users name tp_smapi's package tp-smapi-dkms), apk
// and Arch no upper case; rpm takes it as it is. Module file names and /usr/src/<name>-<version>
// keep the source's own name.
func packageName(format, name string) string {
	switch format {
	case "deb":
		return strings.ReplaceAll(strings.ToLower(name), "_", "-")
	case "apk", "archlinux":
		return strings.ToLower(name)
	}
	return name
}

// packageVersion maps a source's version as dkms accepts it to format: rpm and Arch versions may
// not contain "-" (it separates the release), so 0.3.0-1 becomes 0.3.0_1; a Debian upstream
// version may contain "-" (the package always has a revision), and apk's grammar has no mapping
// that keeps the order, so both take it as it is (apk then refuses it, naming the version).
func packageVersion(format, v string) string {
	switch format {
	case "rpm", "archlinux":
		return strings.ReplaceAll(v, "-", "_")
	}
	return v
}

// perKernelPackage is the <name>-modules-<release> package the debian, alpine and arch
// profiles make: the kernel's modules in moddir (owned), the metadata, the format's arch.
func perKernelPackage(profile string, in *Input, k *Kernel, moddir, arch string) (*Package, error) {
	md := in.Meta
	files, err := moduleFiles(k, moddir)
	if err != nil {
		return nil, err
	}
	format := profiles[profile].Format()
	p := &Package{
		Profile: profile, Kernel: k.Release,
		Name: packageName(format, md.Name+"-modules-"+k.Release), Version: packageVersion(format, md.Version), Release: md.Release,
		Arch: arch, Summary: md.Summary, Description: md.Summary, License: md.License,
		Vendor: md.Vendor, Maintainer: md.Maintainer, URL: md.URL, Files: files,
	}
	p.addDirs(moddir)
	return p, nil
}

// moduleFiles places a kernel's modules under dir, refusing two that would land on one path.
func moduleFiles(k *Kernel, dir string) ([]File, error) {
	var out []File
	seen := map[string]string{}
	for _, m := range k.Modules {
		p := path.Join(dir, m.FileName)
		// depmod knows modules by name, so foo.ko and foo.ko.xz clash as much as two foo.ko.
		key := path.Join(dir, module.ModuleNameFromPath(m.FileName)+".ko")
		if prev, dup := seen[key]; dup {
			return nil, fmt.Errorf("modules %s and %s both install to %s", prev, m.FileName, key)
		}
		seen[key] = m.FileName
		out = append(out, File{Path: p, Body: m.Body, Mode: 0o644})
	}
	return out, nil
}

// scriptTemplates are the scriptlet templates. Values are validated where they enter kmpack, and
// the templates still quote every one (defense in depth): sh makes a value one shell word, word
// and comment refuse (fail rendering for) what they cannot write safely.
var scriptTemplates = template.Must(template.New("scriptlets").Funcs(template.FuncMap{
	"sh":      shellWord,
	"word":    bareWord,
	"comment": commentText,
}).ParseFS(templates.Scriptlets, "scriptlets/*.tmpl"))

// safeWord is what a shell word may hold unquoted: no glob, expansion, quote, separator or
// whitespace characters.
var safeWord = regexp.MustCompile(`^[A-Za-z0-9._+~^:,@%/=-]+$`)

// shellWord quotes v as one POSIX shell word: in double quotes when nothing in it is special
// there (the form SUSE's and kmodtool's templates use), else in single quotes (a quote inside
// closes them, is escaped, and reopens them).
func shellWord(v string) string {
	if safeWord.MatchString(v) {
		return `"` + v + `"`
	}
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}

// bareWord returns v for a place that cannot be quoted (part of a command name), or fails.
func bareWord(v string) (string, error) {
	if !safeWord.MatchString(v) {
		return "", fmt.Errorf("%q cannot be written unquoted in a shell script", v)
	}
	return v, nil
}

// commentText returns v for a shell comment, or fails when v would end the comment.
func commentText(v string) (string, error) {
	if strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f || r == 0x85 || r == 0x2028 || r == 0x2029 }) {
		return "", fmt.Errorf("%q cannot be written in a shell comment", v)
	}
	return v, nil
}

// scriptlets renders scriptlet templates, keeping the first error so that a profile can
// render all of a package's scripts and check once.
type scriptlets struct{ err error }

func (s *scriptlets) render(name string, data any) string {
	var b bytes.Buffer
	if err := scriptTemplates.ExecuteTemplate(&b, name, data); err != nil && s.err == nil {
		s.err = fmt.Errorf("scriptlet template %s: %w", name, err)
	}
	return b.String()
}
