// Package sign signs kernel modules exactly as the kernel's scripts/sign-file does (a detached
// PKCS#7/CMS SignedData without signed attributes or certificates, the signer named by issuer
// and serial, then struct module_signature and "~Module signature appended~\n"), with keys from
// PEM files, an external signer command or a PKCS#11 token; it makes key pairs fit for module
// signing (Keygen) and verifies module signatures against a certificate (VerifyModule).
//
// The signature is byte-identical to sign-file's for the same key, hash and module: RSA PKCS#1
// v1.5 is deterministic and the DER around it is fixed (see shared/reference/secure-boot.md §1.2).
package sign

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/kmpack/kmpack/kmp/module"
)

// Signer is one signing identity: the certificate the kernel will know the key by, and the
// private key (a file key, an external command, a PKCS#11 object) as a crypto.Signer that
// makes RSA PKCS#1 v1.5 signatures over a digest.
type Signer struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// Name says where the key is (a file, a command, a URI), for error messages.
	Name string
}

// ErrAlreadySigned is returned by SignModule for a module that already ends with a signature:
// sign-file would append a second block that the kernel never looks at. Sign the unsigned module
// (kmpack's build cache keeps them), or strip the old block with module.SplitSignature first.
var ErrAlreadySigned = errors.New("module is already signed")

var (
	oidData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidSignedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
)

// hashes are the digests sign-file is used with, by the names CONFIG_MODULE_SIG_HASH uses.
var hashes = []struct {
	name string
	hash crypto.Hash
	oid  asn1.ObjectIdentifier
}{
	{"sha1", crypto.SHA1, asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}},
	{"sha224", crypto.SHA224, asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 4}},
	{"sha256", crypto.SHA256, asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}},
	{"sha384", crypto.SHA384, asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}},
	{"sha512", crypto.SHA512, asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}},
	{"sha3-256", crypto.SHA3_256, asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 8}},
	{"sha3-384", crypto.SHA3_384, asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 9}},
	{"sha3-512", crypto.SHA3_512, asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 10}},
}

// ParseHash maps a CONFIG_MODULE_SIG_HASH name ("sha256", "sha512", ...) to its crypto.Hash.
func ParseHash(name string) (crypto.Hash, error) {
	for _, h := range hashes {
		if h.name == strings.ToLower(name) {
			return h.hash, nil
		}
	}
	return 0, fmt.Errorf("unknown module signature hash %q (want sha1, sha224, sha256, sha384, sha512, sha3-256, sha3-384 or sha3-512)", name)
}

// HashName is the kernel's name of h ("sha256").
func HashName(h crypto.Hash) string {
	for _, x := range hashes {
		if x.hash == h {
			return x.name
		}
	}
	return h.String()
}

func hashOID(h crypto.Hash) (asn1.ObjectIdentifier, bool) {
	for _, x := range hashes {
		if x.hash == h {
			return x.oid, true
		}
	}
	return nil, false
}

func hashByOID(oid asn1.ObjectIdentifier) (crypto.Hash, bool) {
	for _, x := range hashes {
		if x.oid.Equal(oid) {
			return x.hash, true
		}
	}
	return 0, false
}

// SignModule returns module with the signature of every signer appended, as sign-file appends
// it: one PKCS#7 SignedData whose SignerInfos (one per signer: two for key rotation, which the
// kernel accepts when either key is trusted) are sorted as DER sorts a SET OF, as OpenSSL does.
// Each signature is verified against its certificate before it is used, so a key that does not
// match its certificate, or a signer command that prints garbage, is an error and nothing is
// returned. An already signed module is ErrAlreadySigned.
func SignModule(mod []byte, hash crypto.Hash, signers ...Signer) ([]byte, error) {
	if len(signers) == 0 {
		return nil, errors.New("no signer")
	}
	if module.HasSignatureMagic(mod) {
		return nil, ErrAlreadySigned
	}
	p7, err := SignPKCS7(mod, hash, signers...)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(mod)+len(p7)+12+len(module.SignatureMagic))
	out = append(out, mod...)
	out = append(out, p7...)
	// struct module_signature: all zero but id_type = PKEY_ID_PKCS7 (2) and the big-endian sig_len.
	var trailer [12]byte
	trailer[2] = 2
	binary.BigEndian.PutUint32(trailer[8:], uint32(len(p7)))
	out = append(out, trailer[:]...)
	return append(out, module.SignatureMagic...), nil
}

// SignPKCS7 returns the detached PKCS#7 DER that sign-file makes over content (what `sign-file
// -d` writes to a .p7s file).
func SignPKCS7(content []byte, hash crypto.Hash, signers ...Signer) ([]byte, error) {
	hOID, ok := hashOID(hash)
	if !ok || !hash.Available() {
		return nil, fmt.Errorf("hash %v is not available for module signatures", hash)
	}
	h := hash.New()
	h.Write(content)
	digest := h.Sum(nil)
	var infos [][]byte
	for _, s := range signers {
		pub, ok := s.Cert.PublicKey.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%s: the certificate has a %T key; kernels verify module signatures made with RSA keys", s.Name, s.Cert.PublicKey)
		}
		sig, err := s.Key.Sign(rand.Reader, digest, hash)
		if err != nil {
			return nil, err
		}
		if err := rsa.VerifyPKCS1v15(pub, hash, digest, sig); err != nil {
			return nil, fmt.Errorf("%s: its signature does not verify against the certificate %q (serial %X): the key and the certificate do not match", s.Name, s.Cert.Subject.CommonName, s.Cert.SerialNumber)
		}
		issuer, serial, err := issuerAndSerial(s.Cert)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate: %v", s.Name, err)
		}
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1Int64(1)
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddBytes(issuer)
				b.AddBytes(serial)
			})
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(hOID) })
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidRSAEncryption)
				b.AddASN1NULL()
			})
			b.AddASN1OctetString(sig)
		})
		info, err := b.Bytes()
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	sort.Slice(infos, func(i, j int) bool { return derSetLess(infos[i], infos[j]) })
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oidSignedData)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1Int64(1)
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(hOID) })
				})
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidData) })
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					for _, info := range infos {
						b.AddBytes(info)
					}
				})
			})
		})
	})
	return b.Bytes()
}

// derSetLess orders SET OF elements as X.690 §11.6 does: as octet strings, the shorter padded
// with zero octets.
func derSetLess(a, b []byte) bool {
	n := max(len(a), len(b))
	for i := 0; i < n; i++ {
		var x, y byte
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// issuerAndSerial returns the certificate's issuer Name and serial INTEGER exactly as encoded in
// it (sign-file copies them from the certificate, whatever their encoding).
func issuerAndSerial(cert *x509.Certificate) (issuer, serial []byte, err error) {
	tbs := cryptobyte.String(cert.RawTBSCertificate)
	var body cryptobyte.String
	if !tbs.ReadASN1(&body, cbasn1.SEQUENCE) {
		return nil, nil, errors.New("malformed TBSCertificate")
	}
	if !body.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) {
		return nil, nil, errors.New("malformed version")
	}
	var s, alg cryptobyte.String
	var tag cbasn1.Tag
	if !body.ReadAnyASN1Element(&s, &tag) || tag != cbasn1.INTEGER {
		return nil, nil, errors.New("malformed serial number")
	}
	if !body.ReadASN1Element(&alg, cbasn1.SEQUENCE) {
		return nil, nil, errors.New("malformed signature algorithm")
	}
	if len(cert.RawIssuer) == 0 || !bytes.HasPrefix(body, cert.RawIssuer) {
		return nil, nil, errors.New("malformed issuer")
	}
	return cert.RawIssuer, s, nil
}

// DigestInfo returns the DER DigestInfo {AlgorithmIdentifier{hash OID, NULL}, digest} that an RSA
// PKCS#1 v1.5 signature covers, as rsa.SignPKCS1v15 builds it: what a signer that only does the
// raw RSA operation (a PKCS#11 token's CKM_RSA_PKCS) must be given.
func DigestInfo(hash crypto.Hash, digest []byte) ([]byte, error) {
	oid, ok := hashOID(hash)
	if !ok {
		return nil, fmt.Errorf("hash %v is not one module signatures use", hash)
	}
	if len(digest) != hash.Size() {
		return nil, fmt.Errorf("a %d-byte digest for %s, which has %d", len(digest), HashName(hash), hash.Size())
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oid)
			b.AddASN1NULL()
		})
		b.AddASN1OctetString(digest)
	})
	return b.Bytes()
}
