package proc

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// OwnerEnv is the environment variable every child of an owned directory's user carries
// (TagEnv): its value is the directory. A later kmpack that finds the directory abandoned
// kills the processes still carrying it (make and cc1 of a kmpack that was killed with -9).
const OwnerEnv = "KMPACK_WORK"

// OwnedDir is a directory a running kmpack owns: its name records the owner's pid
// (<prefix><pid>-<random>) and the owner holds an flock on it while it lives.
type OwnedDir struct {
	Path string
	f    *os.File
}

// MkdirOwned creates parent/<prefix><pid>-<random> and locks it.
func MkdirOwned(parent, prefix string) (*OwnedDir, error) {
	dir, err := os.MkdirTemp(parent, prefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, err
	}
	f, err := os.Open(dir)
	if err == nil {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		os.Remove(dir)
		return nil, err
	}
	return &OwnedDir{Path: dir, f: f}, nil
}

// TagEnv is the OwnerEnv entry for the children working in d.
func (d *OwnedDir) TagEnv() string { return OwnerEnv + "=" + d.Path }

// keepMarker, in an owned directory, asks CleanStale to leave it (kmpack build --keep-work).
const keepMarker = ".kmpack-keep"

// Keep marks the directory as kept for inspection: CleanStale never removes it.
func (d *OwnedDir) Keep() error {
	return os.WriteFile(filepath.Join(d.Path, keepMarker), nil, 0o644)
}

// Remove deletes the directory (unless keep) and releases it.
func (d *OwnedDir) Remove(keep bool) error {
	var err error
	if !keep {
		err = os.RemoveAll(d.Path)
	}
	d.f.Close()
	return err
}

// CleanStale removes what dead kmpacks left in parent under prefix: directories named
// <prefix><pid>-* (and <prefix><pid>-*.<anything>) whose pid is not running and whose flock is
// free (and that were not kept with Keep), after killing the processes that still carry their OwnerEnv tag. It returns what it
// removed. Errors are not fatal to the caller: a stale directory only wastes space.
func CleanStale(parent, prefix string) []string {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidText, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() || alive(pid) {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		if _, err := os.Lstat(filepath.Join(dir, keepMarker)); err == nil {
			continue
		}
		f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_DIRECTORY, 0)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			f.Close() // someone (another pid namespace?) still holds it
			continue
		}
		KillTagged(dir)
		if os.RemoveAll(dir) == nil {
			removed = append(removed, dir)
		}
		f.Close()
	}
	return removed
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// KillTagged sends SIGKILL to every process whose environment carries OwnerEnv=dir.
func KillTagged(dir string) {
	tag := []byte("\x00" + OwnerEnv + "=" + dir + "\x00")
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile("/proc/" + p.Name() + "/environ")
		if err != nil {
			continue
		}
		if bytes.Contains(append([]byte{0}, env...), tag) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
