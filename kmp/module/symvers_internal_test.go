package module

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/kmpack/kmpack/kmp"
)

// parseSymversScanner is ParseSymvers as it was before it read the file as one string: a
// bufio.Scanner, a string, a split and a join per line, unicode.IsControl on every rune and
// strconv.ParseUint for the CRC. ParseSymvers must give the same symbols and the same errors.
func parseSymversScanner(path string, r io.Reader) (sv *Symvers, err error) {
	defer kmp.Guard(path, &err)
	sv = &Symvers{Path: path, byName: map[string]int{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(text) == "" {
			continue
		}
		cols := strings.Split(text, "\t")
		var sym Symbol
		switch len(cols) {
		case 3:
			sym = Symbol{Module: cols[2]}
		case 4:
			sym = Symbol{Module: cols[2], Export: cols[3]}
		case 5:
			if strings.HasPrefix(cols[4], "EXPORT_") && !strings.HasPrefix(cols[3], "EXPORT_") {
				sym = Symbol{Namespace: cols[2], Module: cols[3], Export: cols[4]}
			} else {
				sym = Symbol{Module: cols[2], Export: cols[3], Namespace: cols[4]}
			}
		default:
			return nil, kmp.InputErrorf(path, "line %d: %d tab-separated columns, want 3 to 5", line, len(cols))
		}
		if strings.ContainsFunc(strings.Join(cols, ""), unicode.IsControl) {
			return nil, kmp.InputErrorf(path, "line %d: control character in a field", line)
		}
		crc, err := parseCRCStrconv(cols[0])
		if err != nil {
			return nil, kmp.InputErrorf(path, "line %d: bad CRC %q", line, truncate(cols[0], 40))
		}
		sym.CRC, sym.Name = crc, cols[1]
		if sym.Name == "" || strings.ContainsAny(sym.Name, " \x00") {
			return nil, kmp.InputErrorf(path, "line %d: bad symbol name %q", line, truncate(sym.Name, 40))
		}
		if sym.Module == "" {
			return nil, kmp.InputErrorf(path, "line %d: symbol %s has no module", line, sym.Name)
		}
		if sym.Export != "" && !strings.HasPrefix(sym.Export, "EXPORT_") {
			return nil, kmp.InputErrorf(path, "line %d: bad export type %q", line, truncate(sym.Export, 40))
		}
		if i, dup := sv.byName[sym.Name]; dup {
			sv.Symbols[i] = sym
			continue
		}
		sv.byName[sym.Name] = len(sv.Symbols)
		sv.Symbols = append(sv.Symbols, sym)
	}
	if err := sc.Err(); err != nil {
		return nil, kmp.InputErrorf(path, "line %d: %v", line+1, err)
	}
	if len(sv.Symbols) == 0 {
		return nil, kmp.InputErrorf(path, "no symbols: not a Module.symvers file")
	}
	return sv, nil
}

func parseCRCStrconv(s string) (uint64, error) {
	if !strings.HasPrefix(s, "0x") && !strings.HasPrefix(s, "0X") {
		return 0, fmt.Errorf("no 0x prefix")
	}
	return strconv.ParseUint(s[2:], 16, 64)
}

func sameAsScanner(t *testing.T, data []byte) {
	t.Helper()
	want, werr := parseSymversScanner("x", bytes.NewReader(data))
	got, gerr := ParseSymvers("x", bytes.NewReader(data))
	switch {
	case (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error():
		t.Fatalf("errors differ: %v, was %v", gerr, werr)
	case werr == nil && (!reflect.DeepEqual(got.Symbols, want.Symbols) || !reflect.DeepEqual(got.byName, want.byName)):
		t.Fatalf("symbols differ")
	}
	// CountSymvers checks the same, with the same message, and counts the same symbols.
	c, cerr := CountSymvers("x", data)
	switch {
	case (cerr == nil) != (gerr == nil) || cerr != nil && cerr.Error() != gerr.Error():
		t.Fatalf("CountSymvers: %v, ParseSymvers: %v", cerr, gerr)
	case gerr == nil && c != got.Count():
		t.Fatalf("CountSymvers: %+v; ParseSymvers: %+v", c, got.Count())
	}
}

// The installed kernels' own Module.symvers files, and the fuzz seeds, parse as before.
func TestParseSymversMatchesScanner(t *testing.T) {
	files, _ := filepath.Glob("/usr/src/linux-headers-*/Module.symvers")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sameAsScanner(t, data)
		// Windows line ends, blank lines, a line without its end, a duplicate.
		sameAsScanner(t, bytes.ReplaceAll(data, []byte("\n"), []byte("\r\n\n")))
		sameAsScanner(t, bytes.TrimSuffix(data, []byte("\n")))
		sameAsScanner(t, append(bytes.Clone(data), data[:bytes.IndexByte(data, '\n')+1]...))
	}
	for _, s := range []string{"", "\n", "0x1\tfoo\tvmlinux\n\n\n", "0x1\tfoo\tvmlinux\tEXPORT_SYMBOL\n0x2\tfoo\tdrivers/m\tEXPORT_SYMBOL\n", "0x1\tfoo\tvm\x01linux\n", "0x1\tfoo\tvmlinux\tEXPORT_SYMBOL\t\tx\n",
		"0x1\tfoo\tvmlinux\tEXPORT_SYMBOL\r\r\n", "0x1\tfoo bar\tvmlinux\n", "0x1\tfoo\tNS\tm\tEXPORT_SYMBOL_GPL\n", "\t\t\n",
		"0xffffffffffffffff\tfoo\tvmlinux\n", "0x10000000000000000\tfoo\tvmlinux\n", "0x0000000000000000001\tfoo\tvmlinux\n",
		"0x\tfoo\tvmlinux\n", "0X1aBf\tfoo\tvmlinux\n", "0x1g\tfoo\tvmlinux\n", "0x-1\tfoo\tvmlinux\n", "0x+1\tfoo\tvmlinux\n", "0x1_0\tfoo\tvmlinux\n",
		"0x1\tf\u00e9\tvm\u0085x\n", "0x1\tf\u00e9\tvm\u2028x\n", "0x1\tfoo\tvm\x7fx\n", "0x1\tfoo\tvm\xffx\n"} {
		sameAsScanner(t, []byte(s))
	}
}

// FuzzParseSymversMatchesScanner: ParseSymvers and the scanner it replaced accept the same
// inputs with the same symbols, and refuse the same ones with the same message.
func FuzzParseSymversMatchesScanner(f *testing.F) {
	f.Setenv("KMPACK_PANIC", "1") // testenv.PanicsAreCrashes, which this package cannot import
	f.Add([]byte("0x12345678\tfoo\tdrivers/x/y\tEXPORT_SYMBOL_GPL\tFOO_NS\n0x1\tbar\tvmlinux\tEXPORT_SYMBOL\t\n"))
	f.Add([]byte("0x0000abcd\tfoo\tvmlinux\tEXPORT_SYMBOL\r\n\n0x2\tfoo\tm\tEXPORT_SYMBOL_GPL\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 60000 {
			return // the scanner's line limit (1 MiB) is the one difference
		}
		sameAsScanner(t, data)
	})
}

// go test -bench Symvers ./kmp/module: ParseSymvers against the scanner it replaced, on an
// installed kernel's Module.symvers.
func BenchmarkParseSymvers(b *testing.B) {
	files, _ := filepath.Glob("/usr/src/linux-headers-*/Module.symvers")
	if len(files) == 0 {
		b.Skip("no kernel headers installed")
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		parse func(string, io.Reader) (*Symvers, error)
	}{{"strings", ParseSymvers}, {"scanner", parseSymversScanner}, {"count", countOnly}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := c.parse("x", bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// countOnly is CountSymvers shaped as a parser, for the benchmark: what describing a tree spends.
func countOnly(path string, r io.Reader) (*Symvers, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	_, err = CountSymvers(path, data)
	return nil, err
}

// A file of blank lines does not buy a table as long as it has lines: 16 MiB of them used to
// reserve room for 16 million symbols (some 2 GiB).
func TestSymversBlankLinesAllocateLittle(t *testing.T) {
	data := append(bytes.Repeat([]byte("\n"), 16<<20), "0x1\tfoo\tvmlinux\tEXPORT_SYMBOL\t\n"...)
	for _, c := range []struct {
		name  string
		parse func() (int, error)
	}{
		{"ParseSymvers", func() (int, error) {
			sv, err := ParseSymvers("x", bytes.NewReader(data))
			if err != nil {
				return 0, err
			}
			return sv.Len(), nil
		}},
		{"CountSymvers", func() (int, error) {
			c, err := CountSymvers("x", data)
			return c.Symbols, err
		}},
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		n, err := c.parse()
		runtime.ReadMemStats(&after)
		if err != nil || n != 1 {
			t.Fatalf("%s: %d symbols, %v", c.name, n, err)
		}
		// The input's copies (16 MiB each) and a small table; not gigabytes.
		if got := after.TotalAlloc - before.TotalAlloc; got > 160<<20 {
			t.Errorf("%s allocated %d MiB for one symbol", c.name, got>>20)
		}
	}
}

// plainFieldsBytewise is plainFields one byte at a time, for TestPlainFieldsEveryByteEveryLane.
func plainFieldsBytewise(l string) (cols []string, plain bool) {
	for i := 0; i < len(l); i++ {
		if c := l[i]; c != '\t' && (c < 0x20 || c >= 0x7f) {
			return nil, false
		}
	}
	return strings.Split(l, "\t"), true
}

// Every byte value in every position of a line (each lane of the eight-byte words and the
// tail) is classed as a byte at a time would class it, and the fields are the same.
func TestPlainFieldsEveryByteEveryLane(t *testing.T) {
	base := "0x0000abcd\tsome_symbol\tvmlinux\tEXPORT_SYMBOL\tNS"
	for p := 0; p < len(base); p++ {
		for b := 0; b < 256; b++ {
			l := base[:p] + string([]byte{byte(b)}) + base[p+1:]
			var cols [5]string
			n, plain := plainFields(l, &cols)
			want, wantPlain := plainFieldsBytewise(l)
			if plain != wantPlain {
				t.Fatalf("byte %#x at %d: plain %v, want %v", b, p, plain, wantPlain)
			}
			if !plain {
				continue
			}
			if n != len(want) {
				t.Fatalf("byte %#x at %d: %d fields, want %d", b, p, n, len(want))
			}
			for i := range min(n, len(cols)) {
				if cols[i] != want[i] {
					t.Fatalf("byte %#x at %d: field %d %q, want %q", b, p, i, cols[i], want[i])
				}
			}
		}
	}
}
