package formats

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/kmpack/kmpack/kmp/source"
)

// What each format allows in names and versions (rpm's rpmbuild checks, Debian policy 5.6.1
// and 5.6.12, apk's version grammar, makepkg's lint_pkgname/pkgver/pkgrel).
var formatRules = map[string]struct {
	name, version, release *regexp.Regexp
	hint                   string
}{
	"rpm": {
		regexp.MustCompile(`^[A-Za-z0-9_+][A-Za-z0-9._+-]*$`),
		regexp.MustCompile(`^[A-Za-z0-9._+~^]+$`),
		regexp.MustCompile(`^[A-Za-z0-9._+~^]+$`),
		"rpm versions and releases may not contain - or spaces",
	},
	"deb": {
		regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`),
		regexp.MustCompile(`^[0-9][A-Za-z0-9.+~-]*$`),
		regexp.MustCompile(`^[A-Za-z0-9+.~]+$`),
		"Debian package names are lower case; versions start with a digit",
	},
	"apk": {
		regexp.MustCompile(`^[a-z0-9][a-z0-9._+-]*$`),
		regexp.MustCompile(`^[0-9]+(\.[0-9]+)*[a-z]?(_(alpha|beta|pre|rc|cvs|svn|git|hg|p)[0-9]*)*$`),
		regexp.MustCompile(`^[0-9]+$`),
		"apk versions are digits and dots with an optional letter and _rc/_p-style suffixes; the release is a number",
	},
	"oci": { // kmpack's own rules: the name is an image repository's, all go into file names
		regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$`),
		regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]*$`),
		regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]*$`),
		"kmod image names are lower-case image repository names; versions letters, digits and . _ + ~ -",
	},
	"archlinux": {
		regexp.MustCompile(`^[a-z0-9@_+][a-z0-9@._+-]*$`),
		regexp.MustCompile(`^[A-Za-z0-9._+~]+$`),
		regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`),
		"Arch versions may not contain - : / or spaces; the release is a number",
	},
}

// archRE is what every format allows as an architecture (x86_64, amd64, noarch, all, any).
var archRE = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

// Validate refuses a package its format forbids, or that would install files kmpack does not
// own: anything outside the kernel's module directory (or, for a source package, outside
// /usr/src/<name>-<version>), or two entries at one path. It is the last gate before any bytes
// are written: every metadata field is checked for every format (see checkMetadata), whatever
// built the Package.
func Validate(p *Package) error {
	if _, ok := formatRules[p.Format]; !ok {
		return fmt.Errorf("%s: unknown package format %q", p.Name, p.Format)
	}
	if err := checkMetadata(p, p.Format); err != nil {
		return err
	}
	roots := allowedRoots(p)
	seen := map[string]bool{}
	modules := 0
	for _, f := range p.Files {
		if err := source.CheckText("file path", f.Path, 4096, false); err != nil {
			return fmt.Errorf("%s: %v", p.Name, err)
		}
		if err := source.CheckText("symlink target", f.Target, 4096, false); err != nil {
			return fmt.Errorf("%s: %v", p.Name, err)
		}
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return fmt.Errorf("%s: file path %q is not absolute and clean", p.Name, f.Path)
		}
		if seen[f.Path] {
			return fmt.Errorf("%s: two entries install to %s", p.Name, f.Path)
		}
		seen[f.Path] = true
		if f.Kind == Directory {
			continue
		}
		if !underAny(f.Path, roots) {
			return fmt.Errorf("%s: %s is outside %s, where this package may install files", p.Name, f.Path, strings.Join(roots, " and "))
		}
		if strings.Contains(f.Path, ".ko") {
			modules++
		}
		if t := path.Join(path.Dir(f.Path), f.Target); f.Kind == Symlink && (path.IsAbs(f.Target) || !slices.Contains(roots, t) && !underAny(t, roots)) {
			return fmt.Errorf("%s: symlink %s -> %s leaves the package's directories", p.Name, f.Path, f.Target)
		}
	}
	if p.Kernel != "" && modules == 0 {
		return fmt.Errorf("%s: no modules to package for %s", p.Name, p.Kernel)
	}
	return nil
}

func allowedRoots(p *Package) []string {
	doc := "/usr/share/doc/" + p.Name
	if p.runtime {
		return []string{"/usr/bin", path.Dir(RuntimeDepmodConf), "/etc/kernel", path.Dir(RuntimeAptHook), path.Dir(RuntimeKernelInstall), "/usr/lib/systemd/system",
			doc, "/usr/share/man/man1", "/usr/share/bash-completion/completions", "/usr/share/zsh/vendor-completions", "/usr/share/fish/vendor_completions.d", path.Dir(RuntimeLintianOverrides)}
	}
	if p.certDir != "" {
		return []string{p.certDir, doc}
	}
	if p.Kernel == "" {
		root := p.sourceRoot
		if root == "" {
			root = "/usr/src/" + strings.TrimSuffix(p.Name, "-dkms") + "-" + p.Version
		}
		return []string{root, doc}
	}
	if p.Format == "oci" {
		return []string{kmmModuleDir(p.Kernel)}
	}
	return []string{"/lib/modules/" + p.Kernel, "/usr/lib/modules/" + p.Kernel, doc}
}

func underAny(p string, roots []string) bool {
	for _, r := range roots {
		if strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
}

// checkMetadata checks what a format writes into its control data (deb control file, rpm
// header, .PKGINFO): name, version and release by the format's rules, the architecture, every
// free-text field (single line except the description; no control characters; bounded, as
// kmpack.yaml's) and every relation. A line break in the maintainer would otherwise be a new
// control field in a deb. The emitters call it too, so a Package built in Go without Validate
// cannot inject either.
func checkMetadata(p *Package, format string) error {
	rules, ok := formatRules[format]
	if !ok {
		return fmt.Errorf("%s: unknown package format %q", p.Name, format)
	}
	name := p.Name
	if err := source.CheckText("name", p.Name, 256, false); err != nil {
		name = strconv.QuoteToASCII(p.Name)
	}
	for _, c := range []struct {
		what, value string
		re          *regexp.Regexp
	}{{"name", p.Name, rules.name}, {"version", p.Version, rules.version}, {"release", p.Release, rules.release}} {
		if !c.re.MatchString(c.value) {
			return fmt.Errorf("%s package: %s %s is not valid (%s)", format, c.what, strconv.QuoteToASCII(c.value), rules.hint)
		}
	}
	if format == "archlinux" && strings.ContainsAny(p.Version, "-:/") {
		return fmt.Errorf("%s package: version %q is not valid (%s)", format, p.Version, rules.hint)
	}
	if !archRE.MatchString(p.Arch) {
		return fmt.Errorf("%s: architecture %s is not valid", name, strconv.QuoteToASCII(p.Arch))
	}
	for _, f := range []struct {
		field, value string
		max          int
		multiline    bool
	}{
		{"summary", p.Summary, source.MaxSummary + 64, false}, // profiles add " (DKMS source)"
		{"maintainer", p.Maintainer, source.MaxMaintainer, false},
		{"vendor", p.Vendor, source.MaxVendor, false},
		{"license", p.License, source.MaxLicense, false},
		{"url", p.URL, source.MaxURL, false},
		{"group", p.Group, 200, false},
		{"section", p.Section, 200, false},
		{"description", p.Description, source.MaxDescription + 1024, true},
	} {
		if err := source.CheckText(f.field, f.value, f.max, f.multiline); err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
	}
	for _, rels := range [][]Relation{p.Provides, p.Requires, p.Conflicts, p.Obsoletes, p.Recommends, p.Supplements, p.Enhances} {
		for _, r := range rels {
			if err := source.CheckText("relation", r.Name, 4096, false); err != nil {
				return fmt.Errorf("%s: %v", name, err)
			}
			if err := source.CheckText("relation version", r.Version, 256, false); err != nil {
				return fmt.Errorf("%s: %v", name, err)
			}
			// A comma separates relations in a deb field; a space or parenthesis in a version
			// would end the version clause.
			if r.Name == "" || strings.ContainsAny(r.Version, " ()") || (format == "deb" && strings.Contains(r.Name, ",")) {
				return fmt.Errorf("%s: relation %s is not valid", name, strconv.QuoteToASCII(r.String()))
			}
		}
	}
	return nil
}
