package target_test

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/sign"
	"github.com/kmpack/kmpack/target"
)

// TestParseSignatureLists reads what efitools' cert-to-efi-sig-list writes (the format of
// shim's MokList and of db): two certificates in two lists, with a list of another type (a
// SHA-256 hash, as MokList holds for hashed binaries) between them, skipped.
func TestParseSignatureLists(t *testing.T) {
	testenv.Need(t, "cert-to-efi-sig-list", "openssl")
	dir := t.TempDir()
	var all []byte
	var want []*x509.Certificate
	for i, cn := range []string{"first key", "second key"} {
		key, crt, esl := filepath.Join(dir, "k.pem"), filepath.Join(dir, "c.pem"), filepath.Join(dir, "c.esl")
		if out, err := exec.Command("openssl", "req", "-new", "-x509", "-nodes", "-days", "1", "-subj", "/CN="+cn,
			"-newkey", "rsa:2048", "-keyout", key, "-out", crt).CombinedOutput(); err != nil {
			t.Fatalf("openssl: %v\n%s", err, out)
		}
		if out, err := exec.Command("cert-to-efi-sig-list", "-g", "605dab50-e046-4300-abb6-3dd810dd8b23", crt, esl).CombinedOutput(); err != nil {
			t.Fatalf("cert-to-efi-sig-list: %v\n%s", err, out)
		}
		c, err := sign.LoadCertificate(crt)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, c)
		all = append(all, testenv.MustRead(t, esl)...)
		if i == 0 {
			all = append(all, sha256List()...)
		}
	}
	got, err := target.ParseSignatureLists("MokListRT", all)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Equal(want[0]) || !got[1].Equal(want[1]) {
		t.Fatalf("got %d certificates", len(got))
	}
	for _, n := range []int{1, 27, 40, len(all) - 1} {
		_, err := target.ParseSignatureLists("MokListRT", all[:n])
		if err == nil {
			t.Fatalf("truncated at %d: accepted", n)
		}
		testenv.CheckInputError(t, "MokListRT", err)
	}
}

// sha256List is an EFI_SIGNATURE_LIST of EFI_CERT_SHA256_GUID with one entry (owner + digest).
func sha256List() []byte {
	var b bytes.Buffer
	b.Write([]byte{0x26, 0x16, 0xc4, 0xc1, 0x4c, 0x50, 0x92, 0x40, 0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28})
	binary.Write(&b, binary.LittleEndian, []uint32{28 + 48, 0, 48})
	b.Write(make([]byte, 48))
	return b.Bytes()
}

// The MokList is read from firmware variables: hostile input like any other.
func FuzzParseSignatureLists(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	crt, err := os.ReadFile("../kmp/sign/testdata/testkey.crt")
	if err != nil {
		f.Fatal(err)
	}
	c, err := sign.ParseCertificate("testkey.crt", crt)
	if err != nil {
		f.Fatal(err)
	}
	var esl bytes.Buffer
	esl.Write([]byte{0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72})
	binary.Write(&esl, binary.LittleEndian, []uint32{uint32(28 + 16 + len(c.Raw)), 0, uint32(16 + len(c.Raw))})
	esl.Write(make([]byte, 16))
	esl.Write(c.Raw)
	f.Add(esl.Bytes())
	f.Add(append(sha256List(), esl.Bytes()...))
	f.Add(sha256List()[:30])
	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "MokListRT"
		certs, err := target.ParseSignatureLists(name, data)
		testenv.CheckInputError(t, name, err)
		if err == nil && len(certs)*(16+100) > len(data) {
			t.Fatalf("%d certificates from %d bytes", len(certs), len(data))
		}
	})
}
