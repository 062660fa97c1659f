package sign

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"math/big"
	"strings"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
)

// Why a module does not verify.
const (
	Unsigned       = "unsigned"
	OtherKey       = "signed by another key"
	WrongKey       = "signature not made by the certificate's key"
	DigestMismatch = "digest mismatch"
	BadStructure   = "bad signature structure"
)

// VerifyFailure says why a module's signature does not check out against a certificate.
type VerifyFailure struct {
	Path   string
	Kind   string // Unsigned, OtherKey, WrongKey, DigestMismatch or BadStructure
	Detail string
}

func (f *VerifyFailure) Error() string {
	msg := f.Path + ": " + f.Kind
	if f.Detail != "" {
		msg += ": " + f.Detail
	}
	return kmp.OneLine(msg)
}

// VerifyModule checks the signature appended to an uncompressed module image against cert as the
// kernel would with only that certificate trusted: a SignerInfo must name the certificate (by
// issuer and serial, or by subjectKeyIdentifier), be the PKCS#7 form the kernel accepts (data
// content, detached, no signed attributes, RSA) and verify over the bytes before the signature.
// Other signers are ignored, as the kernel ignores signers whose key it does not have. It
// returns nil, a *VerifyFailure, or an *kmp.InputError for a malformed signature trailer.
func VerifyModule(path string, data []byte, cert *x509.Certificate) (err error) {
	defer kmp.Guard(path, &err)
	body, der, err := module.SplitSignature(path, data)
	if err != nil {
		return err
	}
	fail := func(kind, format string, args ...any) error {
		return &VerifyFailure{Path: path, Kind: kind, Detail: fmt.Sprintf(format, args...)}
	}
	if der == nil {
		return fail(Unsigned, "")
	}
	p7, err := module.ParsePKCS7(der)
	if err != nil {
		return fail(BadStructure, "%v", err)
	}
	if !p7.ContentType.Equal(oidData) {
		return fail(BadStructure, "content type %v is not data (the kernel refuses it)", p7.ContentType)
	}
	if !p7.Detached {
		return fail(BadStructure, "the PKCS#7 carries its content (the kernel wants it detached)")
	}
	var others []string
	for i := range p7.Signers {
		s := &p7.Signers[i]
		mine := false
		if s.Issuer != nil {
			mine = bytes.Equal(s.Issuer, cert.RawIssuer) && cert.SerialNumber.Sign() > 0 && bytes.Equal(bytes.TrimLeft(s.Serial, "\x00"), cert.SerialNumber.Bytes())
		} else {
			mine = len(cert.SubjectKeyId) > 0 && bytes.Equal(s.SubjectKeyID, cert.SubjectKeyId)
		}
		if !mine {
			cn, _ := s.IssuerCommonName()
			if cn != "" {
				others = append(others, fmt.Sprintf("%q key id %v", cn, s.KeyID()))
			} else {
				others = append(others, fmt.Sprintf("subject key id %v", s.KeyID()))
			}
			continue
		}
		if s.HasSignedAttrs {
			return fail(BadStructure, "the signer info has signed attributes (the kernel refuses it)")
		}
		hash, ok := hashByOID(s.DigestAlgorithm)
		if !ok || !hash.Available() {
			return fail(BadStructure, "unsupported digest algorithm %v", s.DigestAlgorithm)
		}
		if !s.SignatureAlgorithm.Equal(oidRSAEncryption) {
			return fail(BadStructure, "signature algorithm %v is not rsaEncryption", s.SignatureAlgorithm)
		}
		pub, ok := cert.PublicKey.(*rsa.PublicKey)
		if !ok {
			return kmp.InputErrorf("certificate", "a %T key: kernels verify module signatures made with RSA keys", cert.PublicKey)
		}
		h := hash.New()
		h.Write(body)
		digest := h.Sum(nil)
		if rsa.VerifyPKCS1v15(pub, hash, digest, s.Signature) == nil {
			return nil
		}
		// Tell a module changed after signing from a signature by another key with the same
		// name: only the certificate's key decrypts the signature to a well-formed encoding.
		if signedDigest, ok := recoverDigest(pub, s.Signature, len(digest)); ok {
			return fail(DigestMismatch, "the module's %s is %x, the signature is over %x (changed after signing?)", HashName(hash), digest[:8], signedDigest[:8])
		}
		return fail(WrongKey, "the signer names the certificate (%v) but another key made the signature", s.KeyID())
	}
	return fail(OtherKey, "%s", strings.Join(others, ", "))
}

// recoverDigest applies the public key to sig and returns the digest inside a well-formed
// EMSA-PKCS1-v1_5 encoding (00 01 FF.. 00 DigestInfo): ok is false when the padding is not there,
// that is when another key made sig.
func recoverDigest(pub *rsa.PublicKey, sig []byte, digestLen int) ([]byte, bool) {
	k := pub.Size()
	if len(sig) != k {
		return nil, false
	}
	c := new(big.Int).SetBytes(sig)
	if c.Cmp(pub.N) >= 0 {
		return nil, false
	}
	m := new(big.Int).Exp(c, big.NewInt(int64(pub.E)), pub.N)
	em := m.FillBytes(make([]byte, k))
	if em[0] != 0 || em[1] != 1 {
		return nil, false
	}
	i := 2
	for i < k && em[i] == 0xff {
		i++
	}
	if i < 10 || i >= k || em[i] != 0 || k-i-1 < digestLen {
		return nil, false
	}
	return em[k-digestLen:], true
}
