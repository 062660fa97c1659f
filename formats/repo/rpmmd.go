package repo

import (
	"bytes"
	"compress/gzip"
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	rpmutils "github.com/sassoftware/go-rpmutils"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/unpack"
)

// rpm-md, as createrepo_c writes it and dnf and zypper read it: repodata/repomd.xml naming
// primary, filelists and other (.xml.gz, their names prefixed with their sha256), each with
// the checksums and sizes of the compressed and the uncompressed file.

type rpmEntry struct {
	Name  string `xml:"name,attr"`
	Flags string `xml:"flags,attr,omitempty"`
	Epoch string `xml:"epoch,attr,omitempty"`
	Ver   string `xml:"ver,attr,omitempty"`
	Rel   string `xml:"rel,attr,omitempty"`
	Pre   string `xml:"pre,attr,omitempty"`
}

type rpmEntries struct {
	Entries []rpmEntry `xml:"rpm:entry"`
}

type rpmVersion struct {
	Epoch string `xml:"epoch,attr"`
	Ver   string `xml:"ver,attr"`
	Rel   string `xml:"rel,attr"`
}

type rpmFile struct {
	Type string `xml:"type,attr,omitempty"`
	Name string `xml:",chardata"`
}

type rpmChecksum struct {
	Type  string `xml:"type,attr"`
	PkgID string `xml:"pkgid,attr,omitempty"`
	Value string `xml:",chardata"`
}

type rpmHref struct {
	Href string `xml:"href,attr"`
}

type primaryPackage struct {
	XMLName     xml.Name    `xml:"package"`
	Type        string      `xml:"type,attr"`
	Name        string      `xml:"name"`
	Arch        string      `xml:"arch"`
	Version     rpmVersion  `xml:"version"`
	Checksum    rpmChecksum `xml:"checksum"`
	Summary     string      `xml:"summary"`
	Description string      `xml:"description"`
	Packager    string      `xml:"packager"`
	URL         string      `xml:"url"`
	Time        struct {
		File  int64 `xml:"file,attr"`
		Build int64 `xml:"build,attr"`
	} `xml:"time"`
	Size struct {
		Package   int64 `xml:"package,attr"`
		Installed int64 `xml:"installed,attr"`
		Archive   int64 `xml:"archive,attr"`
	} `xml:"size"`
	Location rpmHref `xml:"location"`
	Format   struct {
		License     string `xml:"rpm:license"`
		Vendor      string `xml:"rpm:vendor"`
		Group       string `xml:"rpm:group"`
		Buildhost   string `xml:"rpm:buildhost"`
		SourceRPM   string `xml:"rpm:sourcerpm"`
		HeaderRange struct {
			Start int `xml:"start,attr"`
			End   int `xml:"end,attr"`
		} `xml:"rpm:header-range"`
		Provides    *rpmEntries `xml:"rpm:provides"`
		Requires    *rpmEntries `xml:"rpm:requires"`
		Conflicts   *rpmEntries `xml:"rpm:conflicts"`
		Obsoletes   *rpmEntries `xml:"rpm:obsoletes"`
		Recommends  *rpmEntries `xml:"rpm:recommends"`
		Suggests    *rpmEntries `xml:"rpm:suggests"`
		Supplements *rpmEntries `xml:"rpm:supplements"`
		Enhances    *rpmEntries `xml:"rpm:enhances"`
		Files       []rpmFile   `xml:"file"`
	} `xml:"format"`
}

type listPackage struct {
	PkgID   string     `xml:"pkgid,attr"`
	Name    string     `xml:"name,attr"`
	Arch    string     `xml:"arch,attr"`
	Version rpmVersion `xml:"version"`
	Files   []rpmFile  `xml:"file,omitempty"`
}

// rpmPkg is one RPM of the repository.
type rpmPkg struct {
	primary primaryPackage
	files   []rpmFile
	file    string // relative to the repository root
	h       hashes
}

// rpmsense bits (rpm's rpmds.h).
const (
	senseLess    = 1 << 1
	senseGreater = 1 << 2
	senseEqual   = 1 << 3
	sensePrereq  = 1 << 6
	sensePre     = 1 << 9
	sensePost    = 1 << 10
	senseRPMLib  = 1 << 24
	fileGhost    = 1 << 6
)

var primaryFile = regexp.MustCompile(`^(/etc/|(/usr)?/s?bin/|/usr/lib/sendmail$)`)

func splitEVR(evr string) (e, v, r string) {
	e = "0"
	if i := strings.Index(evr, ":"); i >= 0 {
		e, evr = evr[:i], evr[i+1:]
	}
	v = evr
	if i := strings.LastIndex(evr, "-"); i >= 0 {
		v, r = evr[:i], evr[i+1:]
	}
	return e, v, r
}

func deps(h *rpmutils.RpmHeader, nameTag, flagsTag, versionTag int, requires bool) (*rpmEntries, error) {
	names, _ := h.GetStrings(nameTag)
	if len(names) == 0 {
		return nil, nil
	}
	flags, _ := h.GetInts(flagsTag)
	versions, _ := h.GetStrings(versionTag)
	if len(flags) != len(names) || len(versions) != len(names) {
		return nil, errors.New("dependency names, flags and versions differ in number")
	}
	out := &rpmEntries{}
	seen := map[rpmEntry]bool{}
	for i, n := range names {
		f := flags[i]
		if requires && (f&senseRPMLib != 0 || strings.HasPrefix(n, "rpmlib(")) {
			continue
		}
		e := rpmEntry{Name: n}
		if versions[i] != "" {
			e.Epoch, e.Ver, e.Rel = splitEVR(versions[i])
			switch f & (senseLess | senseGreater | senseEqual) {
			case senseEqual:
				e.Flags = "EQ"
			case senseLess:
				e.Flags = "LT"
			case senseGreater:
				e.Flags = "GT"
			case senseLess | senseEqual:
				e.Flags = "LE"
			case senseGreater | senseEqual:
				e.Flags = "GE"
			}
		}
		if requires && f&(sensePrereq|sensePre|sensePost) != 0 {
			e.Pre = "1"
		}
		if !seen[e] {
			seen[e] = true
			out.Entries = append(out.Entries, e)
		}
	}
	if len(out.Entries) == 0 {
		return nil, nil
	}
	return out, nil
}

// readRPM reads one RPM's header into its primary and filelists entries.
func readRPM(path string) (*rpmPkg, error) {
	h, err := unpack.RPMHeader(path)
	if err != nil {
		return nil, err
	}
	bad := func(err error) error { return kmp.InputErrorf(path, "RPM header: %v", err) }
	p := &rpmPkg{}
	pp := &p.primary
	pp.Type = "rpm"
	str := func(tag int) string { s, _ := h.GetString(tag); return s }
	pp.Name, pp.Arch = str(rpmutils.NAME), str(rpmutils.ARCH)
	epoch := "0"
	if h.HasTag(rpmutils.EPOCH) {
		n, err := h.GetInt(rpmutils.EPOCH)
		if err != nil {
			return nil, bad(err)
		}
		epoch = strconv.Itoa(n)
	}
	pp.Version = rpmVersion{Epoch: epoch, Ver: str(rpmutils.VERSION), Rel: str(rpmutils.RELEASE)}
	if !word.MatchString(pp.Name) || !word.MatchString(pp.Arch) || !validVersion(pp.Version.Ver) || !validVersion(pp.Version.Rel) {
		return nil, kmp.InputErrorf(path, "RPM header: bad name, arch, version or release %q %q %q %q", pp.Name, pp.Arch, pp.Version.Ver, pp.Version.Rel)
	}
	pp.Summary, pp.Description, pp.Packager, pp.URL = str(rpmutils.SUMMARY), str(rpmutils.DESCRIPTION), str(rpmutils.PACKAGER), str(rpmutils.URL)
	if bt, err := h.GetInt(rpmutils.BUILDTIME); err == nil {
		pp.Time.Build, pp.Time.File = int64(bt), int64(bt)
	}
	if n, err := h.InstalledSize(); err == nil {
		pp.Size.Installed = n
	}
	if n, err := h.PayloadSize(); err == nil {
		pp.Size.Archive = n
	}
	f := &pp.Format
	f.License, f.Vendor, f.Group, f.Buildhost, f.SourceRPM = str(rpmutils.LICENSE), str(rpmutils.VENDOR), str(rpmutils.GROUP), str(rpmutils.BUILDHOST), str(rpmutils.SOURCERPM)
	r := h.GetRange()
	f.HeaderRange.Start, f.HeaderRange.End = r.Start, r.End
	for _, d := range []struct {
		dst                  **rpmEntries
		name, flags, version int
		requires             bool
	}{
		{&f.Provides, rpmutils.PROVIDENAME, rpmutils.PROVIDEFLAGS, rpmutils.PROVIDEVERSION, false},
		{&f.Requires, rpmutils.REQUIRENAME, rpmutils.REQUIREFLAGS, rpmutils.REQUIREVERSION, true},
		{&f.Conflicts, rpmutils.CONFLICTNAME, rpmutils.CONFLICTFLAGS, rpmutils.CONFLICTVERSION, false},
		{&f.Obsoletes, rpmutils.OBSOLETENAME, rpmutils.OBSOLETEFLAGS, rpmutils.OBSOLETEVERSION, false},
		{&f.Recommends, 5046, 5048, 5047, false},
		{&f.Suggests, 5049, 5051, 5050, false},
		{&f.Supplements, 5052, 5054, 5053, false},
		{&f.Enhances, 5055, 5057, 5056, false},
	} {
		if *d.dst, err = deps(h, d.name, d.flags, d.version, d.requires); err != nil {
			return nil, bad(err)
		}
	}
	files, err := h.GetFiles()
	if err != nil {
		return nil, bad(err)
	}
	for _, fi := range files {
		rf := rpmFile{Name: fi.Name()}
		switch {
		case fi.Flags()&fileGhost != 0:
			rf.Type = "ghost"
		case fi.Mode()&0o170000 == 0o040000:
			rf.Type = "dir"
		}
		p.files = append(p.files, rf)
		if primaryFile.MatchString(rf.Name) {
			f.Files = append(f.Files, rf)
		}
	}
	if p.h, err = hashFile(path); err != nil {
		return nil, err
	}
	pp.Checksum = rpmChecksum{Type: "sha256", PkgID: "YES", Value: p.h.sha256}
	pp.Size.Package = p.h.size
	return p, nil
}

// scanRPMs reads every .rpm already under the repository's rpms/.
func scanRPMs(root string) ([]*rpmPkg, error) {
	var pkgs []*rpmPkg
	dir := filepath.Join(root, "rpms")
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				return fs.SkipAll
			}
			return err
		}
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") || !strings.HasSuffix(e.Name(), ".rpm") {
			return nil
		}
		if !e.Type().IsRegular() || !fileName.MatchString(e.Name()) {
			return kmp.InputErrorf(p, "not a regular file, or a name kmpack does not write")
		}
		r, err := readRPM(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		r.file = filepath.ToSlash(rel)
		pkgs = append(pkgs, r)
		return nil
	})
	return pkgs, err
}

func publishRPM(pkgs []Package, o Options, res Result) (_ Result, err error) {
	existing, err := scanRPMs(o.Dir)
	if err != nil {
		return res, err
	}
	m := newMerger(existing)
	for _, p := range pkgs {
		r, err := readRPM(p.Path)
		if err != nil {
			return res, err
		}
		if r.primary.Name != p.Name || r.primary.Arch != p.Arch {
			return res, kmp.InputErrorf(p.Path, "is package %s (%s), packages.json says %s (%s)", r.primary.Name, r.primary.Arch, p.Name, p.Arch)
		}
		r.file = "rpms/" + r.primary.Arch + "/" + filepath.Base(p.Path)
		if err := m.offer(p.Path, r); err != nil {
			return res, err
		}
	}
	all := make([]*rpmPkg, 0, len(m.byFile))
	seen := map[string]string{}
	for _, r := range m.byFile {
		v := r.primary.Version
		k := fmt.Sprintf("%s-%s:%s-%s.%s", r.primary.Name, v.Epoch, v.Ver, v.Rel, r.primary.Arch)
		if f, dup := seen[k]; dup {
			return res, kmp.InputErrorf(r.file, "package %s is also %s", k, f)
		}
		seen[k] = r.file
		r.primary.Location.Href = r.file
		all = append(all, r)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].file < all[j].file })
	files, err := rpmMetadata(all, o)
	if err != nil {
		return res, err
	}
	res.Packages += len(all)
	repodata := filepath.Join(o.Dir, "repodata")
	if len(m.add) == 0 && sameNames(repodata, files) {
		return res, nil
	}
	added, undo, err := m.copyIn(o.Dir)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	if err := swapInFiles(repodata, files); err != nil {
		return res, err
	}
	res.Added, res.Changed = append(res.Added, added...), true
	return res, nil
}

// sameNames says whether dir holds exactly the files named in files; the metadata files'
// names carry their checksums, so equal names are equal indexes.
func sameNames(dir string, files map[string][]byte) bool {
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != len(files) {
		return false
	}
	for _, e := range entries {
		if _, ok := files[e.Name()]; !ok {
			return false
		}
	}
	return true
}

func xmlDoc(root string, attrs string, n int, items []any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(xml.Header)
	fmt.Fprintf(&b, "<%s %s packages=\"%d\">\n", root, attrs, n)
	for _, it := range items {
		out, err := xml.MarshalIndent(it, "  ", "  ")
		if err != nil {
			return nil, err
		}
		b.Write(out)
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "</%s>\n", root)
	return b.Bytes(), nil
}

// rpmMetadata renders repodata/: the three indexes, repomd.xml, and with a key repomd.xml.asc
// and repomd.xml.key. Names are relative to repodata/.
func rpmMetadata(all []*rpmPkg, o Options) (map[string][]byte, error) {
	var primary, filelists, other []any
	for _, r := range all {
		primary = append(primary, r.primary)
		v := r.primary.Version
		filelists = append(filelists, struct {
			XMLName xml.Name `xml:"package"`
			listPackage
		}{listPackage: listPackage{PkgID: r.h.sha256, Name: r.primary.Name, Arch: r.primary.Arch, Version: v, Files: r.files}})
		other = append(other, struct {
			XMLName xml.Name `xml:"package"`
			listPackage
		}{listPackage: listPackage{PkgID: r.h.sha256, Name: r.primary.Name, Arch: r.primary.Arch, Version: v}})
	}
	docs := []struct {
		kind, root, attrs string
		items             []any
	}{
		{"primary", "metadata", `xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm"`, primary},
		{"filelists", "filelists", `xmlns="http://linux.duke.edu/metadata/filelists"`, filelists},
		{"other", "otherdata", `xmlns="http://linux.duke.edu/metadata/other"`, other},
	}
	files := map[string][]byte{}
	stamp := o.Date.Unix()
	var repomd bytes.Buffer
	repomd.WriteString(xml.Header)
	fmt.Fprintf(&repomd, "<repomd xmlns=\"http://linux.duke.edu/metadata/repo\" xmlns:rpm=\"http://linux.duke.edu/metadata/rpm\">\n  <revision>%d</revision>\n", stamp)
	for _, d := range docs {
		raw, err := xmlDoc(d.root, d.attrs, len(all), d.items)
		if err != nil {
			return nil, err
		}
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		zw.Write(raw)
		if err := zw.Close(); err != nil {
			return nil, err
		}
		hz, hr := hashBytes(gz.Bytes()), hashBytes(raw)
		name := hz.sha256 + "-" + d.kind + ".xml.gz"
		files[name] = gz.Bytes()
		fmt.Fprintf(&repomd, `  <data type="%s">
    <checksum type="sha256">%s</checksum>
    <open-checksum type="sha256">%s</open-checksum>
    <location href="repodata/%s"/>
    <timestamp>%d</timestamp>
    <size>%d</size>
    <open-size>%d</open-size>
  </data>
`, d.kind, hz.sha256, hr.sha256, name, stamp, hz.size, hr.size)
	}
	repomd.WriteString("</repomd>\n")
	files["repomd.xml"] = repomd.Bytes()
	if o.Key != nil {
		sig, err := o.Key.DetachSignArmored(repomd.Bytes(), o.Date)
		if err != nil {
			return nil, err
		}
		pub, err := o.Key.PublicKeyArmored()
		if err != nil {
			return nil, err
		}
		files["repomd.xml.asc"], files["repomd.xml.key"] = sig, pub
	}
	return files, nil
}
