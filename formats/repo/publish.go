// Package repo publishes the packages kmpack wrote into repositories the distributions'
// package managers install from: apt (pool/ and dists/<suite>, Packages, Release, InRelease).
// The metadata is written in Go (no apt-ftparchive, createrepo_c or repo-add needed); the
// distribution tools only judge it in the tests.
package repo

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/kmp"
)

// maxIndex bounds an OUTPUT's packages.json.
const maxIndex = 64 << 20

// Options say where and how to publish.
type Options struct {
	// Dir is the repository's root: pool/ and dists/ for apt.
	Dir string
	// Suite and Component name the apt distribution (dists/<Suite>/<Component>); default
	// "kmpack" and "main".
	Suite, Component string
	// ArchDB names the Arch database (archlinux/<ArchDB>.db, pacman.conf's [section]);
	// default "kmpack".
	ArchDB string
	// Key signs the metadata (InRelease and Release.gpg); nil leaves it unsigned.
	Key *formats.PGPKey
	// Date dates the metadata and its signatures (SOURCE_DATE_EPOCH).
	Date time.Time
}

// Package is one package file to publish, as an OUTPUT's packages.json describes it.
type Package struct {
	Path string
	formats.Written
}

// Result says what a publication changed.
type Result struct {
	// Added are the package files copied into the repository, relative to its root.
	Added []string
	// Changed is false when the repository already held exactly these packages: nothing
	// was written.
	Changed bool
	// Packages counts the packages the repository's metadata lists.
	Packages int
	// Skipped are the package files of formats without a repository writer.
	Skipped []string
}

var word = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)

// fileName is what a package file may be called: its name goes into index lines and paths.
var fileName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]{0,254}$`)

// Collect reads the packages.json of each OUTPUT (a build output directory, or its packages
// directory) and checks every file listed against its recorded size and sha256: a file that
// is not what the index claims is an InputError naming it.
func Collect(outputs []string) ([]Package, error) {
	var pkgs []Package
	for _, out := range outputs {
		dir := filepath.Join(out, formats.PackagesDir)
		if _, err := os.Stat(filepath.Join(out, "packages.json")); err == nil {
			dir = out
		}
		index := filepath.Join(dir, "packages.json")
		f, err := kmp.OpenInside(dir, "packages.json")
		if err != nil {
			return nil, kmp.InputErrorf(index, "no package index (run kmpack build --profile or kmpack package first): %v", err)
		}
		b, err := io.ReadAll(io.LimitReader(f, maxIndex+1))
		f.Close()
		if err != nil {
			return nil, err
		}
		if len(b) > maxIndex {
			return nil, kmp.InputErrorf(index, "larger than 64 MiB")
		}
		var written []formats.Written
		if err := json.Unmarshal(b, &written); err != nil {
			return nil, kmp.InputErrorf(index, "not a package index: %v", err)
		}
		for _, w := range written {
			if !fileName.MatchString(w.File) {
				return nil, kmp.InputErrorf(index, "bad file name %q (1-255 bytes of A-Z a-z 0-9 . _ + ~ -, starting with a letter or digit)", w.File)
			}
			p := filepath.Join(dir, w.File)
			if err := checkFile(p, w.Size, w.SHA256); err != nil {
				return nil, err
			}
			pkgs = append(pkgs, Package{Path: p, Written: w})
		}
	}
	return pkgs, nil
}

// checkFile compares a regular file with the size and sha256 its index records.
func checkFile(path string, size int64, sum string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return kmp.InputErrorf(path, "listed in packages.json but missing: %v", err)
	}
	if !fi.Mode().IsRegular() {
		return kmp.InputErrorf(path, "not a regular file")
	}
	if fi.Size() != size {
		return kmp.InputErrorf(path, "is %d bytes, packages.json says %d", fi.Size(), size)
	}
	h, err := hashFile(path)
	if err != nil {
		return err
	}
	if h.sha256 != sum {
		return kmp.InputErrorf(path, "sha256 %s, packages.json says %s", h.sha256, sum)
	}
	return nil
}

type hashes struct {
	md5, sha256 string
	size        int64
}

func hashFile(path string) (hashes, error) {
	f, err := os.Open(path)
	if err != nil {
		return hashes{}, err
	}
	defer f.Close()
	m, s := md5.New(), sha256.New()
	n, err := io.Copy(io.MultiWriter(m, s), f)
	if err != nil {
		return hashes{}, fmt.Errorf("%s: %w", path, err)
	}
	return hashes{md5: hex.EncodeToString(m.Sum(nil)), sha256: hex.EncodeToString(s.Sum(nil)), size: n}, nil
}

func hashBytes(b []byte) hashes {
	m, s := md5.Sum(b), sha256.Sum256(b)
	return hashes{md5: hex.EncodeToString(m[:]), sha256: hex.EncodeToString(s[:]), size: int64(len(b))}
}

// Publish adds pkgs to the repository at o.Dir and rewrites its metadata. Everything is read
// and checked first; new package files are then copied in, the new metadata is written
// beside the old and swapped in at the end, so a failure leaves the repository as it was.
func Publish(pkgs []Package, o Options) (Result, error) {
	if o.Suite == "" {
		o.Suite = "kmpack"
	}
	if o.Component == "" {
		o.Component = "main"
	}
	for _, w := range []string{o.Suite, o.Component} {
		if !word.MatchString(w) {
			return Result{}, kmp.InputErrorf(w, "suite and component names are 1-64 bytes of A-Z a-z 0-9 . _ + - starting with a letter or digit")
		}
	}
	var res Result
	var debs, rpms, arch []Package
	for _, p := range pkgs {
		switch p.Format {
		case "deb":
			debs = append(debs, p)
		case "rpm":
			rpms = append(rpms, p)
		case "archlinux":
			arch = append(arch, p)
		default:
			res.Skipped = append(res.Skipped, p.Path)
		}
	}
	if o.ArchDB != "" && !word.MatchString(o.ArchDB) {
		return Result{}, kmp.InputErrorf(o.ArchDB, "the Arch database name is 1-64 bytes of A-Z a-z 0-9 . _ + - starting with a letter or digit")
	}
	if len(debs)+len(rpms)+len(arch) == 0 {
		return res, nil
	}
	// Every new package is read and checked against its packages.json entry before anything
	// is written (each format's publication reads them again, with the repository's own).
	for _, p := range pkgs {
		var name, arch string
		switch p.Format {
		case "deb":
			d, err := readDeb(p.Path)
			if err != nil {
				return res, err
			}
			name, arch = d.name, d.arch
		case "rpm":
			r, err := readRPM(p.Path)
			if err != nil {
				return res, err
			}
			name, arch = r.primary.Name, r.primary.Arch
		case "archlinux":
			a, err := readArchPkg(p.Path)
			if err != nil {
				return res, err
			}
			name, arch = a.one("pkgname"), a.one("arch")
		default:
			continue
		}
		if name != p.Name || arch != p.Arch {
			return res, kmp.InputErrorf(p.Path, "is package %s (%s), packages.json says %s (%s)", name, arch, p.Name, p.Arch)
		}
	}
	// One publication at a time per repository.
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return res, err
	}
	lock, err := os.OpenFile(filepath.Join(o.Dir, ".kmpack-publish.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return res, err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return res, fmt.Errorf("locking %s: %w", o.Dir, err)
	}
	if len(debs) > 0 {
		if res, err = publishApt(debs, o, res); err != nil {
			return res, err
		}
	}
	if len(rpms) > 0 {
		changed := res.Changed
		if res, err = publishRPM(rpms, o, res); err != nil {
			return res, err
		}
		res.Changed = res.Changed || changed
	}
	if len(arch) > 0 {
		changed := res.Changed
		if res, err = publishArch(arch, o, res); err != nil {
			return res, err
		}
		res.Changed = res.Changed || changed
	}
	return res, nil
}

// repoPkg is what every format's package record tells the publication: where its file is in
// the repository, and its digests.
type repoPkg interface {
	repoFile() string
	sums() hashes
}

func (d *deb) repoFile() string     { return d.filename }
func (d *deb) sums() hashes         { return d.h }
func (r *rpmPkg) repoFile() string  { return r.file }
func (r *rpmPkg) sums() hashes      { return r.h }
func (a *archPkg) repoFile() string { return a.file }
func (a *archPkg) sums() hashes     { return a.h }

// addition is a package file to copy into the repository, and its record.
type addition[T repoPkg] struct {
	src string
	p   T
}

// merger merges the packages offered for publication into those the repository holds, by
// their path in it.
type merger[T repoPkg] struct {
	byFile map[string]T
	add    []addition[T]
}

func newMerger[T repoPkg](existing []T) *merger[T] {
	m := &merger[T]{byFile: map[string]T{}}
	for _, e := range existing {
		m.byFile[e.repoFile()] = e
	}
	return m
}

// offer adds p (read from src): a path already published must hold the same content, and is
// then not copied again.
func (m *merger[T]) offer(src string, p T) error {
	f := p.repoFile()
	if old, ok := m.byFile[f]; ok {
		if old.sums() != p.sums() {
			return kmp.InputErrorf(src, "%s is already in the repository with other content (a package file is published once)", f)
		}
		return nil
	}
	m.byFile[f] = p
	m.add = append(m.add, addition[T]{src, p})
	return nil
}

// copyIn copies the new package files into the repository at dir (unreferenced until the
// metadata is swapped in). undo removes them again, for a publication that fails later; a
// failing copy has undone itself.
func (m *merger[T]) copyIn(dir string) (added []string, undo func(), err error) {
	undo = func() {
		for _, a := range added {
			os.Remove(filepath.Join(dir, a))
		}
	}
	for _, a := range m.add {
		if err := copyFile(a.src, filepath.Join(dir, a.p.repoFile())); err != nil {
			undo()
			return nil, func() {}, err
		}
		added = append(added, a.p.repoFile())
	}
	return added, undo, nil
}

// swapInFiles writes files (names relative to target) into a new directory beside target,
// synced, and swaps it in for target as a whole.
func swapInFiles(target string, files map[string][]byte) error {
	parent := filepath.Dir(target)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	stage, err := os.MkdirTemp(parent, "."+filepath.Base(target)+".new-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o755); err != nil {
		return err
	}
	for _, name := range sortedKeys(files) {
		p := filepath.Join(stage, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := writeSynced(p, files[name]); err != nil {
			return err
		}
	}
	return swapDir(stage, target)
}
