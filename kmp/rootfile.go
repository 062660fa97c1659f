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
