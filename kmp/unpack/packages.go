package unpack

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"

	rpmutils "github.com/sassoftware/go-rpmutils"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/module"
)

// PackageKind is a package file format kmpack can take kernel devel trees from.
type PackageKind string

const (
	PackageDeb PackageKind = "deb"
	PackageRPM PackageKind = "rpm"
)

// DetectPackage tells a .deb from an .rpm by their magic bytes, whatever the file is called.
func DetectPackage(path string) (PackageKind, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return "", kmp.InputErrorf(path, "not a regular file")
	}
	head := make([]byte, 8)
	n, _ := io.ReadFull(f, head)
	switch {
	case n == 8 && string(head) == "!<arch>\n":
		return PackageDeb, nil
	case n >= 4 && bytes.Equal(head[:4], []byte{0xed, 0xab, 0xee, 0xdb}):
		return PackageRPM, nil
	}
	return "", kmp.InputErrorf(path, "not a .deb or .rpm package")
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
	var total int64
	for _, f := range files {
		a, err := filepath.Abs(f)
		if err != nil {
			return nil, err
		}
		if _, err := DetectPackage(a); err != nil {
			return nil, err
		}
		s, n, err := fileSHA256(a)
		if err != nil {
			return nil, err
		}
		sums = append(sums, s)
		abs = append(abs, a)
		total += n
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
	removeStaleUnpacks(base)
	final := filepath.Join(base, hex.EncodeToString(key[:16]))
	set := &PackageSet{Root: filepath.Join(final, "root"), Packages: abs}
	// A cache directory may be restored by CI or shared: an entry is used only when its tree is
	// still exactly what was unpacked. An altered, partial or older entry is replaced.
	switch verifyEntry(final) {
	case nil:
		set.Cached = true
		return set, nil
	case errNoEntry:
	default:
		if err := os.RemoveAll(final); err != nil {
			return nil, fmt.Errorf("replacing the altered cache entry %s: %w", final, err)
		}
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
	// The lock tells a later run that this directory is being filled: one whose lock is free
	// was left by a killed run and is removed (removeStaleUnpacks).
	lock, err := lockDir(tmp, false)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := os.Mkdir(filepath.Join(tmp, "root"), 0o755); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(filepath.Join(tmp, "root"))
	if err != nil {
		return nil, err
	}
	defer root.Close()
	budget := &unpackBudget{maxBytes: min(MaxUnpackBytes, MaxUnpackRatio*total+64<<20)}
	for _, f := range abs {
		if err := unpackPackage(f, root, budget); err != nil {
			return nil, err
		}
	}
	if err := checkLinks(root, budget.links); err != nil {
		return nil, err
	}
	// The trees' Makefiles name each other by absolute path; point them into the final root.
	if err := relocateMakefiles(root, filepath.Join(tmp, "root"), filepath.Join(final, "root")); err != nil {
		return nil, err
	}
	manifest := strings.Join(abs, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(tmp, "packages"), []byte(manifest), 0o644); err != nil {
		return nil, err
	}
	digest, err := treeDigest(root)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), []byte(digest+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		// Another run unpacked the same set meanwhile: use its result.
		if verifyEntry(final) == nil {
			set.Cached = true
			return set, nil
		}
		return nil, err
	}
	ok = true
	return set, nil
}

var errNoEntry = errors.New("no cache entry")

// verifyEntry checks a tree cache entry: its .complete file holds the digest of the tree as it
// was unpacked, and the tree must still have it.
func verifyEntry(final string) error {
	fi, err := os.Lstat(final)
	if errors.Is(err, fs.ErrNotExist) {
		return errNoEntry
	}
	if err != nil || !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", final)
	}
	dir, err := os.OpenRoot(final)
	if err != nil {
		return err
	}
	defer dir.Close()
	want, _, err := kmp.ReadRootFile(dir, ".complete", 256)
	if err != nil {
		return err
	}
	root, err := dir.OpenRoot("root")
	if err != nil {
		return err
	}
	defer root.Close()
	got, err := treeDigest(root)
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(want)) != got {
		return fmt.Errorf("%s: the tree differs from what was unpacked", final)
	}
	return nil
}

// treeDigest is a sha256 over every entry below root, in walk order: its path, type and
// permissions, a regular file's contents, a symlink's target. Read through root, without
// following links and without blocking on a FIFO.
func treeDigest(root *os.Root) (string, error) {
	h := sha256.New()
	err := kmp.WalkRoot(root, func(dir *os.Root, name, p string, fi fs.FileInfo) error {
		if t := fi.Mode().Type(); t != 0 && t != fs.ModeDir && t != fs.ModeSymlink {
			return fmt.Errorf("%s: %s, which no unpack makes", p, kmp.FileKind(fi.Mode()))
		}
		return kmp.HashEntryAt(h, dir, name, p, fi)
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// lockDir takes an exclusive flock on a directory; with try, it fails at once when another
// process holds it. The lock dies with its process, however that ends.
func lockDir(dir string, try bool) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_EX
	if try {
		how |= syscall.LOCK_NB
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// removeStaleUnpacks removes the temporary directories of unpacks whose process died (kill -9,
// power loss): their lock is free. A running unpack holds its lock and is left alone.
func removeStaleUnpacks(base string) {
	ents, _ := os.ReadDir(base)
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), ".unpack-") {
			continue
		}
		p := filepath.Join(base, e.Name())
		l, err := lockDir(p, true)
		if err != nil {
			continue
		}
		os.RemoveAll(p)
		l.Close()
	}
}

func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return "", 0, kmp.InputErrorf(path, "not a regular file")
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// unpackPackage extracts one package's files into root.
func unpackPackage(path string, root *os.Root, budget *unpackBudget) (err error) {
	defer kmp.Guard(path, &err)
	kind, err := DetectPackage(path)
	if err != nil {
		return err
	}
	x := &extractor{root: root, archive: path, budget: budget}
	defer x.close()
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
	return nil
}

func unpackDeb(path string, x *extractor) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := newArReader(bufio.NewReader(f))
	if err != nil {
		return kmp.InputErrorf(path, "not a Debian package: %v", err)
	}
	sawBinary := false
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return kmp.InputErrorf(path, "corrupt ar archive: %v", err)
		}
		name := h.Name
		switch {
		case name == "debian-binary":
			b, _ := io.ReadAll(io.LimitReader(r, 64))
			if !strings.HasPrefix(string(b), "2.") {
				return kmp.InputErrorf(path, "unsupported deb format %q", strings.TrimSpace(string(b)))
			}
			sawBinary = true
		case strings.HasPrefix(name, "data.tar"):
			if !sawBinary {
				return kmp.InputErrorf(path, "data member before debian-binary: not a Debian package")
			}
			suffix := strings.TrimPrefix(name, "data.tar")
			if suffix == ".bz2" {
				return untar(path, bzip2.NewReader(io.LimitReader(r, h.Size)), x)
			}
			c, ok := debTarCompression(suffix)
			if !ok {
				return kmp.InputErrorf(path, "unsupported member %q", name)
			}
			dr, done, err := module.DecompressReader(io.LimitReader(r, h.Size), c)
			if err != nil {
				return kmp.InputErrorf(path, "member %q: %v", name, err)
			}
			defer done()
			return untar(path, dr, x)
		}
	}
	return kmp.InputErrorf(path, "no data.tar member: not a Debian binary package")
}

// debTarCompression is the compression of a .deb's control.tar or data.tar member, from its
// name's suffix after ".tar" ("", ".gz", ".xz", ".zst").
func debTarCompression(suffix string) (module.Compression, bool) {
	switch suffix {
	case "":
		return module.CompressNone, true
	case ".gz":
		return module.CompressGzip, true
	case ".xz":
		return module.CompressXZ, true
	case ".zst":
		return module.CompressZstd, true
	}
	return "", false
}

func untar(path string, r io.Reader, x *extractor) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return kmp.InputErrorf(path, "corrupt data.tar: %v", err)
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
	if err := checkRPMHeaderSizes(f); err != nil {
		return kmp.InputErrorf(path, "corrupt RPM header: %v", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	rpm, err := rpmutils.ReadRpm(bufio.NewReader(f))
	if err != nil {
		return kmp.InputErrorf(path, "corrupt RPM header: %v", err)
	}
	pr, err := rpm.PayloadReaderExtended()
	if err != nil {
		return kmp.InputErrorf(path, "RPM payload: %v", err)
	}
	// cpio stores a hard-link set's data with its last member; earlier members come empty.
	pendingLinks := map[uint64][]string{}
	pendingBytes := 0
	for {
		fi, err := pr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return kmp.InputErrorf(path, "corrupt RPM payload: %v", err)
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
				// Counted and checked now (a payload can repeat a name without end), made
				// once the set's data arrives.
				if _, err := x.clean(name); err != nil {
					return err
				}
				if slices.Contains(pendingLinks[ino], name) {
					return x.fail(name, "hard link listed twice")
				}
				if pendingBytes += len(name); pendingBytes > maxPendingLinkNames {
					return x.fail(name, "more than %d bytes of hard link names waiting for their data", maxPendingLinkNames)
				}
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

// maxPendingLinkNames bounds the names of hard links an RPM payload lists before their data.
const maxPendingLinkNames = 64 << 20

// rpm's own bounds on a header (lib/header.c: HEADER_TAGS_MAX, HEADER_DATA_MAX). The
// library that parses the header allocates what the file claims, so they are checked first.
const (
	rpmHeaderTagsMax = 0xffff
	rpmHeaderDataMax = 0x0fffffff
)

// checkRPMHeaderSizes walks the lead and the signature and main headers and refuses what rpm
// itself would refuse (lib/header.c headerVerifyInfo), before anything is allocated or sliced
// from them: counts and sizes past rpm's limits, and index entries whose data does not lie
// inside the header's data store (go-rpmutils slices offset+count unchecked and panics).
func checkRPMHeaderSizes(r io.ReadSeeker) error {
	if _, err := r.Seek(96, io.SeekStart); err != nil { // the lead
		return err
	}
	for i, what := range []string{"signature", "main"} {
		var intro [16]byte
		if _, err := io.ReadFull(r, intro[:]); err != nil {
			return fmt.Errorf("%s header truncated", what)
		}
		if !bytes.Equal(intro[:3], []byte{0x8e, 0xad, 0xe8}) {
			return fmt.Errorf("%s header: bad magic", what)
		}
		nindex := binary.BigEndian.Uint32(intro[8:12])
		hsize := binary.BigEndian.Uint32(intro[12:16])
		if nindex > rpmHeaderTagsMax || hsize > rpmHeaderDataMax {
			return fmt.Errorf("%s header claims %d tags and %d bytes of data (rpm allows %d and %d)", what, nindex, hsize, rpmHeaderTagsMax, rpmHeaderDataMax)
		}
		index := make([]byte, int(nindex)*16)
		if _, err := io.ReadFull(r, index); err != nil {
			return fmt.Errorf("%s header index truncated", what)
		}
		// The file must hold the data it claims before it is read into memory.
		pos, err := r.Seek(0, io.SeekCurrent)
		if err != nil {
			return err
		}
		end, err := r.Seek(0, io.SeekEnd)
		if err != nil {
			return err
		}
		if end-pos < int64(hsize) {
			return fmt.Errorf("%s header data truncated", what)
		}
		if _, err := r.Seek(pos, io.SeekStart); err != nil {
			return err
		}
		data := make([]byte, hsize)
		if _, err := io.ReadFull(r, data); err != nil {
			return fmt.Errorf("%s header data truncated", what)
		}
		for e := 0; e < int(nindex); e++ {
			ent := index[e*16 : e*16+16]
			tag, typ := binary.BigEndian.Uint32(ent[0:4]), binary.BigEndian.Uint32(ent[4:8])
			off, count := uint64(binary.BigEndian.Uint32(ent[8:12])), uint64(binary.BigEndian.Uint32(ent[12:16]))
			if err := checkRPMEntry(typ, off, count, data); err != nil {
				return fmt.Errorf("%s header tag %d: %v", what, tag, err)
			}
		}
		if i == 0 {
			pad := (8 - int64(hsize)%8) % 8 // the signature header is padded to 8 bytes
			if _, err := r.Seek(pad, io.SeekCurrent); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkRPMEntry checks that one index entry's data lies inside the data store: fixed-size
// types by count*size, strings by their terminating NULs.
func checkRPMEntry(typ uint32, off, count uint64, data []byte) error {
	n := uint64(len(data))
	if off > n {
		return fmt.Errorf("data offset %d past the %d-byte data store", off, n)
	}
	if count == 0 && typ != 0 {
		return fmt.Errorf("count 0")
	}
	size := map[uint32]uint64{0: 0, 1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1}
	switch typ {
	case 0, 1, 2, 3, 4, 5, 7: // NULL, CHAR, INT8, INT16, INT32, INT64, BIN
		if count > n || off+count*size[typ] > n {
			return fmt.Errorf("%d items of type %d at offset %d run past the %d-byte data store", count, typ, off, n)
		}
	case 6, 8, 9: // STRING, STRING_ARRAY, I18NSTRING: count NUL-terminated strings
		if typ == 6 && count != 1 {
			return fmt.Errorf("a string with count %d", count)
		}
		if count > n {
			return fmt.Errorf("%d strings in a %d-byte data store", count, n)
		}
		rest := data[off:]
		for k := uint64(0); k < count; k++ {
			z := bytes.IndexByte(rest, 0)
			if z < 0 {
				return fmt.Errorf("string %d at offset %d is not terminated inside the data store", k, off)
			}
			rest = rest[z+1:]
		}
	default:
		return fmt.Errorf("unknown data type %d", typ)
	}
	return nil
}

var absIncludeRE = regexp.MustCompile(`(?m)^(\s*-?include\s+)(/\S+)`)

// relocateMakefiles points the absolute includes in the unpacked trees' top Makefiles (Debian's
// "include /usr/src/linux-headers-<abi>-common/Makefile", the same shape in SUSE's -obj trees)
// into finalRoot, where the tree will live, when the included file is part of the set. Every
// read and write goes through root; a Makefile is replaced by a new file, never written in
// place, so a hard link can never carry the change to another file.
func relocateMakefiles(root *os.Root, rootDir, finalRoot string) error {
	dirs, _ := kernel.CandidateDirs(rootDir)
	for _, dir := range dirs {
		rel, err := filepath.Rel(rootDir, dir)
		if err != nil || !kmp.LexicallyInside(rel) {
			continue
		}
		mk := filepath.Join(rel, "Makefile")
		b, mode, err := kmp.ReadRootFile(root, mk, maxMakefile)
		if err != nil {
			continue
		}
		changed := false
		out := absIncludeRE.ReplaceAllFunc(b, func(m []byte) []byte {
			sub := absIncludeRE.FindSubmatch(m)
			target := string(sub[2])
			if _, err := root.Stat(strings.TrimLeft(target, "/")); err != nil {
				return m
			}
			changed = true
			return append(append([]byte{}, sub[1]...), filepath.Join(finalRoot, target)...)
		})
		if !changed {
			continue
		}
		tmp := mk + ".kmpack-new"
		if err := root.WriteFile(tmp, out, mode.Perm()); err != nil {
			return err
		}
		if err := root.Rename(tmp, mk); err != nil {
			return err
		}
	}
	return nil
}

const maxMakefile = 1 << 20

// OpenPackageTrees unpacks package files (cached) and describes the kernel trees they hold.
func OpenPackageTrees(cacheDir string, files []string) (*PackageSet, *kernel.Discovery, error) {
	set, err := UnpackPackages(cacheDir, files)
	if err != nil {
		return nil, nil, err
	}
	d, err := kernel.DiscoverKernelTrees(set.Root)
	if err != nil {
		return nil, nil, err
	}
	for _, t := range d.Trees {
		t.Packages = set.Packages
	}
	if len(d.Trees) == 0 {
		// A set with no tree is of no use to any later run: leave nothing behind.
		if !set.Cached {
			os.RemoveAll(filepath.Dir(set.Root))
		}
		reason := "no configured kernel tree among their files"
		if strings.Contains(strings.Join(files, " "), "common") && len(files) == 1 {
			reason += " (a -common package needs its flavor's headers package too)"
		}
		return set, d, kmp.InputErrorf(strings.Join(files, ", "), "%s", reason)
	}
	return set, d, nil
}
