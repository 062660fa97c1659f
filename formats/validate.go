package formats

import (
	"fmt"
	"path"
	"regexp"
	"strings"
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
	"archlinux": {
		regexp.MustCompile(`^[a-z0-9@_+][a-z0-9@._+-]*$`),
		regexp.MustCompile(`^[A-Za-z0-9._+~]+$`),
		regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`),
		"Arch versions may not contain - : / or spaces; the release is a number",
	},
}

// Validate refuses a package its format forbids, or that would install files kmpack does not
// own: anything outside the kernel's module directory (or, for a source package, outside
// /usr/src/<name>-<version>), or two entries at one path.
func Validate(p *Package) error {
	rules, ok := formatRules[p.Format]
	if !ok {
		return fmt.Errorf("%s: unknown package format %q", p.Name, p.Format)
	}
	for _, c := range []struct {
		what, value string
		re          *regexp.Regexp
	}{{"name", p.Name, rules.name}, {"version", p.Version, rules.version}, {"release", p.Release, rules.release}} {
		if !c.re.MatchString(c.value) {
			return fmt.Errorf("%s package: %s %q is not valid (%s)", p.Format, c.what, c.value, rules.hint)
		}
	}
	if p.Format == "archlinux" && strings.ContainsAny(p.Version, "-:/") {
		return fmt.Errorf("%s package: version %q is not valid (%s)", p.Format, p.Version, rules.hint)
	}
	roots := allowedRoots(p)
	seen := map[string]bool{}
	modules := 0
	for _, f := range p.Files {
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
		if f.Kind == Symlink && (path.IsAbs(f.Target) || !underAny(path.Join(path.Dir(f.Path), f.Target), roots)) {
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
		return []string{"/usr/bin", path.Dir(RuntimeDepmodConf), "/etc/kernel", doc}
	}
	if p.Kernel == "" {
		return []string{"/usr/src/" + strings.TrimSuffix(p.Name, "-dkms") + "-" + p.Version, doc}
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
