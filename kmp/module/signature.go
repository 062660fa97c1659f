package module

import (
	"bytes"
	"encoding/asn1"
	"encoding/binary"
	"fmt"
	"os"
	"strings"

	"github.com/kmpack/kmpack/kmp"
)

// ModuleSignature is the signature the kernel's sign-file appends to a module
// (include/linux/module_signature.h): signature bytes, a 12-byte struct module_signature and the
// magic string "~Module signature appended~\n".
type ModuleSignature struct {
	// IDType is how the signer is identified: "PKCS#7" on every kernel since 4.3, or the older
	// "X509" / "PGP" forms.
	IDType string `json:"id_type"`
	// Signer is the issuer's common name (PKCS#7) or the signer string (older forms).
	Signer string `json:"signer"`
	// KeyID is the issuing certificate's serial number (PKCS#7) or the key identifier.
	KeyID    HexBytes `json:"key_id"`
	HashAlgo string   `json:"hash_algo"`
	// Algo is the public-key algorithm ("RSA", "ECDSA", ...), from the PKCS#7 signer info when there is one.
	Algo      string   `json:"algo,omitempty"`
	Signature HexBytes `json:"signature"`
	// Signers are every PKCS#7 signer (key rotation signs with two); the fields above are the
	// first's, as modinfo shows them.
	Signers []SignerID `json:"signers,omitempty"`
	// Size is the number of bytes appended to the ELF image, magic included.
	Size int `json:"size"`
}

// SignerID names a signer's key the way the kernel looks it up: the certificate's issuer
// common name and serial (KeyID), or a subject key identifier (Signer then empty).
type SignerID struct {
	Signer string   `json:"signer,omitempty"`
	KeyID  HexBytes `json:"key_id"`
}

// HexBytes prints as colon-separated upper-case hex, as modinfo does.
type HexBytes []byte

func (h HexBytes) String() string {
	var b strings.Builder
	for i, c := range h {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", c)
	}
	return b.String()
}

func (h HexBytes) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

const moduleSigMagic = "~Module signature appended~\n"

// SignatureMagic is the marker that ends a signed module.
const SignatureMagic = moduleSigMagic

// Names indexed as the kernel's enum pkey_hash_algo / pkey_id_type / pkey_algo.
var (
	pkeyHashAlgo = []string{"md4", "md5", "sha1", "rmd160", "sha256", "sha384", "sha512", "sha224", "sm3"}
	pkeyIDType   = []string{"PGP", "X509", "PKCS#7"}
	pkeyAlgo     = []string{"DSA", "RSA"}
)

// HasSignatureMagic tells whether data ends with the module signature magic.
func HasSignatureMagic(data []byte) bool {
	return bytes.HasSuffix(data, []byte(moduleSigMagic))
}

// parseAppendedSignature returns nil when the module carries no signature. A trailer that has the
// magic but not a well-formed signature is an error: the kernel would refuse such a module on a
// machine that enforces signatures.
func parseAppendedSignature(path string, data []byte) (*ModuleSignature, error) {
	if !HasSignatureMagic(data) {
		return nil, nil
	}
	size := len(data) - len(moduleSigMagic)
	const hdrLen = 12
	if size < hdrLen {
		return nil, kmp.InputErrorf(path, "signature trailer at offset %#x: too short for struct module_signature", size)
	}
	size -= hdrLen
	h := data[size : size+hdrLen]
	algo, hash, idType, signerLen, keyIDLen := int(h[0]), int(h[1]), int(h[2]), int(h[3]), int(h[4])
	// sig_len is a big-endian u32: compared as 64-bit before it becomes an int, so it cannot
	// wrap (on 32-bit machines int(u32) may be negative) and the subtractions below stay >= 0.
	sigLen64 := uint64(binary.BigEndian.Uint32(h[8:]))
	if algo >= len(pkeyAlgo) || hash >= len(pkeyHashAlgo) || idType >= len(pkeyIDType) {
		return nil, kmp.InputErrorf(path, "signature header at offset %#x: unknown algorithm %d, hash %d or id type %d", size, algo, hash, idType)
	}
	if sigLen64 == 0 || uint64(signerLen)+uint64(keyIDLen)+sigLen64 > uint64(size) {
		return nil, kmp.InputErrorf(path, "signature header at offset %#x: lengths (signer %d, key id %d, signature %d) exceed the file", size, signerLen, keyIDLen, sigLen64)
	}
	sigLen := int(sigLen64)
	sig := &ModuleSignature{IDType: pkeyIDType[idType], Size: len(data) - size + signerLen + keyIDLen + sigLen}
	blob := data[size-sigLen : size]
	if idType == 2 {
		if err := sig.fillPKCS7(blob); err != nil {
			return nil, kmp.InputErrorf(path, "PKCS#7 signature at offset %#x: %v", size-sigLen, err)
		}
		return sig, nil
	}
	off := size - sigLen - keyIDLen - signerLen
	sig.Signer = string(data[off : off+signerLen])
	sig.KeyID = HexBytes(data[off+signerLen : off+signerLen+keyIDLen])
	sig.Signature = HexBytes(blob)
	sig.HashAlgo = pkeyHashAlgo[hash]
	sig.Algo = pkeyAlgo[algo]
	return sig, nil
}

type algorithmIdentifier struct {
	Algorithm  asn1.ObjectIdentifier
	Parameters asn1.RawValue `asn1:"optional"`
}

type pkcs7ContentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"explicit,tag:0"`
}

type pkcs7SignedData struct {
	Version          int
	DigestAlgorithms asn1.RawValue
	ContentInfo      asn1.RawValue
	Certificates     asn1.RawValue     `asn1:"optional,tag:0"`
	CRLs             asn1.RawValue     `asn1:"optional,tag:1"`
	SignerInfos      []pkcs7SignerInfo `asn1:"set"`
}

type pkcs7SignerInfo struct {
	Version                   int
	SID                       asn1.RawValue
	DigestAlgorithm           algorithmIdentifier
	AuthenticatedAttributes   asn1.RawValue `asn1:"optional,tag:0"`
	DigestEncryptionAlgorithm algorithmIdentifier
	EncryptedDigest           []byte
	UnauthenticatedAttributes asn1.RawValue `asn1:"optional,tag:1"`
}

type issuerAndSerial struct {
	Issuer asn1.RawValue
	Serial asn1.RawValue
}

var (
	oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}
	hashOIDs      = map[string]string{
		"1.2.840.113549.2.4":      "md4",
		"1.2.840.113549.2.5":      "md5",
		"1.3.14.3.2.26":           "sha1",
		"1.3.36.3.2.1":            "rmd160",
		"2.16.840.1.101.3.4.2.1":  "sha256",
		"2.16.840.1.101.3.4.2.2":  "sha384",
		"2.16.840.1.101.3.4.2.3":  "sha512",
		"2.16.840.1.101.3.4.2.4":  "sha224",
		"2.16.840.1.101.3.4.2.8":  "sha3-256",
		"2.16.840.1.101.3.4.2.9":  "sha3-384",
		"2.16.840.1.101.3.4.2.10": "sha3-512",
		"1.2.156.10197.1.401":     "sm3",
	}
	keyAlgoOIDs = map[string]string{
		"1.2.840.113549.1.1.1":  "RSA",
		"1.2.840.113549.1.1.11": "RSA",
		"1.2.840.113549.1.1.12": "RSA",
		"1.2.840.113549.1.1.13": "RSA",
		"1.2.840.10045.2.1":     "ECDSA",
		"1.2.840.10045.4.3.2":   "ECDSA",
		"1.2.840.10045.4.3.3":   "ECDSA",
		"1.2.840.10045.4.3.4":   "ECDSA",
		"1.3.101.112":           "ED25519",
		"1.2.840.10040.4.1":     "DSA",
	}
)

// PKCS7 is what kmpack reads of a module's PKCS#7 SignedData: enough to show the signers (as
// modinfo does) and to verify them (kmp/sign).
type PKCS7 struct {
	// ContentType is the encapsulated content's type; the kernel demands id-data.
	ContentType asn1.ObjectIdentifier
	// Detached is true when the SignedData carries no content (the module bytes are the content).
	Detached bool
	Signers  []PKCS7Signer
}

// PKCS7Signer is one SignerInfo.
type PKCS7Signer struct {
	// Issuer (DER Name) and Serial (the INTEGER's content octets, as encoded) identify the
	// certificate, or SubjectKeyID does (sign-file -k); one of the two is set.
	Issuer, Serial []byte
	SubjectKeyID   []byte
	// DigestAlgorithm and SignatureAlgorithm are the OIDs as written.
	DigestAlgorithm, SignatureAlgorithm asn1.ObjectIdentifier
	// HasSignedAttrs: the kernel refuses module signatures with authenticated attributes.
	HasSignedAttrs bool
	Signature      []byte
}

// ParsePKCS7 parses a DER ContentInfo holding a SignedData. It checks structure only, no
// signature. Errors are plain (the caller names the file).
func ParsePKCS7(der []byte) (p *PKCS7, err error) {
	defer func() {
		// encoding/asn1 should not panic, but this parses untrusted bytes.
		if r := recover(); r != nil {
			if os.Getenv("KMPACK_PANIC") != "" {
				panic(r)
			}
			p, err = nil, fmt.Errorf("malformed PKCS#7 (parser failed: %v)", r)
		}
	}()
	var ci pkcs7ContentInfo
	rest, err := asn1.Unmarshal(der, &ci)
	if err != nil {
		return nil, fmt.Errorf("ContentInfo: %v", err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d trailing bytes after ContentInfo", len(rest))
	}
	if !ci.ContentType.Equal(oidSignedData) {
		return nil, fmt.Errorf("content type %v is not signedData", ci.ContentType)
	}
	var sd pkcs7SignedData
	if _, err := asn1.Unmarshal(ci.Content.Bytes, &sd); err != nil {
		return nil, fmt.Errorf("SignedData: %v", err)
	}
	if len(sd.SignerInfos) == 0 {
		return nil, fmt.Errorf("no signer info")
	}
	p = &PKCS7{}
	var eci struct {
		ContentType asn1.ObjectIdentifier
		Content     asn1.RawValue `asn1:"optional,explicit,tag:0"`
	}
	if _, err := asn1.Unmarshal(sd.ContentInfo.FullBytes, &eci); err != nil {
		return nil, fmt.Errorf("encapsulated content info: %v", err)
	}
	p.ContentType = eci.ContentType
	p.Detached = len(eci.Content.FullBytes) == 0
	for _, si := range sd.SignerInfos {
		s := PKCS7Signer{
			DigestAlgorithm:    si.DigestAlgorithm.Algorithm,
			SignatureAlgorithm: si.DigestEncryptionAlgorithm.Algorithm,
			HasSignedAttrs:     len(si.AuthenticatedAttributes.FullBytes) != 0,
			Signature:          si.EncryptedDigest,
		}
		if si.SID.Class == asn1.ClassContextSpecific && si.SID.Tag == 0 {
			// CMS subjectKeyIdentifier (sign-file -k): no issuer, the key id is the identifier.
			s.SubjectKeyID = si.SID.Bytes
		} else {
			var ias issuerAndSerial
			if _, err := asn1.Unmarshal(si.SID.FullBytes, &ias); err != nil {
				return nil, fmt.Errorf("issuerAndSerialNumber: %v", err)
			}
			if ias.Serial.Tag != asn1.TagInteger {
				return nil, fmt.Errorf("certificate serial is not an INTEGER")
			}
			s.Issuer, s.Serial = ias.Issuer.FullBytes, ias.Serial.Bytes
		}
		p.Signers = append(p.Signers, s)
	}
	return p, nil
}

// IssuerCommonName is what modinfo prints as signer: the issuer's first commonName ("" for a
// subjectKeyIdentifier signer).
func (s *PKCS7Signer) IssuerCommonName() (string, error) {
	if s.Issuer == nil {
		return "", nil
	}
	return commonName(s.Issuer)
}

// KeyID is what modinfo prints as sig_key: the serial without leading zero octets, or the
// subjectKeyIdentifier.
func (s *PKCS7Signer) KeyID() HexBytes {
	if s.Issuer == nil {
		return HexBytes(s.SubjectKeyID)
	}
	serial := s.Serial
	for len(serial) > 0 && serial[0] == 0 {
		serial = serial[1:]
	}
	return HexBytes(serial)
}

// HashName is the digest algorithm's name ("sha256"), or its OID when unknown.
func (s *PKCS7Signer) HashName() string {
	oid := s.DigestAlgorithm.String()
	if name, ok := hashOIDs[oid]; ok {
		return name
	}
	return oid
}

// fillPKCS7 reads what modinfo shows of a PKCS#7 signature: the first signer's issuer CN,
// certificate serial (as key id), digest algorithm and signature bytes.
func (s *ModuleSignature) fillPKCS7(der []byte) error {
	p, err := ParsePKCS7(der)
	if err != nil {
		return err
	}
	si := &p.Signers[0]
	s.KeyID = si.KeyID()
	if si.Issuer != nil {
		cn, err := si.IssuerCommonName()
		if err != nil {
			return fmt.Errorf("issuer name: %v", err)
		}
		s.Signer = cn
	}
	s.HashAlgo = si.HashName()
	s.Algo = keyAlgoOIDs[si.SignatureAlgorithm.String()]
	s.Signature = HexBytes(si.Signature)
	for i := range p.Signers {
		id := SignerID{KeyID: p.Signers[i].KeyID()}
		if p.Signers[i].Issuer != nil {
			if cn, err := p.Signers[i].IssuerCommonName(); err == nil {
				id.Signer = cn
			}
		}
		s.Signers = append(s.Signers, id)
	}
	return nil
}

// SplitSignature splits a module image (uncompressed) into the bytes its appended PKCS#7
// signature covers and the PKCS#7 DER blob. An unsigned module gives (data, nil, nil). A trailer
// that is malformed, or a signature of the pre-4.3 X509/PGP kinds, is an *kmp.InputError.
func SplitSignature(path string, data []byte) (body, pkcs7 []byte, err error) {
	defer kmp.Guard(path, &err)
	sig, err := parseAppendedSignature(path, data)
	if err != nil {
		return nil, nil, err
	}
	if sig == nil {
		return data, nil, nil
	}
	if sig.IDType != "PKCS#7" {
		return nil, nil, kmp.InputErrorf(path, "signature of id type %s, not PKCS#7", sig.IDType)
	}
	end := len(data) - len(moduleSigMagic) - 12
	h := data[end : end+12]
	// As the kernel's mod_check_sig: every field but id_type and sig_len must be zero.
	if h[0] != 0 || h[1] != 0 || h[3] != 0 || h[4] != 0 {
		return nil, nil, kmp.InputErrorf(path, "signature header at offset %#x: PKCS#7 signature info has unexpected non-zero params", end)
	}
	start := end - int(binary.BigEndian.Uint32(h[8:]))
	return data[:start], data[start:end], nil
}

// commonName returns the issuer's first commonName value, raw bytes as stored. Like libkmod
// (which uses OpenSSL's X509_NAME), a name without CN yields its last attribute's value.
func commonName(der []byte) (string, error) {
	var rdns []asn1.RawValue
	if _, err := asn1.UnmarshalWithParams(der, &rdns, ""); err != nil {
		return "", err
	}
	last := ""
	for _, rdn := range rdns {
		var atvs []struct {
			Type  asn1.ObjectIdentifier
			Value asn1.RawValue
		}
		if _, err := asn1.UnmarshalWithParams(rdn.FullBytes, &atvs, "set"); err != nil {
			return "", err
		}
		for _, atv := range atvs {
			if atv.Type.Equal(oidCommonName) {
				return string(atv.Value.Bytes), nil
			}
			last = string(atv.Value.Bytes)
		}
	}
	return last, nil
}
