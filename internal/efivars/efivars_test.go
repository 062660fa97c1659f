package efivars

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"
)

// Debian's ovmf package (scripts/setup.sh): a store without keys and one with Debian's PK and
// Microsoft's KEK and db.
const (
	plainVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	msVars    = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
)

func readStore(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v: run scripts/setup.sh (package ovmf)", err)
	}
	return b
}

func TestGUID(t *testing.T) {
	// In memory, EFI_IMAGE_SECURITY_DATABASE_GUID {0xd719b2cb, 0x3d3a, 0x4596, {0xa3, 0xbc, ...}}.
	want := []byte{0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f}
	if !bytes.Equal(ImageSecurityDatabase[:], want) {
		t.Errorf("db GUID bytes %x, want %x", ImageSecurityDatabase[:], want)
	}
	if s := ImageSecurityDatabase.String(); s != "d719b2cb-3d3a-4596-a3bc-dad00e67656f" {
		t.Errorf("String() = %s", s)
	}
	for _, bad := range []string{"", "d719b2cb3d3a4596a3bcdad00e67656f", "d719b2cb-3d3a-4596-a3bc-dad00e67656g"} {
		if _, err := ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(%q) accepted", bad)
		}
	}
}

// The reader against a store the firmware's own tooling filled: Debian's ms store holds PK, KEK
// and db, and db's lists are Microsoft's certificates.
func TestListMicrosoftStore(t *testing.T) {
	vars, _, err := List(readStore(t, msVars))
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]Variable{}
	for _, v := range vars {
		if v.Live() {
			live[v.Name] = v
		}
	}
	for _, n := range []string{"PK", "KEK", "db"} {
		if _, ok := live[n]; !ok {
			t.Fatalf("no live %s in %s: %v", n, msVars, vars)
		}
	}
	db := live["db"]
	if db.Vendor != ImageSecurityDatabase || db.Attributes != DBAttributes {
		t.Errorf("db vendor %s attributes %#x", db.Vendor, db.Attributes)
	}
	certs, err := X509Certificates(db.Data)
	if err != nil || len(certs) == 0 {
		t.Fatalf("db certificates: %d, %v", len(certs), err)
	}
	var subjects []string
	for _, der := range certs {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		subjects = append(subjects, c.Subject.CommonName)
	}
	if !strings.Contains(strings.Join(subjects, "|"), "Microsoft") {
		t.Errorf("db subjects %v, want Microsoft's", subjects)
	}
}

func testCert(t *testing.T, cn string) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestSetDB(t *testing.T) {
	orig := readStore(t, plainVars)
	before, free, err := List(orig)
	if err != nil {
		t.Fatal(err)
	}
	owner := MustGUID("11111111-2222-3333-4444-555555555555")
	a, b := testCert(t, "a"), testCert(t, "b")

	s1, err := Set(orig, "db", ImageSecurityDatabase, DBAttributes, X509SignatureList(owner, a))
	if err != nil {
		t.Fatal(err)
	}
	if len(s1) != len(orig) || !bytes.Equal(s1[:free], orig[:free]) {
		t.Fatal("Set changed what was before the free space")
	}
	s2, err := Set(s1, "db", ImageSecurityDatabase, DBAttributes, X509SignatureList(owner, b))
	if err != nil {
		t.Fatal(err)
	}
	after, _, err := List(s2)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before)+2 {
		t.Fatalf("%d records, want %d", len(after), len(before)+2)
	}
	for i, v := range before {
		if w := after[i]; w.Name != v.Name || w.State != v.State || !bytes.Equal(w.Data, v.Data) {
			t.Errorf("record %d changed: %+v -> %+v", i, v, w)
		}
	}
	old, cur := after[len(before)], after[len(before)+1]
	if old.Live() || old.State != 0x3d || !cur.Live() || cur.Name != "db" || cur.Attributes != DBAttributes || cur.Offset%4 != 0 {
		t.Fatalf("old %#x live=%v, new %q live=%v attrs %#x at %#x", old.State, old.Live(), cur.Name, cur.Live(), cur.Attributes, cur.Offset)
	}
	certs, err := X509Certificates(cur.Data)
	if err != nil || len(certs) != 1 || !bytes.Equal(certs[0], b) {
		t.Fatalf("db holds %d certificates (%v), want b", len(certs), err)
	}
	// The signature list's layout: type, sizes, owner, certificate.
	esl := X509SignatureList(owner, a)
	if !bytes.Equal(esl[:16], CertX509[:]) || len(esl) != 28+16+len(a) || !bytes.Equal(esl[28:44], owner[:]) {
		t.Errorf("signature list header %x", esl[:44])
	}

	if _, err := Set(orig, "db", ImageSecurityDatabase, DBAttributes, make([]byte, len(orig))); err == nil || !strings.Contains(err.Error(), "no room") {
		t.Errorf("oversized variable: %v", err)
	}
	if _, _, err := List(make([]byte, 4096)); err == nil {
		t.Error("List accepted a file that is no firmware volume")
	}
}
