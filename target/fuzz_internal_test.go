package target

import (
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp/ident"
)

// FuzzLiteralAssignment: whatever a dkms.conf holds, the name read from it at add time is
// either unknown ("") or a plain word nothing would expand, and a valid one passes ident.
func FuzzLiteralAssignment(f *testing.F) {
	f.Add([]byte("PACKAGE_NAME=\"acpi-call\"\nPACKAGE_VERSION=\"1.2.2\"\nBUILT_MODULE_NAME[0]=\"$PACKAGE_NAME\"\n"))
	f.Add([]byte("PACKAGE_NAME=$(uname -r)\n"))
	f.Add([]byte("read PACKAGE_NAME < x\nPACKAGE_NAME=a\n"))
	f.Add([]byte("PACKAGE_NAME='a b'\r\n"))
	f.Fuzz(func(t *testing.T, conf []byte) {
		v := literalAssignment(conf, "PACKAGE_NAME")
		if v == "" {
			return
		}
		if strings.ContainsAny(v, "$`\\\"'(){}; \t\n\r*?[]&|<>!#") {
			t.Fatalf("read %q, which a shell would expand or split", v)
		}
		if !strings.Contains(string(conf), v) {
			t.Fatalf("read %q, which the file does not hold", v)
		}
		_ = ident.PackageName(v) // validated by identify; must not panic here
	})
}
