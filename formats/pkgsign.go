package formats

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/sign"
)

// PackageSigning are the keys that sign packages: an OpenPGP key for RPMs (rpm -K checks it
// against keys imported with rpm --import), an RSA key for apk packages (apk checks it against
// /etc/apk/keys/<APKKeyName>). Debian packages are trusted through signed repositories.
type PackageSigning struct {
	RPM *PGPKey
	APK *APKKey
}

// PGPKey is an OpenPGP private key that signs RPM headers and payloads.
type PGPKey struct {
	entity *openpgp.Entity
	// mu makes one signature at a time: packages are written side by side.
	mu sync.Mutex
}

// LoadPGPKey reads an OpenPGP secret key (armored, as gpg --armor --export-secret-keys writes
// it, or binary), decrypting it with passphrase when it is protected.
func LoadPGPKey(path string, passphrase []byte) (*PGPKey, error) {
	data, err := sign.ReadKeyFile(path)
	if err != nil {
		return nil, err
	}
	var r io.Reader = bytes.NewReader(data)
	if block, err := armor.Decode(bytes.NewReader(data)); err == nil {
		r = block.Body
	}
	list, err := openpgp.ReadKeyRing(r)
	if err != nil {
		return nil, kmp.InputErrorf(path, "not an OpenPGP key: %v", err)
	}
	if len(list) == 0 || list[0].PrivateKey == nil {
		return nil, kmp.InputErrorf(path, "no OpenPGP secret key (export it with gpg --armor --export-secret-keys)")
	}
	e := list[0]
	keys := []*packet.PrivateKey{e.PrivateKey}
	for _, sk := range e.Subkeys {
		if sk.PrivateKey != nil {
			keys = append(keys, sk.PrivateKey)
		}
	}
	for _, k := range keys {
		if !k.Encrypted {
			continue
		}
		if len(passphrase) == 0 {
			return nil, kmp.InputErrorf(path, "the OpenPGP key is passphrase-protected: set KMPACK_GPG_PASSPHRASE or --gpg-passphrase-file")
		}
		if err := k.Decrypt(passphrase); err != nil {
			return nil, kmp.InputErrorf(path, "wrong passphrase for the OpenPGP key")
		}
	}
	return &PGPKey{entity: e}, nil
}

// KeyID is the signing key's id, as rpm -K prints it (the last 8 hex digits).
func (k *PGPKey) KeyID() string { return fmt.Sprintf("%016x", k.entity.PrimaryKey.KeyId) }

// signer returns the detached binary OpenPGP signature function rpmpack calls for the header
// and for header+payload. The signature is dated at mtime (or the key's creation, if later)
// and carries no random salt notation: RSA PKCS#1 v1.5 being deterministic, the same inputs
// give the same bytes.
func (k *PGPKey) signer(mtime time.Time) func([]byte) ([]byte, error) {
	when := mtime
	if c := k.entity.PrimaryKey.CreationTime; when.Before(c) {
		when = c
	}
	deterministic := false
	cfg := &packet.Config{DefaultHash: crypto.SHA256, Time: func() time.Time { return when },
		NonDeterministicSignaturesViaNotation: &deterministic}
	return func(data []byte) ([]byte, error) {
		k.mu.Lock()
		defer k.mu.Unlock()
		var buf bytes.Buffer
		if err := openpgp.DetachSign(&buf, k.entity, bytes.NewReader(data), cfg); err != nil {
			return nil, fmt.Errorf("OpenPGP signature: %w", err)
		}
		return buf.Bytes(), nil
	}
}

// APKKey is an RSA private key that signs apk packages as abuild-sign does.
type APKKey struct {
	key *rsa.PrivateKey
	// mu makes one signature at a time: packages are written side by side.
	mu sync.Mutex
	// Name is the public key's file name in /etc/apk/keys, ending .rsa.pub.
	Name string
}

// LoadAPKKey reads an RSA PEM private key (abuild-keygen's <name>.rsa). name is the public
// key's name in /etc/apk/keys; "" takes the key file's (foo.rsa → foo.rsa.pub).
func LoadAPKKey(path, name string, passphrase []byte) (*APKKey, error) {
	k, err := sign.LoadPrivateKey(path, passphrase)
	if err != nil {
		return nil, err
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, kmp.InputErrorf(path, "apk signs with RSA keys only, this is a %T", k)
	}
	if name == "" {
		name = strings.TrimSuffix(strings.TrimSuffix(filepath.Base(path), ".pem"), ".rsa")
	}
	name = strings.TrimSuffix(strings.TrimSuffix(name, ".pub"), ".rsa") + ".rsa.pub"
	if !safeWord.MatchString(name) || strings.Contains(name, "/") {
		return nil, kmp.InputErrorf(path, "apk key name %q is not a plain file name", name)
	}
	return &APKKey{key: rk, Name: name}, nil
}

// sign is nfpm's SignFn: RSA PKCS#1 v1.5 over the SHA-1 digest of the control segment, which
// nfpm hands over (apk-tools verifies .SIGN.RSA.* signatures with SHA-1).
func (k *APKKey) sign(digest io.Reader) ([]byte, error) {
	d, err := io.ReadAll(digest)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return rsa.SignPKCS1v15(rand.Reader, k.key, crypto.SHA1, d)
}

// signConfig is the configuration of deterministic signatures dated at when (or the key's
// creation, if later): RSA PKCS#1 v1.5 and EdDSA signatures with no salt notation are the
// same bytes for the same input.
func (k *PGPKey) signConfig(when time.Time) *packet.Config {
	if c := k.entity.PrimaryKey.CreationTime; when.Before(c) {
		when = c
	}
	deterministic := false
	return &packet.Config{DefaultHash: crypto.SHA256, Time: func() time.Time { return when },
		NonDeterministicSignaturesViaNotation: &deterministic}
}

// ClearSign returns data clear-signed (as apt's InRelease is: gpg --clearsign), dated at when.
func (k *PGPKey) ClearSign(data []byte, when time.Time) ([]byte, error) {
	cfg := k.signConfig(when)
	sk, ok := k.entity.SigningKey(cfg.Now())
	if !ok || sk.PrivateKey == nil {
		return nil, fmt.Errorf("the OpenPGP key %s has no usable signing key", k.KeyID())
	}
	var buf bytes.Buffer
	w, err := clearsign.Encode(&buf, sk.PrivateKey, cfg)
	if err != nil {
		return nil, fmt.Errorf("OpenPGP clear signature: %w", err)
	}
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("OpenPGP clear signature: %w", err)
	}
	return buf.Bytes(), nil
}

// DetachSignArmored returns the armored detached signature of data (gpg -abs), dated at when:
// apt's Release.gpg, rpm-md's repomd.xml.asc.
func (k *PGPKey) DetachSignArmored(data []byte, when time.Time) ([]byte, error) {
	var buf bytes.Buffer
	if err := openpgp.ArmoredDetachSign(&buf, k.entity, bytes.NewReader(data), k.signConfig(when)); err != nil {
		return nil, fmt.Errorf("OpenPGP signature: %w", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// PublicKeyArmored is the key's public part, armored (gpg --armor --export), for
// repomd.xml.key and users' keyrings.
func (k *PGPKey) PublicKeyArmored() ([]byte, error) {
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
	if err != nil {
		return nil, err
	}
	if err := k.entity.Serialize(w); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}
