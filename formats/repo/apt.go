package repo

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/unpack"
)

// field is one field of a Debian control paragraph, continuation lines included.
type field struct{ name, value string }

// deb is one package of an apt repository: its control paragraph and where it lies.
type deb struct {
	fields              []field
	name, version, arch string
	filename            string // relative to the repository root
	h                   hashes
}

// indexFields are what a Packages stanza adds to the control file; a control file carrying
// them is refused.
var indexFields = map[string]bool{"filename": true, "size": true, "md5sum": true, "sha1": true, "sha256": true, "sha512": true}

// parseControl parses a .deb's control file: one paragraph of "Name: value" fields with
// continuation lines.
func parseControl(path string, b []byte) (*deb, error) {
	d := &deb{}
	text := strings.TrimRight(string(b), "\n")
	if text == "" {
		return nil, kmp.InputErrorf(path, "empty control file")
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		if strings.ContainsFunc(line, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }) {
			return nil, kmp.InputErrorf(path, "control file has control characters")
		}
		if strings.TrimSpace(line) == "" {
			return nil, kmp.InputErrorf(path, "control file has more than one paragraph")
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(d.fields) == 0 {
				return nil, kmp.InputErrorf(path, "control file starts with a continuation line")
			}
			d.fields[len(d.fields)-1].value += "\n" + line
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") || name[0] == '#' || name[0] == '-' {
			return nil, kmp.InputErrorf(path, "control file: bad line %q", line)
		}
		lower := strings.ToLower(name)
		if seen[lower] || indexFields[lower] {
			return nil, kmp.InputErrorf(path, "control file: field %s is duplicated or reserved for the index", name)
		}
		seen[lower] = true
		value = strings.TrimSpace(value)
		d.fields = append(d.fields, field{name, value})
		switch lower {
		case "package":
			d.name = value
		case "version":
			d.version = value
		case "architecture":
			d.arch = value
		}
	}
	for _, f := range []struct{ n, v string }{{"Package", d.name}, {"Version", d.version}, {"Architecture", d.arch}} {
		if !word.MatchString(f.v) && !(f.n == "Version" && validVersion(f.v)) {
			return nil, kmp.InputErrorf(path, "control file: bad or missing %s %q", f.n, f.v)
		}
	}
	return d, nil
}

func validVersion(v string) bool {
	if v == "" || len(v) > 128 || v[0] < '0' || v[0] > '9' {
		return false
	}
	return strings.Trim(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+~-:") == ""
}

// poolPath is where a package lies in the pool, as Debian's archive lays it out.
func poolPath(component, name, file string) string {
	prefix := name[:1]
	if strings.HasPrefix(name, "lib") && len(name) > 3 {
		prefix = name[:4]
	}
	return filepath.ToSlash(filepath.Join("pool", component, prefix, name, file))
}

// readDeb reads and checks one .deb.
func readDeb(path string) (*deb, error) {
	control, err := unpack.DebControl(path)
	if err != nil {
		return nil, err
	}
	d, err := parseControl(path, control)
	if err != nil {
		return nil, err
	}
	if d.h, err = hashFile(path); err != nil {
		return nil, err
	}
	return d, nil
}

// scanPool reads every .deb already in the repository's pool.
func scanPool(root string) ([]*deb, error) {
	var debs []*deb
	pool := filepath.Join(root, "pool")
	err := filepath.WalkDir(pool, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == pool {
				return fs.SkipAll
			}
			return err
		}
		if e.IsDir() {
			return nil
		}
		if !e.Type().IsRegular() {
			return kmp.InputErrorf(p, "not a regular file in the repository's pool")
		}
		if strings.HasPrefix(e.Name(), ".") || !strings.HasSuffix(e.Name(), ".deb") {
			return nil
		}
		if !fileName.MatchString(e.Name()) {
			return kmp.InputErrorf(p, "a package file name kmpack does not write")
		}
		d, err := readDeb(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		d.filename = filepath.ToSlash(rel)
		for _, c := range strings.Split(d.filename, "/") {
			if !fileName.MatchString(c) {
				return kmp.InputErrorf(p, "a pool path kmpack does not write")
			}
		}
		debs = append(debs, d)
		return nil
	})
	return debs, err
}

func publishApt(pkgs []Package, o Options, res Result) (_ Result, err error) {
	existing, err := scanPool(o.Dir)
	if err != nil {
		return res, err
	}
	m := newMerger(existing)
	for _, p := range pkgs {
		d, err := readDeb(p.Path)
		if err != nil {
			return res, err
		}
		if d.name != p.Name || d.arch != p.Arch {
			return res, kmp.InputErrorf(p.Path, "is package %s (%s), packages.json says %s (%s)", d.name, d.arch, p.Name, p.Arch)
		}
		d.filename = poolPath(o.Component, d.name, filepath.Base(p.Path))
		if err := m.offer(p.Path, d); err != nil {
			return res, err
		}
	}
	all := make([]*deb, 0, len(m.byFile))
	type nva struct{ n, v, a string }
	seen := map[nva]string{}
	for _, d := range m.byFile {
		k := nva{d.name, d.version, d.arch}
		if f, dup := seen[k]; dup {
			return res, kmp.InputErrorf(d.filename, "package %s %s (%s) is also %s", d.name, d.version, d.arch, f)
		}
		seen[k] = d.filename
		all = append(all, d)
	}
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if a.name != b.name {
			return a.name < b.name
		}
		if a.version != b.version {
			return a.version < b.version
		}
		return a.filename < b.filename
	})
	files, err := aptMetadata(all, o)
	if err != nil {
		return res, err
	}
	res.Packages = len(all)
	suiteDir := filepath.Join(o.Dir, "dists", o.Suite)
	if len(m.add) == 0 && sameIndexes(suiteDir, files) {
		return res, nil
	}
	// Copy the new package files in, then write the metadata aside and swap it in. On
	// failure, the added files are removed again.
	added, undo, err := m.copyIn(o.Dir)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	if err := swapInFiles(suiteDir, files); err != nil {
		return res, err
	}
	res.Added, res.Changed = added, true
	return res, nil
}

// sameIndexes says whether suiteDir holds exactly the files of the new metadata with the same
// package indexes (Release and its signatures differ only by their date then).
func sameIndexes(suiteDir string, files map[string][]byte) bool {
	n := 0
	err := filepath.WalkDir(suiteDir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(suiteDir, p)
		want, ok := files[filepath.ToSlash(rel)]
		if !ok || !e.Type().IsRegular() {
			return fs.ErrInvalid
		}
		n++
		if strings.HasPrefix(filepath.Base(rel), "Packages") {
			b, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(b, want) {
				return fs.ErrInvalid
			}
		}
		return nil
	})
	return err == nil && n == len(files)
}

// aptMetadata renders dists/<suite>: a Packages and Packages.gz per architecture ("all"
// packages are listed in each), Release with MD5Sum and SHA256 of every index (uncompressed
// too, as apt requires), and with a key InRelease and Release.gpg. Names are relative to
// dists/<suite>.
func aptMetadata(all []*deb, o Options) (map[string][]byte, error) {
	archs := map[string]bool{}
	for _, d := range all {
		if d.arch != "all" {
			archs[d.arch] = true
		}
	}
	if len(archs) == 0 {
		archs["all"] = true
	}
	files := map[string][]byte{}
	var indexes []string
	for _, arch := range sortedKeys(archs) {
		var b bytes.Buffer
		for _, d := range all {
			if d.arch != arch && d.arch != "all" {
				continue
			}
			if b.Len() > 0 {
				b.WriteByte('\n')
			}
			for _, f := range d.fields {
				fmt.Fprintf(&b, "%s: %s\n", f.name, f.value)
			}
			fmt.Fprintf(&b, "Filename: %s\nSize: %d\nMD5sum: %s\nSHA256: %s\n", d.filename, d.h.size, d.h.md5, d.h.sha256)
		}
		name := o.Component + "/binary-" + arch + "/Packages"
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		zw.Write(b.Bytes())
		if err := zw.Close(); err != nil {
			return nil, err
		}
		files[name], files[name+".gz"] = b.Bytes(), gz.Bytes()
		indexes = append(indexes, name, name+".gz")
	}
	var r bytes.Buffer
	fmt.Fprintf(&r, "Origin: kmpack\nLabel: kmpack\nSuite: %s\nCodename: %s\nDate: %s\n", o.Suite, o.Suite,
		o.Date.UTC().Format("Mon, 02 Jan 2006 15:04:05 UTC"))
	fmt.Fprintf(&r, "Architectures: %s\nComponents: %s\nDescription: kernel module packages published by kmpack\n",
		strings.Join(sortedKeys(archs), " "), o.Component)
	r.WriteString("MD5Sum:\n")
	for _, n := range indexes {
		h := hashBytes(files[n])
		fmt.Fprintf(&r, " %s %8d %s\n", h.md5, h.size, n)
	}
	r.WriteString("SHA256:\n")
	for _, n := range indexes {
		h := hashBytes(files[n])
		fmt.Fprintf(&r, " %s %8d %s\n", h.sha256, h.size, n)
	}
	files["Release"] = r.Bytes()
	if o.Key != nil {
		in, err := o.Key.ClearSign(r.Bytes(), o.Date)
		if err != nil {
			return nil, err
		}
		sig, err := o.Key.DetachSignArmored(r.Bytes(), o.Date)
		if err != nil {
			return nil, err
		}
		files["InRelease"], files["Release.gpg"] = in, sig
	}
	return files, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// copyFile copies src to dst through a temporary file in dst's directory.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".kmpack-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// swapDir puts the directory stage in place of dir: an atomic exchange when dir exists (the
// old contents end up in stage, which the caller removes), a rename otherwise.
func swapDir(stage, dir string) error {
	if _, err := os.Lstat(dir); err == nil {
		if err := unix.Renameat2(unix.AT_FDCWD, stage, unix.AT_FDCWD, dir, unix.RENAME_EXCHANGE); err != nil {
			return fmt.Errorf("swapping in %s: %w", dir, err)
		}
		return nil
	}
	return os.Rename(stage, dir)
}
