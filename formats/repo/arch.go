package repo

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
)

// Arch: the packages and the sync database pacman reads lie in archlinux/: <db>.db (a gzip tar
// of <name>-<version>/desc, as repo-add writes it; also as <db>.db.tar.gz) and <db>.files
// (desc and files). pacman.conf: [<db>] Server = file:///DIR/archlinux.

const (
	maxPKGINFO   = 1 << 20
	maxArchFiles = 1 << 20
)

type archPkg struct {
	info  map[string][]string // .PKGINFO keys to values, in order
	files []string
	file  string // relative to the repository root
	h     hashes
}

func (p *archPkg) one(k string) string {
	if v := p.info[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// readArchPkg reads a .pkg.tar[.gz|.xz|.zst]: its .PKGINFO and file list.
func readArchPkg(path string) (p *archPkg, err error) {
	defer kmp.Guard(path, &err)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, kmp.InputErrorf(path, "not a regular file")
	}
	c := module.CompressNone
	switch {
	case strings.HasSuffix(path, ".pkg.tar.zst"):
		c = module.CompressZstd
	case strings.HasSuffix(path, ".pkg.tar.xz"):
		c = module.CompressXZ
	case strings.HasSuffix(path, ".pkg.tar.gz"):
		c = module.CompressGzip
	case strings.HasSuffix(path, ".pkg.tar"):
	default:
		return nil, kmp.InputErrorf(path, "not an Arch package name (.pkg.tar[.gz|.xz|.zst])")
	}
	r, done, err := module.DecompressReader(bufio.NewReader(f), c)
	if err != nil {
		return nil, kmp.InputErrorf(path, "not an Arch package: %v", err)
	}
	defer done()
	tr := tar.NewReader(r)
	p = &archPkg{info: map[string][]string{}}
	sawInfo := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, kmp.InputErrorf(path, "not an Arch package: %v", err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		if name == ".PKGINFO" {
			if h.Typeflag != tar.TypeReg || h.Size > maxPKGINFO || sawInfo {
				return nil, kmp.InputErrorf(path, ".PKGINFO is not one regular file of at most 1 MiB")
			}
			b, err := io.ReadAll(io.LimitReader(tr, maxPKGINFO))
			if err != nil {
				return nil, kmp.InputErrorf(path, ".PKGINFO: %v", err)
			}
			if err := p.parseInfo(path, b); err != nil {
				return nil, err
			}
			sawInfo = true
			continue
		}
		if strings.HasPrefix(name, ".") {
			continue
		}
		if len(p.files) >= maxArchFiles || strings.ContainsAny(name, "\n\r") {
			return nil, kmp.InputErrorf(path, "more than %d files, or a file name with a line break", maxArchFiles)
		}
		p.files = append(p.files, name)
	}
	if !sawInfo {
		return nil, kmp.InputErrorf(path, "no .PKGINFO: not an Arch package")
	}
	for _, k := range []string{"pkgname", "pkgver", "arch"} {
		v := p.info[k]
		if len(v) != 1 || (k != "pkgver" && !word.MatchString(v[0])) || (k == "pkgver" && !validVersion(v[0])) {
			return nil, kmp.InputErrorf(path, ".PKGINFO: bad or missing %s %q", k, v)
		}
	}
	if p.h, err = hashFile(path); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *archPkg) parseInfo(path string, b []byte) error {
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, " = ")
		if !ok || strings.ContainsFunc(l, func(r rune) bool { return r < 0x20 && r != '\t' }) {
			return kmp.InputErrorf(path, ".PKGINFO: bad line %q", l)
		}
		p.info[k] = append(p.info[k], v)
	}
	return nil
}

// desc is the package's entry in the sync database.
func (p *archPkg) desc() []byte {
	var b bytes.Buffer
	field := func(name string, values ...string) {
		var vs []string
		for _, v := range values {
			if v != "" {
				vs = append(vs, v)
			}
		}
		if len(vs) > 0 {
			fmt.Fprintf(&b, "%%%s%%\n%s\n\n", name, strings.Join(vs, "\n"))
		}
	}
	field("FILENAME", filepath.Base(p.file))
	field("NAME", p.one("pkgname"))
	field("BASE", p.one("pkgbase"))
	field("VERSION", p.one("pkgver"))
	field("DESC", p.one("pkgdesc"))
	field("GROUPS", p.info["group"]...)
	field("CSIZE", fmt.Sprint(p.h.size))
	field("ISIZE", p.one("size"))
	field("MD5SUM", p.h.md5)
	field("SHA256SUM", p.h.sha256)
	field("URL", p.one("url"))
	field("LICENSE", p.info["license"]...)
	field("ARCH", p.one("arch"))
	field("BUILDDATE", p.one("builddate"))
	field("PACKAGER", p.one("packager"))
	field("REPLACES", p.info["replaces"]...)
	field("CONFLICTS", p.info["conflict"]...)
	field("PROVIDES", p.info["provides"]...)
	field("DEPENDS", p.info["depend"]...)
	field("OPTDEPENDS", p.info["optdepend"]...)
	field("MAKEDEPENDS", p.info["makedepend"]...)
	field("CHECKDEPENDS", p.info["checkdepend"]...)
	return b.Bytes()
}

func scanArch(root string) ([]*archPkg, error) {
	var pkgs []*archPkg
	dir := filepath.Join(root, "archlinux")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || !strings.Contains(e.Name(), ".pkg.tar") || strings.HasSuffix(e.Name(), ".sig") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if !e.Type().IsRegular() || !fileName.MatchString(e.Name()) {
			return nil, kmp.InputErrorf(p, "not a regular file, or a name kmpack does not write")
		}
		a, err := readArchPkg(p)
		if err != nil {
			return nil, err
		}
		a.file = "archlinux/" + e.Name()
		pkgs = append(pkgs, a)
	}
	return pkgs, nil
}

// archDB is the gzip tar pacman reads: <name>-<version>/desc (and, withFiles, files).
func archDB(all []*archPkg, date time.Time, withFiles bool) ([]byte, error) {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	for _, p := range all {
		dir := p.one("pkgname") + "-" + p.one("pkgver")
		hdr := func(name string, size int, typ byte, mode int64) error {
			return tw.WriteHeader(&tar.Header{Name: name, Size: int64(size), Typeflag: typ, Mode: mode, ModTime: date, Format: tar.FormatPAX})
		}
		if err := hdr(dir+"/", 0, tar.TypeDir, 0o755); err != nil {
			return nil, err
		}
		entries := [][2]string{{"desc", string(p.desc())}}
		if withFiles {
			entries = append(entries, [2]string{"files", "%FILES%\n" + strings.Join(p.files, "\n") + "\n\n"})
		}
		for _, e := range entries {
			if err := hdr(dir+"/"+e[0], len(e[1]), tar.TypeReg, 0o644); err != nil {
				return nil, err
			}
			tw.Write([]byte(e[1]))
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func publishArch(pkgs []Package, o Options, res Result) (_ Result, err error) {
	existing, err := scanArch(o.Dir)
	if err != nil {
		return res, err
	}
	m := newMerger(existing)
	for _, p := range pkgs {
		a, err := readArchPkg(p.Path)
		if err != nil {
			return res, err
		}
		if a.one("pkgname") != p.Name || a.one("arch") != p.Arch {
			return res, kmp.InputErrorf(p.Path, "is package %s (%s), packages.json says %s (%s)", a.one("pkgname"), a.one("arch"), p.Name, p.Arch)
		}
		a.file = "archlinux/" + filepath.Base(p.Path)
		if err := m.offer(p.Path, a); err != nil {
			return res, err
		}
	}
	var all []*archPkg
	seen := map[string]string{}
	for _, a := range m.byFile {
		k := a.one("pkgname") + "-" + a.one("pkgver")
		if f, dup := seen[k]; dup {
			return res, kmp.InputErrorf(a.file, "package %s is also %s (pacman's database holds one entry per name and version)", k, f)
		}
		seen[k] = a.file
		all = append(all, a)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].file < all[j].file })
	res.Packages += len(all)
	// The database's entries are dated by the newest package's build date, so the same
	// packages give the same bytes whatever the date of the publication.
	var newest int64
	for _, a := range all {
		if n, err := strconv.ParseInt(a.one("builddate"), 10, 64); err == nil && n > newest && n < 1<<33 {
			newest = n
		}
	}
	date := time.Unix(newest, 0)
	db, err := archDB(all, date, false)
	if err != nil {
		return res, err
	}
	files, err := archDB(all, date, true)
	if err != nil {
		return res, err
	}
	dir := filepath.Join(o.Dir, "archlinux")
	name := o.ArchDB
	if name == "" {
		name = "kmpack"
	}
	meta := map[string][]byte{name + ".db": db, name + ".db.tar.gz": db, name + ".files": files, name + ".files.tar.gz": files}
	if len(m.add) == 0 {
		same := true
		for n, b := range meta {
			if old, err := os.ReadFile(filepath.Join(dir, n)); err != nil || !bytes.Equal(old, b) {
				same = false
			}
		}
		if same {
			return res, nil
		}
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
	// Each database file is replaced by a rename; the .db goes last, so pacman never reads a
	// database naming a package that is not there yet.
	for _, n := range []string{name + ".files.tar.gz", name + ".files", name + ".db.tar.gz", name + ".db"} {
		tmp := filepath.Join(dir, ".new-"+n)
		os.Remove(tmp)
		if err := writeSynced(tmp, meta[n]); err != nil {
			return res, err
		}
		if err := os.Rename(tmp, filepath.Join(dir, n)); err != nil {
			os.Remove(tmp)
			return res, err
		}
	}
	res.Added, res.Changed = append(res.Added, added...), true
	return res, nil
}
