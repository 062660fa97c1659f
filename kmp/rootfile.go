package kmp

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// OpenRootFile opens rel below root for reading, and only if it is a regular file: it is opened
// non-blocking (a FIFO or device in its place cannot block the open) and the opened file, not
// the name, is checked. The os.Root keeps every link on the way inside root; with noFollow the
// last component may not be a link at all.
func OpenRootFile(root *os.Root, rel string, noFollow bool) (*os.File, fs.FileInfo, error) {
	flags := os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_NOCTTY
	if noFollow {
		flags |= syscall.O_NOFOLLOW
	}
	f, err := root.OpenFile(rel, flags, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: not a regular file (%s)", rel, FileKind(fi.Mode()))
	}
	return f, fi, nil
}

// FileKind names a file's type for messages ("a FIFO", "a directory").
func FileKind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "type " + m.Type().String()
}

// ReadRootFile reads a regular file below root (OpenRootFile), at most max bytes.
func ReadRootFile(root *os.Root, rel string, max int64) ([]byte, fs.FileMode, error) {
	f, fi, err := openBounded(root, rel, max)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	b, err := readBounded(f, fi.Size(), max)
	if err == nil && int64(len(b)) > max {
		err = tooLarge(rel, max)
	}
	return b, fi.Mode(), err
}

// openBounded is OpenRootFile of a file to be read to at most max bytes: one that says it is
// larger is refused before a byte is read (what it turns out to hold is the reader's check).
func openBounded(root *os.Root, rel string, max int64) (*os.File, fs.FileInfo, error) {
	if max < 0 || max > maxReadBound {
		return nil, nil, fmt.Errorf("read bound %d out of range", max)
	}
	f, fi, err := OpenRootFile(root, rel, false)
	if err != nil {
		return nil, nil, err
	}
	if fi.Size() > max {
		f.Close()
		return nil, nil, tooLarge(rel, max)
	}
	return f, fi, nil
}

func tooLarge(rel string, max int64) error {
	return fmt.Errorf("%s: larger than %d bytes", rel, max)
}

// readBounded reads r to its end, at most limit+1 bytes, into a buffer sized for the file's
// stated size: a kernel tree's Module.symvers is read in one allocation instead of io.ReadAll's
// doublings (a no-change rebuild reads nine of them). The size is only a hint: a file that
// grew is still read to limit+1.
func readBounded(r io.Reader, size, limit int64) ([]byte, error) {
	if limit < 0 || limit > maxReadBound {
		return nil, fmt.Errorf("read bound %d out of range", limit)
	}
	// The stated size is believed up to preallocLimit: a file that claims a gigabyte (a FUSE
	// file, one that shrank) gets its buffer as its bytes arrive.
	size = min(max(size, 0), limit, preallocLimit)
	b := make([]byte, 0, size+1) // +1: reaching EOF needs room for one more read
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):min(int64(cap(b)), limit+1)])
		b = b[:len(b)+n]
		if err == io.EOF || int64(len(b)) > limit {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// maxReadBound keeps limit+1 from overflowing; preallocLimit is the most readBounded allocates
// before the bytes are there.
const (
	maxReadBound  = 1 << 40
	preallocLimit = 64 << 20
)

// HashRootFile is the sha256 of a regular file below root (OpenRootFile), at most max bytes,
// read in a stream: hashing a tree's identity needs no copy of its files.
func HashRootFile(root *os.Root, rel string, max int64) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, _, err := openBounded(root, rel, max)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, max+1))
	if err != nil {
		return sum, err
	}
	if n > max {
		return sum, tooLarge(rel, max)
	}
	h.Sum(sum[:0])
	return sum, nil
}

// LexicallyInside tells whether a slash-separated relative path stays below its base without
// following any symlink ("a/../b" does, "a/../../b" does not).
func LexicallyInside(p string) bool {
	p = path.Clean(p)
	return p != ".." && !strings.HasPrefix(p, "../")
}

// OpenInside opens rel under dir through an os.Root: symlinks are followed only as long as
// they stay inside dir. Only regular files are opened.
func OpenInside(dir, rel string) (*os.File, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, _, err := OpenRootFile(root, rel, false)
	return f, err
}

// StatInside is os.Stat of rel under dir, through an os.Root.
func StatInside(dir, rel string) (fs.FileInfo, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	return root.Stat(rel)
}

// ReadInside reads the regular file rel under dir through an os.Root.
func ReadInside(dir, rel string) ([]byte, error) {
	f, err := OpenInside(dir, rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// CopyFrom writes in to a new or truncated dst with perm.
func CopyFrom(in io.Reader, dst string, perm os.FileMode) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// HashEntry writes one entry of a tree below root into h: its path, mode, a symlink's target, a
// regular file's size and contents (read through OpenRootFile, never through a link). Source
// hashes (the build cache key) and unpacked trees' digests are both sequences of these.
func HashEntry(h io.Writer, root *os.Root, rel string, fi fs.FileInfo) error {
	return HashEntryAt(h, root, rel, rel, fi)
}

// HashEntryAt is HashEntry for the entry name of directory dir (from WalkRoot), hashed as rel.
func HashEntryAt(h io.Writer, dir *os.Root, name, rel string, fi fs.FileInfo) error {
	fmt.Fprintf(h, "%s\x00%o\x00", rel, fi.Mode())
	root := dir
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		t, err := root.Readlink(name)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00", t)
	case fi.Mode().IsRegular():
		f, _, err := OpenRootFile(root, name, true)
		if err != nil {
			return err
		}
		defer f.Close()
		fmt.Fprintf(h, "%d\x00", fi.Size())
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
	}
	return nil
}

// ReadRegularFile reads a file the operator names by path (a signing key, a passphrase or PIN
// file): only a regular file, opened non-blocking (a FIFO in its place cannot hang kmpack) and
// checked once open, at most max bytes. Errors carry no path: the caller names the file.
func ReadRegularFile(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, UnwrapPathError(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, UnwrapPathError(err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%s)", FileKind(fi.Mode()))
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, UnwrapPathError(err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return b, nil
}

// RemoveDeadTemps removes the entries of dir (beneath root) named <prefix><pid>-... for one of
// prefixes, whose kmpack (process pid) died while writing them; entries of living processes,
// and this one's, stay.
func RemoveDeadTemps(root *os.Root, dir string, prefixes ...string) {
	d, err := root.Open(dir)
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		for _, prefix := range prefixes {
			rest, ok := strings.CutPrefix(n, prefix)
			if !ok {
				continue
			}
			pidText, _, _ := strings.Cut(rest, "-")
			if pid, err := strconv.Atoi(pidText); err == nil && pid != os.Getpid() && !processAlive(pid) {
				root.RemoveAll(path.Join(dir, n))
			}
			break
		}
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// WalkRoot calls fn for root itself (rel ".") and every entry below it, in fs.WalkDir's order
// (parents first, names in lexical order), never following a link. Each entry comes with the
// directory holding it, opened as an os.Root, and its name there: reading an entry opens it
// in that directory, not by walking every component of its path from root again (for a
// kernel headers tree, 17,000 files 6-10 directories deep, that is most of the cost).
func WalkRoot(root *os.Root, fn func(dir *os.Root, name, rel string, fi fs.FileInfo) error) error {
	fi, err := root.Lstat(".")
	if err != nil {
		return err
	}
	if err := fn(root, ".", ".", fi); err != nil {
		return err
	}
	return walkRoot(root, "", fn)
}

func walkRoot(dir *os.Root, prefix string, fn func(dir *os.Root, name, rel string, fi fs.FileInfo) error) error {
	f, err := dir.Open(".")
	if err != nil {
		return err
	}
	entries, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return err
	}
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			return err
		}
		rel := prefix + e.Name()
		if err := fn(dir, e.Name(), rel, fi); err != nil {
			return err
		}
		if fi.IsDir() {
			sub, err := dir.OpenRoot(e.Name())
			if err != nil {
				return err
			}
			err = walkRoot(sub, rel+"/", fn)
			sub.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}
