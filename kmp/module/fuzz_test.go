package module_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
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
		b, err := os.ReadFile(filepath.Join("../../testdata/ko", p))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzParseModule(f *testing.F) {
	addFixtures(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		plain, _, err := module.Decompress("fuzz.ko", data)
		checkErr(t, "fuzz.ko", err)
		if err != nil {
			return
		}
		m, err := module.ParseModule("fuzz.ko", plain)
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
	f.Fuzz(func(t *testing.T, trailer []byte) {
		data := append(append([]byte(nil), base...), trailer...)
		_, err := module.ParseModule("fuzz.ko", data)
		checkErr(t, "fuzz.ko", err)
	})
}

func FuzzParseSymvers(f *testing.F) {
	f.Add([]byte("0x12345678\tfoo\tdrivers/x/y\tEXPORT_SYMBOL_GPL\tFOO_NS\n0x1\tbar\tvmlinux\tEXPORT_SYMBOL\t\n"))
	f.Add([]byte("0xdeadbeef\tfoo\tNS\tdrivers/usb/storage/usb-storage\tEXPORT_SYMBOL_GPL\n"))
	f.Add([]byte("0x0000abcd\tfoo\tvmlinux\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		sv, err := module.ParseSymvers("fuzz.symvers", strings.NewReader(string(data)))
		checkErr(t, "fuzz.symvers", err)
		if err == nil {
			var b strings.Builder
			sv.WriteTo(&b)
			again, err := module.ParseSymvers("again", strings.NewReader(b.String()))
			if err != nil || again.Len() != sv.Len() {
				t.Fatalf("rewritten symvers does not read back: %v", err)
			}
		}
	})
}
