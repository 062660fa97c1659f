package module

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/bits"
	"sort"
	"strings"
	"unicode"

	"github.com/kmpack/kmpack/kmp"
)

// Symbol is one exported symbol of a kernel build, as Module.symvers records it.
type Symbol struct {
	Name string `json:"name"`
	CRC  uint64 `json:"crc"`
	// Module is "vmlinux" for the kernel image, else the module's path in the build without .ko
	// (e.g. "drivers/media/v4l2-core/videodev").
	Module    string `json:"module"`
	Export    string `json:"export"`
	Namespace string `json:"namespace,omitempty"`
}

// Symvers is a parsed Module.symvers (or a distro's symvers-<krel>.gz): every symbol the kernel
// and its modules export, with CRCs.
type Symvers struct {
	Path    string
	Symbols []Symbol
	byName  map[string]int
}

// Lookup finds a symbol by name.
func (s *Symvers) Lookup(name string) (Symbol, bool) {
	i, ok := s.byName[name]
	if !ok {
		return Symbol{}, false
	}
	return s.Symbols[i], true
}

// Len is the number of symbols.
func (s *Symvers) Len() int { return len(s.Symbols) }

// Count is what CountSymvers would say of the file the table was read from.
func (s *Symvers) Count() SymversCount {
	c := SymversCount{Symbols: len(s.Symbols)}
	for _, sym := range s.Symbols {
		if sym.Module == "vmlinux" {
			c.Vmlinux++
		}
	}
	return c
}

// Modules lists the distinct providers (vmlinux and module paths), sorted.
func (s *Symvers) Modules() []string {
	seen := map[string]bool{}
	for _, sym := range s.Symbols {
		seen[sym.Module] = true
	}
	out := make([]string, 0, len(seen))
	for m := range seen {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// ReadSymvers reads a symvers file, plain or gzip/xz/zstd compressed (detected from its bytes).
func ReadSymvers(path string) (*Symvers, error) {
	data, _, err := ReadMaybeCompressed(path)
	if err != nil {
		return nil, err
	}
	return ParseSymvers(path, bytes.NewReader(data))
}

// ParseSymvers parses the tab-separated formats kbuild has written:
//
//	crc  symbol  module  export                 (4 columns, kernels before 5.4)
//	crc  symbol  namespace  module  export      (5 columns, 5.4 to 5.9)
//	crc  symbol  module  export  namespace      (5 columns, 5.10 and later)
//
// plus the 3-column form of very old kernels (crc symbol module). A blank line is allowed; any
// other malformed line is an error naming its line number.
func ParseSymvers(path string, r io.Reader) (sv *Symvers, err error) {
	defer kmp.Guard(path, &err)
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, kmp.InputErrorf(path, "%v", err)
	}
	// One string holds the file; every name, module and namespace is a piece of it (a kernel's
	// symvers has some 25,000 lines: a string, a slice and a join per line were most of the
	// time kmpack package spent reading kernel trees).
	text := string(raw)
	lines := presize(text)
	sv = &Symvers{Path: path, byName: make(map[string]int, lines), Symbols: make([]Symbol, 0, lines)}
	err = scanSymvers(path, text, func(sym Symbol) {
		if i, dup := sv.byName[sym.Name]; dup {
			sv.Symbols[i] = sym // modpost lets the last definition win
			return
		}
		sv.byName[sym.Name] = len(sv.Symbols)
		sv.Symbols = append(sv.Symbols, sym)
	})
	if err != nil {
		return nil, err
	}
	return sv, nil
}

// SymversCount is what CountSymvers finds in a Module.symvers.
type SymversCount struct {
	// Symbols is what ParseSymvers's Len would be, Vmlinux how many of them the kernel image
	// itself exports (a symbol defined twice counts once, by its last definition, as modpost
	// and ParseSymvers take it).
	Symbols, Vmlinux int
}

// CountSymvers checks data as ParseSymvers does, with the same errors, and counts its symbols
// without keeping the table: describing a kernel tree needs to know its Module.symvers is
// sound, not to hold 25,000 symbols of every tree a build names.
func CountSymvers(path string, data []byte) (c SymversCount, err error) {
	defer kmp.Guard(path, &err)
	text := string(data)
	vmlinux := make(map[string]bool, presize(text)) // name: its last definition is vmlinux's
	err = scanSymvers(path, text, func(sym Symbol) {
		vmlinux[sym.Name] = sym.Module == "vmlinux"
	})
	if err != nil {
		return SymversCount{}, err
	}
	c.Symbols = len(vmlinux)
	for _, v := range vmlinux {
		if v {
			c.Vmlinux++
		}
	}
	return c, nil
}

// presize is how many symbols to make room for: one per line, but no more than a real kernel
// has (some 30,000) — a file of blank lines must not buy gigabytes of empty table.
func presize(text string) int {
	return min(strings.Count(text, "\n")+1, 1<<16)
}

// scanSymvers checks text line by line and calls fn with each symbol, in order. A file
// without symbols is an error.
func scanSymvers(path, text string, fn func(Symbol)) error {
	var cols [5]string
	found := false
	for line := 1; text != ""; line++ {
		var l string
		l, text, _ = strings.Cut(text, "\n")
		if len(l) > maxSymversLine {
			return kmp.InputErrorf(path, "line %d: longer than %d bytes", line, maxSymversLine)
		}
		// A plain line (printable ASCII, spaces and tabs: every line of a real file) is split
		// and checked in one pass; any other takes the general path.
		n, plain := plainFields(l, &cols)
		if !plain {
			l = strings.TrimRight(l, "\r")
			n = 0
			for f := range strings.SplitSeq(l, "\t") {
				if n < len(cols) {
					cols[n] = f
				}
				n++
			}
		}
		if strings.TrimSpace(l) == "" {
			continue
		}
		var sym Symbol
		switch n {
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
			return kmp.InputErrorf(path, "line %d: %d tab-separated columns, want 3 to 5", line, n)
		}
		// Names, modules and namespaces are identifiers: a control character in one (a CR
		// mid-line, an escape) is a corrupt file, and would not survive being written back.
		// (A plain line has none: plainFields checked every byte.)
		if !plain {
			for _, c := range cols[:n] {
				if hasControl(c) {
					return kmp.InputErrorf(path, "line %d: control character in a field", line)
				}
			}
		}
		crc, err := parseCRC(cols[0])
		if err != nil {
			return kmp.InputErrorf(path, "line %d: bad CRC %q", line, truncate(cols[0], 40))
		}
		sym.CRC, sym.Name = crc, cols[1]
		if sym.Name == "" || strings.IndexByte(sym.Name, ' ') >= 0 || strings.IndexByte(sym.Name, 0) >= 0 {
			return kmp.InputErrorf(path, "line %d: bad symbol name %q", line, truncate(sym.Name, 40))
		}
		if sym.Module == "" {
			return kmp.InputErrorf(path, "line %d: symbol %s has no module", line, sym.Name)
		}
		if sym.Export != "" && !strings.HasPrefix(sym.Export, "EXPORT_") {
			return kmp.InputErrorf(path, "line %d: bad export type %q", line, truncate(sym.Export, 40))
		}
		fn(sym)
		found = true
	}
	if !found {
		return kmp.InputErrorf(path, "no symbols: not a Module.symvers file")
	}
	return nil
}

// maxSymversLine bounds a line of a symvers file (real ones are some 100 bytes).
const maxSymversLine = 1 << 20

// hasControl is strings.ContainsFunc(s, unicode.IsControl), byte by byte while s is ASCII.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c == 0x7f:
			return true
		case c >= 0x80:
			return strings.ContainsFunc(s[i:], unicode.IsControl)
		}
	}
	return false
}

// parseCRC reads a 0x-prefixed hexadecimal number of at most 64 bits (strconv.ParseUint's
// base-16 rules, without its generality: a symvers has a CRC on each of its lines).
func parseCRC(s string) (uint64, error) {
	if !strings.HasPrefix(s, "0x") && !strings.HasPrefix(s, "0X") {
		return 0, fmt.Errorf("no 0x prefix")
	}
	s = s[2:]
	if s == "" {
		return 0, fmt.Errorf("no digits")
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		d := hexDigit[s[i]]
		if d > 0xf {
			return 0, fmt.Errorf("not a hexadecimal digit: %q", s[i])
		}
		if v>>60 != 0 {
			return 0, fmt.Errorf("larger than 64 bits")
		}
		v = v<<4 | uint64(d)
	}
	return v, nil
}

// hexDigit is a byte's value as a hexadecimal digit, or 0xff.
var hexDigit = func() (t [256]uint8) {
	for c := range t {
		switch {
		case '0' <= c && c <= '9':
			t[c] = uint8(c - '0')
		case 'a' <= c && c <= 'f':
			t[c] = uint8(c - 'a' + 10)
		case 'A' <= c && c <= 'F':
			t[c] = uint8(c - 'A' + 10)
		default:
			t[c] = 0xff
		}
	}
	return t
}()

// plainFields splits l at its tabs into cols (the first len(cols) fields) and counts its
// fields, if l is plain: printable ASCII, spaces and tabs, nothing else. It looks at eight
// bytes at a time, each one's class found with carry-free arithmetic on its own byte.
func plainFields(l string, cols *[5]string) (n int, plain bool) {
	const (
		ones  = 0x0101010101010101
		low7  = 0x7f * ones
		highs = 0x80 * ones
	)
	// zero has the high bit of each zero byte of x set, and no other bit.
	zero := func(x uint64) uint64 { return ^(((x & low7) + low7) | x) & highs }
	from := 0
	field := func(to int) {
		if n < len(cols) {
			cols[n] = l[from:to]
		}
		n++
		from = to + 1
	}
	i := 0
	for ; i+8 <= len(l); i += 8 {
		w := uint64(l[i]) | uint64(l[i+1])<<8 | uint64(l[i+2])<<16 | uint64(l[i+3])<<24 |
			uint64(l[i+4])<<32 | uint64(l[i+5])<<40 | uint64(l[i+6])<<48 | uint64(l[i+7])<<56
		below := ^(((w & low7) + 0x60*ones) | w) & highs // bytes under 0x20
		tabs := zero(w ^ 0x09*ones)
		if below&^tabs|w&highs|zero(w^low7) != 0 { // another control byte, a non-ASCII one, DEL
			return 0, false
		}
		for ; tabs != 0; tabs &= tabs - 1 {
			field(i + bits.TrailingZeros64(tabs)>>3)
		}
	}
	for ; i < len(l); i++ {
		switch c := l[i]; {
		case c == '\t':
			field(i)
		case c < 0x20 || c >= 0x7f:
			return 0, false
		}
	}
	field(len(l))
	return n, true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// WriteTo writes the symbols in the current (5.10+) Module.symvers format.
func (s *Symvers) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriter(w)
	var n int64
	for _, sym := range s.Symbols {
		c, err := fmt.Fprintf(bw, "0x%08x\t%s\t%s\t%s\t%s\n", sym.CRC, sym.Name, sym.Module, sym.Export, sym.Namespace)
		n += int64(c)
		if err != nil {
			return n, err
		}
	}
	return n, bw.Flush()
}
