package sign_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/sign"
)

var (
	rsa2048Once sync.Once
	rsa2048     *rsa.PrivateKey
)

func testCert(t *testing.T, key crypto.Signer, edit func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		Subject:               pkix.Name{CommonName: "check test"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestCheckCertificate: what kernels reject is refused (a non-RSA key), what they accept but
// should make one think is a warning (dates, no codeSigning EKU, a small key), and what they do
// not look at (CA:TRUE, the keyUsage) passes silently.
func TestCheckCertificate(t *testing.T) {
	rsa2048Once.Do(func() { rsa2048, _ = rsa.GenerateKey(rand.Reader, 2048) })
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cases := []struct {
		name  string
		key   crypto.Signer
		edit  func(*x509.Certificate)
		warns []string // substrings, one per expected warning
		err   string
	}{
		{name: "good", key: rsa2048},
		{name: "keygen's", key: nil},
		{name: "CA:TRUE without digitalSignature", key: rsa2048, edit: func(c *x509.Certificate) {
			c.IsCA, c.KeyUsage = true, x509.KeyUsageCertSign
		}},
		{name: "expired", key: rsa2048, edit: func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = now.AddDate(-2, 0, 0), now.AddDate(-1, 0, 0)
		}, warns: []string{"expired on " + now.AddDate(-1, 0, 0).UTC().Format("2006-01-02")}},
		{name: "not yet valid", key: rsa2048, edit: func(c *x509.Certificate) {
			c.NotBefore = now.Add(48 * time.Hour)
		}, warns: []string{"is not valid before"}},
		{name: "no EKU", key: rsa2048, edit: func(c *x509.Certificate) { c.ExtKeyUsage = nil },
			warns: []string{"has no extendedKeyUsage: SUSE kernels built with CONFIG_CHECK_CODESIGN_EKU"}},
		{name: "serverAuth EKU", key: rsa2048, edit: func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageAny}
		}, warns: []string{"an extendedKeyUsage without codeSigning"}},
		{name: "RSA-1024, expired, no EKU", key: rsa1024, edit: func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter, c.ExtKeyUsage = now.AddDate(-2, 0, 0), now.AddDate(-1, 0, 0), nil
		}, warns: []string{"expired", "no extendedKeyUsage", "1024-bit RSA key"}},
		{name: "ECDSA", key: ec, err: "has an ECDSA key, not RSA: kernels verify module signatures made with RSA keys"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cert *x509.Certificate
			if c.key == nil {
				cert = testKeys(t)[0].Cert
			} else {
				cert = testCert(t, c.key, c.edit)
			}
			warns, err := sign.CheckCertificate("cert.pem", cert, now)
			if c.err != "" {
				if err == nil || !kmp.IsInputError(err) || !strings.HasPrefix(err.Error(), "cert.pem: ") || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("want an InputError with %q, got %v", c.err, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(warns) != len(c.warns) {
				t.Fatalf("warnings %q, want %d", warns, len(c.warns))
			}
			for i, w := range c.warns {
				if !strings.HasPrefix(warns[i], "cert.pem: ") || !strings.Contains(warns[i], w) || strings.Contains(warns[i], "\n") {
					t.Errorf("warning %q, want one line with %q", warns[i], w)
				}
			}
		})
	}
}
