package module_test

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/module"
)

func addFixtures(f *testing.F) {
	for _, p := range []string{"kmpack_hello-6.1.0-53.ko", "idxd_bus.ko", "crc7.ko", "crc7-6.12.ko.xz"} {
		b, err := os.ReadFile(filepath.Join("../../testdata/ko", p))
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
	testenv.PanicsAreCrashes(f)
	addFixtures(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		plain, _, err := module.Decompress("fuzz.ko", data)
		testenv.CheckInputError(t, "fuzz.ko", err)
		if err != nil {
			return
		}
		m, err := module.ParseModule("fuzz.ko", plain)
		testenv.CheckInputError(t, "fuzz.ko", err)
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
		if s := m.Signature; s != nil && (!module.HasSignatureMagic(plain) || s.Size > len(plain) || s.Size < 40) {
			t.Fatalf("signature of %d bytes in a %d-byte image", s.Size, len(plain))
		}
		if txt := m.ModinfoText("fuzz.ko"); !strings.HasPrefix(txt, "filename:       fuzz.ko\n") {
			t.Fatalf("modinfo text starts %q", testenv.Truncate(txt, 40))
		}
		if n := strings.Count(m.ModversionsText(), "\n"); n != len(m.Imports) {
			t.Fatalf("modversions text has %d lines for %d imports", n, len(m.Imports))
		}
	})
}

// FuzzModuleSignature mutates only the appended signature of a real module, where the fuzzer
// would otherwise rarely reach. Invariant: no panic; an accepted trailer with the magic yields a
// signature whose size fits the file and names a known id type.
func FuzzModuleSignature(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	base, err := os.ReadFile("../../testdata/ko/kmpack_hello-6.1.0-53.ko")
	if err != nil {
		f.Fatal(err)
	}
	signed, _ := os.ReadFile("../../testdata/ko/crc7.ko")
	elfLen := len(signed) - 28 - 12 - 0x2b5 // crc7.ko: PKCS#7 blob length in its trailer
	if elfLen > 0 {
		f.Add(signed[elfLen:])
	}
	f.Add([]byte("~Module signature appended~\n"))
	f.Add([]byte("signerkeyidSIG\x00\x01\x00\x06\x05\x00\x00\x00\x00\x00\x00\x03~Module signature appended~\n"))
	f.Fuzz(func(t *testing.T, trailer []byte) {
		data := append(append([]byte(nil), base...), trailer...)
		m, err := module.ParseModule("fuzz.ko", data)
		testenv.CheckInputError(t, "fuzz.ko", err)
		if err != nil {
			return
		}
		s := m.Signature
		if module.HasSignatureMagic(data) != (s != nil) {
			t.Fatalf("magic %v but signature %v", module.HasSignatureMagic(data), s)
		}
		if s != nil && (s.Size > len(data) || (s.IDType != "PKCS#7" && s.IDType != "X509" && s.IDType != "PGP")) {
			t.Fatalf("signature %+v in a %d-byte file", s, len(data))
		}
		body, p7, err := module.SplitSignature("fuzz.ko", data)
		testenv.CheckInputError(t, "fuzz.ko", err)
		if err == nil && (s == nil) != (p7 == nil) {
			t.Fatalf("SplitSignature gives a %d-byte blob for signature %+v", len(p7), s)
		}
		if err == nil && p7 != nil && len(body)+len(p7)+40 != len(data) {
			t.Fatalf("SplitSignature: %d + %d + 40 bytes for a %d-byte file", len(body), len(p7), len(data))
		}
	})
}

// FuzzParseSymvers: every Module.symvers format, plain or gzip/xz/zstd compressed. Invariant:
// no panic; an accepted table, written back in the 5.10 format, reads back to the same symbols.
func FuzzParseSymvers(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	seeds := []string{
		"0x12345678\tfoo\tdrivers/x/y\tEXPORT_SYMBOL_GPL\tFOO_NS\n0x1\tbar\tvmlinux\tEXPORT_SYMBOL\t\n",
		"0xdeadbeef\tfoo\tNS\tdrivers/usb/storage/usb-storage\tEXPORT_SYMBOL_GPL\n",
		"0x0000abcd\tfoo\tvmlinux\n",
		"0x0000abcd\tfoo\tvmlinux\tEXPORT_SYMBOL\r\n\n0x2\tfoo\tm\tEXPORT_SYMBOL_GPL\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	for _, c := range []module.Compression{module.CompressGzip, module.CompressXZ, module.CompressZstd} {
		b, err := module.CompressBytes([]byte(seeds[0]), c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		plain, _, err := module.Decompress("fuzz.symvers", data)
		testenv.CheckInputError(t, "fuzz.symvers", err)
		if err != nil {
			return
		}
		sv, err := module.ParseSymvers("fuzz.symvers", bytes.NewReader(plain))
		testenv.CheckInputError(t, "fuzz.symvers", err)
		if err != nil {
			return
		}
		var b strings.Builder
		if _, err := sv.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		again, err := module.ParseSymvers("again", strings.NewReader(b.String()))
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

// FuzzDecompress: the gzip/xz/zstd readers on any bytes. Invariant: no panic; output within
// MaxDecompressed; recompressing and decompressing gives the same bytes.
func FuzzDecompress(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	for _, c := range []module.Compression{module.CompressGzip, module.CompressXZ, module.CompressZstd} {
		b, err := module.CompressBytes([]byte("\x7fELF hello hello hello"), c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, c, err := module.Decompress("fuzz.gz", data)
		testenv.CheckInputError(t, "fuzz.gz", err)
		if err != nil || c == module.CompressNone {
			return
		}
		if len(out) > module.MaxDecompressed {
			t.Fatalf("%d bytes out", len(out))
		}
		re, err := module.CompressBytes(out, c)
		if err != nil {
			t.Fatal(err)
		}
		back, c2, err := module.Decompress("again", re)
		if err != nil || c2 != c || !bytes.Equal(back, out) {
			t.Fatalf("recompressed %s does not read back: %v", c, err)
		}
	})
}
