package target_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/target"
)

// TestHostileStateRemovesNothingOutside: autoinstall deletes the files its state lists, so a
// state file naming anything else (another directory, a traversal, a link planted on the way)
// must make it delete nothing: the file is refused with a warning naming it and recomputed.
func TestHostileStateRemovesNothingOutside(t *testing.T) {
	const k = "6.1.0-53-amd64"
	for name, files := range map[string]string{
		"elsewhere": `"/etc/passwd.ko"`,
		"traversal": `"/lib/modules/` + k + `/updates/kmpack-built/m/../../../../../etc/passwd.ko"`,
		"other-kmp": `"/lib/modules/` + k + `/updates/m/m.ko"`,
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range []string{"etc/passwd.ko", "lib/modules/" + k + "/updates/m/m.ko"} {
				os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755)
				os.WriteFile(filepath.Join(root, f), []byte("keep"), 0o644)
			}
			state := `{"schema":"kmpack-autoinstall-state/1","kernels":{"` + k + `":{"m":{"state":"built-locally","files":[` + files + `]}}}}`
			os.MkdirAll(filepath.Join(root, "var/lib/kmpack/autoinstall"), 0o755)
			os.WriteFile(filepath.Join(root, "var/lib/kmpack/autoinstall/state.json"), []byte(state), 0o644)
			var warn bytes.Buffer
			if err := target.RemoveKernels(target.Options{Root: root, Warn: &warn}, []string{k}); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(warn.String(), filepath.Join(root, "var/lib/kmpack/autoinstall/state.json")) {
				t.Errorf("no warning naming the state file: %q", warn.String())
			}
			for _, f := range []string{"etc/passwd.ko", "lib/modules/" + k + "/updates/m/m.ko"} {
				if _, err := os.Stat(filepath.Join(root, f)); err != nil {
					t.Errorf("%s removed: %v", f, err)
				}
			}
		})
	}
	// A link planted where autoinstall's modules go, leading out of the root or to another
	// directory in it: nothing is removed through it.
	for name, link := range map[string]func(root string) (string, string){
		"out-of-root": func(root string) (string, string) { d := t.TempDir(); return d, d },
		"in-root":     func(root string) (string, string) { return filepath.Join(root, "etc"), "../../../../../etc" },
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			dir, target_ := link(root)
			os.MkdirAll(dir, 0o755)
			os.WriteFile(filepath.Join(dir, "x.ko"), []byte("keep"), 0o644)
			os.MkdirAll(filepath.Join(root, "lib/modules", k, "updates/kmpack-built"), 0o755)
			os.Symlink(target_, filepath.Join(root, "lib/modules", k, "updates/kmpack-built/m"))
			state := `{"schema":"kmpack-autoinstall-state/1","kernels":{"` + k + `":{"m":{"state":"built-locally","files":["/lib/modules/` + k + `/updates/kmpack-built/m/x.ko"]}}}}`
			os.MkdirAll(filepath.Join(root, "var/lib/kmpack/autoinstall"), 0o755)
			os.WriteFile(filepath.Join(root, "var/lib/kmpack/autoinstall/state.json"), []byte(state), 0o644)
			if err := target.RemoveKernels(target.Options{Root: root, Warn: &bytes.Buffer{}}, []string{k}); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(dir, "x.ko")); err != nil {
				t.Errorf("a file was removed through a planted link: %v", err)
			}
		})
	}
}
