package sign

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/kmpack/kmpack/kmp"
)

// KeyBits is the RSA size Keygen uses: 4096, as the kernel's own certs/default_x509.genkey
// (default_bits = 4096) for its build-time key; every kernel that verifies RSA signatures
// accepts it, and a module signature costs 512 bytes.
const KeyBits = 4096

// Names of the files Keygen writes in its directory.
const (
	KeyFile     = "kmpack-signing.key" // PEM private key (PKCS#8), mode 0600
	CertPEMFile = "kmpack-signing.crt" // PEM certificate
	CertDERFile = "kmpack-signing.der" // DER certificate, as mokutil --import and /etc/uefi/certs want it
)

// KeygenOptions configures Keygen. Zero values: Dir ".", CN "kmpack module signing key", Days
// 3650, Bits KeyBits, Now time.Now().
type KeygenOptions struct {
	Dir  string
	CN   string
	Days int
	Bits int
	Now  time.Time
}

// KeyPair is what Keygen wrote.
type KeyPair struct {
	Key, CertPEM, CertDER string
	Cert                  *x509.Certificate
}

// Keygen makes an RSA key and a self-signed X.509 v3 certificate fit for module signing, with the
// extensions of the kernel's certs/default_x509.genkey (basicConstraints critical CA:FALSE,
// keyUsage digitalSignature, subjectKeyIdentifier, authorityKeyIdentifier) plus extendedKeyUsage
// codeSigning (what shim/MOK tooling and RHEL's kernels look for in module signing certificates),
// and writes KeyFile, CertPEMFile and CertDERFile in opt.Dir. It never replaces a file: if any of
// the three exists it writes nothing and returns an InputError naming it; each file is written
// under a temporary name and linked into place, so a file created meanwhile is not clobbered.
func Keygen(opt KeygenOptions) (*KeyPair, error) {
	if opt.Dir == "" {
		opt.Dir = "."
	}
	if opt.CN == "" {
		opt.CN = "kmpack module signing key"
	}
	if opt.Days == 0 {
		opt.Days = 3650
	}
	if opt.Days < 0 {
		return nil, fmt.Errorf("--days %d: must be positive", opt.Days)
	}
	if opt.Bits == 0 {
		opt.Bits = KeyBits
	}
	if opt.Now.IsZero() {
		opt.Now = time.Now()
	}
	// A missing directory is made, private: it is where a private key is about to live.
	if err := os.MkdirAll(opt.Dir, 0o700); err != nil {
		return nil, kmp.InputErrorf(opt.Dir, "%v", kmp.UnwrapPathError(err))
	}
	kp := &KeyPair{
		Key:     filepath.Join(opt.Dir, KeyFile),
		CertPEM: filepath.Join(opt.Dir, CertPEMFile),
		CertDER: filepath.Join(opt.Dir, CertDERFile),
	}
	for _, p := range []string{kp.Key, kp.CertPEM, kp.CertDER} {
		if _, err := os.Lstat(p); err == nil {
			return nil, kmp.InputErrorf(p, "already exists; kmpack keygen never replaces a key or certificate")
		}
	}
	key, err := rsa.GenerateKey(rand.Reader, opt.Bits)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	// subjectKeyIdentifier = SHA-1 of the subjectPublicKey bits, as OpenSSL's "hash" (RFC 5280 §4.2.1.2 (1)).
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(pubDER, &spki); err != nil {
		return nil, err
	}
	skid := sha1.Sum(spki.PublicKey.Bytes)
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	serial.SetBit(serial, 126, 1) // a fixed length: 16 octets, positive
	name := pkix.Name{CommonName: opt.CN}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               name,
		Issuer:                name,
		NotBefore:             opt.Now.Add(-time.Hour).UTC().Truncate(time.Second),
		NotAfter:              opt.Now.AddDate(0, 0, opt.Days).UTC().Truncate(time.Second),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          skid[:],
		AuthorityKeyId:        skid[:],
		SignatureAlgorithm:    x509.SHA256WithRSA,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	files := []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{kp.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{kp.CertPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644},
		{kp.CertDER, der, 0o644},
	}
	var linked []string
	fail := func(err error) (*KeyPair, error) {
		for _, p := range linked {
			os.Remove(p)
		}
		return nil, err
	}
	for _, f := range files {
		if err := writeNoReplace(f.path, f.data, f.perm); err != nil {
			return fail(err)
		}
		linked = append(linked, f.path)
	}
	kp.Cert = cert
	return kp, nil
}

// writeNoReplace writes data to a temporary file next to path and hard-links it to path, which
// fails if path exists (link(2) never replaces), so a file created since the check survives.
func writeNoReplace(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".kmpack-keygen-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return kmp.InputErrorf(path, "already exists; kmpack keygen never replaces a key or certificate")
		}
		return err
	}
	return nil
}
