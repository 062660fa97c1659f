package target

import (
	"os"
	"path/filepath"
	"testing"
)

// On a usr-merged root (/lib -> usr/lib, as on this Debian 12 host) autoinstall's files are
// its own; a link planted below lib/modules/K still makes them someone else's.
func TestOwnFileUsrMerged(t *testing.T) {
	dir := t.TempDir()
	mod := "usr/lib/modules/6.1.0-54-amd64/updates/kmpack-built/foo"
	if err := os.MkdirAll(filepath.Join(dir, mod), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, mod, "foo.ko"), []byte("ko"), 0o644)
	os.Symlink("usr/lib", filepath.Join(dir, "lib"))
	os.MkdirAll(filepath.Join(dir, "elsewhere"), 0o755)
	os.WriteFile(filepath.Join(dir, "elsewhere", "bar.ko"), []byte("ko"), 0o644)
	os.Symlink("../../../../../../elsewhere", filepath.Join(dir, "usr/lib/modules/6.1.0-54-amd64/updates/kmpack-built/bar"))
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f := "/lib/modules/6.1.0-54-amd64/updates/kmpack-built/foo/foo.ko"
	if !ownFile(r, f) || !filesPresent(r, []string{f}) {
		t.Errorf("%s on a usr-merged root: not autoinstall's", f)
	}
	planted := "/lib/modules/6.1.0-54-amd64/updates/kmpack-built/bar/bar.ko"
	if ownFile(r, planted) {
		t.Errorf("%s through a planted link: taken for autoinstall's", planted)
	}
	if err := removeOwn(r, planted); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "elsewhere", "bar.ko")); err != nil {
		t.Errorf("removeOwn through a planted link removed the file it leads to: %v", err)
	}
	if err := removeOwn(r, f); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, mod, "foo.ko")); err == nil {
		t.Error("removeOwn left autoinstall's file on a usr-merged root")
	}
}
