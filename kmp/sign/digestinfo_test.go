package sign_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/kmpack/kmpack/kmp/sign"
)

// TestDigestInfo: the DigestInfo a raw RSA signer is given is what rsa.SignPKCS1v15 signs: raw
// RSA (sign with PKCS1v15 and hash 0 over the DigestInfo) gives the same signature.
func TestDigestInfo(t *testing.T) {
	rsa2048Once.Do(func() { rsa2048, _ = rsa.GenerateKey(rand.Reader, 2048) })
	for _, name := range []string{"sha1", "sha224", "sha256", "sha384", "sha512", "sha3-256", "sha3-384", "sha3-512"} {
		h, err := sign.ParseHash(name)
		if err != nil {
			t.Fatal(err)
		}
		if !h.Available() {
			continue
		}
		d := h.New()
		d.Write([]byte("module"))
		digest := d.Sum(nil)
		want, err := rsa.SignPKCS1v15(nil, rsa2048, h, digest)
		if err != nil {
			t.Fatal(err)
		}
		di, err := sign.DigestInfo(h, digest)
		if err != nil {
			t.Fatal(err)
		}
		got, err := rsa.SignPKCS1v15(nil, rsa2048, 0, di)
		if err != nil || string(got) != string(want) {
			t.Fatalf("%s: raw signature over DigestInfo differs (%v)", name, err)
		}
	}
	if _, err := sign.DigestInfo(crypto.SHA256, make([]byte, 20)); err == nil {
		t.Fatal("a 20-byte digest for sha256 was accepted")
	}
}
