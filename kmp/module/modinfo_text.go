package module

import (
	"fmt"
	"strings"
)

// ModinfoText renders the module exactly as kmod's `modinfo FILE` prints it (filename shown as
// given), so kmpack can stand in for modinfo and be checked against it byte for byte.
func (m *ModuleInfo) ModinfoText(filename string) string {
	var b strings.Builder
	line := func(key, value string) {
		pad := 15 - len(key)
		if pad < 0 {
			pad = 0
		}
		fmt.Fprintf(&b, "%s:%s%s\n", key, strings.Repeat(" ", pad), value)
	}
	line("filename", filename)
	for _, f := range m.Fields {
		if f.Key == "parm" || f.Key == "parmtype" {
			continue
		}
		line(f.Key, f.Value)
	}
	if s := m.Signature; s != nil {
		line("sig_id", s.IDType)
		line("signer", s.Signer)
		line("sig_key", wrappedHex(s.KeyID))
		line("sig_hashalgo", s.HashAlgo)
		line("signature", wrappedHex(s.Signature))
	}
	// kmod collects parameters into a list it builds by prepending, so they come out last
	// seen first.
	for i := len(m.Params) - 1; i >= 0; i-- {
		p := m.Params[i]
		switch {
		case !p.hasDesc:
			line("parm", p.Name+":"+p.Type)
		case p.Type != "":
			line("parm", p.Name+":"+p.Description+" ("+p.Type+")")
		default:
			line("parm", p.Name+":"+p.Description)
		}
	}
	return b.String()
}

// wrappedHex is libkmod's hex form: colon-separated, a line break and two tabs after every 20 bytes.
func wrappedHex(h []byte) string {
	var b strings.Builder
	for i, c := range h {
		fmt.Fprintf(&b, "%02X", c)
		if i < len(h)-1 {
			b.WriteByte(':')
			if (i+1)%20 == 0 {
				b.WriteString("\n\t\t")
			}
		}
	}
	return b.String()
}

// ModversionsText renders the imports as `modprobe --dump-modversions FILE` does.
func (m *ModuleInfo) ModversionsText() string {
	var b strings.Builder
	for _, s := range m.Imports {
		fmt.Fprintf(&b, "0x%08x\t%s\n", s.CRC, s.Name)
	}
	return b.String()
}
