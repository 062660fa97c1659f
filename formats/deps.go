package formats

import (
	"fmt"
	"sort"
	"strings"

	"github.com/kmpack/kmpack/kmp/module"
)

// packageSymbols is what one package's modules export (with a CRC) and import from outside the
// package. Imports another module of the same package exports are satisfied inside it, the way
// depmod would resolve them, so they never become dependencies.
type packageSymbols struct {
	Exports []module.ExportedSymbol
	Imports []module.SymbolCRC
}

func symbolsOf(mods []Module) packageSymbols {
	var ps packageSymbols
	exported := map[string]bool{}
	for _, m := range mods {
		for _, e := range m.Info.Exports {
			exported[e.Name] = true
			if e.HasCRC {
				ps.Exports = append(ps.Exports, e)
			}
		}
	}
	imported := map[string]bool{}
	for _, m := range mods {
		for _, i := range m.Info.Imports {
			if exported[i.Name] || imported[i.Name] {
				continue
			}
			imported[i.Name] = true
			ps.Imports = append(ps.Imports, i)
		}
	}
	sort.Slice(ps.Exports, func(i, j int) bool { return ps.Exports[i].Name < ps.Exports[j].Name })
	sort.Slice(ps.Imports, func(i, j int) bool { return ps.Imports[i].Name < ps.Imports[j].Name })
	return ps
}

// suseCRC is SUSE's spelling: lower-case hex, no 0x, no leading zeros (ksym-provides' %lx and
// find-requires.ksyms' s:^0x0*::).
func suseCRC(crc uint64) string { return fmt.Sprintf("%x", crc) }

// rhelCRC is Red Hat's spelling: 0x and eight zero-padded hex digits (find-*.ksyms' 0x%08x).
func rhelCRC(crc uint64) string { return fmt.Sprintf("0x%08x", crc) }

// kmodName is the kmod() capability of a module file: its base name without a compression
// suffix, with - as _ ("kmod(foo_bar.ko)"), as both SUSE's and Red Hat's generators write it.
func kmodName(fileName string) string {
	return "kmod(" + module.ModuleNameFromPath(fileName) + ".ko)"
}

// suseModaliases is find-supplements.ksyms: every alias with a bus prefix, hex-encoded and
// wrapped as modalias(kernel-<flavor>:...), then runs of aliases that differ in one character
// folded into a [..] class, as combine_modaliases does.
func suseModaliases(flavor string, mods []Module) []string {
	seen := map[string]bool{}
	var lines []string
	for _, m := range mods {
		for _, a := range m.Info.Aliases {
			if !strings.Contains(a, ":") {
				continue
			}
			l := "modalias(kernel-" + flavor + ":" + hexenc(a) + ")"
			if !seen[l] {
				seen[l] = true
				lines = append(lines, l)
			}
		}
	}
	sort.Strings(lines)
	return combineModaliases(lines)
}

// hexenc encodes every byte outside [*:a-zA-Z0-9] as %XX (upper-case hex), as SUSE's
// find-supplements does with hexdump.
func hexenc(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '*' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%X", c)
		}
	}
	return b.String()
}

// combineModaliases folds consecutive sorted lines that differ only at one position (the same
// position for the whole run, never a '*') into one line with a [...] class there.
func combineModaliases(lines []string) []string {
	var out []string
	for i := 0; i < len(lines); {
		first := lines[i]
		pos := -1
		j := i + 1
		for ; j < len(lines); j++ {
			p, ok := oneCharDiff(first, lines[j])
			if !ok || first[p] == '*' || pos >= 0 && p != pos {
				break
			}
			pos = p
		}
		if pos < 0 {
			out = append(out, first)
			i++
			continue
		}
		var class strings.Builder
		for k := i; k < j; k++ {
			class.WriteByte(lines[k][pos])
		}
		out = append(out, first[:pos]+"["+class.String()+"]"+first[pos+1:])
		i = j
	}
	return out
}

func oneCharDiff(a, b string) (int, bool) {
	if len(a) != len(b) {
		return 0, false
	}
	pos := -1
	for k := 0; k < len(a); k++ {
		if a[k] != b[k] {
			if pos >= 0 {
				return 0, false
			}
			pos = k
		}
	}
	return pos, pos >= 0
}
