package weakupdates

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"path"
	"strings"

	debversion "github.com/knqyf263/go-deb-version"
	rpmversion "github.com/knqyf263/go-rpm-version"

	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/module"
)

// Package formats a registration can come from; each orders versions its own way.
const (
	FormatDeb = "deb"
	FormatRPM = "rpm"
)

// MaxRegistrationSize bounds a registration file (a few hundred bytes in practice).
const MaxRegistrationSize = 1 << 20

// MaxModulesPerKMP bounds the modules one registration may list.
const MaxModulesPerKMP = 4096

// KMP is a module package as the engine knows it: registered by its maintainer scripts
// (add-kmp) so the engine never parses a package manager's database.
type KMP struct {
	// Name is the software's name (kmpack.yaml name), shared by its packages for every kernel.
	Name string `json:"name"`
	// Package is the distro package that installed the modules; Version its version, in the
	// syntax (and order) of Format.
	Package string `json:"package"`
	Version string `json:"version"`
	// Format is the package format ("deb" or "rpm"); registrations written before the field
	// existed came from Debian packages and read as "deb".
	Format string `json:"format,omitempty"`
	// Kernel is the release the modules were built for; Modules their paths from the root,
	// each under /lib/modules/<Kernel>/ (outside kernel/ and weak-updates/).
	Kernel  string   `json:"kernel"`
	Modules []string `json:"modules"`
}

// format is k's package format with the pre-field default.
func (k *KMP) format() string {
	if k.Format == "" {
		return FormatDeb
	}
	return k.Format
}

// Validate checks every identifier of a registration (ident's rules; the version by its
// package format's own syntax) and that each module path is a clean path under
// /lib/modules/<Kernel>/ made of plain components: once valid, a KMP's fields can be joined
// into paths under the root. The error is one line.
func (k *KMP) Validate() error {
	if err := ident.PackageName(k.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if err := ident.PackageName(k.Package); err != nil {
		return fmt.Errorf("package: %w", err)
	}
	if err := ident.KernelRelease(k.Kernel); err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	if err := validVersion(k.format(), k.Version); err != nil {
		return fmt.Errorf("version: %w", err)
	}
	if len(k.Modules) == 0 {
		return fmt.Errorf("modules: none")
	}
	if len(k.Modules) > MaxModulesPerKMP {
		return fmt.Errorf("modules: more than %d", MaxModulesPerKMP)
	}
	seen := map[string]bool{}
	for _, m := range k.Modules {
		if err := validModulePath(k.Kernel, m); err != nil {
			return fmt.Errorf("module %q: %v", m, err)
		}
		l := linkPath(k, m)
		if seen[l] {
			return fmt.Errorf("module %q: listed twice", m)
		}
		seen[l] = true
	}
	return nil
}

func validVersion(format, v string) error {
	// An epoch ("1:") is part of both formats' versions; the rest follows ident's rules (the
	// version never names a file, but it is printed, so it stays a plain word).
	rest := v
	if i := strings.IndexByte(v, ':'); i >= 0 {
		epoch := v[:i]
		if epoch == "" || len(epoch) > 9 || strings.Trim(epoch, "0123456789") != "" {
			return &ident.Error{Kind: "version", Value: v, Why: "epoch is not a number"}
		}
		rest = v[i+1:]
	}
	if err := ident.Version(rest); err != nil {
		return err
	}
	switch format {
	case FormatDeb:
		if _, err := debversion.NewVersion(v); err != nil {
			return &ident.Error{Kind: "deb version", Value: v, Why: err.Error()}
		}
	case FormatRPM:
		// rpm accepts any version string; ident's rules above are the check.
	default:
		return fmt.Errorf("unknown package format %q (want %s or %s)", format, FormatDeb, FormatRPM)
	}
	return nil
}

func validModulePath(release, m string) error {
	prefix := "/lib/modules/" + release + "/"
	if !strings.HasPrefix(m, prefix) || path.Clean(m) != m {
		return fmt.Errorf("not a clean path under %s", prefix)
	}
	parts := strings.Split(strings.TrimPrefix(m, prefix), "/")
	if len(parts) < 2 {
		return fmt.Errorf("not in a directory under %s", prefix)
	}
	if parts[0] == "kernel" || parts[0] == "weak-updates" {
		return fmt.Errorf("in %s%s/, which kmpack does not manage", prefix, parts[0])
	}
	for _, p := range parts {
		if err := ident.PathComponent(p); err != nil {
			return err
		}
	}
	if !module.IsModuleFileName(parts[len(parts)-1]) {
		return fmt.Errorf("not a kernel module file name")
	}
	return nil
}

// linkPath is where k's module m is linked in another kernel's weak-updates, relative to
// that directory: its path under /lib/modules/<Kernel>/ with a leading updates/ dropped
// (updates/foo/a.ko -> foo/a.ko, extra/a.ko -> extra/a.ko).
func linkPath(k *KMP, m string) string {
	rel := strings.TrimPrefix(m, "/lib/modules/"+k.Kernel+"/")
	return strings.TrimPrefix(rel, "updates/")
}

// ParseRegistration parses and validates a registration file's contents. file names it in
// errors; its base name must be the package's name with ".json". The error is one line.
func ParseRegistration(file string, data []byte) (KMP, error) {
	var k KMP
	if len(data) > MaxRegistrationSize {
		return k, fmt.Errorf("%s: larger than %d bytes", file, MaxRegistrationSize)
	}
	// Unknown fields are ignored: a registration written by a newer kmpack still counts after
	// a downgrade.
	d := json.NewDecoder(bytes.NewReader(data))
	if err := d.Decode(&k); err != nil {
		return KMP{}, fmt.Errorf("%s: not a registration: %s", file, oneLine(err.Error()))
	}
	if d.More() {
		return KMP{}, fmt.Errorf("%s: not a registration: data after the JSON object", file)
	}
	if err := k.Validate(); err != nil {
		return KMP{}, fmt.Errorf("%s: %s", file, oneLine(err.Error()))
	}
	if base := path.Base(file); base != k.Package+".json" {
		return KMP{}, fmt.Errorf("%s: registers package %s, not %s", file, k.Package, strings.TrimSuffix(base, ".json"))
	}
	return k, nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// compareVersions orders two versions of one format the way its package manager does (dpkg's
// and rpm's own algorithms, from knqyf263's libraries).
func compareVersions(format, a, b string) int {
	if format == FormatRPM {
		va, vb := rpmversion.NewVersion(a), rpmversion.NewVersion(b)
		return cmp.Compare(va.Compare(vb), 0)
	}
	va, errA := debversion.NewVersion(a)
	vb, errB := debversion.NewVersion(b)
	if errA != nil || errB != nil { // validated registrations never get here
		return strings.Compare(a, b)
	}
	return cmp.Compare(va.Compare(vb), 0) // the library's result is a difference, not a sign
}

// newer orders a KMP's builds: higher version first (in the package format's order), then the
// newer kernel it was built for, then the package name, so the order is total.
func newer(a, b KMP) bool {
	if c := compareVersions(a.format(), a.Version, b.Version); c != 0 {
		return c > 0
	}
	if c := kernel.CompareReleases(a.Kernel, b.Kernel); c != 0 {
		return c > 0
	}
	return a.Package < b.Package
}
