package kmp

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// hostSecretSize is the length of the host secret in bytes.
const hostSecretSize = 32

// HostSecretPath is where HostSecret keeps this user's secret: $XDG_CONFIG_HOME/kmpack (or
// ~/.config/kmpack)/cache-secret, outside every cache directory.
func HostSecretPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "kmpack", "cache-secret"), nil
}

// HostSecret returns a random secret of this user on this machine, made on first use. Caches
// that may come from elsewhere (a CI cache restored into --cache-dir, a shared directory)
// authenticate what this user's kmpack wrote with it: an entry someone else planted, however
// consistent, carries no valid MAC. The file must be a regular file of this user that no one
// else can read or write.
func HostSecret() ([]byte, error) {
	p, err := HostSecretPath()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	for try := 0; try < 2; try++ {
		f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
		if errors.Is(err, fs.ErrNotExist) {
			if err := makeHostSecret(p); err != nil && !errors.Is(err, fs.ErrExist) {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, UnwrapPathError(err))
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 != 0 || !ok || int(st.Uid) != os.Geteuid() || fi.Size() != hostSecretSize {
			return nil, fmt.Errorf("%s: not a %d-byte regular file of this user readable by no one else", p, hostSecretSize)
		}
		b := make([]byte, hostSecretSize)
		if _, err := f.ReadAt(b, 0); err != nil {
			return nil, err
		}
		return b, nil
	}
	return nil, fmt.Errorf("%s: cannot be made", p)
}

func makeHostSecret(p string) error {
	b := make([]byte, hostSecretSize)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.tmp-%d", p, os.Getpid())
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// A link, unlike a rename, never replaces a secret another kmpack made meanwhile.
		err = os.Link(tmp, p)
	}
	os.Remove(tmp)
	return err
}
