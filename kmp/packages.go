package kmp

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	rpmutils "github.com/sassoftware/go-rpmutils"
)

// PackageKind is a package file format kmpack can take kernel devel trees from.
type PackageKind string

const (
	PackageDeb PackageKind = "deb"
	PackageRPM PackageKind = "rpm"
)

// DetectPackage tells a .deb from an .rpm by their magic bytes, whatever the file is called.
func DetectPackage(path string) (PackageKind, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 8)
	n, _ := io.ReadFull(f, head)
	switch {
	case n == 8 && string(head) == "!<arch>\n":
		return PackageDeb, nil
	case n >= 4 && bytes.Equal(head[:4], []byte{0xed, 0xab, 0xee, 0xdb}):
		return PackageRPM, nil
	}
	return "", inputErrorf(path, "not a .deb or .rpm package")
}

// PackageSet is package files unpacked together into one root in the cache.
type PackageSet struct {
	Root     string   `json:"root"`
	Packages []string `json:"packages"`
	// Cached is true when an earlier run had already unpacked exactly these packages.
	Cached bool `json:"cached"`
}

// cacheFormat changes whenever what the cache holds for the same packages would differ.
const cacheFormat = "kmpack-trees-v1"

// UnpackPackages unpacks package files (Debian's linux-headers-<abi>-<flavor>,
// linux-headers-<abi>-common and linux-kbuild-<series>; SUSE's kernel-<flavor>-devel with
// kernel-devel; RHEL's kernel-devel) into one root under cacheDir, keyed by the packages'
// contents so a set is unpacked once. Nothing is installed and root is not needed. The result
// is complete or absent: extraction happens in a temporary directory renamed into place.
func UnpackPackages(cacheDir string, files []string) (*PackageSet, error) {
	if len(files) == 0 {
		return nil, errors.New("no package files given")
	}
	sums := make([]string, 0, len(files))
	abs := make([]string, 0, len(files))
	for _, f := range files {
		a, err := filepath.Abs(f)
		if err != nil {
			return nil, err
		}
		if _, err := DetectPackage(a); err != nil {
			return nil, err
		}
		s, err := fileSHA256(a)
		if err != nil {
			return nil, err
		}
		sums = append(sums, s)
		abs = append(abs, a)
	}
	sorted := append([]string(nil), sums...)
	sort.Strings(sorted)
	key := sha256.Sum256([]byte(cacheFormat + "\n" + strings.Join(sorted, "\n")))
	base, err := filepath.Abs(filepath.Join(cacheDir, "trees"))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	if base, err = filepath.EvalSymlinks(base); err != nil {
		return nil, err
	}
	final := filepath.Join(base, hex.EncodeToString(key[:16]))
	set := &PackageSet{Root: filepath.Join(final, "root"), Packages: abs}
	if _, err := os.Stat(filepath.Join(final, ".complete")); err == nil {
		set.Cached = true
		return set, nil
	}
	tmp, err := os.MkdirTemp(base, ".unpack-")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	root := filepath.Join(tmp, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, err
	}
	for _, f := range abs {
		if err := unpackPackage(f, root); err != nil {
			return nil, err
		}
	}
	// The trees' Makefiles name each other by absolute path; point them into the final root.
	if err := relocateMakefiles(root, filepath.Join(final, "root")); err != nil {
		return nil, err
	}
	manifest := strings.Join(abs, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(tmp, "packages"), []byte(manifest), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		// Another run unpacked the same set meanwhile: use its result.
		if _, serr := os.Stat(filepath.Join(final, ".complete")); serr == nil {
			set.Cached = true
			return set, nil
		}
		return nil, err
	}
	ok = true
	return set, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// unpackPackage extracts one package's files into root.
func unpackPackage(path, root string) (err error) {
	defer guard(path, &err)
	kind, err := DetectPackage(path)
	if err != nil {
		return err
	}
	x := &extractor{root: root, archive: path}
	switch kind {
	case PackageDeb:
		err = unpackDeb(path, x)
	case PackageRPM:
		x.allowAbsolute = true
		err = unpackRPM(path, x)
	}
	if err != nil {
		return err
	}
	return x.checkLinks()
}

func unpackDeb(path string, x *extractor) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := newArReader(bufio.NewReader(f))
	if err != nil {
		return inputErrorf(path, "not a Debian package: %v", err)
	}
	sawBinary := false
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return inputErrorf(path, "corrupt ar archive: %v", err)
		}
		name := h.Name
		switch {
		case name == "debian-binary":
			b, _ := io.ReadAll(io.LimitReader(r, 64))
			if !strings.HasPrefix(string(b), "2.") {
				return inputErrorf(path, "unsupported deb format %q", strings.TrimSpace(string(b)))
			}
			sawBinary = true
		case strings.HasPrefix(name, "data.tar"):
			if !sawBinary {
				return inputErrorf(path, "data member before debian-binary: not a Debian package")
			}
			var c Compression
			switch strings.TrimPrefix(name, "data.tar") {
			case "":
				c = CompressNone
			case ".gz":
				c = CompressGzip
			case ".xz":
				c = CompressXZ
			case ".zst":
				c = CompressZstd
			case ".bz2":
				return untar(path, bzip2.NewReader(io.LimitReader(r, h.Size)), x)
			default:
				return inputErrorf(path, "unsupported member %q", name)
			}
			dr, done, err := decompressReader(io.LimitReader(r, h.Size), c)
			if err != nil {
				return inputErrorf(path, "member %q: %v", name, err)
			}
			defer done()
			return untar(path, dr, x)
		}
	}
	return inputErrorf(path, "no data.tar member: not a Debian binary package")
}

func untar(path string, r io.Reader, x *extractor) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return inputErrorf(path, "corrupt data.tar: %v", err)
		}
		mode := fs.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			err = x.Dir(h.Name, mode)
		case tar.TypeReg, tar.TypeRegA:
			err = x.File(h.Name, mode, io.LimitReader(tr, h.Size))
		case tar.TypeSymlink:
			err = x.Symlink(h.Name, h.Linkname)
		case tar.TypeLink:
			err = x.Hardlink(h.Name, h.Linkname)
		case tar.TypeChar, tar.TypeBlock:
			err = x.Special(h.Name, "device node")
		case tar.TypeFifo:
			err = x.Special(h.Name, "FIFO")
		case tar.TypeXGlobalHeader:
			continue
		default:
			err = x.Special(h.Name, fmt.Sprintf("tar type %q", h.Typeflag))
		}
		if err != nil {
			return err
		}
	}
}

func unpackRPM(path string, x *extractor) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rpm, err := rpmutils.ReadRpm(bufio.NewReader(f))
	if err != nil {
		return inputErrorf(path, "corrupt RPM header: %v", err)
	}
	pr, err := rpm.PayloadReaderExtended()
	if err != nil {
		return inputErrorf(path, "RPM payload: %v", err)
	}
	// cpio stores a hard-link set's data with its last member; earlier members come empty.
	pendingLinks := map[uint64][]string{}
	for {
		fi, err := pr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return inputErrorf(path, "corrupt RPM payload: %v", err)
		}
		name := fi.Name()
		mode := fs.FileMode(fi.Mode())
		ino := uint64(fi.Inode())
		switch fi.Mode() & 0o170000 {
		case 0o040000:
			err = x.Dir(name, mode)
		case 0o120000:
			err = x.Symlink(name, fi.Linkname())
		case 0o100000:
			if pr.IsLink() {
				pendingLinks[ino] = append(pendingLinks[ino], name)
				continue
			}
			if err = x.File(name, mode, pr); err == nil {
				for _, l := range pendingLinks[ino] {
					if err = x.Hardlink(l, name); err != nil {
						break
					}
				}
				delete(pendingLinks, ino)
			}
		case 0o020000, 0o060000:
			err = x.Special(name, "device node")
		case 0o010000:
			err = x.Special(name, "FIFO")
		case 0o140000:
			err = x.Special(name, "socket")
		default:
			err = x.Special(name, fmt.Sprintf("file type %o", fi.Mode()&0o170000))
		}
		if err != nil {
			return err
		}
	}
}

var absIncludeRE = regexp.MustCompile(`(?m)^(\s*-?include\s+)(/\S+)`)

// relocateMakefiles points the absolute includes in the unpacked trees' top Makefiles (Debian's
// "include /usr/src/linux-headers-<abi>-common/Makefile", the same shape in SUSE's -obj trees)
// into finalRoot, where the tree will live, when the included file is part of the set.
func relocateMakefiles(root, finalRoot string) error {
	dirs, _ := candidateDirs(root)
	for _, dir := range dirs {
		mk := filepath.Join(dir, "Makefile")
		fi, err := os.Lstat(mk)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(mk)
		if err != nil {
			return err
		}
		changed := false
		out := absIncludeRE.ReplaceAllFunc(b, func(m []byte) []byte {
			sub := absIncludeRE.FindSubmatch(m)
			target := string(sub[2])
			if _, err := os.Stat(filepath.Join(root, target)); err != nil {
				return m
			}
			changed = true
			return append(append([]byte{}, sub[1]...), filepath.Join(finalRoot, target)...)
		})
		if changed {
			if err := os.WriteFile(mk, out, fi.Mode().Perm()); err != nil {
				return err
			}
		}
	}
	return nil
}

// OpenPackageTrees unpacks package files (cached) and describes the kernel trees they hold.
func OpenPackageTrees(cacheDir string, files []string) (*PackageSet, *Discovery, error) {
	set, err := UnpackPackages(cacheDir, files)
	if err != nil {
		return nil, nil, err
	}
	d, err := DiscoverKernelTrees(set.Root)
	if err != nil {
		return nil, nil, err
	}
	for _, t := range d.Trees {
		t.Packages = set.Packages
	}
	if len(d.Trees) == 0 {
		reason := "no configured kernel tree among their files"
		if strings.Contains(strings.Join(files, " "), "common") && len(files) == 1 {
			reason += " (a -common package needs its flavor's headers package too)"
		}
		return set, d, inputErrorf(strings.Join(files, ", "), "%s", reason)
	}
	return set, d, nil
}
