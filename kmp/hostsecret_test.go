package kmp_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp"
)

func TestHostSecret(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", dir)
	a, err := kmp.HostSecret()
	if err != nil || len(a) != 32 {
		t.Fatalf("%x %v", a, err)
	}
	b, err := kmp.HostSecret()
	if err != nil || !bytes.Equal(a, b) {
		t.Fatalf("a second call gave %x %v, want the same secret", b, err)
	}
	p := filepath.Join(dir, "kmpack", "cache-secret")
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%v %v", fi.Mode(), err)
	}
	// Readable by others, or a link: refused, not used.
	os.Chmod(p, 0o644)
	if _, err := kmp.HostSecret(); err == nil || !strings.Contains(err.Error(), "readable by no one else") {
		t.Errorf("group-readable secret: %v", err)
	}
	os.Chmod(p, 0o600)
	os.Rename(p, p+".real")
	os.Symlink(p+".real", p)
	if _, err := kmp.HostSecret(); err == nil {
		t.Errorf("a secret behind a symlink was used")
	}
}
