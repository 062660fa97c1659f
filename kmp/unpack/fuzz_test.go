package unpack_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/unpack"
)

// checkErr is what every parser of untrusted bytes promises: an error is an *InputError on one
// line naming the input, and it never comes from a recovered panic.
func checkErr(t *testing.T, name string, err error) {
	if err == nil {
		return
	}
	msg := err.Error()
	if strings.Contains(msg, "parser failed") {
		t.Fatalf("panic in parser: %s", msg)
	}
	if !kmp.IsInputError(err) || !strings.HasPrefix(msg, name+": ") || strings.Contains(msg, "\n") {
		t.Fatalf("not a one-line input error naming %s: %q", name, msg)
	}
}

// FuzzUnpackPackage feeds arbitrary bytes as a package file: nothing may panic and nothing may
// be written outside the cache directory.
func FuzzUnpackPackage(f *testing.F) {
	dir := f.TempDir()
	f.Add(testenv.MustRead(f, makeDeb(f, dir, []tarEntry{{name: "./usr/src/x/", typ: '5'}, {name: "./usr/src/x/f", typ: '0', body: "data"}, {name: "./lib/b", link: "/usr/src/x", typ: '2'}})))
	f.Add(testenv.MustRead(f, makeDeb(f, dir, []tarEntry{{name: "./a", link: "..", typ: '2'}, {name: "./b", link: "a/x", typ: '2'}})))
	f.Fuzz(func(t *testing.T, data []byte) {
		outer := t.TempDir()
		pkg := filepath.Join(outer, "fuzz.deb")
		os.WriteFile(pkg, data, 0o644)
		cache := filepath.Join(outer, "cache")
		_, err := unpack.UnpackPackages(cache, []string{pkg})
		checkErr(t, pkg, err)
		entries, _ := os.ReadDir(outer)
		for _, e := range entries {
			if e.Name() != "fuzz.deb" && e.Name() != "cache" {
				t.Fatalf("wrote %s outside the cache", e.Name())
			}
		}
		if err != nil {
			left, _ := os.ReadDir(filepath.Join(cache, "trees"))
			if len(left) != 0 {
				t.Fatalf("failed unpack left %v", left)
			}
		}
	})
}
