package weakupdates

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"
)

// MaxModuleSize bounds a module file the engine reads (compressed or not; decompression is
// bounded by kmp.MaxDecompressed, also 1 GiB). The largest modules distributions ship (GPU
// drivers with debug info) are a few hundred MiB; anything bigger is not a module.
const MaxModuleSize = 1 << 30

// rel turns a path from the root ("/lib/modules/...") into one for os.Root ("lib/modules/...").
func rel(p string) string {
	p = strings.TrimLeft(p, "/")
	if p == "" {
		return "."
	}
	return p
}

// WriteAtomic writes a file under r whole or not at all, and durably: the data is synced
// before the rename and the directory after it.
func WriteAtomic(r *os.Root, name string, b []byte) error {
	dir := dirOf(name)
	if err := r.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := name + ".tmp"
	r.Remove(tmp)
	f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		r.Remove(tmp)
		return err
	}
	if err := r.Rename(tmp, name); err != nil {
		return err
	}
	return syncDir(r, dir)
}

// RemoveDurably removes a file and syncs its directory; a missing file is no error.
func RemoveDurably(r *os.Root, name string) error {
	if err := r.Remove(name); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	return syncDir(r, dirOf(name))
}

func syncDir(r *os.Root, dir string) error {
	d, err := r.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func dirOf(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[:i]
	}
	return "."
}

// DefaultLockTimeout is how long a run waits for another to finish before giving up.
const DefaultLockTimeout = 10 * time.Minute

// LockFile takes the engine's lock under r: exclusive for runs that change things, shared
// for dry runs, which never create it (no lock file, no state directory: a dry run writes
// nothing). It waits at most timeout; the lock goes with the process, however it exits.
func LockFile(r *os.Root, name string, shared bool, timeout time.Duration) (func(), error) {
	var f *os.File
	var err error
	if shared {
		f, err = r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if errors.Is(err, fs.ErrNotExist) {
			return func() {}, nil // no run ever changed anything
		}
	} else {
		if err := r.MkdirAll(dirOf(name), 0o755); err != nil {
			return nil, err
		}
		f, err = r.OpenFile(name, os.O_CREATE|os.O_RDWR|syscall.O_NONBLOCK, 0o644)
	}
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_EX
	if shared {
		how = syscall.LOCK_SH
	}
	deadline := time.Now().Add(timeout)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, err
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("another kmpack run still holds the lock after waiting %v", timeout)
		}
		time.Sleep(min(wait, time.Until(deadline)+time.Millisecond))
	}
}
