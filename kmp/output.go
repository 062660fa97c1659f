package kmp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"

	"github.com/kmpack/kmpack/kmp/ident"
	"golang.org/x/sys/unix"
)

// OutputFormat and OutputFormatVersion mark a manifest.json as kmpack build's own: an output
// directory is only ever replaced when its manifest carries them.
const (
	OutputFormat        = "kmpack-build-output"
	OutputFormatVersion = 1
	// maxManifestSize bounds what is read of a manifest.json.
	maxManifestSize = 64 << 20
)

// ReadOutputManifest reads dir/manifest.json and checks that kmpack build wrote it. Anything
// else (no manifest, another program's manifest.json, an unknown format version) is an
// *InputError naming the directory.
func ReadOutputManifest(dir string) (*Manifest, error) {
	p := filepath.Join(dir, "manifest.json")
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, inputErrorf(dir, "not a kmpack build output: %v", unwrapPathError(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, inputErrorf(p, "%v", unwrapPathError(err))
	}
	if len(data) > maxManifestSize {
		return nil, inputErrorf(p, "larger than %d bytes: not a kmpack manifest", maxManifestSize)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, inputErrorf(p, "not a kmpack manifest: %v", err)
	}
	switch {
	case m.Format != OutputFormat:
		return nil, inputErrorf(p, "not a kmpack build manifest (no \"format\": %q)", OutputFormat)
	case m.FormatVersion != OutputFormatVersion:
		return nil, inputErrorf(p, "kmpack build output format version %d, this kmpack reads %d", m.FormatVersion, OutputFormatVersion)
	}
	// Names in the manifest become paths read by kmpack package: only kmpack's own pass.
	for _, k := range m.Kernels {
		if k == nil {
			return nil, inputErrorf(p, "an empty kernel record")
		}
		if err := ident.KernelRelease(k.Release); err != nil {
			return nil, inputErrorf(p, "%v", err)
		}
		for _, bm := range k.Modules {
			if bm == nil {
				return nil, inputErrorf(p, "kernel %s: an empty module record", k.Release)
			}
			base := path.Base(bm.File)
			if ident.PathComponent(base) != nil || bm.File != path.Join("modules", k.Release, base) {
				return nil, inputErrorf(p, "kernel %s: module file %q is not one kmpack writes", k.Release, bm.File)
			}
		}
		if k.Symvers != "" && k.Symvers != path.Join("modules", k.Release, "Module.symvers") {
			return nil, inputErrorf(p, "kernel %s: symvers %q is not one kmpack writes", k.Release, k.Symvers)
		}
	}
	return &m, nil
}

// checkOutputDir refuses to write over anything kmpack did not make: out must not exist, be an
// empty directory, or hold a manifest.json with kmpack's format marker.
func checkOutputDir(out string) error {
	fi, err := os.Lstat(out)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return inputErrorf(out, "cannot use as output directory: %v", unwrapPathError(err))
	}
	if !fi.IsDir() {
		return inputErrorf(out, "cannot use as output directory: it is not a directory (%s)", fileType(fi.Mode()))
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		return inputErrorf(out, "cannot use as output directory: %v", unwrapPathError(err))
	}
	if len(entries) == 0 {
		return nil
	}
	if _, err := ReadOutputManifest(out); err != nil {
		return inputErrorf(out, "output directory is not empty and is not a kmpack build output (no manifest.json with \"format\": %q); refusing to replace it", OutputFormat)
	}
	return nil
}

func fileType(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsRegular():
		return "a file"
	}
	return m.Type().String()
}

// outputLock is an flock on .<OUT>.lock next to the output directory, held for a whole build:
// a second kmpack build into the same output fails at once instead of mixing results.
type outputLock struct {
	path string
	f    *os.File
}

// ErrOutputLocked is returned (wrapped) when another kmpack holds the output's lock.
var ErrOutputLocked = errors.New("output directory is locked by another kmpack build")

// LockOutput takes the lock a build holds on the output directory out (for kmpack package,
// which writes into a build's output). unlock releases it.
func LockOutput(out string) (unlock func(), err error) {
	abs, err := filepath.Abs(out)
	if err != nil {
		return nil, err
	}
	l, err := lockOutput(abs)
	if err != nil {
		return nil, err
	}
	return l.unlock, nil
}

func lockOutput(out string) (*outputLock, error) {
	p := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".lock")
	for {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("locking the output directory: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%s: %w (lock file %s); wait for it to finish", out, ErrOutputLocked, p)
			}
			return nil, fmt.Errorf("locking the output directory: %w", err)
		}
		// The holder before us removes the file when it is done: make sure the lock we hold
		// is on the file that is there now.
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Lstat(p, &now) == nil && held.Ino == now.Ino && held.Dev == now.Dev {
			f.Truncate(0)
			fmt.Fprintf(f, "%d\n", os.Getpid())
			return &outputLock{path: p, f: f}, nil
		}
		f.Close()
	}
}

func (l *outputLock) unlock() {
	os.Remove(l.path)
	l.f.Close()
}
