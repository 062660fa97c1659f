package repo

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	debversion "github.com/knqyf263/go-deb-version"
	rpmversion "github.com/knqyf263/go-rpm-version"

	"github.com/kmpack/kmpack/kmp/ident"
)

// Package is one file to download: a path relative to its repository's base, with the
// repository's checksum and size.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
	Path    string `json:"path"`
	URL     string `json:"url,omitempty"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
}

// Kernel is a kernel a repository offers headers for, with the devel packages it needs.
type Kernel struct {
	Release  string    `json:"release"` // uname -r
	Flavor   string    `json:"flavor"`
	Format   string    `json:"format"` // deb or rpm
	Layout   string    `json:"layout"` // debian, suse, rhel
	Version  string    `json:"version"`
	Arch     string    `json:"arch"`
	Packages []Package `json:"packages"`
	Size     int64     `json:"size"`
	// abi orders kernels within a flavor (the version of the main devel package).
	abi string
}

// Skipped is a candidate kernel that a repository lacks dependencies for.
type Skipped struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

func debVersionLess(a, b string) bool {
	va, errA := debversion.NewVersion(a)
	vb, errB := debversion.NewVersion(b)
	if errA != nil || errB != nil {
		return a < b
	}
	return va.LessThan(vb)
}

func rpmVersionLess(a, b string) bool {
	return rpmversion.NewVersion(a).LessThan(rpmversion.NewVersion(b))
}

func debPkg(p DebPackage) Package {
	return Package{Name: p.Package, Version: p.Version, Arch: p.Architecture, Path: p.Filename, SHA256: p.SHA256, Size: p.Size}
}

// DebianKernels finds the kernels a Debian/Ubuntu index offers: each linux-headers-<release>
// that depends on a linux-headers-<abi>-common[-featureset] package (Ubuntu: linux-headers-<abi>)
// where <release> is <abi>-<flavor>, with that package (the version it pins) and the newest linux-kbuild-* that satisfies its dependency. arch limits the
// result to one architecture ("" for all). The linux-kbuild-* is this host's architecture's (or
// all) whatever the headers' architecture: its programs (fixdep, modpost) run on the build host,
// and Debian makes it Multi-Arch: foreign for that, so an arm64 tree takes the amd64 one here.
func DebianKernels(pkgs []DebPackage, arch string) ([]Kernel, []Skipped) {
	byName := map[string][]DebPackage{}
	for _, p := range pkgs {
		byName[p.Package] = append(byName[p.Package], p)
	}
	// The newest version of each name, and every version for exact pins.
	newest := func(name string, ok func(DebPackage) bool) (DebPackage, bool) {
		var best DebPackage
		found := false
		for _, p := range byName[name] {
			if ok != nil && !ok(p) {
				continue
			}
			if !found || debVersionLess(best.Version, p.Version) {
				best, found = p, true
			}
		}
		return best, found
	}
	var out []Kernel
	var skipped []Skipped
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if !strings.HasPrefix(name, "linux-headers-") {
			continue
		}
		for _, h := range byName[name] {
			if arch != "" && h.Architecture != arch {
				continue
			}
			if h.Architecture == "all" {
				continue
			}
			release := strings.TrimPrefix(name, "linux-headers-")
			var common *Dependency
			var kbuild *Dependency
			var abi string
			for i, d := range h.Depends {
				switch {
				case strings.HasPrefix(d.Name, "linux-headers-") && d.Name != name:
					// Debian: linux-headers-<abi>-common[-<featureset>]; Ubuntu: linux-headers-<abi>
					// (arch all). Metas (linux-headers-amd64 -> linux-headers-6.1.0-57-amd64)
					// depend on a package whose ABI is not a prefix of their own name.
					a, _, _ := strings.Cut(strings.TrimPrefix(d.Name, "linux-headers-"), "-common")
					if strings.HasPrefix(release, a+"-") && common == nil {
						common, abi = &h.Depends[i], a
					}
				case strings.HasPrefix(d.Name, "linux-kbuild-"):
					kbuild = &h.Depends[i]
				}
			}
			if common == nil {
				continue // a meta package (linux-headers-amd64) or not a kernel headers package
			}
			if ident.KernelRelease(release) != nil || ident.Flavor(strings.TrimPrefix(release, abi+"-")) != nil {
				skipped = append(skipped, Skipped{name, fmt.Sprintf("release %q is not a valid kernel release and flavor", truncate(release, 80))})
				continue
			}
			k := Kernel{Release: release, Flavor: strings.TrimPrefix(release, abi+"-"), Format: "deb", Layout: "debian",
				Version: h.Version, Arch: h.Architecture, abi: h.Version}
			k.Packages = append(k.Packages, debPkg(h))
			c, ok := newest(common.Name, func(p DebPackage) bool { return satisfiesDeb(p.Version, *common) })
			if !ok {
				skipped = append(skipped, Skipped{name + " " + h.Version, "the repository has no " + common.Name + " " + describeDep(*common)})
				continue
			}
			k.Packages = append(k.Packages, debPkg(c))
			if kbuild != nil {
				kb, ok := newest(kbuild.Name, func(p DebPackage) bool {
					return satisfiesDeb(p.Version, *kbuild) && (p.Architecture == debArch() || p.Architecture == "all")
				})
				if !ok {
					skipped = append(skipped, Skipped{name + " " + h.Version, "the repository has no " + kbuild.Name + " " + describeDep(*kbuild) + " for this host's architecture (" + debArch() + ")"})
					continue
				}
				k.Packages = append(k.Packages, debPkg(kb))
			}
			for _, p := range k.Packages {
				k.Size += p.Size
			}
			out = append(out, k)
		}
	}
	return dedupe(out), skipped
}

func describeDep(d Dependency) string {
	if d.Op == "" {
		return ""
	}
	return "(" + d.Op + " " + d.Version + ")"
}

func satisfiesDeb(v string, d Dependency) bool {
	if d.Op == "" {
		return true
	}
	less, greater := debVersionLess(v, d.Version), debVersionLess(d.Version, v)
	switch d.Op {
	case "=":
		return !less && !greater
	case ">=":
		return !less
	case "<=":
		return !greater
	case ">>", ">":
		return greater
	case "<<", "<":
		return less
	}
	return false
}

// dedupe keeps, for a release listed more than once (several versions of one headers package),
// the newest.
func dedupe(ks []Kernel) []Kernel {
	best := map[string]int{}
	var out []Kernel
	for _, k := range ks {
		key := k.Release + "\x00" + k.Arch
		if i, ok := best[key]; ok {
			if k.less(out[i]) {
				continue
			}
			out[i] = k
			continue
		}
		best[key] = len(out)
		out = append(out, k)
	}
	return out
}

func (k Kernel) less(o Kernel) bool {
	if k.Format == "rpm" {
		return rpmVersionLess(k.abi, o.abi)
	}
	return debVersionLess(k.abi, o.abi)
}

var (
	suseDevel = regexp.MustCompile(`^kernel-([a-z0-9_]+)-devel$`)
	rhelDevel = regexp.MustCompile(`^kernel(-[a-z0-9_]+)?-devel$`)
)

func rpmPkg(p RPMPackage) Package {
	return Package{Name: p.Name, Version: p.EVR(), Arch: p.Arch, Path: p.Href, SHA256: p.SHA256, Size: p.Size}
}

// RPMKernels finds the kernels an rpm-md primary index offers. RHEL/Fedora layout: a
// kernel[-<flavor>]-devel that provides kernel-devel-uname-r (the release); it is the whole tree.
// SUSE layout: kernel-<flavor>-devel (arch) with the noarch kernel-devel of the same version (and
// kernel-macros when the repository has it); the release is <version>-<release>-<flavor> less
// the last component of the rpm release (SUSE's rebuild counter).
func RPMKernels(pkgs []RPMPackage, arch string) ([]Kernel, []Skipped) {
	byNameEVR := map[string]RPMPackage{}
	for _, p := range pkgs {
		byNameEVR[p.Name+"\x00"+p.EVR()] = p
	}
	var out []Kernel
	var skipped []Skipped
	for _, p := range pkgs {
		if p.Arch == "noarch" || p.Arch == "src" || arch != "" && p.Arch != arch {
			continue
		}
		if !rhelDevel.MatchString(p.Name) {
			continue
		}
		var uname string
		for _, e := range p.Provides {
			if e.Name == "kernel-devel-uname-r" && e.Ver != "" {
				uname = e.Ver
				if e.Rel != "" {
					uname += "-" + e.Rel
				}
			}
		}
		k := Kernel{Format: "rpm", Version: p.EVR(), Arch: p.Arch, abi: p.EVR()}
		switch {
		case uname != "":
			k.Layout, k.Release, k.Flavor = "rhel", uname, "default"
			if m := rhelDevel.FindStringSubmatch(p.Name); m[1] != "" {
				k.Flavor = m[1][1:]
			}
			k.Packages = []Package{rpmPkg(p)}
		case suseDevel.MatchString(p.Name):
			k.Layout, k.Flavor = "suse", suseDevel.FindStringSubmatch(p.Name)[1]
			rel := p.Release
			if i := strings.LastIndexByte(rel, '.'); i > 0 && strings.Count(rel, ".") >= 2 {
				rel = rel[:i] // 150600.23.25.1 -> 150600.23.25 (uname -r has no rebuild counter)
			}
			k.Release = p.Version + "-" + rel + "-" + k.Flavor
			common, ok := byNameEVR["kernel-devel\x00"+p.EVR()]
			if !ok {
				skipped = append(skipped, Skipped{p.Name + " " + p.EVR(), "the repository has no kernel-devel " + p.EVR()})
				continue
			}
			k.Packages = []Package{rpmPkg(p), rpmPkg(common)}
			if m, ok := byNameEVR["kernel-macros\x00"+p.EVR()]; ok {
				k.Packages = append(k.Packages, rpmPkg(m))
			}
		default:
			continue
		}
		if ident.KernelRelease(k.Release) != nil || ident.Flavor(k.Flavor) != nil {
			skipped = append(skipped, Skipped{p.Name + " " + p.EVR(), fmt.Sprintf("release %q or flavor %q is not valid", truncate(k.Release, 80), truncate(k.Flavor, 80))})
			continue
		}
		for _, q := range k.Packages {
			k.Size += q.Size
		}
		out = append(out, k)
	}
	return dedupe(out), skipped
}

// Selector narrows the kernels a repository offers.
type Selector struct {
	Flavors []string       // empty: all
	Release *regexp.Regexp // nil: all
	// Versions limits the kernels' package versions (the headers or devel package's); nil: all.
	Versions *VersionRange
	Latest   int // 0: all; else the N newest per flavor
}

// Select applies s to ks and returns the kernels newest first within each flavor, flavors in
// name order.
func Select(ks []Kernel, s Selector) []Kernel {
	var out []Kernel
	for _, k := range ks {
		if len(s.Flavors) > 0 && !contains(s.Flavors, k.Flavor) {
			continue
		}
		if s.Release != nil && !s.Release.MatchString(k.Release) {
			continue
		}
		if s.Versions != nil && !s.Versions.contains(k) {
			continue
		}
		out = append(out, k)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Flavor != b.Flavor {
			return a.Flavor < b.Flavor
		}
		if a.Arch != b.Arch {
			return a.Arch < b.Arch
		}
		if a.less(b) != b.less(a) {
			return b.less(a)
		}
		return a.Release > b.Release
	})
	if s.Latest > 0 {
		n := map[string]int{}
		kept := out[:0]
		for _, k := range out {
			key := k.Flavor + "\x00" + k.Arch
			if n[key] < s.Latest {
				kept = append(kept, k)
			}
			n[key]++
		}
		out = kept
	}
	return out
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
