// Package pkcs11 signs modules with an RSA key on a PKCS#11 token (a smart card, an HSM, or
// Debian's softhsm2), named by an RFC 7512 pkcs11: URI. The token only ever sees DigestInfo
// structures to sign (CKM_RSA_PKCS); the private key never leaves it.
//
// The URI is parsed by github.com/stefanberger/go-pkcs11uri; this package picks out what it
// uses. Talking to the token needs cgo (github.com/miekg/pkcs11 dlopens the module): a kmpack
// built with CGO_ENABLED=0 says so instead of signing.
package pkcs11

import (
	"os"
	"strings"

	"github.com/stefanberger/go-pkcs11uri"

	"github.com/kmpack/kmpack/kmp"
)

// DefaultModule is the PKCS#11 module used when neither the URI's module-path nor
// Options.Module names one: Debian's softhsm2.
const DefaultModule = "/usr/lib/softhsm/libsofthsm2.so"

// EnvPIN is the environment variable a token's PIN is read from when the URI has neither
// pin-source nor pin-value.
const EnvPIN = "KMPACK_PKCS11_PIN"

// maxPINFile bounds what is read of a pin-source file.
const maxPINFile = 4096

// URI is what kmpack uses of a pkcs11: URI.
type URI struct {
	// Name is the URI as given but without its pin-value, for messages.
	Name string
	// Token selection (path attributes token, manufacturer, model, serial, slot-id); empty
	// matches any.
	Token, Manufacturer, Model, Serial, SlotID string
	// Object is the object label, ID its CKA_ID (both optional, at least one needed).
	Object string
	ID     []byte
	HasID  bool
	// Type is the type attribute if given ("private", "cert", ...).
	Type string
	// ModulePath is the module-path query attribute, ModuleName module-name.
	ModulePath, ModuleName string
	// PINValue is the pin-value query attribute (visible in argv: discouraged), HasPINValue
	// whether it was there; PINSource the pin-source attribute.
	PINValue    string
	HasPINValue bool
	PINSource   string
}

// IsURI tells whether a --sign-key argument is a pkcs11: URI rather than a file name.
func IsURI(s string) bool { return strings.HasPrefix(s, "pkcs11:") }

// ParseURI parses an RFC 7512 URI; a malformed one is an InputError naming it without its PIN.
func ParseURI(s string) (u *URI, err error) {
	name := redact(s)
	defer kmp.Guard(name, &err)
	p := pkcs11uri.New()
	if err := p.Parse(s); err != nil {
		return nil, kmp.InputErrorf(name, "%v", err)
	}
	u = &URI{Name: name}
	get := func(attr string) string { v, _ := p.GetPathAttribute(attr, false); return v }
	u.Token, u.Manufacturer, u.Model, u.Serial, u.SlotID = get("token"), get("manufacturer"), get("model"), get("serial"), get("slot-id")
	u.Object, u.Type = get("object"), get("type")
	var id string
	id, u.HasID = p.GetPathAttribute("id", false)
	u.ID = []byte(id)
	u.ModulePath, _ = p.GetQueryAttribute("module-path", false)
	u.ModuleName, _ = p.GetQueryAttribute("module-name", false)
	u.PINValue, u.HasPINValue = p.GetQueryAttribute("pin-value", false)
	u.PINSource, _ = p.GetQueryAttribute("pin-source", false)
	if u.Object == "" && !u.HasID {
		return nil, kmp.InputErrorf(name, "names no object: add object=LABEL or id=%%XX...")
	}
	return u, nil
}

// redact drops pin-value from a pkcs11: URI's query, so the PIN never reaches a message.
func redact(s string) string {
	path, query, ok := strings.Cut(s, "?")
	if !ok {
		return kmp.OneLine(s)
	}
	var keep []string
	for _, a := range strings.Split(query, "&") {
		if k, _, _ := strings.Cut(a, "="); strings.EqualFold(k, "pin-value") {
			keep = append(keep, "pin-value=REDACTED")
			continue
		}
		keep = append(keep, a)
	}
	return kmp.OneLine(path + "?" + strings.Join(keep, "&"))
}

// pin returns the token's PIN and whether there is one: from pin-source (a file: URI or an
// absolute path; its first line), else pin-value (warned about: it is in argv), else $EnvPIN.
func (u *URI) pin(warn func(string)) (string, bool, error) {
	switch {
	case u.PINSource != "":
		path := strings.TrimPrefix(u.PINSource, "file:")
		if strings.Contains(path, ":") && !strings.HasPrefix(path, "/") {
			return "", false, kmp.InputErrorf(u.Name, "pin-source %q: only file: sources are supported", u.PINSource)
		}
		data, err := readPINFile(path)
		if err != nil {
			return "", false, kmp.InputErrorf(u.Name, "pin-source %s: %v", path, err)
		}
		line, _, _ := strings.Cut(string(data), "\n")
		return strings.TrimSuffix(line, "\r"), true, nil
	case u.HasPINValue:
		if warn != nil {
			warn(u.Name + ": the PIN is in the URI (pin-value), which other users see in the process list; use pin-source=file:PATH or $" + EnvPIN)
		}
		return u.PINValue, true, nil
	}
	if v, ok := os.LookupEnv(EnvPIN); ok {
		return v, true, nil
	}
	return "", false, nil
}

func readPINFile(path string) ([]byte, error) {
	return kmp.ReadRegularFile(path, maxPINFile)
}

// module picks the PKCS#11 module: the URI's module-path (a file), else opt's, else DefaultModule.
func (u *URI) module(opt string) string {
	switch {
	case u.ModulePath != "":
		return u.ModulePath
	case opt != "":
		return opt
	}
	return DefaultModule
}

// Options configures Open.
type Options struct {
	// Module is the PKCS#11 module to load when the URI has no module-path (--pkcs11-module,
	// $KMPACK_PKCS11_MODULE); DefaultModule if empty.
	Module string
	// CertPath is the certificate file of the key; empty reads the certificate object with the
	// key's id (else its label) from the token.
	CertPath string
	// Warn receives warnings (a PIN in the URI).
	Warn func(string)
}
