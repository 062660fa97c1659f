package sign_test

import (
	"bytes"
	"crypto"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/sign"
)

// The Debian trees' own sign-file binaries, the reference for byte-identity.
var signFiles = map[string]string{
	"6.1":  "/usr/lib/linux-kbuild-6.1/scripts/sign-file",
	"6.12": "/usr/lib/linux-kbuild-6.12.117+deb12/scripts/sign-file",
}

var (
	keysOnce sync.Once
	keysDir  string
	keys     [2]*sign.KeyPair
	keysErr  error
)

// testKeys makes two key pairs with Keygen, once per test binary (4096-bit keys take a while).
func testKeys(t testing.TB) [2]*sign.KeyPair {
	t.Helper()
	keysOnce.Do(func() {
		keysDir, keysErr = os.MkdirTemp("", "kmpack-sign-test-")
		if keysErr != nil {
			return
		}
		for i := range keys {
			dir := filepath.Join(keysDir, fmt.Sprint(i))
			if keysErr = os.Mkdir(dir, 0o700); keysErr != nil {
				return
			}
			keys[i], keysErr = sign.Keygen(sign.KeygenOptions{Dir: dir, CN: fmt.Sprintf("kmpack test key %d", i)})
			if keysErr != nil {
				return
			}
		}
	})
	if keysErr != nil {
		t.Fatal(keysErr)
	}
	return keys
}

func TestMain(m *testing.M) {
	code := m.Run()
	if keysDir != "" {
		os.RemoveAll(keysDir)
	}
	os.Exit(code)
}

// unsignedModules are real modules without a signature: kmpack's hello built against 6.1.0-53,
// and Debian 6.12's crc7 (.ko.xz) with its signature cut off.
func unsignedModules(t testing.TB) map[string][]byte {
	t.Helper()
	hello := testenv.MustRead(t, "../../testdata/ko/kmpack_hello-6.1.0-53.ko")
	crc7, _, err := module.ReadMaybeCompressed("../../testdata/ko/crc7-6.12.ko.xz")
	if err != nil {
		t.Fatal(err)
	}
	body, p7, err := module.SplitSignature("crc7-6.12.ko.xz", crc7)
	if err != nil || p7 == nil {
		t.Fatalf("crc7-6.12.ko.xz: signature %d bytes, %v", len(p7), err)
	}
	return map[string][]byte{"kmpack_hello.ko": hello, "crc7.ko": body}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func fileSigner(t testing.TB, kp *sign.KeyPair) sign.Signer {
	t.Helper()
	s, err := sign.LoadKeyFile(kp.Key, kp.CertPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	return *s
}

// TestByteIdenticalToSignFile: for both Debian sign-file binaries, sha256 and sha512, two real
// modules: SignModule's output equals sign-file's byte for byte; modinfo reads the same signer,
// sig_key and sig_hashalgo from both (and they name our certificate); OpenSSL's cms -verify
// accepts the extracted PKCS#7 over the unsigned module.
func TestByteIdenticalToSignFile(t *testing.T) {
	testenv.Need(t, "modinfo", "openssl")
	kp := testKeys(t)[0]
	s := fileSigner(t, kp)
	dir := t.TempDir()
	for name, mod := range unsignedModules(t) {
		in := filepath.Join(dir, name)
		if err := os.WriteFile(in, mod, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, hashName := range []string{"sha256", "sha512"} {
			h, err := sign.ParseHash(hashName)
			if err != nil {
				t.Fatal(err)
			}
			ours, err := sign.SignModule(mod, h, s)
			if err != nil {
				t.Fatal(err)
			}
			oursPath := filepath.Join(dir, hashName+"-kmpack-"+name)
			if err := os.WriteFile(oursPath, ours, 0o644); err != nil {
				t.Fatal(err)
			}
			for series, tool := range signFiles {
				t.Run(name+"/"+hashName+"/sign-file-"+series, func(t *testing.T) {
					ref := filepath.Join(dir, hashName+"-"+series+"-"+name)
					// The DER certificate, as Kbuild passes certs/signing_key.x509.
					run(t, tool, hashName, kp.Key, kp.CertDER, in, ref)
					want := testenv.MustRead(t, ref)
					if !bytes.Equal(ours, want) {
						t.Fatalf("SignModule differs from %s: %d vs %d bytes", tool, len(ours), len(want))
					}
					for _, field := range []string{"signer", "sig_key", "sig_hashalgo", "sig_id"} {
						a := run(t, "modinfo", "-F", field, oursPath)
						b := run(t, "modinfo", "-F", field, ref)
						if a != b || strings.TrimSpace(a) == "" {
							t.Errorf("modinfo -F %s: ours %q, sign-file's %q", field, a, b)
						}
					}
				})
			}
			if got := strings.TrimSpace(run(t, "modinfo", "-F", "signer", oursPath)); got != kp.Cert.Subject.CommonName {
				t.Errorf("modinfo signer %q, want %q", got, kp.Cert.Subject.CommonName)
			}
			if got, want := strings.TrimSpace(run(t, "modinfo", "-F", "sig_key", oursPath)), module.HexBytes(kp.Cert.SerialNumber.Bytes()).String(); got != want {
				t.Errorf("modinfo sig_key %q, want the serial %q", got, want)
			}
			if got := strings.TrimSpace(run(t, "modinfo", "-F", "sig_hashalgo", oursPath)); got != hashName {
				t.Errorf("modinfo sig_hashalgo %q, want %q", got, hashName)
			}
			opensslVerify(t, ours, kp.CertPEM)
		}
	}
}

// opensslVerify checks a signed module with OpenSSL, an implementation independent of ours.
func opensslVerify(t *testing.T, signed []byte, certs ...string) {
	t.Helper()
	body, p7, err := module.SplitSignature("signed.ko", signed)
	if err != nil || p7 == nil {
		t.Fatalf("split: %d-byte signature, %v", len(p7), err)
	}
	dir := t.TempDir()
	bodyPath, p7Path := filepath.Join(dir, "m.ko.body"), filepath.Join(dir, "m.ko.p7s")
	os.WriteFile(bodyPath, body, 0o644)
	os.WriteFile(p7Path, p7, 0o644)
	args := []string{"cms", "-verify", "-binary", "-inform", "DER", "-in", p7Path, "-content", bodyPath, "-purpose", "any", "-out", "/dev/null"}
	// -certfile and -CAfile take one file each: concatenate the PEM certificates.
	var all []byte
	for _, c := range certs {
		all = append(all, testenv.MustRead(t, c)...)
	}
	certFile := filepath.Join(dir, "certs.pem")
	os.WriteFile(certFile, all, 0o644)
	args = append(args, "-certfile", certFile, "-CAfile", certFile)
	run(t, "openssl", args...)
}

// TestTwoSigners: one SignedData with two SignerInfos (key rotation) equals what `openssl cms
// -sign -signer A -signer B -noattr -nocerts -nosmimecap` makes (sign-file takes only one key),
// in either order, and OpenSSL verifies it.
func TestTwoSigners(t *testing.T) {
	testenv.Need(t, "openssl")
	kps := testKeys(t)
	mod := unsignedModules(t)["kmpack_hello.ko"]
	dir := t.TempDir()
	in := filepath.Join(dir, "m.ko")
	os.WriteFile(in, mod, 0o644)
	ref := filepath.Join(dir, "ref.p7s")
	run(t, "openssl", "cms", "-sign", "-binary", "-noattr", "-nocerts", "-nosmimecap", "-md", "sha256",
		"-signer", kps[0].CertPEM, "-inkey", kps[0].Key, "-signer", kps[1].CertPEM, "-inkey", kps[1].Key,
		"-in", in, "-outform", "DER", "-out", ref)
	want := testenv.MustRead(t, ref)
	for _, order := range [][2]int{{0, 1}, {1, 0}} {
		signed, err := sign.SignModule(mod, crypto.SHA256, fileSigner(t, kps[order[0]]), fileSigner(t, kps[order[1]]))
		if err != nil {
			t.Fatal(err)
		}
		_, p7, err := module.SplitSignature("m.ko", signed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p7, want) {
			t.Fatalf("order %v: PKCS#7 differs from openssl cms's (%d vs %d bytes)", order, len(p7), len(want))
		}
		// OpenSSL needs every signer's certificate (the kernel needs one trusted signer).
		opensslVerify(t, signed, kps[0].CertPEM, kps[1].CertPEM)
	}
}

func TestAlreadySigned(t *testing.T) {
	kp := testKeys(t)[0]
	signed, err := sign.SignModule(unsignedModules(t)["crc7.ko"], crypto.SHA256, fileSigner(t, kp))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sign.SignModule(signed, crypto.SHA256, fileSigner(t, kp)); err != sign.ErrAlreadySigned {
		t.Fatalf("signing a signed module: %v", err)
	}
}

// TestEncryptedKeys: the encrypted PEM forms OpenSSL writes load with the right passphrase, and
// give the same signature; a wrong or missing passphrase, a key that is not the certificate's,
// and an unreadable file are one-line InputErrors naming the file.
func TestEncryptedKeys(t *testing.T) {
	testenv.Need(t, "openssl")
	kps := testKeys(t)
	kp := kps[0]
	mod := unsignedModules(t)["kmpack_hello.ko"]
	want, err := sign.SignModule(mod, crypto.SHA256, fileSigner(t, kp))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pass := filepath.Join(dir, "pass")
	os.WriteFile(pass, []byte("correct horse\n"), 0o600)
	forms := map[string][]string{
		"genrsa-aes256.pem":      {"rsa", "-aes256", "-in", kp.Key, "-passout", "file:" + pass},
		"traditional-aes256.pem": {"rsa", "-traditional", "-aes256", "-in", kp.Key, "-passout", "file:" + pass},
		"pkcs8-v2-aes256.pem":    {"pkcs8", "-topk8", "-v2", "aes256", "-in", kp.Key, "-passout", "file:" + pass},
		"pkcs1-plain.pem":        {"rsa", "-traditional", "-in", kp.Key},
	}
	for name, args := range forms {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, name)
			run(t, "openssl", append(args, "-out", p)...)
			pw, err := sign.ReadPassphrase("", pass)
			if err != nil {
				t.Fatal(err)
			}
			s, err := sign.LoadKeyFile(p, kp.CertDER, pw)
			if err != nil {
				t.Fatal(err)
			}
			got, err := sign.SignModule(mod, crypto.SHA256, *s)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("signature differs from the plain key's (%v)", err)
			}
			if strings.Contains(name, "plain") {
				return
			}
			for _, bad := range [][]byte{nil, []byte("wrong")} {
				_, err := sign.LoadKeyFile(p, kp.CertDER, bad)
				checkInputError(t, p, err)
			}
		})
	}
	t.Setenv("KMPACK_TEST_PASS", "correct horse")
	if pw, err := sign.ReadPassphrase("KMPACK_TEST_PASS", ""); err != nil || string(pw) != "correct horse" {
		t.Fatalf("passphrase from the environment: %q, %v", pw, err)
	}
	_, err = sign.LoadKeyFile(kp.Key, kps[1].CertPEM, nil)
	checkInputError(t, kp.Key, err)
	_, err = sign.LoadKeyFile(filepath.Join(dir, "missing.pem"), kp.CertPEM, nil)
	checkInputError(t, filepath.Join(dir, "missing.pem"), err)
	_, err = sign.LoadKeyFile(kp.Key, dir, nil)
	checkInputError(t, dir, err)
	_, err = sign.LoadKeyFile(kp.CertPEM, kp.CertPEM, nil)
	checkInputError(t, kp.CertPEM, err)
}

func checkInputError(t *testing.T, path string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error", path)
	}
	if !kmp.IsInputError(err) || !strings.HasPrefix(err.Error(), path+": ") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("want a one-line InputError naming %s, got %T %q", path, err, err)
	}
	t.Logf("%v", err)
}

// BenchmarkSignModule is what signing adds per module (RSA-4096 private-key operation plus the
// hash over the module), for a small module (kmpack_hello) and a larger one, with sign-file
// beside it for comparison: `go test -bench SignModule -run XXX ./kmp/sign`.
func BenchmarkSignModule(b *testing.B) {
	keys := testKeys(b)
	s := fileSigner(b, keys[0])
	mods := unsignedModules(b)
	for _, name := range []string{"kmpack_hello.ko", "crc7.ko"} {
		mod := mods[name]
		b.Run("kmpack/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(mod)))
			for b.Loop() {
				if _, err := sign.SignModule(mod, crypto.SHA256, s); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("sign-file/"+name, func(b *testing.B) {
			dir := b.TempDir()
			f := filepath.Join(dir, "m.ko")
			for b.Loop() {
				if err := os.WriteFile(f, mod, 0o644); err != nil {
					b.Fatal(err)
				}
				if out, err := exec.Command("/usr/lib/linux-kbuild-6.1/scripts/sign-file", "sha256", keys[0].Key, keys[0].CertPEM, f).CombinedOutput(); err != nil {
					b.Fatalf("sign-file: %v %s", err, out)
				}
			}
		})
	}
}
