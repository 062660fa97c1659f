// Package formats turns built kernel modules into distro-native packages.
//
// The data flows one way: a Profile (suse, rhel, debian, alpine, arch) reads the build's
// modules and kernel symbols and describes each package as a format-neutral *Package: name,
// version, files, relations, scriptlets. Every Package is validated before anything is
// written; then an Emitter (rpm, deb, apk, archlinux) writes its bytes. RPMs are written with
// google/rpmpack directly (a copy in formats/internal/rpmpack with relative payload names), because nfpm cannot express Supplements, Enhances or
// Requires(pre/preun/postun); the other formats go through nfpm.
package formats

import (
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
)

// FileKind is what a package entry is.
type FileKind int

const (
	// RegularFile has Body as its content.
	RegularFile FileKind = iota
	// Directory is a directory the package owns.
	Directory
	// Symlink points at Target.
	Symlink
)

// File is one entry of a package's payload.
type File struct {
	Path   string
	Kind   FileKind
	Body   []byte
	Mode   uint32 // permission bits only
	Target string // for Symlink
	// Config marks a file the administrator may edit (deb conffiles, rpm %config): an upgrade
	// keeps local changes.
	Config bool
}

// Sense is a relation's comparison, RPM style.
type Sense string

const (
	Any     Sense = ""
	Equal   Sense = "="
	Less    Sense = "<"
	Greater Sense = ">"
	LessEq  Sense = "<="
	GreatEq Sense = ">="
)

// Relation is one dependency: "name", or "name op version". Rich RPM dependencies such as
// "(kernel-default and foo)" are a Name with no Sense.
type Relation struct {
	Name    string
	Sense   Sense
	Version string
	// Phases restricts an RPM Requires to scriptlets: "pre", "post", "preun", "postun",
	// "posttrans". Empty is a plain run-time requirement.
	Phases []string
}

func (r Relation) String() string {
	s := r.Name
	if r.Sense != Any {
		s += " " + string(r.Sense) + " " + r.Version
	}
	if len(r.Phases) > 0 {
		s = "(" + strings.Join(r.Phases, ",") + ") " + s
	}
	return s
}

// Rel is a relation without a version.
func Rel(name string) Relation { return Relation{Name: name} }

// RelEq is "name = version".
func RelEq(name, version string) Relation {
	return Relation{Name: name, Sense: Equal, Version: version}
}

// Scripts are shell scriptlets. RPM names them; deb, apk and archlinux map them (see each
// emitter). Empty strings are left out.
type Scripts struct {
	PreInstall, PostInstall, PreRemove, PostRemove, PostTrans string
}

// Package is one package to write, in no particular format yet.
type Package struct {
	// Format is the emitter: "rpm", "deb", "apk" or "archlinux". Profile is the convention
	// that described it (suse, rhel, debian, ...), Kernel the release it was built for ("" for
	// packages that serve any kernel).
	Format  string
	Profile string
	Kernel  string

	Name, Version, Release, Arch       string
	Summary, Description, License      string
	Vendor, Maintainer, URL, Group     string
	Section                            string
	Provides, Requires, Conflicts      []Relation
	Obsoletes, Recommends, Supplements []Relation
	Enhances                           []Relation
	Files                              []File
	Scripts                            Scripts
	// MTime is every entry's modification time and the package's build time.
	MTime time.Time
	// FileName is the package file's name, set by Describe from the emitter's convention.
	FileName string
	// runtime marks the kmpack runtime package, which installs outside module directories.
	runtime bool
	// sourceRoot is a source package's /usr/src/<name>-<version> (the source's own name and
	// version, which the package's may not be).
	sourceRoot string
	// certDir is where a certificate package installs its certificates.
	certDir string
	// signing are the keys that sign the package file (rpm, apk), if any.
	signing *PackageSigning
	// cache keeps the package file when its payload is large (see PackageCache).
	cache *PackageCache
	// resource is the file an oci "package" is when it is no image: the KMM Module YAML.
	resource []byte
	// base is the image an oci package's image is layered on, if any.
	base *OCIBase
}

// sortFiles orders entries by path, so what a package holds never depends on map order.
func (p *Package) sortFiles() {
	sort.Slice(p.Files, func(i, j int) bool { return p.Files[i].Path < p.Files[j].Path })
}

// payloadSize is the total size of the package's file bodies.
func (p *Package) payloadSize() int64 {
	var n int64
	for _, f := range p.Files {
		n += int64(len(f.Body))
	}
	return n
}

// addDirs adds Directory entries for dirs (and nothing above them) unless already present.
func (p *Package) addDirs(dirs ...string) {
	have := map[string]bool{}
	for _, f := range p.Files {
		have[f.Path] = true
	}
	for _, d := range dirs {
		d = path.Clean(d)
		if !have[d] {
			p.Files = append(p.Files, File{Path: d, Kind: Directory, Mode: 0o755})
			have[d] = true
		}
	}
}

// ownedDirsBetween lists the directories from top (inclusive) down to every file's parent.
func ownedDirsBetween(top string, files []File) []string {
	seen := map[string]bool{}
	var out []string
	for _, f := range files {
		if f.Kind == Directory {
			continue
		}
		for d := path.Dir(f.Path); d == top || strings.HasPrefix(d, top+"/"); d = path.Dir(d) {
			if !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	sort.Strings(out)
	return out
}

func (p *Package) String() string {
	return fmt.Sprintf("%s %s-%s (%s/%s)", p.Name, p.Version, p.Release, p.Profile, p.Format)
}

// fill reflows text into paragraphs of lines at most width long, as rpmlint and lintian want
// descriptions (both warn past 79 columns). Blank lines separate paragraphs; lines that start
// with a space are kept as they are (Debian's verbatim lines).
func fill(text string, width int) string {
	var out []string
	var words []string
	flush := func() {
		line := ""
		for _, w := range words {
			if line != "" && len(line)+1+len(w) > width {
				out = append(out, line)
				line = ""
			}
			if line != "" {
				line += " "
			}
			line += w
		}
		if line != "" {
			out = append(out, line)
		}
		words = nil
	}
	for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
		switch {
		case strings.TrimSpace(l) == "":
			flush()
			if len(out) > 0 && out[len(out)-1] != "" {
				out = append(out, "")
			}
		case strings.HasPrefix(l, " "):
			flush()
			out = append(out, l)
		default:
			words = append(words, strings.Fields(l)...)
		}
	}
	flush()
	return strings.Join(out, "\n")
}
