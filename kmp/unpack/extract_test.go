package unpack_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blakesmith/ar"
	"github.com/google/rpmpack"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/unpack"
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
			_, err := unpack.UnpackPackages(cache, []string{deb})
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
	set, err := unpack.UnpackPackages(t.TempDir(), []string{deb})
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
		_, err := unpack.UnpackPackages(cache, []string{path})
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
		_, err := unpack.UnpackPackages(cache, []string{rpm})
		if err == nil || !strings.HasPrefix(err.Error(), rpm+": ") || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", filepath.Base(rpm), err, want)
		}
		left, _ := os.ReadDir(filepath.Join(cache, "trees"))
		if len(left) != 0 {
			t.Errorf("%s: partial output left: %v", filepath.Base(rpm), left)
		}
	}
}

// TestSymlinkChainEscapeIsContained is the attack a review found: each link alone stays inside
// (a/l0 -> .., a/lN -> l(N-1)/..), together they climb to "/"; hard links whose target runs
// through the chain reach host files; plain files then replace the links so a check of the
// final tree sees nothing. The hard-linked host Makefile was then rewritten by the Makefile
// relocation and a 0600 host file hard-linked into the cache.
func TestSymlinkChainEscapeIsContained(t *testing.T) {
	host := t.TempDir()
	victimMk := filepath.Join(host, "victim", "Makefile")
	os.MkdirAll(filepath.Dir(victimMk), 0o755)
	const mk = "include /usr/src/linux-headers-x-common/Makefile\n"
	os.WriteFile(victimMk, []byte(mk), 0o644)
	secret := filepath.Join(host, "secret")
	os.WriteFile(secret, []byte("secret\n"), 0o600)

	const depth = 40 // more than any temp directory's depth: the chain reaches "/"
	entries := []tarEntry{{name: "./a/", typ: tar.TypeDir}, {name: "./a/l0", link: "..", typ: tar.TypeSymlink}}
	for i := 1; i < depth; i++ {
		entries = append(entries, tarEntry{name: "./a/l" + itoa(i), link: "l" + itoa(i-1) + "/..", typ: tar.TypeSymlink})
	}
	top := "./a/l" + itoa(depth-1)
	entries = append(entries,
		tarEntry{name: "./usr/src/linux-headers-x-common/Makefile", typ: tar.TypeReg, body: "# common\n"},
		tarEntry{name: "./usr/src/linux-headers-x/", typ: tar.TypeDir},
		tarEntry{name: "./usr/src/linux-headers-x/.config", typ: tar.TypeReg, body: "CONFIG_MODULES=y\n"},
		tarEntry{name: "./usr/src/linux-headers-x/Makefile", link: top + victimMk, typ: tar.TypeLink},
		tarEntry{name: "./stolen", link: top + secret, typ: tar.TypeLink},
	)
	for i := 0; i < depth; i++ {
		entries = append(entries, tarEntry{name: "./a/l" + itoa(i), typ: tar.TypeReg, body: "x"})
	}
	deb := makeDeb(t, t.TempDir(), entries)
	cache := filepath.Join(t.TempDir(), "cache")
	_, err := unpack.UnpackPackages(cache, []string{deb})
	if err == nil || !kmp.IsInputError(err) || !strings.HasPrefix(err.Error(), deb+": ") {
		t.Fatalf("hostile deb accepted or wrong error: %v", err)
	}
	if b, _ := os.ReadFile(victimMk); string(b) != mk {
		t.Fatalf("host Makefile rewritten: %q", b)
	}
	if fi, err := os.Stat(secret); err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 1 {
		t.Fatalf("host file hard-linked into the cache (or gone): %v", err)
	}
	if left, _ := os.ReadDir(filepath.Join(cache, "trees")); len(left) != 0 {
		t.Fatalf("partial output left in the cache: %v", left)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestUnpackBudget: a small package that unpacks to far more than kernel packages do (a
// zero-filled file compresses about 1000x) is refused and leaves nothing.
func TestUnpackBudget(t *testing.T) {
	deb := makeDeb(t, t.TempDir(), []tarEntry{{name: "./usr/zeros", typ: tar.TypeReg, body: strings.Repeat("\x00", 200<<20)}})
	if fi, _ := os.Stat(deb); fi.Size() > 1<<20 {
		t.Fatalf("test package is %d bytes, expected a bomb under 1 MiB", fi.Size())
	}
	cache := t.TempDir()
	_, err := unpack.UnpackPackages(cache, []string{deb})
	if err == nil || !kmp.IsInputError(err) || !strings.Contains(err.Error(), "unpack to more than") {
		t.Fatalf("bomb: %v", err)
	}
	if left, _ := os.ReadDir(filepath.Join(cache, "trees")); len(left) != 0 {
		t.Fatalf("partial output left: %v", left)
	}
}

// TestRPMHeaderClaimsAreBounded: a header claiming 4 GB of tables is refused before the
// parser allocates it.
func TestRPMHeaderClaimsAreBounded(t *testing.T) {
	b := make([]byte, 96+16)
	copy(b, []byte{0xed, 0xab, 0xee, 0xdb, 3, 0})
	copy(b[96:], []byte{0x8e, 0xad, 0xe8, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xf0})
	p := filepath.Join(t.TempDir(), "huge.rpm")
	os.WriteFile(p, b, 0o644)
	_, err := unpack.UnpackPackages(t.TempDir(), []string{p})
	if err == nil || !strings.Contains(err.Error(), "rpm allows") {
		t.Fatalf("got %v", err)
	}
}

// TestStaleUnpacksAreRemoved: a run killed mid-unpack leaves .unpack-*; the next run removes
// it, but never one that a live run holds locked.
func TestStaleUnpacksAreRemoved(t *testing.T) {
	cache := t.TempDir()
	trees := filepath.Join(cache, "trees")
	stale, live := filepath.Join(trees, ".unpack-dead"), filepath.Join(trees, ".unpack-live")
	os.MkdirAll(filepath.Join(stale, "root/usr"), 0o755)
	os.MkdirAll(live, 0o755)
	f, err := os.Open(live)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	// What a killed run leaves: the directory, its flock released by the kernel with the process.
	deb := makeDeb(t, t.TempDir(), []tarEntry{{name: "./usr/f", typ: tar.TypeReg, body: "x"}})
	if _, err := unpack.UnpackPackages(cache, []string{deb}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Error("stale unpack directory left")
	}
	if _, err := os.Stat(live); err != nil {
		t.Error("a locked (live) unpack directory was removed")
	}
}

// TestNonHeadersPackageLeavesNothing: a valid package with no kernel tree is an input error
// (exit 3), and exit 3 promises nothing written.
func TestNonHeadersPackageLeavesNothing(t *testing.T) {
	deb := makeDeb(t, t.TempDir(), []tarEntry{{name: "./usr/share/doc/x/README", typ: tar.TypeReg, body: "x"}})
	cache := t.TempDir()
	if _, _, err := unpack.OpenPackageTrees(cache, []string{deb}); err == nil || !kmp.IsInputError(err) {
		t.Fatalf("got %v", err)
	}
	if left, _ := os.ReadDir(filepath.Join(cache, "trees")); len(left) != 0 {
		t.Fatalf("cache entry left: %v", left)
	}
}

// TestFIFOIsNotAPackage: naming a FIFO must not hang.
func TestFIFOIsNotAPackage(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.deb")
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := unpack.UnpackPackages(t.TempDir(), []string{p}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("got %v", err)
	}
}

// TestRPMHeaderEntriesAreChecked: an index entry whose data lies outside the header's data
// store is refused before go-rpmutils slices it (it does not check, and panics).
func TestRPMHeaderEntriesAreChecked(t *testing.T) {
	t.Setenv("KMPACK_PANIC", "1") // a recovered panic would be a crash here
	r, err := rpmpack.NewRPM(rpmpack.RPMMetaData{Name: "x", Version: "1", Release: "1", Arch: "noarch", Compressor: "gzip"})
	if err != nil {
		t.Fatal(err)
	}
	r.AddFile(rpmpack.RPMFile{Name: "/usr/src/x/f", Body: []byte("x"), Mode: 0o100644})
	var b bytes.Buffer
	if err := r.Write(&b); err != nil {
		t.Fatal(err)
	}
	good := b.Bytes()
	dir := t.TempDir()
	p := filepath.Join(dir, "good.rpm")
	os.WriteFile(p, good, 0o644)
	if _, err := unpack.UnpackPackages(t.TempDir(), []string{p}); err != nil {
		t.Fatalf("the unmodified package: %v", err)
	}
	// The signature header's first index entry starts at 96+16; its offset field is bytes 8-12.
	for name, edit := range map[string]func([]byte){
		"offset past the store": func(h []byte) { binary.BigEndian.PutUint32(h[96+16+8:], 0x7fffffff) },
		"count past the store":  func(h []byte) { binary.BigEndian.PutUint32(h[96+16+12:], 0x7fffffff) },
	} {
		bad := append([]byte(nil), good...)
		edit(bad)
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".rpm")
		os.WriteFile(p, bad, 0o644)
		_, err := unpack.UnpackPackages(t.TempDir(), []string{p})
		if err == nil || !strings.Contains(err.Error(), "signature header tag") || !strings.Contains(err.Error(), "data store") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestSymlinkChainAcrossPackages: one package's link is dangling (so harmless when that package
// alone is checked) until another package of the set creates the link that completes a chain
// out of the root. The set is checked as a whole.
func TestSymlinkChainAcrossPackages(t *testing.T) {
	dir := t.TempDir()
	p1 := makeDeb(t, dir, []tarEntry{{name: "./usr/a/", typ: tar.TypeDir}, {name: "./usr/l", link: "a/x/../../etc/passwd", typ: tar.TypeSymlink}})
	p2 := makeDeb(t, dir, []tarEntry{{name: "./usr/a/x", link: "../..", typ: tar.TypeSymlink}})
	for _, order := range [][]string{{p1, p2}, {p2, p1}} {
		cache := t.TempDir()
		_, err := unpack.UnpackPackages(cache, order)
		if err == nil || !strings.Contains(err.Error(), "resolves outside the root") {
			t.Fatalf("%v: %v", order, err)
		}
		if left, _ := os.ReadDir(filepath.Join(cache, "trees")); len(left) != 0 {
			t.Fatalf("partial output left: %v", left)
		}
	}
}

// TestAlteredTreeCacheIsReplaced: a cache directory may be restored from elsewhere; an entry
// whose tree no longer is what was unpacked (a Makefile that runs something, a planted link or
// FIFO) is not used but unpacked again.
func TestAlteredTreeCacheIsReplaced(t *testing.T) {
	deb := makeDeb(t, t.TempDir(), []tarEntry{{name: "./usr/src/t/", typ: tar.TypeDir}, {name: "./usr/src/t/Makefile", typ: tar.TypeReg, body: "all:\n"}})
	cache := t.TempDir()
	set, err := unpack.UnpackPackages(cache, []string{deb})
	if err != nil || set.Cached {
		t.Fatalf("first unpack: %v cached=%v", err, set != nil && set.Cached)
	}
	if again, err := unpack.UnpackPackages(cache, []string{deb}); err != nil || !again.Cached {
		t.Fatalf("an untouched entry is reused: %v", err)
	}
	mk := filepath.Join(set.Root, "usr/src/t/Makefile")
	for name, alter := range map[string]func(){
		"rewritten file": func() { os.WriteFile(mk, []byte("all:\n\tid > /tmp/pwned\n"), 0o644) },
		"planted link":   func() { os.Symlink("/etc/passwd", filepath.Join(set.Root, "usr/src/t/autoconf.h")) },
		"planted FIFO":   func() { syscall.Mkfifo(filepath.Join(set.Root, "usr/src/t/fifo"), 0o644) },
		"mode changed":   func() { os.Chmod(mk, 0o4755) },
	} {
		alter()
		again, err := unpack.UnpackPackages(cache, []string{deb})
		if err != nil || again.Cached {
			t.Fatalf("%s: the altered entry was used (err %v)", name, err)
		}
		if b, _ := os.ReadFile(mk); string(b) != "all:\n" {
			t.Fatalf("%s: Makefile not restored: %q", name, b)
		}
		for _, f := range []string{"usr/src/t/autoconf.h", "usr/src/t/fifo"} {
			if _, err := os.Lstat(filepath.Join(set.Root, f)); err == nil {
				t.Fatalf("%s: %s left in the entry", name, f)
			}
		}
	}
}
