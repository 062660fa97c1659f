package kmp_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blakesmith/ar"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
)

type tarEntry struct {
	name, link, body string
	typ              byte
}

func tarGz(t testing.TB, entries []tarEntry) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body)), ModTime: time.Unix(0, 0)}
		if e.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// makeDeb writes a .deb the way dpkg-deb lays one out, with the given data.tar entries.
func makeDeb(t testing.TB, dir string, entries []tarEntry) string {
	var buf bytes.Buffer
	w := ar.NewWriter(&buf)
	w.WriteGlobalHeader()
	member := func(name string, data []byte) {
		w.WriteHeader(&ar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: time.Unix(0, 0)})
		w.Write(data) // one Write per member: blakesmith/ar pads after every odd-length Write
	}
	member("debian-binary", []byte("2.0\n"))
	member("control.tar.gz", tarGz(t, []tarEntry{{name: "./control", typ: tar.TypeReg, body: "Package: x\n"}}))
	member("data.tar.gz", tarGz(t, entries))
	f, err := os.CreateTemp(dir, "pkg-*.deb")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(buf.Bytes())
	f.Close()
	return f.Name()
}

func TestHostileDebsAreRefused(t *testing.T) {
	dir := t.TempDir()
	reg := func(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeReg, body: "pwned\n"} }
	cases := map[string]struct {
		entries []tarEntry
		want    string
	}{
		"traversal":          {[]tarEntry{reg("./usr/../../escape")}, `entry "./usr/../../escape": path traversal`},
		"absolute name":      {[]tarEntry{reg("/tmp/kmpack-escape")}, `entry "/tmp/kmpack-escape": absolute path`},
		"escaping symlink":   {[]tarEntry{{name: "./usr/x", link: "../../etc", typ: tar.TypeSymlink}}, `symlink target "../../etc" escapes`},
		"absolute up-link":   {[]tarEntry{{name: "./usr/x", link: "/../etc", typ: tar.TypeSymlink}}, `escapes the archive root`},
		"symlink chain":      {[]tarEntry{{name: "./usr/l1", link: "..", typ: tar.TypeSymlink}, {name: "./usr/l2", link: "l1/..", typ: tar.TypeSymlink}}, `symlink "usr/l2": resolves outside the root`},
		"write through link": {[]tarEntry{{name: "./usr/sub/", typ: tar.TypeDir}, {name: "./usr/link", link: "sub", typ: tar.TypeSymlink}, reg("./usr/link/file")}, `passes through symlink usr/link`},
		"device node":        {[]tarEntry{{name: "./dev/null", typ: tar.TypeChar}}, `device node entries are not allowed`},
		"fifo":               {[]tarEntry{{name: "./run/fifo", typ: tar.TypeFifo}}, `FIFO entries are not allowed`},
		"hard link out":      {[]tarEntry{{name: "./usr/h", link: "../etc/passwd", typ: tar.TypeLink}}, `path traversal`},
		"hard link nothing":  {[]tarEntry{{name: "./usr/h", link: "./usr/none", typ: tar.TypeLink}}, `not a regular file extracted earlier`},
		"dir over file":      {[]tarEntry{reg("./usr/a"), {name: "./usr/a/", typ: tar.TypeDir}}, `directory would replace a file`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			deb := makeDeb(t, dir, c.entries)
			cache := filepath.Join(t.TempDir(), "cache")
			_, err := kmp.UnpackPackages(cache, []string{deb})
			if err == nil || !kmp.IsInputError(err) || !strings.HasPrefix(err.Error(), deb+": ") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %s: ...%s", err, deb, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			left, _ := os.ReadDir(filepath.Join(cache, "trees"))
			if len(left) != 0 {
				t.Fatalf("partial output left in the cache: %v", left)
			}
		})
	}
	if _, err := os.Stat("/tmp/kmpack-escape"); err == nil {
		t.Fatal("an entry was written outside the cache")
	}
}

func TestAbsoluteSymlinksAreReRooted(t *testing.T) {
	deb := makeDeb(t, t.TempDir(), []tarEntry{
		{name: "./usr/src/tree/", typ: tar.TypeDir},
		{name: "./lib/modules/k/build", link: "/usr/src/tree", typ: tar.TypeSymlink},
		{name: "./etc/passwd-link", link: "/etc/passwd", typ: tar.TypeSymlink},
		{name: "./usr/src/tree/f", typ: tar.TypeReg, body: "x"},
		{name: "./usr/src/tree/hard", link: "./usr/src/tree/f", typ: tar.TypeLink},
	})
	set, err := kmp.UnpackPackages(t.TempDir(), []string{deb})
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := os.Readlink(filepath.Join(set.Root, "lib/modules/k/build")); l != "../../../usr/src/tree" {
		t.Fatalf("build link = %q", l)
	}
	if l, _ := os.Readlink(filepath.Join(set.Root, "etc/passwd-link")); l != "../etc/passwd" {
		t.Fatalf("passwd link = %q", l)
	}
	if b, err := os.ReadFile(filepath.Join(set.Root, "lib/modules/k/build/hard")); err != nil || string(b) != "x" {
		t.Fatalf("hard link through re-rooted symlink: %q %v", b, err)
	}
}

func TestCorruptPackagesAreRefused(t *testing.T) {
	dir := t.TempDir()
	good := makeDeb(t, dir, []tarEntry{{name: "./usr/f", typ: tar.TypeReg, body: "hello"}})
	b, _ := os.ReadFile(good)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		return p
	}
	cases := map[string]string{
		write("truncated.deb", b[:len(b)-40]):                                                                      "corrupt",
		write("random.deb", []byte("this is not a package at all")):                                                "not a .deb or .rpm package",
		write("bad.rpm", append([]byte{0xed, 0xab, 0xee, 0xdb}, make([]byte, 200)...)):                             "corrupt RPM",
		write("nodata.deb", []byte("!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n")): "no data.tar member",
	}
	for path, want := range cases {
		cache := t.TempDir()
		_, err := kmp.UnpackPackages(cache, []string{path})
		if err == nil || !kmp.IsInputError(err) || !strings.HasPrefix(err.Error(), path+": ") || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", filepath.Base(path), err, want)
		}
		left, _ := os.ReadDir(filepath.Join(cache, "trees"))
		if len(left) != 0 {
			t.Errorf("%s: partial output left: %v", filepath.Base(path), left)
		}
	}
}

// TestHostileRPMsAreRefused uses rpmbuild itself to make RPMs with an escaping symlink and a
// device node, both of which rpm would install as they are.
func TestHostileRPMsAreRefused(t *testing.T) {
	out := t.TempDir()
	stage := t.TempDir()
	os.MkdirAll(filepath.Join(stage, "usr/src/a/b"), 0o755)
	os.Symlink("../../../../../../../etc", filepath.Join(stage, "usr/src/a/b/evil"))
	link := testenv.BuildRPM(t, testenv.RPMSpec{Name: "evil-link", Version: "1", Arch: "noarch", Stage: stage}, out)
	dev := testenv.BuildRPM(t, testenv.RPMSpec{Name: "evil-dev", Version: "1", Arch: "noarch", Stage: t.TempDir(),
		Files: []string{"%dev(c,1,3) /usr/src/null"}}, out)
	for rpm, want := range map[string]string{link: `escapes the archive root`, dev: `device node entries are not allowed`} {
		cache := t.TempDir()
		_, err := kmp.UnpackPackages(cache, []string{rpm})
		if err == nil || !strings.HasPrefix(err.Error(), rpm+": ") || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", filepath.Base(rpm), err, want)
		}
		left, _ := os.ReadDir(filepath.Join(cache, "trees"))
		if len(left) != 0 {
			t.Errorf("%s: partial output left: %v", filepath.Base(rpm), left)
		}
	}
}
