package unpack_test

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/google/rpmpack"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/unpack"
)

// snapshot records everything under dir except skip: kind, mode, size, link target, content.
func snapshot(t *testing.T, dir, skip string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			snap[p] = "error: " + err.Error()
			return nil
		}
		if p == skip {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			snap[p] = "error: " + err.Error()
			return nil
		}
		desc := fi.Mode().String() + " " + strconv.FormatInt(fi.Size(), 10) + " " + fi.ModTime().String()
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			desc += " -> " + l
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			desc += " " + string(b)
		}
		snap[p] = desc
		return nil
	})
	return snap
}

// resolvesInside follows p component by component as the kernel does (absolute targets from the
// real /, ".." after a symlink from where the link led), through every symlink, and tells whether
// the result is under root. Past a missing component the rest is judged lexically (the kernel
// would fail there, so this is only stricter).
func resolvesInside(root, p string) bool {
	cur := "/"
	todo := strings.Split(p, "/")
	for hops := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		fi, err := os.Lstat(next)
		if err != nil {
			return within(root, filepath.Join(append([]string{next}, todo...)...))
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return true // ELOOP: resolves nowhere
		}
		l, _ := os.Readlink(next)
		if strings.HasPrefix(l, "/") {
			cur = "/"
		}
		todo = append(strings.Split(l, "/"), todo...)
	}
	return within(root, cur)
}

// TestResolvesInside checks the fuzz targets' own escape check.
func TestResolvesInside(t *testing.T) {
	root := filepath.Join(t.TempDir(), "a", "root")
	os.MkdirAll(filepath.Join(root, "x"), 0o755)
	links := map[string]string{"x/up": "../..", "abs": "/etc", "chain": "x/up/y", "x/in": "../x", "dang": "missing/../../..",
		"dang2": "nothere", "r": ".", "l": "r/..", "loop": "loop"}
	for n, target := range links {
		os.Symlink(target, filepath.Join(root, n))
	}
	want := map[string]bool{"x/up": false, "abs": false, "chain": false, "x/in": true, "dang": false, "dang2": true, "r": true, "l": false, "loop": true}
	for n, w := range want {
		if got := resolvesInside(root, filepath.Join(root, n)); got != w {
			t.Errorf("%s -> %s: inside %v, want %v", n, links[n], got, w)
		}
	}
}

func within(root, p string) bool {
	rel, err := filepath.Rel(root, filepath.Clean(p))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// checkUnpack unpacks data as pkgName with the cache at <tmp>/a/root, next to decoys, and
// checks the invariant of every package reader: no panic; an error is a one-line InputError naming
// the package and leaves no tree behind; nothing outside the cache changed (the rest of the
// temporary tree is snapshotted before and compared after); no symlink in the result resolves
// outside the cache.
func checkUnpack(t *testing.T, pkgName string, data []byte) {
	tmp := t.TempDir()
	cache := filepath.Join(tmp, "a", "root")
	for _, d := range []string{cache, filepath.Join(tmp, "a", "etc"), filepath.Join(tmp, "b", "usr", "src")} {
		os.MkdirAll(d, 0o755)
	}
	tmp, _ = filepath.EvalSymlinks(tmp) // the cache resolves its own path; compare like with like
	cache = filepath.Join(tmp, "a", "root")
	os.WriteFile(filepath.Join(tmp, "a", "etc", "passwd"), []byte("root:x:0:0\n"), 0o644)
	os.WriteFile(filepath.Join(tmp, "a", "sibling"), []byte("keep\n"), 0o644)
	os.Symlink("../b", filepath.Join(tmp, "a", "link"))
	pkg := filepath.Join(tmp, "b", pkgName)
	os.WriteFile(pkg, data, 0o644)
	before := snapshot(t, tmp, cache)
	_, err := unpack.UnpackPackages(cache, []string{pkg})
	testenv.CheckInputError(t, pkg, err)
	after := snapshot(t, tmp, cache)
	if !reflect.DeepEqual(before, after) {
		for p, d := range after {
			if before[p] != d {
				t.Errorf("outside the cache: %s is now %q (was %q)", p, testenv.Truncate(d, 80), testenv.Truncate(before[p], 80))
			}
		}
		for p := range before {
			if _, ok := after[p]; !ok {
				t.Errorf("outside the cache: %s is gone", p)
			}
		}
		t.FailNow()
	}
	if err != nil {
		left, _ := os.ReadDir(filepath.Join(cache, "trees"))
		if len(left) != 0 {
			t.Fatalf("failed unpack left %v", left)
		}
		return
	}
	filepath.WalkDir(cache, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type()&os.ModeSymlink != 0 && !resolvesInside(cache, p) {
			l, _ := os.Readlink(p)
			t.Fatalf("symlink %s -> %s resolves outside the cache", p, l)
		}
		return nil
	})
}

// FuzzUnpackPackage feeds arbitrary bytes as a .deb (ar, data.tar in any compression); see
// checkUnpack for the invariant.
func FuzzUnpackPackage(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	dir := f.TempDir()
	f.Add(testenv.MustRead(f, makeDeb(f, dir, []tarEntry{{name: "./usr/src/x/", typ: '5'}, {name: "./usr/src/x/f", typ: '0', body: "data"}, {name: "./lib/b", link: "/usr/src/x", typ: '2'}})))
	f.Add(testenv.MustRead(f, makeDeb(f, dir, []tarEntry{{name: "./a", link: "..", typ: '2'}, {name: "./b", link: "a/x", typ: '2'}})))
	f.Add(testenv.MustRead(f, makeDeb(f, dir, []tarEntry{{name: "./d/", typ: '5'}, {name: "./d/l", link: "../../../etc", typ: '2'}, {name: "./h", link: "./d/l", typ: '1'}})))
	// The extractor keeps the last file's directory open and remembers directories it made:
	// files in it, a link beside it, a file again (replaced), the directory as a link.
	f.Add(testenv.MustRead(f, makeDeb(f, dir, []tarEntry{{name: "./d/", typ: '5'}, {name: "./d/f", typ: '0', body: "1"}, {name: "./e", link: "d", typ: '2'},
		{name: "./e/g", typ: '0', body: "2"}, {name: "./d/f", typ: '0', body: "3"}, {name: "./d", link: "/etc", typ: '2'}, {name: "./d/h", typ: '0', body: "4"}})))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkUnpack(t, "fuzz.deb", data)
	})
}

// FuzzUnpackRPM feeds arbitrary bytes as an .rpm (lead, signature and main headers read by
// go-rpmutils through kmp, then the cpio payload); see checkUnpack for the invariant.
func FuzzUnpackRPM(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	for _, files := range [][]rpmpack.RPMFile{
		{{Name: "/usr/src/x", Mode: 0o40755}, {Name: "/usr/src/x/Makefile", Body: []byte("all:\n"), Mode: 0o100644},
			{Name: "/lib/modules/1/build", Body: []byte("/usr/src/x"), Mode: 0o120777}},
		{{Name: "/usr/src/l", Body: []byte("../../../../etc"), Mode: 0o120777}, {Name: "/usr/src/l/passwd", Body: []byte("x"), Mode: 0o100644}},
	} {
		r, err := rpmpack.NewRPM(rpmpack.RPMMetaData{Name: "fuzz", Version: "1", Release: "1", Arch: "noarch", Compressor: "gzip"})
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			r.AddFile(file)
		}
		var b bytes.Buffer
		if err := r.Write(&b); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkUnpack(t, "fuzz.rpm", data)
	})
}
