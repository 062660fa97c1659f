//go:build cgo

package pkcs11_test

import (
	"bytes"
	"crypto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/sign"
	"github.com/kmpack/kmpack/kmp/sign/pkcs11"
)

const pin = "1234"

// TestSoftHSM: a Keygen key imported into a softhsm2 token signs a real module to exactly the
// bytes the PEM key gives and the 6.1 tree's sign-file gives, with the certificate from a file
// and from the token's certificate object, the PIN from $KMPACK_PKCS11_PIN or a pin-source file
// (and pin-value, with a warning); two keys on one module can be open at once; bad input is one
// line naming the URI, never the PIN.
func TestSoftHSM(t *testing.T) {
	dir := t.TempDir()
	kp, err := sign.Keygen(sign.KeygenOptions{Dir: dir, CN: "kmpack softhsm test"})
	if err != nil {
		t.Fatal(err)
	}
	testenv.SoftHSMToken(t, "kmpack", pin, "modsign", kp.Key, kp.CertDER)
	mod := testenv.MustRead(t, "../../../testdata/ko/kmpack_hello-6.1.0-53.ko")
	fileKey, err := sign.LoadKeyFile(kp.Key, kp.CertPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(dir, "hello.ko")
	os.WriteFile(in, mod, 0o644)
	ref := map[crypto.Hash][]byte{}
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA512} {
		want, err := sign.SignModule(mod, h, *fileKey)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "ref.ko")
		signFile := "/usr/lib/linux-kbuild-6.1/scripts/sign-file"
		if b, err := exec.Command(signFile, sign.HashName(h), kp.Key, kp.CertDER, in, out).CombinedOutput(); err != nil {
			t.Fatalf("sign-file: %v %s", err, b)
		}
		if !bytes.Equal(testenv.MustRead(t, out), want) {
			t.Fatalf("%v: the PEM key's module differs from sign-file's", h)
		}
		ref[h] = want
	}
	pinFile := filepath.Join(dir, "pin")
	os.WriteFile(pinFile, []byte(pin+"\n"), 0o600)

	var warned []string
	warn := func(s string) { warned = append(warned, s) }
	good := []struct {
		name, uri, cert, env string
		warns                int
	}{
		{"env PIN, cert file", "pkcs11:token=kmpack;object=modsign;type=private", kp.CertPEM, pin, 0},
		{"pin-source, token cert", "pkcs11:token=kmpack;id=%01?pin-source=file:" + pinFile, "", "", 0},
		{"pin-value, module-path", "pkcs11:token=kmpack;object=modsign?module-path=" + testenv.SoftHSMModule + "&pin-value=" + pin, "", "", 1},
	}
	for _, c := range good {
		t.Run(c.name, func(t *testing.T) {
			warned = nil
			if c.env != "" {
				t.Setenv(pkcs11.EnvPIN, c.env)
			} else {
				os.Unsetenv(pkcs11.EnvPIN)
			}
			s, err := pkcs11.Open(c.uri, pkcs11.Options{CertPath: c.cert, Warn: warn})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Key.(*pkcs11.Key).Close()
			if !s.Cert.Equal(kp.Cert) || strings.Contains(s.Name, pin) {
				t.Fatalf("certificate %q, name %q", s.Cert.Subject.CommonName, s.Name)
			}
			for h, want := range ref {
				got, err := sign.SignModule(mod, h, *s)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%v: the token's module differs from the PEM key's and sign-file's", h)
				}
			}
			if len(warned) != c.warns || (c.warns > 0 && (!strings.Contains(warned[0], "pin-value") || strings.Contains(warned[0], "="+pin))) {
				t.Fatalf("warnings %q", warned)
			}
		})
	}

	// Two keys on the same module at once (key rotation with two token keys): the second Open
	// shares the initialized module, and closing it leaves the first usable.
	t.Setenv(pkcs11.EnvPIN, pin)
	a, err := pkcs11.Open("pkcs11:token=kmpack;object=modsign", pkcs11.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := pkcs11.Open("pkcs11:token=kmpack;id=%01", pkcs11.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b.Key.(*pkcs11.Key).Close()
	if got, err := sign.SignModule(mod, crypto.SHA256, *a); err != nil || !bytes.Equal(got, ref[crypto.SHA256]) {
		t.Fatalf("first key after closing the second: %v", err)
	}
	a.Key.(*pkcs11.Key).Close()

	other, err := sign.Keygen(sign.KeygenOptions{Dir: t.TempDir(), Bits: 2048})
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name, uri, envPIN, module, cert, want string
	}{
		{"wrong PIN", "pkcs11:token=kmpack;object=modsign", "9999", "", "", `wrong PIN for token "kmpack"`},
		{"wrong pin-value", "pkcs11:token=kmpack;object=modsign?pin-value=4321", "", "", "", `wrong PIN`},
		{"no PIN", "pkcs11:token=kmpack;object=modsign", "", "", "", `needs a PIN`},
		{"missing token", "pkcs11:token=nosuch;object=modsign", pin, "", "", `no such token (tokens present: "kmpack")`},
		{"missing object", "pkcs11:token=kmpack;object=nosuch", pin, "", "", `no private key object=nosuch on token "kmpack"`},
		{"missing id", "pkcs11:token=kmpack;id=%02", pin, "", "", `no private key id=02`},
		{"missing module", "pkcs11:token=kmpack;object=modsign", pin, "/nonexistent/libp11.so", "", `PKCS#11 module /nonexistent/libp11.so: no such file or directory`},
		{"unloadable module", "pkcs11:token=kmpack;object=modsign?module-path=/etc/hostname", pin, "", "", `cannot load /etc/hostname as a PKCS#11 module`},
		{"certificate of another key", "pkcs11:token=kmpack;object=modsign", pin, "", other.CertPEM, "the private key does not match the certificate"},
		{"certificate object", "pkcs11:token=kmpack;object=modsign;type=cert", pin, "", "", "type=cert: kmpack signs with the private key"},
		{"no object", "pkcs11:token=kmpack", pin, "", "", "names no object"},
		{"malformed", "pkcs11:token=kmpack;object", pin, "", "", "malformed path attribute"},
		{"pin-source missing", "pkcs11:token=kmpack;object=modsign?pin-source=file:/nonexistent/pin", "", "", "", "pin-source /nonexistent/pin: no such file"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			if c.envPIN != "" {
				t.Setenv(pkcs11.EnvPIN, c.envPIN)
			} else {
				os.Unsetenv(pkcs11.EnvPIN)
			}
			s, err := pkcs11.Open(c.uri, pkcs11.Options{Module: c.module, CertPath: c.cert})
			if err == nil {
				s.Key.(*pkcs11.Key).Close()
				t.Fatal("no error")
			}
			msg := err.Error()
			name := strings.Replace(c.uri, "pin-value=4321", "pin-value=REDACTED", 1)
			if !kmp.IsInputError(err) || !strings.HasPrefix(msg, name+": ") || strings.Contains(msg, "\n") || !strings.Contains(msg, c.want) {
				t.Fatalf("want a one-line InputError naming %s with %q, got %T %q", name, c.want, err, msg)
			}
			if strings.Contains(msg, "4321") || (c.envPIN != "" && strings.Contains(msg, c.envPIN)) {
				t.Fatalf("the PIN is in the message: %q", msg)
			}
			t.Log(msg)
		})
	}
}
