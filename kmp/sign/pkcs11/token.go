//go:build cgo

package pkcs11

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"strconv"
	"strings"
	"sync"

	p11 "github.com/miekg/pkcs11"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/sign"
)

// Available tells whether this kmpack can talk to PKCS#11 tokens (it was built with cgo).
const Available = true

// Key is a private key on a token: a crypto.Signer for RSA PKCS#1 v1.5 signatures. Signatures
// are made one at a time (a PKCS#11 session is not for concurrent use).
type Key struct {
	mu      sync.Mutex
	ctx     *p11.Ctx
	session p11.SessionHandle
	handle  p11.ObjectHandle
	pub     *rsa.PublicKey
	module  string
	name    string
}

// Modules are loaded and initialized once per process and shared by the Keys on them (login
// state is per application, not per session): the last Close finalizes and unloads.
var (
	modulesMu sync.Mutex
	modules   = map[string]*loaded{}
)

type loaded struct {
	ctx  *p11.Ctx
	refs int
}

func loadModule(path string) (*p11.Ctx, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m := modules[path]; m != nil {
		m.refs++
		return m.ctx, nil
	}
	ctx := p11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("cannot load %s as a PKCS#11 module", path)
	}
	if err := ctx.Initialize(); err != nil && !isCKR(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		ctx.Destroy()
		return nil, fmt.Errorf("initializing PKCS#11 module %s: %v", path, ckr(err))
	}
	modules[path] = &loaded{ctx: ctx, refs: 1}
	return ctx, nil
}

func unloadModule(path string) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	m := modules[path]
	if m == nil {
		return
	}
	if m.refs--; m.refs == 0 {
		m.ctx.Finalize()
		m.ctx.Destroy()
		delete(modules, path)
	}
}

// Open logs in to the token a pkcs11: URI names and returns a Signer for its RSA private key,
// with the certificate from opt.CertPath or, if that is empty, the token's certificate object of
// the same id (else label). Every failure (no module, no token, wrong PIN, no such object, a key
// that is not the certificate's) is a one-line InputError naming the URI without its PIN. Close
// the Signer's Key (a *Key) when done.
func Open(uri string, opt Options) (*sign.Signer, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if u.Type != "" && u.Type != "private" {
		return nil, kmp.InputErrorf(u.Name, "type=%s: kmpack signs with the private key (type=private)", u.Type)
	}
	pin, hasPIN, err := u.pin(opt.Warn)
	if err != nil {
		return nil, err
	}
	var cert *x509.Certificate
	certName := "on the token"
	if opt.CertPath != "" {
		certName = opt.CertPath
		if cert, err = sign.LoadCertificate(opt.CertPath); err != nil {
			return nil, err
		}
	}
	module := u.module(opt.Module)
	fi, err := os.Stat(module)
	if err != nil {
		return nil, kmp.InputErrorf(u.Name, "PKCS#11 module %s: %v", module, kmp.UnwrapPathError(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, kmp.InputErrorf(u.Name, "PKCS#11 module %s is not a regular file (%s)", module, kmp.FileKind(fi.Mode()))
	}
	ctx, err := loadModule(module)
	if err != nil {
		return nil, kmp.InputErrorf(u.Name, "%v", err)
	}
	k := &Key{ctx: ctx, module: module, name: u.Name}
	ok := false
	defer func() {
		if !ok {
			k.Close()
		}
	}()
	fail := func(format string, args ...any) (*sign.Signer, error) {
		return nil, kmp.InputErrorf(u.Name, format, args...)
	}
	slot, tokenLabel, loginRequired, err := u.findSlot(ctx)
	if err != nil {
		return nil, err
	}
	if k.session, err = ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION); err != nil {
		return fail("opening a session on token %q: %v", tokenLabel, ckr(err))
	}
	switch {
	case hasPIN:
		if err := ctx.Login(k.session, p11.CKU_USER, pin); err != nil && !isCKR(err, p11.CKR_USER_ALREADY_LOGGED_IN) {
			if isCKR(err, p11.CKR_PIN_INCORRECT) || isCKR(err, p11.CKR_PIN_LEN_RANGE) {
				return fail("wrong PIN for token %q", tokenLabel)
			}
			return fail("logging in to token %q: %v", tokenLabel, ckr(err))
		}
	case loginRequired:
		return fail("token %q needs a PIN: set $%s or add pin-source=file:PATH to the URI", tokenLabel, EnvPIN)
	}
	keys, err := k.find(u, p11.CKO_PRIVATE_KEY)
	if err != nil {
		return fail("searching token %q: %v", tokenLabel, ckr(err))
	}
	switch len(keys) {
	case 0:
		hint := ""
		if !hasPIN {
			hint = " (without a PIN private keys may be hidden: set $" + EnvPIN + ")"
		}
		return fail("no private key %s on token %q%s", u.objectDesc(), tokenLabel, hint)
	case 1:
	default:
		return fail("%d private keys %s on token %q: add id= or object= to name one", len(keys), u.objectDesc(), tokenLabel)
	}
	k.handle = keys[0]
	attrs, err := ctx.GetAttributeValue(k.session, k.handle, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
		p11.NewAttribute(p11.CKA_MODULUS, nil),
		p11.NewAttribute(p11.CKA_PUBLIC_EXPONENT, nil),
		p11.NewAttribute(p11.CKA_ID, nil),
		p11.NewAttribute(p11.CKA_LABEL, nil),
	})
	if err != nil {
		return fail("reading the private key's attributes: %v", ckr(err))
	}
	if kt, err := bytesToUint(attrs[0].Value); err != nil || kt != p11.CKK_RSA {
		return fail("the private key %s is not an RSA key: kernels verify module signatures made with RSA keys", u.objectDesc())
	}
	e := new(big.Int).SetBytes(attrs[2].Value)
	if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
		return fail("the private key has an unusable public exponent")
	}
	k.pub = &rsa.PublicKey{N: new(big.Int).SetBytes(attrs[1].Value), E: int(e.Int64())}
	if cert == nil {
		if cert, err = k.tokenCertificate(attrs[3].Value, string(attrs[4].Value), tokenLabel); err != nil {
			return nil, err
		}
	}
	if !k.pub.Equal(cert.PublicKey) {
		return fail("the private key does not match the certificate %s (%q)", certName, cert.Subject.CommonName)
	}
	ok = true
	return &sign.Signer{Cert: cert, Key: k, Name: u.Name}, nil
}

// findSlot returns the one slot whose token matches the URI's token attributes.
func (u *URI) findSlot(ctx *p11.Ctx) (slot uint, label string, loginRequired bool, err error) {
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return 0, "", false, kmp.InputErrorf(u.Name, "listing slots: %v", ckr(err))
	}
	var labels []string
	var matches []uint
	var infos []p11.TokenInfo
	for _, s := range slots {
		ti, err := ctx.GetTokenInfo(s)
		if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		labels = append(labels, strconv.Quote(ti.Label))
		if (u.Token != "" && ti.Label != u.Token) || (u.Manufacturer != "" && ti.ManufacturerID != u.Manufacturer) ||
			(u.Model != "" && ti.Model != u.Model) || (u.Serial != "" && ti.SerialNumber != u.Serial) ||
			(u.SlotID != "" && strconv.FormatUint(uint64(s), 10) != u.SlotID) {
			continue
		}
		matches = append(matches, s)
		infos = append(infos, ti)
	}
	switch len(matches) {
	case 0:
		present := "no token is present"
		if len(labels) > 0 {
			present = "tokens present: " + strings.Join(labels, ", ")
		}
		return 0, "", false, kmp.InputErrorf(u.Name, "no such token (%s)", present)
	case 1:
		return matches[0], infos[0].Label, infos[0].Flags&p11.CKF_LOGIN_REQUIRED != 0, nil
	}
	return 0, "", false, kmp.InputErrorf(u.Name, "%d tokens match (%s): add token= or serial= to name one", len(matches), strings.Join(labels, ", "))
}

// find returns the objects of class that the URI's object and id name.
func (k *Key) find(u *URI, class uint) ([]p11.ObjectHandle, error) {
	tmpl := []*p11.Attribute{p11.NewAttribute(p11.CKA_CLASS, class)}
	if u.Object != "" {
		tmpl = append(tmpl, p11.NewAttribute(p11.CKA_LABEL, u.Object))
	}
	if u.HasID {
		tmpl = append(tmpl, p11.NewAttribute(p11.CKA_ID, u.ID))
	}
	return k.findTemplate(tmpl)
}

func (k *Key) findTemplate(tmpl []*p11.Attribute) ([]p11.ObjectHandle, error) {
	if err := k.ctx.FindObjectsInit(k.session, tmpl); err != nil {
		return nil, err
	}
	objs, _, err := k.ctx.FindObjects(k.session, 16)
	if ferr := k.ctx.FindObjectsFinal(k.session); err == nil {
		err = ferr
	}
	return objs, err
}

// tokenCertificate reads the X.509 certificate object with the key's CKA_ID (or, if the key has
// none, its label) from the token.
func (k *Key) tokenCertificate(id []byte, label, token string) (*x509.Certificate, error) {
	tmpl := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_CERTIFICATE),
		p11.NewAttribute(p11.CKA_CERTIFICATE_TYPE, p11.CKC_X_509),
	}
	what := ""
	switch {
	case len(id) > 0:
		tmpl = append(tmpl, p11.NewAttribute(p11.CKA_ID, id))
		what = fmt.Sprintf("id %x", id)
	case label != "":
		tmpl = append(tmpl, p11.NewAttribute(p11.CKA_LABEL, label))
		what = fmt.Sprintf("label %q", label)
	default:
		return nil, kmp.InputErrorf(k.name, "the private key has neither id nor label to find its certificate by: give --sign-cert")
	}
	objs, err := k.findTemplate(tmpl)
	if err != nil {
		return nil, kmp.InputErrorf(k.name, "searching token %q for the certificate: %v", token, ckr(err))
	}
	if len(objs) != 1 {
		return nil, kmp.InputErrorf(k.name, "%d X.509 certificate objects with the key's %s on token %q, want one: store it (pkcs11-tool --write-object CERT.der --type cert --id ...) or give --sign-cert", len(objs), what, token)
	}
	attrs, err := k.ctx.GetAttributeValue(k.session, objs[0], []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
	if err != nil {
		return nil, kmp.InputErrorf(k.name, "reading the certificate object: %v", ckr(err))
	}
	return sign.ParseCertificate(k.name+" (certificate object)", attrs[0].Value)
}

// objectDesc describes the object attributes of the URI for messages.
func (u *URI) objectDesc() string {
	var parts []string
	if u.Object != "" {
		parts = append(parts, "object="+u.Object)
	}
	if u.HasID {
		parts = append(parts, fmt.Sprintf("id=%x", u.ID))
	}
	return strings.Join(parts, ";")
}

// Public is the key's RSA public key.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Sign makes an RSA PKCS#1 v1.5 signature of digest with the token's key (CKM_RSA_PKCS over the
// DigestInfo, which is what rsa.SignPKCS1v15 computes in software).
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if _, ok := opts.(*rsa.PSSOptions); ok {
		return nil, errors.New("PSS signatures are not supported: module signatures are PKCS#1 v1.5")
	}
	di, err := sign.DigestInfo(opts.HashFunc(), digest)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ctx == nil {
		return nil, kmp.InputErrorf(k.name, "the token session is closed")
	}
	if err := k.ctx.SignInit(k.session, []*p11.Mechanism{p11.NewMechanism(p11.CKM_RSA_PKCS, nil)}, k.handle); err != nil {
		return nil, kmp.InputErrorf(k.name, "signing: %v", ckr(err))
	}
	sig, err := k.ctx.Sign(k.session, di)
	if err != nil {
		return nil, kmp.InputErrorf(k.name, "signing: %v", ckr(err))
	}
	return sig, nil
}

// Close closes the key's session (the token logs the application out with its last session)
// and, with the last Key on its module, finalizes and unloads the module.
func (k *Key) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ctx == nil {
		return nil
	}
	if k.session != 0 {
		k.ctx.CloseSession(k.session)
	}
	k.ctx = nil
	unloadModule(k.module)
	return nil
}

// ckr shortens a PKCS#11 error to its CKR_ name.
func ckr(err error) error {
	var e p11.Error
	if errors.As(err, &e) {
		return errors.New(strings.TrimPrefix(e.Error(), "pkcs11: "))
	}
	return err
}

func isCKR(err error, code uint) bool {
	var e p11.Error
	return errors.As(err, &e) && uint(e) == code
}

// bytesToUint reads a CK_ULONG attribute (native byte order, as the module wrote it).
func bytesToUint(b []byte) (uint, error) {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b)), nil
	case 4:
		return uint(binary.NativeEndian.Uint32(b)), nil
	}
	return 0, fmt.Errorf("%d-byte CK_ULONG", len(b))
}
