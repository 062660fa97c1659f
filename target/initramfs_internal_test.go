package target

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
)

// On a system whose kernels kernel-install lays out the Boot Loader Specification's way, the
// initramfs is $BOOT/<entry token>/<release>/initrd: it is read there (the entry token file's
// token first, then the machine id); a token that is not a plain name is never followed.
func TestInitramfsBLSLayout(t *testing.T) {
	testenv.Need(t, "cpio")
	k := "6.12.57+deb13-amd64"
	dir := t.TempDir()
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "usr/lib/modules", k, "updates/x"), 0o755)
	os.WriteFile(filepath.Join(tree, "usr/lib/modules", k, "updates/x/foo.ko"), []byte("m"), 0o644)
	cmd := exec.Command("sh", "-c", "find . | LC_ALL=C sort | cpio --quiet -o -H newc")
	cmd.Dir = tree
	img, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "etc/kernel"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc/machine-id"), []byte("0123456789abcdef0123456789abcdef\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "etc/kernel/entry-token"), []byte("../../etc\n"), 0o644)
	os.MkdirAll(filepath.Join(dir, "efi/0123456789abcdef0123456789abcdef", k), 0o755)
	os.WriteFile(filepath.Join(dir, "efi/0123456789abcdef0123456789abcdef", k, "initrd"), img, 0o644)
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	o := &Options{Root: dir}
	got, why := o.staleInitramfs(r, k, []string{"foo"})
	if got != "efi/0123456789abcdef0123456789abcdef/"+k+"/initrd" || why != "it holds foo" {
		t.Fatalf("stale image %q (%s)", got, why)
	}
	if got, _ := o.staleInitramfs(r, k, []string{"bar"}); got != "" {
		t.Fatalf("an image without the module: %q", got)
	}
	for _, img := range initramfsImages(r, k) {
		if filepath.Clean(img) != img || img[0] == '/' || len(img) > 2 && img[:3] == "../" {
			t.Fatalf("image path %q", img)
		}
	}
	if toks := entryTokens(r); len(toks) != 1 {
		t.Fatalf("entry tokens %q: the entry-token file's is not a plain name", toks)
	}
}
