package module

import (
	"bytes"
	"debug/elf"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kmpack/kmpack/kmp"
)

// ModinfoField is one key=value string of a module's .modinfo section, in file order.
type ModinfoField struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// ModuleParam is a module parameter as modinfo shows it: parm= description joined with parmtype=.
type ModuleParam struct {
	Name        string `json:"name"`
	Type        string `json:"type,omitempty"`
	Description string `json:"description,omitempty"`
	hasDesc     bool
}

// SymbolCRC is a symbol name with its modversions CRC.
type SymbolCRC struct {
	Name string `json:"name"`
	CRC  uint64 `json:"crc"`
}

// ExportedSymbol is a symbol a module exports for others to import.
type ExportedSymbol struct {
	Name      string `json:"name"`
	CRC       uint64 `json:"crc"`
	HasCRC    bool   `json:"has_crc"`
	GPLOnly   bool   `json:"gpl_only"`
	Namespace string `json:"namespace,omitempty"`
}

// ExportType is the Module.symvers spelling of how the symbol was exported.
func (e ExportedSymbol) ExportType() string {
	if e.GPLOnly {
		return "EXPORT_SYMBOL_GPL"
	}
	return "EXPORT_SYMBOL"
}

// ModuleInfo is everything kmpack reads from one kernel module file, without running any tool.
type ModuleInfo struct {
	Path        string      `json:"path"`
	Compression Compression `json:"compression"`
	// Name is modinfo's name= (what the kernel calls the module), or the file name without
	// suffixes and with - as _ when the module carries none (kernels before 4.x).
	Name        string         `json:"name"`
	Version     string         `json:"version,omitempty"`
	SrcVersion  string         `json:"srcversion,omitempty"`
	Vermagic    string         `json:"vermagic,omitempty"`
	License     string         `json:"license,omitempty"`
	Description string         `json:"description,omitempty"`
	Authors     []string       `json:"authors,omitempty"`
	Depends     []string       `json:"depends"`
	Softdeps    []string       `json:"softdeps,omitempty"`
	Aliases     []string       `json:"aliases,omitempty"`
	ImportNS    []string       `json:"import_ns,omitempty"`
	Firmware    []string       `json:"firmware,omitempty"`
	Intree      bool           `json:"intree"`
	Retpoline   bool           `json:"retpoline"`
	Params      []ModuleParam  `json:"params,omitempty"`
	Fields      []ModinfoField `json:"modinfo"`
	// Imports are the symbols the module needs, with the CRCs it was built against
	// (__versions, or the extended modversions tables of kernels 6.15 and later).
	Imports []SymbolCRC `json:"imports"`
	// ImportsSource says where Imports came from: "__versions", "__version_ext", or "" when
	// the module was built without CONFIG_MODVERSIONS.
	ImportsSource string           `json:"imports_source,omitempty"`
	Exports       []ExportedSymbol `json:"exports"`
	// ThisModuleSize is the size of .gnu.linkonce.this_module, the module's copy of the
	// kernel's struct module: it must match the kernel that loads it.
	ThisModuleSize uint64           `json:"this_module_size"`
	Machine        string           `json:"machine"`
	Class          string           `json:"elf_class"`
	ByteOrder      string           `json:"byte_order"`
	Signature      *ModuleSignature `json:"signature,omitempty"`
}

// Field returns every value of a .modinfo key in file order.
func (m *ModuleInfo) Field(key string) []string {
	var out []string
	for _, f := range m.Fields {
		if f.Key == key {
			out = append(out, f.Value)
		}
	}
	return out
}

// Import returns the CRC the module expects for sym.
func (m *ModuleInfo) Import(sym string) (uint64, bool) {
	for _, s := range m.Imports {
		if s.Name == sym {
			return s.CRC, true
		}
	}
	return 0, false
}

// ReadModule reads a .ko, .ko.gz, .ko.xz or .ko.zst file. It refuses, as an *InputError, what is
// not a regular file, a file whose first (decompressed) bytes are not ELF's magic before reading
// the rest, and files beyond the MaxInputFile and MaxDecompressed limits.
func ReadModule(path string) (*ModuleInfo, error) {
	data, c, err := ReadInput(path, checkELFMagic)
	if err != nil {
		return nil, err
	}
	m, err := ParseModule(path, data)
	if err != nil {
		return nil, err
	}
	m.Compression = c
	return m, nil
}

// ParseModule parses an uncompressed module image. path only names it in errors and in the result.
func ParseModule(path string, data []byte) (m *ModuleInfo, err error) {
	defer kmp.Guard(path, &err)
	if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		return nil, kmp.InputErrorf(path, "not a kernel module: no ELF magic at offset 0")
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, kmp.InputErrorf(path, "not an ELF kernel module: %v", err)
	}
	if f.Type != elf.ET_REL {
		return nil, kmp.InputErrorf(path, "not a kernel module: ELF type is %v, want ET_REL", f.Type)
	}
	m = &ModuleInfo{
		Path: path, Compression: CompressNone,
		Machine: machineName(f.Machine), Class: f.Class.String(), ByteOrder: f.ByteOrder.String(),
		Depends: []string{}, Imports: []SymbolCRC{}, Exports: []ExportedSymbol{}, Fields: []ModinfoField{},
	}
	modinfo := f.Section(".modinfo")
	if modinfo == nil {
		return nil, kmp.InputErrorf(path, "not a kernel module: no .modinfo section")
	}
	raw, err := sectionBytes(data, modinfo)
	if err != nil {
		return nil, kmp.InputErrorf(path, "section .modinfo: %v", err)
	}
	m.Fields = splitModinfo(raw)
	m.applyFields(path)

	if err := m.readImports(f, data, path); err != nil {
		return nil, err
	}
	if err := m.readExports(f, data, path); err != nil {
		return nil, err
	}
	if s := f.Section(".gnu.linkonce.this_module"); s != nil {
		m.ThisModuleSize = s.Size
	}
	sig, err := parseAppendedSignature(path, data)
	if err != nil {
		return nil, err
	}
	m.Signature = sig
	return m, nil
}

func checkELFMagic(head []byte) error {
	if !bytes.HasPrefix(head, []byte(elf.ELFMAG)) {
		return fmt.Errorf("not a kernel module: no ELF magic at offset 0")
	}
	return nil
}

func machineName(m elf.Machine) string {
	switch m {
	case elf.EM_X86_64:
		return "x86_64"
	case elf.EM_386:
		return "i386"
	case elf.EM_AARCH64:
		return "aarch64"
	case elf.EM_ARM:
		return "arm"
	case elf.EM_PPC64:
		return "ppc64"
	case elf.EM_PPC:
		return "ppc"
	case elf.EM_S390:
		return "s390"
	case elf.EM_RISCV:
		return "riscv"
	case elf.EM_LOONGARCH:
		return "loongarch"
	case elf.EM_MIPS:
		return "mips"
	}
	return strings.ToLower(strings.TrimPrefix(m.String(), "EM_"))
}

// sectionBytes returns a section's contents as a sub-slice of the module image, refusing a
// section that does not lie within it (checked without overflow: offset and size are the file's).
func sectionBytes(data []byte, s *elf.Section) ([]byte, error) {
	if s.Type == elf.SHT_NOBITS {
		return nil, nil
	}
	if s.Flags&elf.SHF_COMPRESSED != 0 {
		return nil, fmt.Errorf("compressed sections are not supported")
	}
	if s.Offset > uint64(len(data)) || s.Size > uint64(len(data))-s.Offset {
		return nil, fmt.Errorf("offset %#x size %#x: outside the %d-byte file", s.Offset, s.Size, len(data))
	}
	return data[s.Offset : s.Offset+s.Size : s.Offset+s.Size], nil
}

// splitModinfo splits .modinfo the way libkmod does: NUL-separated key=value strings, padding
// (runs of NULs) skipped, a string without '=' taken as a key with an empty value.
func splitModinfo(raw []byte) []ModinfoField {
	fields := []ModinfoField{}
	for _, s := range bytes.Split(raw, []byte{0}) {
		if len(s) == 0 {
			continue
		}
		k, v, _ := strings.Cut(string(s), "=")
		fields = append(fields, ModinfoField{Key: k, Value: v})
	}
	return fields
}

func (m *ModuleInfo) applyFields(path string) {
	params := map[string]int{}
	param := func(name string) *ModuleParam {
		if i, ok := params[name]; ok {
			return &m.Params[i]
		}
		params[name] = len(m.Params)
		m.Params = append(m.Params, ModuleParam{Name: name})
		return &m.Params[len(m.Params)-1]
	}
	for _, f := range m.Fields {
		switch f.Key {
		case "name":
			m.Name = f.Value
		case "version":
			m.Version = f.Value
		case "srcversion":
			m.SrcVersion = f.Value
		case "vermagic":
			m.Vermagic = f.Value
		case "license":
			m.License = f.Value
		case "description":
			m.Description = f.Value
		case "author":
			m.Authors = append(m.Authors, f.Value)
		case "depends":
			m.Depends = splitList(f.Value)
		case "softdep":
			m.Softdeps = append(m.Softdeps, f.Value)
		case "alias":
			m.Aliases = append(m.Aliases, f.Value)
		case "import_ns":
			m.ImportNS = append(m.ImportNS, f.Value)
		case "firmware":
			m.Firmware = append(m.Firmware, f.Value)
		case "intree":
			m.Intree = f.Value == "Y"
		case "retpoline":
			m.Retpoline = f.Value == "Y"
		case "parm", "parmtype":
			name, rest, ok := strings.Cut(f.Value, ":")
			if !ok {
				continue // libkmod skips these too
			}
			p := param(name)
			if f.Key == "parm" {
				p.Description, p.hasDesc = rest, true
			} else {
				p.Type = rest
			}
		}
	}
	if m.Name == "" {
		m.Name = ModuleNameFromPath(path)
	}
}

func splitList(s string) []string {
	out := []string{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// ModuleNameFromPath is the name the kernel gives a module file: base name without .ko and
// compression suffixes, with '-' as '_'.
func ModuleNameFromPath(path string) string {
	base := filepath.Base(path)
	for _, suf := range []string{".gz", ".xz", ".zst"} {
		base = strings.TrimSuffix(base, suf)
	}
	base = strings.TrimSuffix(base, ".ko")
	return strings.ReplaceAll(base, "-", "_")
}

// IsModuleFileName tells whether a file name is a kernel module's (.ko, optionally compressed).
func IsModuleFileName(name string) bool {
	for _, suf := range []string{".ko", ".ko.gz", ".ko.xz", ".ko.zst"} {
		if strings.HasSuffix(name, suf) {
			return true
		}
	}
	return false
}

// modversionEntrySize is sizeof(struct modversion_info): an unsigned long CRC and the rest of
// 64 bytes for the NUL-terminated name.
const modversionEntrySize = 64

func (m *ModuleInfo) readImports(f *elf.File, data []byte, path string) error {
	if names, crcs := f.Section("__version_ext_names"), f.Section("__version_ext_crcs"); names != nil && crcs != nil {
		return m.readExtendedImports(f, data, path, names, crcs)
	}
	s := f.Section("__versions")
	if s == nil {
		return nil
	}
	raw, err := sectionBytes(data, s)
	if err != nil {
		return kmp.InputErrorf(path, "section __versions: %v", err)
	}
	if len(raw)%modversionEntrySize != 0 {
		return kmp.InputErrorf(path, "section __versions at offset %#x: size %d is not a multiple of %d", s.Offset, len(raw), modversionEntrySize)
	}
	crcLen := 8
	if f.Class == elf.ELFCLASS32 {
		crcLen = 4
	}
	for off := 0; off < len(raw); off += modversionEntrySize {
		e := raw[off : off+modversionEntrySize]
		var crc uint64
		if crcLen == 8 {
			crc = f.ByteOrder.Uint64(e)
		} else {
			crc = uint64(f.ByteOrder.Uint32(e))
		}
		name := e[crcLen:]
		end := bytes.IndexByte(name, 0)
		if end < 0 {
			return kmp.InputErrorf(path, "section __versions at offset %#x: symbol name is not NUL-terminated", s.Offset+uint64(off))
		}
		sym := string(name[:end])
		if !symbolNameOK(sym) {
			return kmp.InputErrorf(path, "section __versions at offset %#x: bad symbol name %q", s.Offset+uint64(off), sym)
		}
		// libkmod drops a leading '.' (ppc64 ELFv1 function descriptors); so do we, to agree.
		sym = strings.TrimPrefix(sym, ".")
		m.Imports = append(m.Imports, SymbolCRC{Name: sym, CRC: crc})
	}
	m.ImportsSource = "__versions"
	return nil
}

// symbolNameOK refuses names the kernel's own tools could never have written: empty, or with
// control characters (bytes below 0x20 and DEL), which would also split or garble the line-based
// outputs (--dump-modversions, the inspect listing) and a terminal showing them. Other bytes
// are kept as they are: kmod does not judge them either.
func symbolNameOK(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// readExtendedImports reads CONFIG_EXTENDED_MODVERSIONS tables: an array of u32 CRCs and, in the
// same order, NUL-terminated names padded to 4 bytes, so names of any length fit.
func (m *ModuleInfo) readExtendedImports(f *elf.File, data []byte, path string, names, crcs *elf.Section) error {
	nraw, err := sectionBytes(data, names)
	if err != nil {
		return kmp.InputErrorf(path, "section __version_ext_names: %v", err)
	}
	craw, err := sectionBytes(data, crcs)
	if err != nil {
		return kmp.InputErrorf(path, "section __version_ext_crcs: %v", err)
	}
	if len(craw)%4 != 0 {
		return kmp.InputErrorf(path, "section __version_ext_crcs at offset %#x: size %d is not a multiple of 4", crcs.Offset, len(craw))
	}
	var syms []string
	for i := 0; i < len(nraw); {
		end := bytes.IndexByte(nraw[i:], 0)
		if end < 0 {
			return kmp.InputErrorf(path, "section __version_ext_names at offset %#x: name is not NUL-terminated", names.Offset+uint64(i))
		}
		if end > 0 {
			sym := string(nraw[i : i+end])
			if !symbolNameOK(sym) {
				return kmp.InputErrorf(path, "section __version_ext_names at offset %#x: bad symbol name %q", names.Offset+uint64(i), sym)
			}
			syms = append(syms, sym)
		}
		i += end + 1
		for i < len(nraw) && nraw[i] == 0 {
			i++
		}
	}
	if len(syms) != len(craw)/4 {
		return kmp.InputErrorf(path, "extended modversions: %d names but %d CRCs", len(syms), len(craw)/4)
	}
	for i, sym := range syms {
		m.Imports = append(m.Imports, SymbolCRC{Name: sym, CRC: uint64(f.ByteOrder.Uint32(craw[i*4:]))})
	}
	m.ImportsSource = "__version_ext"
	return nil
}

// readExports finds exported symbols from their __ksymtab_<sym> entries, their CRCs from
// __crc_<sym> (absolute symbols in old kernels, offsets into __kcrctab* since 4.x) and their
// namespaces from __kstrtabns_<sym>.
func (m *ModuleInfo) readExports(f *elf.File, data []byte, path string) error {
	syms, err := f.Symbols()
	if err != nil {
		if err == elf.ErrNoSymbols {
			return nil
		}
		return kmp.InputErrorf(path, "symbol table: %v", err)
	}
	type exp struct{ ExportedSymbol }
	exports := map[string]*exp{}
	crcs := map[string]elf.Symbol{}
	nss := map[string]elf.Symbol{}
	for _, s := range syms {
		switch {
		case strings.HasPrefix(s.Name, "__ksymtab_"):
			name := strings.TrimPrefix(s.Name, "__ksymtab_")
			if int(s.Section) >= len(f.Sections) || s.Section == elf.SHN_UNDEF {
				continue
			}
			sec := f.Sections[s.Section].Name
			if !strings.HasPrefix(sec, "__ksymtab") || sec == "__ksymtab_strings" {
				continue
			}
			if !symbolNameOK(name) {
				return kmp.InputErrorf(path, "exported symbol: bad name %q", name)
			}
			exports[name] = &exp{ExportedSymbol: ExportedSymbol{Name: name, GPLOnly: strings.Contains(sec, "gpl")}}
		case strings.HasPrefix(s.Name, "__crc_"):
			crcs[strings.TrimPrefix(s.Name, "__crc_")] = s
		case strings.HasPrefix(s.Name, "__kstrtabns_"):
			nss[strings.TrimPrefix(s.Name, "__kstrtabns_")] = s
		}
	}
	cache := map[elf.SectionIndex][]byte{}
	secData := func(idx elf.SectionIndex) ([]byte, error) {
		if b, ok := cache[idx]; ok {
			return b, nil
		}
		if int(idx) >= len(f.Sections) {
			return nil, fmt.Errorf("section index %d out of range", idx)
		}
		b, err := sectionBytes(data, f.Sections[idx])
		if err != nil {
			return nil, err
		}
		cache[idx] = b
		return b, nil
	}
	for name, e := range exports {
		if s, ok := crcs[name]; ok {
			switch {
			case s.Section == elf.SHN_ABS:
				e.CRC, e.HasCRC = s.Value, true
			case s.Section != elf.SHN_UNDEF && s.Section < elf.SHN_LORESERVE:
				b, err := secData(s.Section)
				if err != nil {
					return kmp.InputErrorf(path, "CRC of %q: %v", name, err)
				}
				if uint64(len(b)) < 4 || s.Value > uint64(len(b))-4 {
					return kmp.InputErrorf(path, "CRC of %q: offset %#x outside section %q", name, s.Value, f.Sections[s.Section].Name)
				}
				e.CRC, e.HasCRC = uint64(f.ByteOrder.Uint32(b[s.Value:])), true
			}
		}
		if s, ok := nss[name]; ok && s.Section != elf.SHN_UNDEF && s.Section < elf.SHN_LORESERVE {
			b, err := secData(s.Section)
			if err != nil {
				return kmp.InputErrorf(path, "namespace of %q: %v", name, err)
			}
			if s.Value >= uint64(len(b)) {
				return kmp.InputErrorf(path, "namespace of %q: offset %#x outside section %q", name, s.Value, f.Sections[s.Section].Name)
			}
			str := b[s.Value:]
			if i := bytes.IndexByte(str, 0); i >= 0 {
				str = str[:i]
			}
			if str := string(str); str != "" && !symbolNameOK(str) { // "" is no namespace (5.4-5.16)
				return kmp.InputErrorf(path, "namespace of %q: bad name %q", name, str)
			}
			e.Namespace = string(str)
		}
	}
	list := make([]*exp, 0, len(exports))
	for _, e := range exports {
		list = append(list, e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	for _, e := range list {
		m.Exports = append(m.Exports, e.ExportedSymbol)
	}
	return nil
}
