package unpack_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp/unpack"
)

// FindKernels opens directories side by side, but reports each argument's tree or error in the
// arguments' order, as one-after-another opening did (kmpack init names the first error).
func TestFindKernelsKeepsArgumentOrder(t *testing.T) {
	installed, _ := filepath.Glob("/usr/src/linux-headers-6.1.0-5[34]-amd64")
	if len(installed) != 2 {
		t.Fatalf("want the installed 6.1.0-53 and -54 amd64 headers (scripts/setup.sh), found %v", installed)
	}
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	missing := filepath.Join(dir, "missing")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{empty, installed[1], missing, installed[0], empty + "/../empty"}
	found, err := unpack.FindKernels(t.TempDir(), "/", args)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{empty + ": not a kernel devel tree: no Makefile", missing + ": ", empty + "/../empty: not a kernel devel tree"}
	if len(found.Errors) != len(want) {
		t.Fatalf("errors %q, want %d", found.Errors, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(found.Errors[i], w) {
			t.Errorf("error %d is %q, want it to start with %q", i, found.Errors[i], w)
		}
	}
	if len(found.Trees) != 2 || found.Trees[0].Release != "6.1.0-53-amd64" || found.Trees[1].Release != "6.1.0-54-amd64" {
		t.Fatalf("trees %v", found.Trees)
	}
}
