package target

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/sign"
)

// Signing policies for modules autoinstall builds (AutoinstallOptions.Sign).
const (
	// SignAuto signs with the machine's key when it has one and the kernel checks signatures
	// (CONFIG_MODULE_SIG); when the kernel requires them (CONFIG_MODULE_SIG_FORCE, or this
	// machine boots with Secure Boot or module.sig_enforce) and there is no key, kmpack makes
	// one (MachineKeyDir) and says how to enroll it.
	SignAuto = "auto"
	// SignAlways signs every local build, making the key when there is none.
	SignAlways = "always"
	// SignNever never signs.
	SignNever = "never"
)

// MachineKeyDir is where kmpack keeps the key it makes (sign.KeyFile, sign.CertDERFile: the
// DER certificate is what mokutil --import takes).
const MachineKeyDir = stateBase + "/mok"

// keyLocation is a machine key's key and certificate, paths from the root.
type keyLocation struct{ origin, key, cert string }

// machineKeyLocations are the machine signing keys autoinstall may use, in order: kmpack's
// own, then others' because the machine's owner may have enrolled one already (dkms 3's, the
// one dkms's framework.conf names, Ubuntu's shim-signed, Fedora's akmods): one enrollment then
// serves all the tools.
func machineKeyLocations(r *os.Root, o *Options) []keyLocation {
	locs := []keyLocation{{"kmpack", MachineKeyDir + "/" + sign.KeyFile, MachineKeyDir + "/" + sign.CertDERFile}}
	if k, c := dkmsFrameworkKey(r, o); k != "" {
		locs = append(locs, keyLocation{"dkms framework.conf", k, c})
	}
	return append(locs,
		keyLocation{"dkms", "var/lib/dkms/mok.key", "var/lib/dkms/mok.pub"},
		keyLocation{"shim-signed", "var/lib/shim-signed/mok/MOK.priv", "var/lib/shim-signed/mok/MOK.der"},
		keyLocation{"akmods", "etc/pki/akmods/private/private_key.priv", "etc/pki/akmods/certs/public_key.der"})
}

// dkmsFrameworkKey is the key and certificate dkms's framework.conf (and framework.conf.d/*.conf,
// later files winning) set with mok_signing_key and mok_certificate, when both are literal
// absolute paths: the files are read for assignments, never run; a computed value or a
// PKCS#11 URI is not followed.
func dkmsFrameworkKey(r *os.Root, o *Options) (key, cert string) {
	files := []string{"etc/dkms/framework.conf"}
	if d, err := r.Open("etc/dkms/framework.conf.d"); err == nil {
		names, _ := d.Readdirnames(256)
		d.Close()
		slices.Sort(names)
		for _, n := range names {
			if strings.HasSuffix(n, ".conf") && ident.PathComponent(n) == nil {
				files = append(files, "etc/dkms/framework.conf.d/"+n)
			}
		}
	}
	for _, f := range files {
		b, _, err := kmp.ReadRootFile(r, f, maxConfScan)
		if err != nil {
			continue
		}
		if v := literalAssignment(b, "mok_signing_key"); v != "" {
			key = v
		}
		if v := literalAssignment(b, "mok_certificate"); v != "" {
			cert = v
		}
	}
	for _, p := range []string{key, cert} {
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" {
			if key != "" || cert != "" {
				o.warnf("%s: mok_signing_key %q and mok_certificate %q are not both absolute file paths: not used", o.display("etc/dkms/framework.conf"), key, cert)
			}
			return "", ""
		}
	}
	return strings.TrimPrefix(key, "/"), strings.TrimPrefix(cert, "/")
}

// MachineKey is the key local builds are signed with.
type MachineKey struct {
	// Signer's Key is nil when only the certificate was read (status).
	Signer *sign.Signer
	// Cert is the certificate's path from the root (for mokutil --import).
	Cert string
	// Origin says whose key it is: kmpack, dkms, shim-signed or akmods.
	Origin string
}

// KeyID is the key as module signatures name it (the certificate's serial, as modinfo's
// sig_key prints it).
func (k *MachineKey) KeyID() string {
	return module.HexBytes(k.Signer.Cert.SerialNumber.Bytes()).String()
}

// FindMachineKey returns the machine's signing key, or nil when there is none: the first
// location of machineKeyLocations that holds a key, except that where shim's MokList can be
// read (this machine) an enrolled key is preferred to one that is not. A key that is present
// but unusable, and chosen, is an error naming it: signing with another one would leave the
// owner's key silently unused.
func FindMachineKey(o Options) (*MachineKey, error) { return findMachineKey(o, true) }

func findMachineKey(o Options, withKey bool) (*MachineKey, error) {
	r, err := os.OpenRoot(o.root())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	mok := o.enrolledCerts()
	var first *MachineKey
	var firstErr error
	for _, l := range machineKeyLocations(r, &o) {
		k, err := loadMachineKey(r, &o, l, withKey)
		if k == nil && err == nil {
			continue // not there
		}
		if first == nil && firstErr == nil {
			first, firstErr = k, err
		}
		if mok == nil {
			break
		}
		if err == nil && enrolled(mok, k.Signer.Cert) {
			return k, nil
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	if first != nil && mok != nil && withKey {
		o.warnf("the machine's module signing key %s (%s's) is not enrolled in shim's MokList: mokutil --import %s, then reboot and confirm in MokManager",
			first.Cert, first.Origin, first.Cert)
	}
	return first, nil
}

// loadMachineKey reads l inside the root: its paths are resolved there (an absolute link is
// taken from the root, as the system sees it), and read through an os.Root, so that nothing
// outside the root is read even if a link changes meanwhile. nil, nil: l's key is not there.
func loadMachineKey(r *os.Root, o *Options, l keyLocation, withKey bool) (*MachineKey, error) {
	read := func(rel string) (string, []byte, error) {
		resolved, err := securejoin.SecureJoin(o.root(), rel)
		if err != nil {
			return "", nil, err
		}
		inRoot := strings.TrimPrefix(strings.TrimPrefix(resolved, strings.TrimSuffix(o.root(), "/")), "/")
		b, _, err := kmp.ReadRootFile(r, inRoot, sign.MaxKeyFile)
		if err != nil {
			return "", nil, kmp.InputErrorf(o.display(rel), "%v", kmp.UnwrapPathError(err))
		}
		return o.display(rel), b, nil
	}
	resolved, err := securejoin.SecureJoin(o.root(), l.key)
	if err != nil {
		return nil, nil
	}
	if _, err := os.Lstat(resolved); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	certPath, certData, err := read(l.cert)
	if err != nil {
		return nil, fmt.Errorf("machine signing key (%s's): %w", l.origin, err)
	}
	var s *sign.Signer
	if withKey {
		keyPath, keyData, err := read(l.key)
		if err == nil {
			s, err = sign.NewSigner(keyPath, certPath, keyData, certData, nil)
		}
		if err != nil {
			return nil, fmt.Errorf("machine signing key (%s's): %w", l.origin, err)
		}
	} else {
		cert, err := sign.ParseCertificate(certPath, certData)
		if err != nil {
			return nil, fmt.Errorf("machine signing key (%s's): %w", l.origin, err)
		}
		s = &sign.Signer{Cert: cert, Name: certPath}
	}
	return &MachineKey{Signer: s, Cert: "/" + l.cert, Origin: l.origin}, nil
}

func enrolled(mok []*x509.Certificate, c *x509.Certificate) bool {
	for _, m := range mok {
		if m.Equal(c) {
			return true
		}
	}
	return false
}

// makeMachineKey makes kmpack's own key in MachineKeyDir: generated in a private directory of
// this machine, then written into a new directory in the root through the os.Root and renamed
// into place whole, so a run killed midway leaves no half of a key behind.
func makeMachineKey(o Options) (*MachineKey, error) {
	tmp, err := os.MkdirTemp("", "kmpack-mok-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	cn := "kmpack machine module signing key"
	if o.root() == "/" {
		if h, err := os.Hostname(); err == nil && h != "" {
			cn += " (" + h + ")"
		}
	}
	if _, err := sign.Keygen(sign.KeygenOptions{Dir: tmp, CN: cn}); err != nil {
		return nil, err
	}
	r, err := os.OpenRoot(o.root())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if err := r.MkdirAll(stateBase, 0o755); err != nil {
		return nil, err
	}
	if fi, err := r.Lstat(stateBase); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", o.display(stateBase))
	}
	staging := fmt.Sprintf("%s.new-%d", MachineKeyDir, os.Getpid())
	r.RemoveAll(staging)
	if err := r.Mkdir(staging, 0o700); err != nil {
		return nil, err
	}
	defer r.RemoveAll(staging)
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{{sign.KeyFile, 0o600}, {sign.CertPEMFile, 0o644}, {sign.CertDERFile, 0o644}} {
		b, err := os.ReadFile(filepath.Join(tmp, f.name))
		if err != nil {
			return nil, err
		}
		out, err := r.OpenFile(staging+"/"+f.name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, f.mode)
		if err != nil {
			return nil, err
		}
		_, err = out.Write(b)
		if err == nil {
			err = out.Sync()
		}
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
	}
	// A directory left without a key (an older run's, emptied by hand) is replaced; one with
	// anything in it is never touched.
	r.Remove(MachineKeyDir)
	if err := r.Rename(staging, MachineKeyDir); err != nil {
		return nil, fmt.Errorf("%s: %v (kmpack never replaces a key)", o.display(MachineKeyDir), kmp.UnwrapPathError(err))
	}
	return FindMachineKey(o)
}

// signaturesRequired says why kernel tree t will refuse unsigned modules, or "" when it will
// not as far as kmpack can tell. The machine's own state (Secure Boot, sig_enforce) is read only
// for the machine kmpack runs on (Root "/"), and is taken to hold for every kernel it boots.
func (o *Options) signaturesRequired(t *kernel.KernelTree) string {
	if t.Signing.Force {
		return t.Release + " is configured with CONFIG_MODULE_SIG_FORCE"
	}
	if !t.Signing.Enabled || o.root() != "/" {
		return ""
	}
	if b, err := os.ReadFile("/sys/module/module/parameters/sig_enforce"); err == nil && strings.TrimSpace(string(b)) == "Y" {
		return "the running kernel enforces module signatures (module.sig_enforce)"
	}
	if b, err := os.ReadFile("/sys/kernel/security/lockdown"); err == nil && !strings.Contains(string(b), "[none]") && strings.Contains(string(b), "[") {
		return "the running kernel is locked down (" + strings.TrimSpace(string(b)) + "), which enforces module signatures"
	}
	if secureBootEnabled() {
		return "this machine boots with Secure Boot (its kernels then refuse unsigned modules)"
	}
	return ""
}

// efiGlobal is the EFI global variable GUID (SecureBoot); shimLock shim's (MokListRT).
const (
	efiGlobal = "8be4df61-93ca-11d2-aa0d-e2fa2f6bd6b4"
	shimLock  = "605dab50-e046-4300-abb6-3dd810dd8b23"
)

func secureBootEnabled() bool {
	b, err := os.ReadFile("/sys/firmware/efi/efivars/SecureBoot-" + efiGlobal)
	// efivarfs: 4 bytes of attributes, then the variable (one byte, 1 = enabled).
	return err == nil && len(b) == 5 && b[4] == 1
}

// machineSigner decides, for a local build against t, which key signs it (nil: unsigned) and
// makes kmpack's key when the policy needs one and the machine has none. note is what the user
// must do (enroll a new key), said once per run.
func (o *AutoinstallOptions) machineSigner(t *kernel.KernelTree) (*MachineKey, error) {
	if o.Sign == SignNever {
		return nil, nil
	}
	if o.key == nil && !o.keyLooked {
		k, err := FindMachineKey(o.Options)
		if err != nil {
			return nil, err
		}
		o.key, o.keyLooked = k, true
	}
	if !t.Signing.Enabled {
		return nil, nil // the kernel checks no signature (CONFIG_MODULE_SIG unset): nothing to sign for
	}
	if o.key != nil {
		return o.key, nil
	}
	why := o.signaturesRequired(t)
	if o.Sign == SignAlways && why == "" {
		why = "--sign always"
	}
	if why == "" {
		return nil, nil
	}
	k, err := makeMachineKey(o.Options)
	if err != nil {
		return nil, fmt.Errorf("making a machine signing key: %w", err)
	}
	o.key = k
	o.warnf("made a module signing key because %s: %s; the kernel trusts it once enrolled: mokutil --import %s, then reboot and confirm in MokManager",
		why, o.display(strings.TrimPrefix(MachineKeyDir, "/")), k.Cert)
	return k, nil
}

// SignatureInfo is a row's module signature state in kmpack status.
type SignatureInfo struct {
	// State is signed (every module by the key below), unsigned, mixed (some modules
	// unsigned or by other keys) or unreadable.
	State  string `json:"state"`
	Signer string `json:"signer,omitempty"`
	KeyID  string `json:"key_id,omitempty"`
	// MachineKey says the key is this machine's (the one autoinstall signs with).
	MachineKey bool `json:"machine_key,omitempty"`
	// Enrolled is yes or no when shim's MokList can be read (this machine, booted with UEFI
	// and shim), absent when nothing can say.
	Enrolled string `json:"enrolled,omitempty"`
}

// signatureOf reads the signatures of files (paths from the root).
func signatureOf(r *os.Root, files []string, key *MachineKey, mok []*x509.Certificate) *SignatureInfo {
	if len(files) == 0 {
		return nil
	}
	var first *module.ModuleSignature
	info := &SignatureInfo{}
	for _, f := range files {
		data, _, err := kmp.ReadRootFile(r, strings.TrimPrefix(f, "/"), maxModuleRead)
		if err == nil {
			data, _, err = module.Decompress(f, data)
		}
		var m *module.ModuleInfo
		if err == nil {
			m, err = module.ParseModule(f, data)
		}
		switch {
		case err != nil:
			return &SignatureInfo{State: "unreadable"}
		case m.Signature == nil:
			info.State = "unsigned"
		case first == nil:
			first = m.Signature
		case first.Signer != m.Signature.Signer || !bytes.Equal(first.KeyID, m.Signature.KeyID):
			info.State = "mixed"
		}
	}
	if first == nil {
		return &SignatureInfo{State: "unsigned"}
	}
	if info.State != "" {
		info.State = "mixed"
	} else {
		info.State = "signed"
	}
	info.Signer, info.KeyID = first.Signer, first.KeyID.String()
	if key != nil && key.Signer.Cert.Issuer.CommonName == first.Signer && key.KeyID() == info.KeyID {
		info.MachineKey = true
	}
	if mok != nil {
		info.Enrolled = "no"
		for _, c := range mok {
			if c.Issuer.CommonName == first.Signer && module.HexBytes(c.SerialNumber.Bytes()).String() == info.KeyID {
				info.Enrolled = "yes"
			}
		}
	}
	return info
}

// maxModuleRead bounds a module read for its signature.
const maxModuleRead = 256 << 20

// enrolledCerts are the certificates in shim's MokList as the running system exposes it (nil
// when it does not: no UEFI, no shim, or not this machine's root).
func (o *Options) enrolledCerts() []*x509.Certificate {
	if o.root() != "/" {
		return nil
	}
	// shim 15.3+ publishes the whole list in a configuration table; older ones mirror it in
	// MokListRT (split into MokListRT1, 2, ... when large), behind efivarfs' attribute bytes.
	if b, err := os.ReadFile("/sys/firmware/efi/mok-variables/MokListRT"); err == nil {
		if certs, err := ParseSignatureLists("/sys/firmware/efi/mok-variables/MokListRT", b); err == nil {
			return certs
		}
	}
	var out []*x509.Certificate
	found := false
	for i := 0; i < 64; i++ {
		name := "/sys/firmware/efi/efivars/MokListRT-" + shimLock
		if i > 0 {
			name = fmt.Sprintf("/sys/firmware/efi/efivars/MokListRT%d-%s", i, shimLock)
		}
		b, err := os.ReadFile(name)
		if err != nil || len(b) < 4 {
			break
		}
		found = true
		certs, err := ParseSignatureLists(name, b[4:])
		if err != nil {
			o.warnf("%v", err)
			return nil
		}
		out = append(out, certs...)
	}
	if !found {
		return nil
	}
	return out
}

// Bounds on a MokList: shim keeps it in a few pages of NVRAM.
const (
	maxSignatureLists = 1 << 20
	maxSignatureCount = 4096
)

// x509GUID is EFI_CERT_X509_GUID (a5c059a1-94e4-4aa7-87b5-ab155c2bf072) as the bytes of an
// EFI_SIGNATURE_LIST's SignatureType (the first three fields little-endian).
var x509GUID = []byte{0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72}

// ParseSignatureLists reads concatenated EFI_SIGNATURE_LISTs (UEFI 2.x §32.4.1, as MokList,
// db and efitools' cert-to-efi-sig-list hold them) and returns their X.509 certificates;
// lists of other types (hashes) are skipped. Bad input is an InputError naming file and offset.
func ParseSignatureLists(file string, data []byte) (certs []*x509.Certificate, err error) {
	defer kmp.Guard(file, &err)
	if len(data) > maxSignatureLists {
		return nil, kmp.InputErrorf(file, "%d bytes: more than a signature database holds", len(data))
	}
	for off := 0; off < len(data); {
		if len(data)-off < 28 {
			return nil, kmp.InputErrorf(file, "offset %d: truncated EFI_SIGNATURE_LIST header", off)
		}
		h := data[off:]
		listSize := int64(binary.LittleEndian.Uint32(h[16:]))
		headerSize := int64(binary.LittleEndian.Uint32(h[20:]))
		sigSize := int64(binary.LittleEndian.Uint32(h[24:]))
		if listSize < 28 || listSize > int64(len(data)-off) {
			return nil, kmp.InputErrorf(file, "offset %d: list size %d does not fit", off, listSize)
		}
		body := listSize - 28 - headerSize
		if headerSize > listSize-28 || sigSize < 16 || body%sigSize != 0 {
			return nil, kmp.InputErrorf(file, "offset %d: header size %d and signature size %d do not divide list size %d", off, headerSize, sigSize, listSize)
		}
		if bytes.Equal(h[:16], x509GUID) {
			for p := 28 + headerSize; p < listSize; p += sigSize {
				if len(certs) == maxSignatureCount {
					return nil, kmp.InputErrorf(file, "more than %d certificates", maxSignatureCount)
				}
				c, err := x509.ParseCertificate(h[p+16 : p+sigSize])
				if err != nil {
					return nil, kmp.InputErrorf(file, "offset %d: %v", int64(off)+p, err)
				}
				certs = append(certs, c)
			}
		}
		off += int(listSize)
	}
	return certs, nil
}
