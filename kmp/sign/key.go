package sign

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"

	"github.com/youmark/pkcs8"

	"github.com/kmpack/kmpack/kmp"
)

// maxKeyFile bounds what is read of a key, certificate or passphrase file.
const maxKeyFile = 1 << 20

// readSmall reads a regular file of at most maxKeyFile bytes; every refusal is an InputError.
func readSmall(path string) ([]byte, error) {
	data, err := kmp.ReadRegularFile(path, maxKeyFile)
	if err != nil {
		return nil, kmp.InputErrorf(path, "%v", err)
	}
	return data, nil
}

// LoadKeyInDir is LoadKeyFile for a key and certificate named by a file kmpack reads
// (kmpack.yaml's signing.keys): both must be regular files inside dir, reached through an
// os.Root without any link out of it, so that the file cannot name a key of the host.
func LoadKeyInDir(dir, keyRel, certRel string, passphrase []byte) (*Signer, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, kmp.InputErrorf(dir, "%v", kmp.UnwrapPathError(err))
	}
	defer root.Close()
	read := func(rel string) (string, []byte, error) {
		p := filepath.Join(dir, rel)
		if filepath.IsAbs(rel) || !kmp.LexicallyInside(filepath.ToSlash(rel)) {
			return p, nil, kmp.InputErrorf(p, "not inside %s: a signing key named by kmpack.yaml must be a file of the source", dir)
		}
		b, _, err := kmp.ReadRootFile(root, rel, maxKeyFile)
		if err != nil {
			return p, nil, kmp.InputErrorf(p, "%v", kmp.UnwrapPathError(err))
		}
		return p, b, nil
	}
	keyPath, keyData, err := read(keyRel)
	if err != nil {
		return nil, err
	}
	certPath, certData, err := read(certRel)
	if err != nil {
		return nil, err
	}
	return NewSigner(keyPath, certPath, keyData, certData, passphrase)
}

// MaxKeyFile bounds what kmpack reads of a key or certificate file.
const MaxKeyFile = maxKeyFile

// NewSigner makes a Signer of a key and certificate already read (by a caller that reads them
// its own way, through an os.Root), checking that they are a pair; the paths name them in
// errors.
func NewSigner(keyPath, certPath string, keyData, certData, passphrase []byte) (*Signer, error) {
	key, err := ParsePrivateKey(keyPath, keyData, passphrase)
	if err != nil {
		return nil, err
	}
	cert, err := ParseCertificate(certPath, certData)
	if err != nil {
		return nil, err
	}
	if err := checkPair(keyPath, certPath, key, cert); err != nil {
		return nil, err
	}
	return &Signer{Cert: cert, Key: key, Name: keyPath}, nil
}

// LoadCertificate reads an X.509 certificate, PEM (the first CERTIFICATE block, so the kernel's
// signing_key.pem with key and certificate in one file works) or DER.
func LoadCertificate(path string) (*x509.Certificate, error) {
	data, err := readSmall(path)
	if err != nil {
		return nil, err
	}
	return ParseCertificate(path, data)
}

// ParseCertificate is LoadCertificate on bytes; path names them in errors.
func ParseCertificate(path string, data []byte) (cert *x509.Certificate, err error) {
	defer kmp.Guard(path, &err)
	der := data
	if bytes.Contains(data, []byte("-----BEGIN")) {
		der = nil
		for rest := data; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type == "CERTIFICATE" {
				der = b.Bytes
				break
			}
		}
		if der == nil {
			return nil, kmp.InputErrorf(path, "no PEM CERTIFICATE block")
		}
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		return nil, kmp.InputErrorf(path, "not an X.509 certificate: %v", err)
	}
	return cert, nil
}

// ReadPassphrase returns the passphrase of an encrypted key: the value of the environment
// variable env if env is not empty, else the first line of file if file is not empty, else nil.
// Passphrases never come from the command line, where other users can read them.
func ReadPassphrase(env, file string) ([]byte, error) {
	switch {
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok {
			return nil, kmp.InputErrorf("$"+env, "passphrase variable is not set")
		}
		return []byte(v), nil
	case file != "":
		data, err := readSmall(file)
		if err != nil {
			return nil, err
		}
		line, _, _ := strings.Cut(string(data), "\n")
		return []byte(strings.TrimSuffix(line, "\r")), nil
	}
	return nil, nil
}

// LoadKeyFile makes a Signer from a PEM private key file and a certificate file (they may be the
// same file). The key may be PKCS#1 ("RSA PRIVATE KEY", plain or with the legacy
// Proc-Type/DEK-Info encryption of `openssl genrsa -aes256 -traditional`) or PKCS#8 ("PRIVATE
// KEY", or "ENCRYPTED PRIVATE KEY" as `openssl genrsa -aes256` and `openssl pkcs8 -topk8 -v2
// aes256` write). A wrong passphrase, an encrypted key without one, or a key that is not the
// certificate's is an InputError.
func LoadKeyFile(keyPath, certPath string, passphrase []byte) (*Signer, error) {
	data, err := readSmall(keyPath)
	if err != nil {
		return nil, err
	}
	key, err := ParsePrivateKey(keyPath, data, passphrase)
	if err != nil {
		return nil, err
	}
	cert, err := LoadCertificate(certPath)
	if err != nil {
		return nil, err
	}
	if err := checkPair(keyPath, certPath, key, cert); err != nil {
		return nil, err
	}
	return &Signer{Cert: cert, Key: key, Name: keyPath}, nil
}

func checkPair(keyPath, certPath string, key crypto.Signer, cert *x509.Certificate) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return kmp.InputErrorf(keyPath, "the private key does not match the certificate %s (%q)", certPath, cert.Subject.CommonName)
	}
	return nil
}

// ParsePrivateKey reads the first private key of a PEM file; path names it in errors.
func ParsePrivateKey(path string, data, passphrase []byte) (key crypto.Signer, err error) {
	defer kmp.Guard(path, &err)
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, kmp.InputErrorf(path, "no PEM private key (RSA PRIVATE KEY, PRIVATE KEY or ENCRYPTED PRIVATE KEY block)")
		}
		var k any
		switch b.Type {
		case "RSA PRIVATE KEY":
			der := b.Bytes
			//lint:ignore SA1019 the legacy encryption is what `openssl genrsa -traditional -aes256` writes
			if x509.IsEncryptedPEMBlock(b) { //nolint:staticcheck
				if len(passphrase) == 0 {
					return nil, kmp.InputErrorf(path, "the private key is encrypted and no passphrase was given")
				}
				der, err = x509.DecryptPEMBlock(b, passphrase) //nolint:staticcheck
				if err != nil {
					return nil, kmp.InputErrorf(path, "cannot decrypt the private key: wrong passphrase?")
				}
			}
			k, err = x509.ParsePKCS1PrivateKey(der)
			if err != nil && x509.IsEncryptedPEMBlock(b) { //nolint:staticcheck
				// The legacy scheme has no integrity check: a wrong passphrase shows here.
				return nil, kmp.InputErrorf(path, "cannot decrypt the private key: wrong passphrase?")
			}
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			if len(passphrase) == 0 {
				return nil, kmp.InputErrorf(path, "the private key is encrypted and no passphrase was given")
			}
			k, err = pkcs8.ParsePKCS8PrivateKey(b.Bytes, passphrase)
			if err != nil && strings.Contains(err.Error(), "incorrect password") {
				return nil, kmp.InputErrorf(path, "cannot decrypt the private key: wrong passphrase")
			}
		default:
			continue
		}
		if err != nil {
			return nil, kmp.InputErrorf(path, "%s: %v", strings.ToLower(b.Type), err)
		}
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, kmp.InputErrorf(path, "a %T key: kernels verify module signatures made with RSA keys", k)
		}
		if err := rk.Validate(); err != nil {
			return nil, kmp.InputErrorf(path, "invalid RSA key: %v", err)
		}
		return rk, nil
	}
}

// LoadPrivateKey reads a PEM private key file (as LoadKeyFile, without a certificate): for
// signing what is not a module, such as apk packages.
func LoadPrivateKey(path string, passphrase []byte) (crypto.Signer, error) {
	data, err := readSmall(path)
	if err != nil {
		return nil, err
	}
	return ParsePrivateKey(path, data, passphrase)
}

// ReadKeyFile reads a small key file (at most 1 MiB, a regular file) for other key formats
// (OpenPGP); every refusal is an InputError.
func ReadKeyFile(path string) ([]byte, error) { return readSmall(path) }
