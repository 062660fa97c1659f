package formats_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
)

// gpgKey makes a throwaway OpenPGP key (testenv.GPGKey).
func gpgKey(t *testing.T, passphrase string) (secret, public string) {
	secret, public, _ = testenv.GPGKey(t, passphrase)
	return secret, public
}

func packageSigned(t *testing.T, b *built, signing *formats.PackageSigning, profiles ...string) (string, []formats.Written) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	testenv.CopyTree(t, b.out, out)
	written, err := formats.PackageBuild(formats.Request{Source: b.src, Manifest: b.manifest, OutputDir: out,
		Trees: b.trees, Profiles: profiles, Options: formats.Options{Signing: signing}})
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(out, formats.PackagesDir), written
}

// RPMs signed with --gpg-key pass the real rpm -K once the public key is imported, fail it
// without the key and when tampered with, and are byte-identical from run to run.
func TestSignedRPMs(t *testing.T) {
	testenv.Need(t, "rpm")
	b := buildModule(t, "hello", testenv.Release53)
	secret, public := gpgKey(t, "s3cret")
	if _, err := formats.LoadPGPKey(secret, nil); err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Errorf("protected key without passphrase: %v", err)
	}
	if _, err := formats.LoadPGPKey(secret, []byte("wrong")); err == nil || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Errorf("wrong passphrase: %v", err)
	}
	key, err := formats.LoadPGPKey(secret, []byte("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	signing := &formats.PackageSigning{RPM: key}
	dir, written := packageSigned(t, b, signing, "suse", "rhel")
	db := t.TempDir()
	for _, w := range written {
		f := filepath.Join(dir, w.File)
		if out, err := run(t, "rpm", "--dbpath", db, "-K", f); err == nil || !strings.Contains(out, "SIGNATURES NOT OK") {
			t.Errorf("%s without the key: %v\n%s", w.File, err, out)
		}
	}
	mustRun(t, "rpm", "--dbpath", db, "--import", public)
	keyID := key.KeyID()[8:]
	for _, w := range written {
		f := filepath.Join(dir, w.File)
		if out := mustRun(t, "rpm", "--dbpath", db, "-K", f); !strings.Contains(out, "digests signatures OK") {
			t.Errorf("rpm -K %s: %s", w.File, out)
		}
		if out := mustRun(t, "rpm", "--dbpath", db, "-Kv", f); !strings.Contains(out, "Header V4 RSA/SHA256 Signature, key ID "+keyID+": OK") ||
			!strings.Contains(out, "V4 RSA/SHA256 Signature, key ID "+keyID+": OK") {
			t.Errorf("rpm -Kv %s:\n%s", w.File, out)
		}
	}
	// A byte of the payload changed: rpm refuses it.
	f := filepath.Join(dir, written[0].File)
	data := testenv.MustRead(t, f)
	data[len(data)-100] ^= 0xff
	tampered := filepath.Join(t.TempDir(), "tampered.rpm")
	os.WriteFile(tampered, data, 0o644)
	if out, err := run(t, "rpm", "--dbpath", db, "-K", tampered); err == nil || !strings.Contains(out, "NOT OK") {
		t.Errorf("tampered RPM: %v\n%s", err, out)
	}
	// Reproducible: the signature is dated at SOURCE_DATE_EPOCH and has no random salt.
	dir2, _ := packageSigned(t, b, signing, "suse", "rhel")
	for _, w := range written {
		if !bytes.Equal(testenv.MustRead(t, filepath.Join(dir, w.File)), testenv.MustRead(t, filepath.Join(dir2, w.File))) {
			t.Errorf("%s differs between two signed runs", w.File)
		}
	}
}

// gzipMembers splits an apk into its gzip members (signature, control, data) as abuild
// concatenates them.
func gzipMembers(t *testing.T, data []byte) [][]byte {
	t.Helper()
	var out [][]byte
	r := bytes.NewReader(data)
	for r.Len() > 0 {
		start := len(data) - r.Len()
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		zr.Multistream(false)
		if _, err := io.Copy(io.Discard, zr); err != nil {
			t.Fatal(err)
		}
		out = append(out, data[start:len(data)-r.Len()])
	}
	return out
}

// apk packages signed with --apk-key carry .SIGN.RSA.<name>.rsa.pub, an RSA PKCS#1 v1.5
// signature over the SHA-1 of the control segment: openssl checks it as apk-tools would, and
// rejects it for a changed control segment.
func TestSignedAPKs(t *testing.T) {
	testenv.Need(t, "openssl")
	b := buildModule(t, "hello", testenv.Release53)
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "builder-6553a1b2.rsa"), filepath.Join(dir, "builder-6553a1b2.rsa.pub")
	mustRun(t, "openssl", "genrsa", "-out", priv, "2048")
	mustRun(t, "openssl", "rsa", "-in", priv, "-pubout", "-out", pub)
	key, err := formats.LoadAPKKey(priv, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if key.Name != "builder-6553a1b2.rsa.pub" {
		t.Errorf("key name %q", key.Name)
	}
	signing := &formats.PackageSigning{APK: key}
	pkgs, written := packageSigned(t, b, signing, "alpine")
	pkgs2, _ := packageSigned(t, b, signing, "alpine")
	for _, w := range written {
		data := testenv.MustRead(t, filepath.Join(pkgs, w.File))
		if !bytes.Equal(data, testenv.MustRead(t, filepath.Join(pkgs2, w.File))) {
			t.Errorf("%s differs between two signed runs", w.File)
		}
		members := gzipMembers(t, data)
		if len(members) != 3 {
			t.Fatalf("%s: %d gzip members, want signature, control and data", w.File, len(members))
		}
		zr, _ := gzip.NewReader(bytes.NewReader(members[0]))
		tr := tar.NewReader(zr)
		h, err := tr.Next()
		if err != nil || h.Name != ".SIGN.RSA."+key.Name {
			t.Fatalf("%s: signature entry %v (%v)", w.File, h, err)
		}
		sig, _ := io.ReadAll(tr)
		sigFile, control := filepath.Join(dir, "sig"), filepath.Join(dir, "control.tgz")
		os.WriteFile(sigFile, sig, 0o644)
		os.WriteFile(control, members[1], 0o644)
		if out := mustRun(t, "openssl", "dgst", "-sha1", "-verify", pub, "-signature", sigFile, control); !strings.Contains(out, "Verified OK") {
			t.Errorf("%s: %s", w.File, out)
		}
		members[1][len(members[1])/2] ^= 0xff
		os.WriteFile(control, members[1], 0o644)
		if out, err := run(t, "openssl", "dgst", "-sha1", "-verify", pub, "-signature", sigFile, control); err == nil {
			t.Errorf("%s: a changed control segment verified: %s", w.File, out)
		}
	}
}
