package kmp

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

// ReadRootFile reads a regular file below root, at most max bytes, without blocking on a FIFO
// or following a symlink out of root.
func ReadRootFile(root *os.Root, rel string, max int64) ([]byte, fs.FileMode, error) {
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%s: not a regular file", rel)
	}
	if fi.Size() > max {
		return nil, 0, fmt.Errorf("%s: larger than %d bytes", rel, max)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(b)) > max {
		err = fmt.Errorf("%s: larger than %d bytes", rel, max)
	}
	return b, fi.Mode(), err
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
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file", rel)
	}
	return f, nil
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
