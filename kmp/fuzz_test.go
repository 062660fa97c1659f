package kmp_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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

func addFixtures(f *testing.F) {
	for _, p := range []string{"kmpack_hello-6.1.0-53.ko", "idxd_bus.ko", "crc7.ko", "crc7-6.12.ko.xz"} {
		b, err := os.ReadFile(filepath.Join("../testdata/ko", p))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzParseModule(f *testing.F) {
	addFixtures(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		plain, _, err := kmp.Decompress("fuzz.ko", data)
		checkErr(t, "fuzz.ko", err)
		if err != nil {
			return
		}
		m, err := kmp.ParseModule("fuzz.ko", plain)
		checkErr(t, "fuzz.ko", err)
		if err == nil {
			_ = m.ModinfoText("fuzz.ko")
			_ = m.ModversionsText()
		}
	})
}

// FuzzModuleSignature mutates only the appended signature of a real module, where the fuzzer
// would otherwise rarely reach.
func FuzzModuleSignature(f *testing.F) {
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
	f.Fuzz(func(t *testing.T, trailer []byte) {
		data := append(append([]byte(nil), base...), trailer...)
		_, err := kmp.ParseModule("fuzz.ko", data)
		checkErr(t, "fuzz.ko", err)
	})
}

func FuzzParseSymvers(f *testing.F) {
	f.Add([]byte("0x12345678\tfoo\tdrivers/x/y\tEXPORT_SYMBOL_GPL\tFOO_NS\n0x1\tbar\tvmlinux\tEXPORT_SYMBOL\t\n"))
	f.Add([]byte("0xdeadbeef\tfoo\tNS\tdrivers/usb/storage/usb-storage\tEXPORT_SYMBOL_GPL\n"))
	f.Add([]byte("0x0000abcd\tfoo\tvmlinux\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		sv, err := kmp.ParseSymvers("fuzz.symvers", strings.NewReader(string(data)))
		checkErr(t, "fuzz.symvers", err)
		if err == nil {
			var b strings.Builder
			sv.WriteTo(&b)
			again, err := kmp.ParseSymvers("again", strings.NewReader(b.String()))
			if err != nil || again.Len() != sv.Len() {
				t.Fatalf("rewritten symvers does not read back: %v", err)
			}
		}
	})
}

func FuzzParseKernelConfig(f *testing.F) {
	f.Add([]byte("CONFIG_MODVERSIONS=y\n# CONFIG_X is not set\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian) 12.2.0\"\nCONFIG_GCC_VERSION=120200\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := kmp.ParseKernelConfig("fuzz.config", data)
		checkErr(t, "fuzz.config", err)
		if err == nil {
			_ = cfg.ModuleCompression()
			_ = cfg.Arch()
		}
	})
}

// FuzzUnpackPackage feeds arbitrary bytes as a package file: nothing may panic and nothing may
// be written outside the cache directory.
func FuzzUnpackPackage(f *testing.F) {
	dir := f.TempDir()
	f.Add(mustRead(f, makeDeb(f, dir, []tarEntry{{name: "./usr/src/x/", typ: '5'}, {name: "./usr/src/x/f", typ: '0', body: "data"}, {name: "./lib/b", link: "/usr/src/x", typ: '2'}})))
	f.Add(mustRead(f, makeDeb(f, dir, []tarEntry{{name: "./a", link: "..", typ: '2'}, {name: "./b", link: "a/x", typ: '2'}})))
	f.Fuzz(func(t *testing.T, data []byte) {
		outer := t.TempDir()
		pkg := filepath.Join(outer, "fuzz.deb")
		os.WriteFile(pkg, data, 0o644)
		cache := filepath.Join(outer, "cache")
		_, err := kmp.UnpackPackages(cache, []string{pkg})
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

func mustRead(tb testing.TB, p string) []byte {
	tb.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func FuzzParseSpec(f *testing.F) {
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
	})
}
