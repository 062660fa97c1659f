package target_test

import (
	"archive/tar"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/target"
)

func opts(root string) target.Options { return target.Options{Root: root} }

// TestSourceAddListRemove adds the real hello source from a directory, the real acpi-call
// dkms source from a tarball (dkms.conf read, never run) and a *-dkms package's tree in place.
func TestSourceAddListRemove(t *testing.T) {
	root := t.TempDir()
	hello := testenv.ExampleSource(t, true)
	rec, err := target.AddSource(target.AddSourceOptions{Options: opts(root), Path: hello})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Name != "kmpack-hello" || rec.Version != "1.0" || rec.Kind != "kmpack.yaml" || !rec.Owned {
		t.Fatalf("record %+v", rec)
	}
	if _, err := os.Stat(filepath.Join(root, "usr/src/kmpack-hello-1.0/hello.c")); err != nil {
		t.Fatal(err)
	}
	// Again: refused, nothing changed.
	if _, err := target.AddSource(target.AddSourceOptions{Options: opts(root), Path: hello}); !kmp.IsInputError(err) || !strings.Contains(err.Error(), "already added") {
		t.Fatalf("second add: %v", err)
	}

	acpi := testenv.CorpusSource(t, "acpi-call-dkms", t.TempDir())
	tgz := filepath.Join(t.TempDir(), "acpi.tar.gz")
	if out, err := exec.Command("tar", "-C", filepath.Dir(acpi), "-czf", tgz, filepath.Base(acpi)).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	rec, err = target.AddSource(target.AddSourceOptions{Options: opts(root), Path: tgz})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Name != "acpi-call" || rec.Version != "1.2.2" || rec.Kind != "dkms.conf" {
		t.Fatalf("record %+v", rec)
	}

	// A *-dkms package's tree, already /usr/src/<name>-<version>: registered in place.
	inPlace := filepath.Join(root, "usr/src/kmpack-bare-2")
	testenv.CopyTree(t, testenv.ExampleSource(t, false), inPlace)
	if _, err := target.AddSource(target.AddSourceOptions{Options: opts(root), Path: inPlace}); !kmp.IsInputError(err) || !strings.Contains(err.Error(), "--name") {
		t.Fatalf("bare Kbuild without --name: %v", err)
	}
	rec, err = target.AddSource(target.AddSourceOptions{Options: opts(root), Path: inPlace, Name: "kmpack-bare", Version: "2"})
	if err != nil || rec.Owned {
		t.Fatalf("in place: %+v %v", rec, err)
	}
	// The same directory under another split of its name: one removal would take both.
	if _, err := target.AddSource(target.AddSourceOptions{Options: opts(root), Path: inPlace, Name: "kmpack", Version: "bare-2"}); !kmp.IsInputError(err) ||
		!strings.Contains(err.Error(), "where kmpack-bare 2 is registered") {
		t.Fatalf("kmpack bare-2 in kmpack-bare 2's directory: %v", err)
	}

	list, err := target.ListSources(opts(root))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range list {
		got = append(got, s.Name+"/"+s.Version)
	}
	if strings.Join(got, " ") != "acpi-call/1.2.2 kmpack-bare/2 kmpack-hello/1.0" {
		t.Fatalf("list: %v", got)
	}

	for _, ref := range []string{"kmpack-hello", "kmpack-bare/2"} {
		name, version, err := target.ParseSourceRef(ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := target.RemoveSource(opts(root), name, version); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "usr/src/kmpack-hello-1.0")); !os.IsNotExist(err) {
		t.Fatalf("owned copy left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(inPlace, "hello.c")); err != nil {
		t.Fatalf("a package's tree removed with its registration: %v", err)
	}
	if err := target.RemoveSource(opts(root), "kmpack-hello", ""); !kmp.IsInputError(err) {
		t.Fatalf("removing again: %v", err)
	}
	if _, _, err := target.ParseSourceRef("../etc"); err == nil {
		t.Fatal("../etc accepted as a source name")
	}
}

// TestSourceAddHostile: tarballs and directories that try to leave the root, or carry what has
// no place in a source, are refused with one line naming the file, leaving nothing behind.
func TestSourceAddHostile(t *testing.T) {
	type entry struct {
		name, link string
		typ        byte
	}
	conf := entry{name: "x-1/dkms.conf", typ: tar.TypeReg}
	cases := map[string][]entry{
		"dotdot":       {conf, {name: "x-1/../../escape", typ: tar.TypeReg}},
		"absolute":     {conf, {name: "/etc/evil", typ: tar.TypeReg}},
		"link-out":     {conf, {name: "x-1/out", link: "../../../../etc", typ: tar.TypeSymlink}, {name: "x-1/out/shadow", typ: tar.TypeReg}},
		"device":       {conf, {name: "x-1/dev", typ: tar.TypeChar}},
		"hardlink-out": {conf, {name: "x-1/h", link: "/etc/passwd", typ: tar.TypeLink}},
		// Inside the archive, but above its top directory, the tree that is kept.
		"link-above-top": {conf, {name: "x-1/up", link: "../other", typ: tar.TypeSymlink}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			tgz := filepath.Join(t.TempDir(), name+".tgz")
			f, err := os.Create(tgz)
			if err != nil {
				t.Fatal(err)
			}
			zw := gzip.NewWriter(f)
			tw := tar.NewWriter(zw)
			for _, e := range entries {
				body := "PACKAGE_NAME=x\nPACKAGE_VERSION=1\n"
				h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: 0o644}
				if e.typ == tar.TypeReg {
					h.Size = int64(len(body))
				}
				if err := tw.WriteHeader(h); err != nil {
					t.Fatal(err)
				}
				if e.typ == tar.TypeReg {
					tw.Write([]byte(body))
				}
			}
			tw.Close()
			zw.Close()
			f.Close()
			_, err = target.AddSource(target.AddSourceOptions{Options: opts(root), Path: tgz})
			if !kmp.IsInputError(err) || !strings.HasPrefix(err.Error(), tgz+": ") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("want a one-line input error naming %s, got %v", tgz, err)
			}
			if m, _ := filepath.Glob(filepath.Join(root, "usr/src/*")); len(m) > 0 {
				t.Fatalf("left %v", m)
			}
			if m, _ := filepath.Glob(filepath.Join(root, "var/lib/kmpack/sources/*")); len(m) > 0 {
				t.Fatalf("left %v", m)
			}
		})
	}

	// A directory with a link out of it, and a dkms.conf that computes its name.
	dir := filepath.Join(t.TempDir(), "y-1")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte("PACKAGE_NAME=y\nPACKAGE_VERSION=1\n"), 0o644)
	os.Symlink("/etc/shadow", filepath.Join(dir, "shadow"))
	if _, err := target.AddSource(target.AddSourceOptions{Options: opts(t.TempDir()), Path: dir}); !kmp.IsInputError(err) || !strings.Contains(err.Error(), "leads out of the source") {
		t.Fatalf("link out: %v", err)
	}
	os.Remove(filepath.Join(dir, "shadow"))
	// A chain of links each of which stays inside on its own: esc resolves to the directory
	// above the source.
	os.Mkdir(filepath.Join(dir, "x"), 0o755)
	os.Symlink("..", filepath.Join(dir, "x", "s"))
	os.Symlink("s/..", filepath.Join(dir, "x", "t"))
	os.Symlink("x/t/../..", filepath.Join(dir, "esc"))
	if _, err := target.AddSource(target.AddSourceOptions{Options: opts(t.TempDir()), Path: dir}); !kmp.IsInputError(err) || !strings.Contains(err.Error(), "symbolic link esc resolves outside") {
		t.Fatalf("a chain of links out: %v", err)
	}
	os.RemoveAll(filepath.Join(dir, "x"))
	os.Remove(filepath.Join(dir, "esc"))
	os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte("PACKAGE_NAME=$(touch /tmp/kmpack-ran)\nPACKAGE_VERSION=1\n"), 0o644)
	if _, err := target.AddSource(target.AddSourceOptions{Options: opts(t.TempDir()), Path: dir}); !kmp.IsInputError(err) || !strings.Contains(err.Error(), "not a literal assignment") {
		t.Fatalf("computed name: %v", err)
	}
	if _, err := os.Stat("/tmp/kmpack-ran"); err == nil {
		t.Fatal("add ran the dkms.conf")
	}
}
