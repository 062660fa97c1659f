package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// SoftHSMModule is Debian's softhsm2 PKCS#11 module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// SoftHSMToken makes a private softhsm2 token store in a temporary directory (SOFTHSM2_CONF,
// set for the test and its children, points at its configuration), initializes a token labelled
// label with user PIN pin, imports the PEM private key keyPEM (softhsm2-util --import) and the DER
// certificate certDER (pkcs11-tool --write-object) under object label object and id 01, and
// returns the configuration file.
func SoftHSMToken(t testing.TB, label, pin, object, keyPEM, certDER string) string {
	t.Helper()
	Need(t, "softhsm2-util", "pkcs11-tool")
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", tokens)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	mustRun(t, "softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "5678"+pin, "--pin", pin)
	mustRun(t, "softhsm2-util", "--import", keyPEM, "--token", label, "--label", object, "--id", "01", "--pin", pin)
	mustRun(t, "pkcs11-tool", "--module", SoftHSMModule, "--token-label", label, "--login", "--pin", pin,
		"--write-object", certDER, "--type", "cert", "--id", "01", "--label", object)
	return conf
}
