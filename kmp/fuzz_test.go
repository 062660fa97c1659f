package kmp_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/google/rpmpack"
	"github.com/kmpack/kmpack/kmp"
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

// panicsAreCrashes makes guard() re-panic in this test process and in the fuzzing workers (which
// run the Fuzz function again), so a parser indexing out of bounds is a crash the fuzzer records
// with its stack, not an error it would accept as a rejected input.
func panicsAreCrashes(f *testing.F) {
	f.Setenv("KMPACK_PANIC", "1")
}

func addFixtures(f *testing.F) {
	for _, p := range []string{"kmpack_hello-6.1.0-53.ko", "idxd_bus.ko", "crc7.ko", "crc7-6.12.ko.xz"} {
		b, err := os.ReadFile(filepath.Join("../testdata/ko", p))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// FuzzParseModule: any bytes, compressed or not. Invariant: no panic; an error is a one-line
// InputError; an accepted module has a name, imports only with a source, exports sorted and
// unique, a signature only when the image ends with the magic and no larger than the image, and
// modinfo text that starts with its filename line.
func FuzzParseModule(f *testing.F) {
	panicsAreCrashes(f)
	addFixtures(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		plain, _, err := kmp.Decompress("fuzz.ko", data)
		checkErr(t, "fuzz.ko", err)
		if err != nil {
			return
		}
		m, err := kmp.ParseModule("fuzz.ko", plain)
		checkErr(t, "fuzz.ko", err)
		if err != nil {
			return
		}
		if m.Name == "" {
			t.Fatal("accepted module has no name")
		}
		if m.ImportsSource == "" && len(m.Imports) != 0 {
			t.Fatalf("%d imports without a source", len(m.Imports))
		}
		for i := 1; i < len(m.Exports); i++ {
			if m.Exports[i-1].Name >= m.Exports[i].Name {
				t.Fatalf("exports not sorted and unique: %q, %q", m.Exports[i-1].Name, m.Exports[i].Name)
			}
		}
		if s := m.Signature; s != nil && (!kmp.HasSignatureMagic(plain) || s.Size > len(plain) || s.Size < 40) {
			t.Fatalf("signature of %d bytes in a %d-byte image", s.Size, len(plain))
		}
		if txt := m.ModinfoText("fuzz.ko"); !strings.HasPrefix(txt, "filename:       fuzz.ko\n") {
			t.Fatalf("modinfo text starts %q", truncate(txt, 40))
		}
		if n := strings.Count(m.ModversionsText(), "\n"); n != len(m.Imports) {
			t.Fatalf("modversions text has %d lines for %d imports", n, len(m.Imports))
		}
	})
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// FuzzModuleSignature mutates only the appended signature of a real module, where the fuzzer
// would otherwise rarely reach. Invariant: no panic; an accepted trailer with the magic yields a
// signature whose size fits the file and names a known id type.
func FuzzModuleSignature(f *testing.F) {
	panicsAreCrashes(f)
	base, err := os.ReadFile("../testdata/ko/kmpack_hello-6.1.0-53.ko")
	if err != nil {
		f.Fatal(err)
	}
	signed, _ := os.ReadFile("../testdata/ko/crc7.ko")
	elfLen := len(signed) - 28 - 12 - 0x2b5 // crc7.ko: PKCS#7 blob length in its trailer
	if elfLen > 0 {
		f.Add(signed[elfLen:])
	}
	f.Add([]byte("~Module signature appended~\n"))
	f.Add([]byte("signerkeyidSIG\x00\x01\x00\x06\x05\x00\x00\x00\x00\x00\x00\x03~Module signature appended~\n"))
	f.Fuzz(func(t *testing.T, trailer []byte) {
		data := append(append([]byte(nil), base...), trailer...)
		m, err := kmp.ParseModule("fuzz.ko", data)
		checkErr(t, "fuzz.ko", err)
		if err != nil {
			return
		}
		s := m.Signature
		if kmp.HasSignatureMagic(data) != (s != nil) {
			t.Fatalf("magic %v but signature %v", kmp.HasSignatureMagic(data), s)
		}
		if s != nil && (s.Size > len(data) || (s.IDType != "PKCS#7" && s.IDType != "X509" && s.IDType != "PGP")) {
			t.Fatalf("signature %+v in a %d-byte file", s, len(data))
		}
	})
}

// FuzzParseSymvers: every Module.symvers format, plain or gzip/xz/zstd compressed. Invariant:
// no panic; an accepted table, written back in the 5.10 format, reads back to the same symbols.
func FuzzParseSymvers(f *testing.F) {
	panicsAreCrashes(f)
	seeds := []string{
		"0x12345678\tfoo\tdrivers/x/y\tEXPORT_SYMBOL_GPL\tFOO_NS\n0x1\tbar\tvmlinux\tEXPORT_SYMBOL\t\n",
		"0xdeadbeef\tfoo\tNS\tdrivers/usb/storage/usb-storage\tEXPORT_SYMBOL_GPL\n",
		"0x0000abcd\tfoo\tvmlinux\n",
		"0x0000abcd\tfoo\tvmlinux\tEXPORT_SYMBOL\r\n\n0x2\tfoo\tm\tEXPORT_SYMBOL_GPL\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	for _, c := range []kmp.Compression{kmp.CompressGzip, kmp.CompressXZ, kmp.CompressZstd} {
		b, err := kmp.CompressBytes([]byte(seeds[0]), c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		plain, _, err := kmp.Decompress("fuzz.symvers", data)
		checkErr(t, "fuzz.symvers", err)
		if err != nil {
			return
		}
		sv, err := kmp.ParseSymvers("fuzz.symvers", bytes.NewReader(plain))
		checkErr(t, "fuzz.symvers", err)
		if err != nil {
			return
		}
		var b strings.Builder
		if _, err := sv.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		again, err := kmp.ParseSymvers("again", strings.NewReader(b.String()))
		if err != nil {
			t.Fatalf("rewritten symvers does not read back: %v\n%q", err, b.String())
		}
		if !reflect.DeepEqual(again.Symbols, sv.Symbols) {
			t.Fatalf("round trip changed the symbols:\n%+v\n%+v", sv.Symbols, again.Symbols)
		}
		for _, s := range sv.Symbols {
			if got, ok := sv.Lookup(s.Name); !ok || got != s {
				t.Fatalf("Lookup(%q) = %+v, %v", s.Name, got, ok)
			}
		}
	})
}

// FuzzParseKernelConfig: .config text. Invariant: no panic; every accepted key is a CONFIG_
// name without '='; the config written back (values quoted) parses to the same map.
func FuzzParseKernelConfig(f *testing.F) {
	panicsAreCrashes(f)
	f.Add([]byte("CONFIG_MODVERSIONS=y\n# CONFIG_X is not set\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian) 12.2.0\"\nCONFIG_GCC_VERSION=120200\n"))
	f.Add([]byte("CONFIG_A=\"q\\\"x\\n\"\n  CONFIG_B = m \r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := kmp.ParseKernelConfig("fuzz.config", data)
		checkErr(t, "fuzz.config", err)
		if err != nil {
			return
		}
		_ = cfg.ModuleCompression()
		_ = cfg.Arch()
		var b strings.Builder
		for k, v := range cfg {
			if !strings.HasPrefix(k, "CONFIG_") || strings.Contains(k, "=") {
				t.Fatalf("accepted key %q", k)
			}
			b.WriteString(k + "=" + strconv.Quote(v) + "\n")
		}
		again, err := kmp.ParseKernelConfig("again", []byte(b.String()))
		if err != nil || !reflect.DeepEqual(map[string]string(again), map[string]string(cfg)) {
			t.Fatalf("written back config reads as %v (%v), want %v", again, err, cfg)
		}
	})
}

// FuzzDecompress: the gzip/xz/zstd readers on any bytes. Invariant: no panic; output within
// MaxDecompressed; recompressing and decompressing gives the same bytes.
func FuzzDecompress(f *testing.F) {
	panicsAreCrashes(f)
	for _, c := range []kmp.Compression{kmp.CompressGzip, kmp.CompressXZ, kmp.CompressZstd} {
		b, err := kmp.CompressBytes([]byte("\x7fELF hello hello hello"), c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, c, err := kmp.Decompress("fuzz.gz", data)
		checkErr(t, "fuzz.gz", err)
		if err != nil || c == kmp.CompressNone {
			return
		}
		if len(out) > kmp.MaxDecompressed {
			t.Fatalf("%d bytes out", len(out))
		}
		re, err := kmp.CompressBytes(out, c)
		if err != nil {
			t.Fatal(err)
		}
		back, c2, err := kmp.Decompress("again", re)
		if err != nil || c2 != c || !bytes.Equal(back, out) {
			t.Fatalf("recompressed %s does not read back: %v", c, err)
		}
	})
}

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
	_, err := kmp.UnpackPackages(cache, []string{pkg})
	checkErr(t, pkg, err)
	after := snapshot(t, tmp, cache)
	if !reflect.DeepEqual(before, after) {
		for p, d := range after {
			if before[p] != d {
				t.Errorf("outside the cache: %s is now %q (was %q)", p, truncate(d, 80), truncate(before[p], 80))
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
	panicsAreCrashes(f)
	dir := f.TempDir()
	f.Add(mustRead(f, makeDeb(f, dir, []tarEntry{{name: "./usr/src/x/", typ: '5'}, {name: "./usr/src/x/f", typ: '0', body: "data"}, {name: "./lib/b", link: "/usr/src/x", typ: '2'}})))
	f.Add(mustRead(f, makeDeb(f, dir, []tarEntry{{name: "./a", link: "..", typ: '2'}, {name: "./b", link: "a/x", typ: '2'}})))
	f.Add(mustRead(f, makeDeb(f, dir, []tarEntry{{name: "./d/", typ: '5'}, {name: "./d/l", link: "../../../etc", typ: '2'}, {name: "./h", link: "./d/l", typ: '1'}})))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkUnpack(t, "fuzz.deb", data)
	})
}

// FuzzUnpackRPM feeds arbitrary bytes as an .rpm (lead, signature and main headers read by
// go-rpmutils through kmp, then the cpio payload); see checkUnpack for the invariant.
func FuzzUnpackRPM(f *testing.F) {
	panicsAreCrashes(f)
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

// FuzzDKMSEvalOutput feeds arbitrary bytes as what the bash harness prints on fd 3 (NAME NUL
// INDEX NUL VALUE NUL triples), through EvalDKMSConf with a dkms.conf that copies them there.
// Invariant: no panic; the result holds exactly the last value of every triple with a numeric
// index, and nothing else.
func FuzzDKMSEvalOutput(f *testing.F) {
	panicsAreCrashes(f)
	if _, err := exec.LookPath("bash"); err != nil {
		f.Skip("no bash")
	}
	f.Add([]byte("PACKAGE_NAME\x000\x00foo\x00BUILT_MODULE_NAME\x003\x00bar\r\x00MAKE\x00x\x00y\x00"))
	f.Add([]byte("A\x00-1\x00\x00A\x00+1\x00v\x00A\x001\x00w\x00trailing\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out")
		os.WriteFile(out, data, 0o644)
		conf := filepath.Join(dir, "dkms.conf")
		os.WriteFile(conf, []byte("cat '"+out+"' >&3\nexit 0\n"), 0o644)
		c, err := kmp.EvalDKMSConf(context.Background(), conf, kmp.DKMSEnv{Dir: dir})
		if err != nil {
			t.Fatalf("evaluating a dkms.conf that only prints: %v", err)
		}
		want := map[string]map[int]string{}
		fields := bytes.Split(data, []byte{0})
		for i := 0; i+2 < len(fields); i += 3 {
			idx, err := strconv.Atoi(string(fields[i+1]))
			if err != nil {
				continue
			}
			name := string(fields[i])
			if want[name] == nil {
				want[name] = map[int]string{}
			}
			want[name][idx] = string(fields[i+2])
		}
		if !reflect.DeepEqual(c.Vars, want) {
			t.Fatalf("got %v, want %v", c.Vars, want)
		}
		for name := range c.Vars {
			idx := c.Indexes(name)
			for i, n := range idx {
				if i > 0 && idx[i-1] >= n {
					t.Fatalf("Indexes(%q) = %v", name, idx)
				}
				_ = c.Get(name, n)
			}
		}
	})
}

func mustRead(tb testing.TB, p string) []byte {
	tb.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// FuzzParseSpec: kmpack.yaml. Invariant: no panic; an accepted spec has a name and version and
// reads back unchanged from what WriteSpec writes.
func FuzzParseSpec(f *testing.F) {
	panicsAreCrashes(f)
	f.Add([]byte(readmeSpec))
	f.Add([]byte("name: a\nversion: '1'\n"))
	f.Add([]byte("name: a\nversion: 1\nmodules: [{name: m, build-exclusive: {config: [CONFIG_X]}}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := kmp.ParseSpec("kmpack.yaml", data)
		if err != nil {
			if !kmp.IsInputError(err) || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "parser failed") {
				t.Fatalf("bad error: %q", err)
			}
			return
		}
		if s.Name == "" || s.Version == "" {
			t.Fatalf("accepted a spec without name or version: %+v", s)
		}
		var b bytes.Buffer
		if err := kmp.WriteSpec(&b, s); err != nil {
			t.Fatalf("WriteSpec: %v", err)
		}
		again, err := kmp.ParseSpec("kmpack.yaml", b.Bytes())
		if err != nil {
			t.Fatalf("written spec does not read back: %v\n%s", err, b.String())
		}
		// Compared as JSON (every field, nil and empty lists alike: "kernels: [null]" reads
		// as an empty list, which WriteSpec omits) and as the text WriteSpec writes again.
		j1, _ := json.Marshal(s)
		j2, _ := json.Marshal(again)
		var b2 bytes.Buffer
		kmp.WriteSpec(&b2, again)
		if !bytes.Equal(j1, j2) || !bytes.Equal(b.Bytes(), b2.Bytes()) {
			t.Fatalf("round trip changed the spec:\n%s\n%s", j1, j2)
		}
	})
}
