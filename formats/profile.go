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

	"github.com/kmpack/kmpack/kmp/kernel"
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
	for _, p := range []Profile{suseProfile{}, rhelProfile{}, debianProfile{}, alpineProfile{}, archProfile{}, kmmProfile{}} {
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
		served := opts.Served
		if served == "" {
			served = ServedDefault(name)
		}
		var kernelPkgs []*Package
		for i := range in.Kernels {
			if in.Kernels[i].ServedBy != "" && served != ServedPackage {
				continue // the build's own package reaches this kernel through weak-updates
			}
			p, err := prof.KernelPackage(in, &in.Kernels[i], opts)
			if err != nil {
				return nil, fmt.Errorf("%s package for %s: %w", name, in.Kernels[i].Release, err)
			}
			kernelPkgs = append(kernelPkgs, p)
		}
		out = append(out, kernelPkgs...)
		cert, err := addCertPackage(prof, in, kernelPkgs)
		if err != nil {
			return nil, err
		}
		if cert != nil {
			out = append(out, cert)
		}
		if rp, ok := prof.(resourceProfile); ok {
			p, err := rp.ResourcePackage(in, kernelPkgs, opts)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if p != nil {
				out = append(out, p)
			}
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
	if len(opts.Runtimes) > 0 && slices.Contains(profileNames, "debian") {
		rts, err := runtimesFor(out, opts.Runtimes, []string{"debian"}, kernel.DebianArch)
		if err != nil {
			return nil, err
		}
		for _, rt := range rts {
			p, err := RuntimePackage(rt, in)
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	// One runtime rpm per architecture serves rhel and suse alike (it is named by the first).
	if rpmProfile := runtimeRPMProfile(profileNames); len(opts.Runtimes) > 0 && rpmProfile != "" {
		rts, err := runtimesFor(out, opts.Runtimes, []string{"rhel", "suse"}, func(m string) string { return m })
		if err != nil {
			return nil, err
		}
		for _, rt := range rts {
			p, err := RuntimeRPMPackage(rt, in, rpmProfile)
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	names := map[string]string{}
	kept := out[:0]
	for _, p := range out {
		p.Format = profiles[p.Profile].Format()
		p.MTime = in.MTime
		p.signing = opts.Signing
		p.cache = opts.Cache
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
	case "deb", "oci":
		// An image repository is lower case too; "_" is allowed there, "-" is what the
		// other formats make of it.
		return strings.ReplaceAll(strings.ToLower(name), "_", "-")
	case "apk", "archlinux":
		return strings.ToLower(name)
	}
	return name
}

// packageVersion maps a source's version as dkms accepts it to format: rpm and Arch versions may
// not contain "-" (it separates the release), so 0.3.0-1 becomes 0.3.0_1; a Debian upstream
// version may contain "-" (the package always has a revision), so Debian takes it as it is; apk
// versions are mapped by apkVersion.
func packageVersion(format, v string) string {
	switch format {
	case "rpm", "archlinux":
		return strings.ReplaceAll(v, "-", "_")
	case "apk":
		return apkVersion(v)
	}
	return v
}

// apkSuffixes are the suffix words of apk's version grammar (apk-tools' version.c): alpha,
// beta, pre and rc sort before the version they follow, the others after it.
var apkSuffixes = []string{"alpha", "beta", "pre", "rc", "cvs", "svn", "git", "hg", "p"}

// apkLeading is the part of a version apk takes as it is: digits and dots, then at most one
// letter (taken only when no other letter follows it, see apkVersion).
var apkLeading = regexp.MustCompile(`^[0-9]+(\.[0-9]+)*`)

// apkHash is a git commit hash: hex digits, at least one a-f, seven or more.
var apkHash = regexp.MustCompile(`^[0-9a-f]*[a-f][0-9a-f]*$`)

// apkVersion writes a version as Alpine packagers write one in an APKBUILD's pkgver, which apk
// only accepts as digit{.digit}...{letter}{_suffix{number}}...: lower-cased, the leading
// digits and dots and an optional single letter are kept, and every further token (split on
// - + ~ . _ and between letters and digits) becomes a suffix. A suffix word keeps the digits
// that follow it (1.0~rc1 → 1.0_rc1, which apk sorts before 1.0 as dpkg sorts 1.0~rc1;
// 1.0.beta → 1.0_beta); a number becomes _p<number> (0.3.0-1 → 0.3.0_p1, which apk sorts after
// 0.3.0 as dpkg, rpm and sort -V sort 0.3.0-1; apk refuses 0.3.0_1); a git commit hash (hex
// with a letter, 7 or more) is dropped, as aports keep it in _commit= rather than in pkgver
// (0.0.1+git20190320.5ae3a3e-3.2 → 0.0.1_git20190320_p3_p2). A version this cannot map (one not
// starting with a digit, a word that is no apk suffix, two separators in a row) is returned
// as it is, for Validate to refuse with its message naming the version.
func apkVersion(v string) string {
	lv := strings.ToLower(v)
	out := apkLeading.FindString(lv)
	if out == "" {
		return v
	}
	rest := lv[len(out):]
	if rest != "" && isLower(rest[0]) && (len(rest) == 1 || !isLower(rest[1])) {
		out, rest = out+rest[:1], rest[1:]
	}
	if rest == "" {
		return out
	}
	if strings.IndexByte("-+~._", rest[0]) >= 0 {
		rest = rest[1:]
	}
	var b strings.Builder
	b.WriteString(out)
	for _, field := range splitAny(rest, "-+~._") {
		if field == "" {
			return v
		}
		if len(field) >= 7 && apkHash.MatchString(field) {
			continue
		}
		runs := letterDigitRuns(field)
		for i := 0; i < len(runs); i++ {
			switch {
			case !isLower(runs[i][0]):
				b.WriteString("_p" + runs[i])
			case slices.Contains(apkSuffixes, runs[i]):
				b.WriteString("_" + runs[i])
				if i+1 < len(runs) {
					i++
					b.WriteString(runs[i])
				}
			default:
				return v
			}
		}
	}
	if !formatRules["apk"].version.MatchString(b.String()) {
		return v
	}
	return b.String()
}

func isLower(c byte) bool { return c >= 'a' && c <= 'z' }

// splitAny splits s at every byte of seps, keeping empty fields.
func splitAny(s, seps string) []string {
	var fields []string
	start := 0
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(seps, s[i]) >= 0 {
			fields, start = append(fields, s[start:i]), i+1
		}
	}
	return append(fields, s[start:])
}

// letterDigitRuns splits s, lower-case letters and digits only, into its runs of letters and
// of digits ("git20190320" → "git", "20190320").
func letterDigitRuns(s string) []string {
	var runs []string
	for i := 0; i < len(s); {
		j := i + 1
		for j < len(s) && isLower(s[j]) == isLower(s[i]) {
			j++
		}
		runs = append(runs, s[i:j])
		i = j
	}
	return runs
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

// runtimeRPMProfile is the profile the runtime rpm is written for: rhel when it is among
// profiles, else suse when that is, else none.
func runtimeRPMProfile(profiles []string) string {
	for _, p := range []string{"rhel", "suse"} {
		if slices.Contains(profiles, p) {
			return p
		}
	}
	return ""
}

// WantsRuntime tells whether packaging for profiles writes kmpack runtime packages (a deb for
// debian, an rpm for rhel and suse) when given the binaries.
func WantsRuntime(profiles []string) bool {
	return slices.Contains(profiles, "debian") || runtimeRPMProfile(profiles) != ""
}
