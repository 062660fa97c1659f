package pkcs11_test

import (
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/sign/pkcs11"
)

// FuzzParseURI: any string is a parsed URI or a one-line InputError naming the URI, and a
// pin-value never appears in the name used in messages.
func FuzzParseURI(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	for _, s := range []string{
		"pkcs11:token=kmpack;object=modsign;type=private?pin-value=1234",
		"pkcs11:token=a%20b;id=%01%02?pin-source=file:/run/pin&module-path=/usr/lib/softhsm/libsofthsm2.so",
		"pkcs11:object=x?PIN-VALUE=secret&pin-value=other",
		"pkcs11:", "pkcs11:;;", "pkcs11:id=%zz", "pkcs11:slot-id=x;object=a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := pkcs11.ParseURI(s)
		if err != nil {
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Fatalf("two lines: %q", msg)
			}
			return
		}
		if u.HasPINValue && u.PINValue != "" && len(u.PINValue) > 3 && strings.Contains(u.Name, "pin-value="+u.PINValue) {
			t.Fatalf("the PIN is in the name %q", u.Name)
		}
		if u.Object == "" && !u.HasID {
			t.Fatal("accepted a URI without object or id")
		}
	})
}
