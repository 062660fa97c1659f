package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// GPGKey makes a throwaway OpenPGP key with gpg --batch (no network) and returns the exported
// secret key (protected with passphrase when it is not empty) and public key files, armored;
// keyring is the public key in binary form (apt's signed-by).
func GPGKey(t testing.TB, passphrase string) (secret, public, keyring string) {
	t.Helper()
	Need(t, "gpg", "gpgconf")
	home := t.TempDir()
	gpg := func(args ...string) []byte {
		cmd := exec.Command("gpg", append([]string{"--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase", passphrase}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("gpg %v: %v", args, err)
		}
		return out
	}
	t.Cleanup(func() { exec.Command("gpgconf", "--homedir", home, "--kill", "gpg-agent").Run() })
	gpg("--quick-gen-key", "kmpack test <kmpack-test@example.invalid>", "rsa2048", "sign", "never")
	dir := t.TempDir()
	secret, public, keyring = filepath.Join(dir, "secret.asc"), filepath.Join(dir, "public.asc"), filepath.Join(dir, "public.gpg")
	os.WriteFile(secret, gpg("--armor", "--export-secret-keys"), 0o600)
	os.WriteFile(public, gpg("--armor", "--export"), 0o644)
	os.WriteFile(keyring, gpg("--export"), 0o644)
	return secret, public, keyring
}
