package module_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
)

func TestParseSymversFormats(t *testing.T) {
	cases := []struct {
		name, text string
		want       module.Symbol
	}{
		{"5 columns, 5.10+", "0x12345678\tfoo\tdrivers/x/y\tEXPORT_SYMBOL_GPL\tFOO_NS\n",
			module.Symbol{Name: "foo", CRC: 0x12345678, Module: "drivers/x/y", Export: "EXPORT_SYMBOL_GPL", Namespace: "FOO_NS"}},
		{"5 columns, empty namespace", "0x00000001\tfoo\tvmlinux\tEXPORT_SYMBOL\t\n",
			module.Symbol{Name: "foo", CRC: 1, Module: "vmlinux", Export: "EXPORT_SYMBOL"}},
		{"5 columns, 5.4-5.9 order", "0xdeadbeef\tfoo\tUSB_STORAGE\tdrivers/usb/storage/usb-storage\tEXPORT_SYMBOL_GPL\n",
			module.Symbol{Name: "foo", CRC: 0xdeadbeef, Module: "drivers/usb/storage/usb-storage", Export: "EXPORT_SYMBOL_GPL", Namespace: "USB_STORAGE"}},
		{"4 columns", "0x0000abcd\tfoo\tvmlinux\tEXPORT_SYMBOL\n",
			module.Symbol{Name: "foo", CRC: 0xabcd, Module: "vmlinux", Export: "EXPORT_SYMBOL"}},
		{"3 columns", "0x0000abcd\tfoo\tvmlinux\n", module.Symbol{Name: "foo", CRC: 0xabcd, Module: "vmlinux"}},
		{"CRLF and blank lines", "\n0x00000002\tfoo\tvmlinux\tEXPORT_SYMBOL\t\r\n\n",
			module.Symbol{Name: "foo", CRC: 2, Module: "vmlinux", Export: "EXPORT_SYMBOL"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sv, err := module.ParseSymvers("test.symvers", strings.NewReader(c.text))
			if err != nil {
				t.Fatal(err)
			}
			got, ok := sv.Lookup("foo")
			if !ok || got != c.want || sv.Len() != 1 {
				t.Fatalf("got %+v (len %d), want %+v", got, sv.Len(), c.want)
			}
		})
	}
}

func TestParseSymversErrors(t *testing.T) {
	cases := map[string]string{
		"0x12\tfoo\n": "line 1: 2 tab-separated columns",
		"0x1\tfoo\tvmlinux\tEXPORT_SYMBOL\n12345\tbar\tvmlinux\n": `line 2: bad CRC "12345"`,
		"0xzz\tfoo\tvmlinux\tEXPORT_SYMBOL\n":                     "line 1: bad CRC",
		"0x1\t\tvmlinux\tEXPORT_SYMBOL\n":                         "line 1: bad symbol name",
		"0x1\tfoo\tvmlinux\tGPL\n":                                "line 1: bad export type",
		"0x1\tfoo\t\tEXPORT_SYMBOL\t\n":                           "line 1: symbol foo has no module",
		"":                                                        "no symbols",
		"\x00\x01\x02garbage":                                     "columns",
	}
	for in, want := range cases {
		_, err := module.ParseSymvers("bad.symvers", strings.NewReader(in))
		if err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "bad.symvers: ") || !kmp.IsInputError(err) {
			t.Errorf("%q: got %v, want bad.symvers: ...%s", in, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error is not one line: %q", in, err)
		}
	}
}

// TestReadSymversCompressed reads a real Module.symvers plain and compressed by the real gzip,
// xz and zstd tools, as distros ship them (symvers-<krel>.gz, symvers.xz, symvers.zst).
func TestReadSymversCompressed(t *testing.T) {
	testenv.Need(t, "gzip", "xz", "zstd")
	src := filepath.Join(testenv.HeadersDir(t, testenv.Release53), "Module.symvers")
	plain, err := module.ReadSymvers(src)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(src)
	if lines := strings.Count(string(raw), "\n"); plain.Len() != lines {
		t.Fatalf("%d symbols, file has %d lines", plain.Len(), lines)
	}
	printk, ok := plain.Lookup("_printk")
	if !ok || printk.Module != "vmlinux" || printk.Export != "EXPORT_SYMBOL" {
		t.Fatalf("_printk: %+v", printk)
	}
	dir := t.TempDir()
	for tool, ext := range map[string]string{"gzip": ".gz", "xz": ".xz", "zstd": ".zst"} {
		out := filepath.Join(dir, "symvers-"+testenv.Release53+ext)
		compressFile(t, tool, src, out)
		sv, err := module.ReadSymvers(out)
		if err != nil {
			t.Fatalf("%s: %v", ext, err)
		}
		if sv.Len() != plain.Len() {
			t.Fatalf("%s: %d symbols, want %d", ext, sv.Len(), plain.Len())
		}
		for i, s := range sv.Symbols {
			if s != plain.Symbols[i] {
				t.Fatalf("%s: symbol %d = %+v, want %+v", ext, i, s, plain.Symbols[i])
			}
		}
	}
	// A truncated compressed file is an error naming it, not a short table.
	gz := filepath.Join(dir, "symvers-"+testenv.Release53+".gz")
	b, _ := os.ReadFile(gz)
	trunc := filepath.Join(dir, "truncated.gz")
	os.WriteFile(trunc, b[:len(b)/2], 0o644)
	if _, err := module.ReadSymvers(trunc); err == nil || !strings.HasPrefix(err.Error(), trunc+": corrupt gzip data") {
		t.Fatalf("truncated gzip: %v", err)
	}
}

func TestSymversWriteRoundTrip(t *testing.T) {
	sv, err := module.ReadSymvers(filepath.Join(testenv.HeadersDir(t, testenv.Release612), "Module.symvers"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if _, err := sv.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	again, err := module.ParseSymvers("roundtrip", strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if again.Len() != sv.Len() {
		t.Fatalf("%d symbols after round trip, want %d", again.Len(), sv.Len())
	}
	raw, _ := os.ReadFile(sv.Path)
	if b.String() != string(raw) {
		t.Fatalf("rewritten Module.symvers differs from kbuild's")
	}
}

// compressFile compresses src into dst with the real tool (gzip, xz or zstd).
func compressFile(t *testing.T, tool, src, dst string) {
	t.Helper()
	cmd := exec.Command("sh", "-c", tool+` -c < "$1" > "$2"`, "sh", src, dst)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v %s", tool, err, b)
	}
}
