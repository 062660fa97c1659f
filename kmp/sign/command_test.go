package sign_test

import (
	"bytes"
	"context"
	"crypto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/sign"
)

// TestCommandSigner: a signer process (OpenSSL's pkeyutl in a script that alone knows where the
// key is) makes the same module bytes as the key file; a failing command, garbage, a signature
// of the wrong key and a hung command are one-line InputErrors and give no module.
func TestCommandSigner(t *testing.T) {
	testenv.Need(t, "openssl")
	kps := testKeys(t)
	mod := unsignedModules(t)["crc7.ko"]
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := script("signer.sh", `exec openssl pkeyutl -sign -inkey '`+kps[0].Key+`' -pkeyopt "digest:$KMPACK_SIGN_HASH"`)
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA512} {
		want, err := sign.SignModule(mod, h, fileSigner(t, kps[0]))
		if err != nil {
			t.Fatal(err)
		}
		s, err := sign.NewCommandSigner(context.Background(), good, kps[0].CertDER, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := sign.SignModule(mod, h, *s)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%v: the signer command's module differs from the key file's", h)
		}
	}
	bad := map[string]string{
		"fails":     script("fail.sh", `echo "token locked" >&2; exit 7`),
		"short":     script("short.sh", `echo hello`),
		"garbage":   script("garbage.sh", `head -c 512 /dev/zero`),
		"other-key": script("other.sh", `exec openssl pkeyutl -sign -inkey '`+kps[1].Key+`' -pkeyopt "digest:$KMPACK_SIGN_HASH"`),
		"huge":      script("huge.sh", `head -c 10000000 /dev/zero`),
		"hangs":     script("hang.sh", `sleep 30 & sleep 30`),
	}
	for name, cmd := range bad {
		t.Run(name, func(t *testing.T) {
			s, err := sign.NewCommandSigner(context.Background(), cmd, kps[0].CertPEM, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			out, err := sign.SignModule(mod, crypto.SHA256, *s)
			if out != nil || err == nil || !kmp.IsInputError(err) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("want a one-line InputError and no module, got %d bytes, %T %v", len(out), err, err)
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("took %v", time.Since(start))
			}
			t.Log(err)
		})
	}
}
