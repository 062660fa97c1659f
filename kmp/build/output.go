package build

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/proc"
)

// checkOutputDir refuses to write over anything kmpack did not make: out must not exist, be an
// empty directory, or hold a manifest.json with kmpack's format marker.
func checkOutputDir(out string) error {
	fi, err := os.Lstat(out)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return kmp.InputErrorf(out, "cannot use as output directory: %v", kmp.UnwrapPathError(err))
	}
	if !fi.IsDir() {
		return kmp.InputErrorf(out, "cannot use as output directory: it is not a directory (%s)", kmp.FileKind(fi.Mode()))
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		return kmp.InputErrorf(out, "cannot use as output directory: %v", kmp.UnwrapPathError(err))
	}
	if len(entries) == 0 {
		return nil
	}
	if _, err := manifest.Read(out); err != nil {
		return kmp.InputErrorf(out, "output directory is not empty and is not a kmpack build output (no manifest.json with \"format\": %q); refusing to replace it", manifest.OutputFormat)
	}
	return nil
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

// outputStage is a locked output directory and the stage beside it that replaces it.
type outputStage struct {
	lock  *outputLock
	stage *proc.OwnedDir
}

// stageOutput takes out's lock (so that two writers of one output cannot mix), checks again
// that out is one kmpack may replace, and makes a stage beside it (removing what dead runs
// left). close unlocks and removes the stage unless it was renamed into place.
func stageOutput(out string) (*outputStage, error) {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, fmt.Errorf("creating the output directory's parent: %w", err)
	}
	lock, err := lockOutput(out)
	if err != nil {
		return nil, err
	}
	if err := checkOutputDir(out); err != nil {
		lock.unlock()
		return nil, err
	}
	stagePrefix := "." + filepath.Base(out) + ".tmp-"
	proc.CleanStale(filepath.Dir(out), stagePrefix)
	stage, err := proc.MkdirOwned(filepath.Dir(out), stagePrefix)
	if err != nil {
		lock.unlock()
		return nil, err
	}
	return &outputStage{lock: lock, stage: stage}, nil
}

// Path is the stage's directory.
func (o *outputStage) Path() string { return o.stage.Path }

func (o *outputStage) close() {
	o.stage.Remove(false)
	o.lock.unlock()
}
