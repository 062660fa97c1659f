package build_test

import (
	"bytes"
	"context"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/sign"
	"github.com/kmpack/kmpack/kmp/source"
)

func signerFor(t *testing.T, cn string) (*sign.Signer, *sign.KeyPair) {
	t.Helper()
	kp, err := sign.Keygen(sign.KeygenOptions{Dir: t.TempDir(), CN: cn, Days: 30})
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.LoadKeyFile(kp.Key, kp.CertPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, kp
}

// Modules are signed on their way out: byte-identical to the kernel tree's own sign-file run on
// the unsigned module (strip, sign, then compress, as modules_install does), with the tree's
// CONFIG_MODULE_SIG_HASH; the cache keeps the unsigned build, so a rebuild with another key
// is taken from the cache and re-signed; the manifest names signer, key and hash.
func TestBuildSignsModules(t *testing.T) {
	testenv.Need(t, "make", "strip")
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release612)
	cache := t.TempDir()
	run := func(signers ...sign.Signer) (*manifest.Manifest, string) {
		t.Helper()
		src, err := source.OpenSource(testenv.ExampleSource(t, true))
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "out")
		m, err := build.Build(context.Background(), src, trees, build.BuildOptions{Jobs: 2, CacheDir: cache, OutputDir: out, Signers: signers})
		if err != nil {
			t.Fatal(err)
		}
		return m, out
	}
	plain, plainOut := run()
	a, akp := signerFor(t, "kmpack test key A")
	b, _ := signerFor(t, "kmpack test key B")
	for i, signers := range [][]sign.Signer{{*a}, {*b}, {*a, *b}} {
		m, out := run(signers...)
		// The certificates are in the output, for packaging, named as the modules name them.
		if len(m.Certificates) != len(signers) {
			t.Errorf("run %d: manifest certificates %+v", i, m.Certificates)
		}
		for ci, c := range m.Certificates {
			if ci >= len(signers) {
				break
			}
			if !bytes.Equal(testenv.MustRead(t, filepath.Join(out, c.File)), signers[ci].Cert.Raw) ||
				c.KeyID != m.Kernels[0].Modules[0].Signature.Signers[ci].KeyID {
				t.Errorf("run %d: certificate %+v is not signer %d's", i, c, ci)
			}
		}
		if _, err := manifest.Read(out); err != nil {
			t.Errorf("run %d: %v", i, err)
		}
		for k, kb := range m.Kernels {
			if !kb.Cached {
				t.Errorf("run %d, %s: rebuilt; signing must not change what the cache holds", i, kb.Release)
			}
			for j, bm := range kb.Modules {
				data, _, err := module.ReadMaybeCompressed(filepath.Join(out, bm.File))
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range signers {
					if err := sign.VerifyModule(bm.File, data, s.Cert); err != nil {
						t.Errorf("run %d, %s: %v", i, bm.File, err)
					}
				}
				if bm.Signature == nil || len(bm.Signature.Signers) != len(signers) || bm.Signature.Hash != trees[k].Config["CONFIG_MODULE_SIG_HASH"] ||
					bm.Signature.Signers[0].Signer != signers[0].Cert.Subject.CommonName {
					t.Errorf("run %d, %s: manifest signature %+v", i, bm.File, bm.Signature)
				}
				info, err := module.ParseModule(bm.File, data)
				if err != nil || info.Signature == nil || info.Signature.Signer != signers[0].Cert.Subject.CommonName ||
					info.Signature.KeyID.String() != bm.Signature.Signers[0].KeyID {
					t.Errorf("run %d, %s: module's signature %+v (%v), manifest %+v", i, bm.File, info.Signature, err, bm.Signature)
				}
				// The tree's own sign-file, on the unsigned module of the plain build.
				if len(signers) == 1 && i == 0 {
					unsigned, _, err := module.ReadMaybeCompressed(filepath.Join(plainOut, plain.Kernels[k].Modules[j].File))
					if err != nil {
						t.Fatal(err)
					}
					f := filepath.Join(t.TempDir(), "m.ko")
					if err := os.WriteFile(f, unsigned, 0o644); err != nil {
						t.Fatal(err)
					}
					signFile := filepath.Join(trees[k].Dir, "scripts/sign-file")
					if out, err := exec.Command(signFile, trees[k].Config["CONFIG_MODULE_SIG_HASH"], akp.Key, akp.CertPEM, f).CombinedOutput(); err != nil {
						t.Fatalf("%s: %v\n%s", signFile, err, out)
					}
					if !bytes.Equal(testenv.MustRead(t, f), data) {
						t.Errorf("%s: kmpack's signed module differs from sign-file's", bm.File)
					}
					if bm.Compression != module.CompressNone && bytes.Equal(data, testenv.MustRead(t, filepath.Join(out, bm.File))) {
						t.Errorf("%s: not compressed after signing", bm.File)
					}
				}
			}
		}
	}
}

// A kernel configured without CONFIG_MODULE_SIG checks no signature: its modules are left
// unsigned, with a note, while the other kernels' are signed.
func TestBuildSkipsSigningForUnsigningKernels(t *testing.T) {
	testenv.Need(t, "make", "strip")
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release54)
	cfg := maps.Clone(trees[1].Config)
	delete(cfg, "CONFIG_MODULE_SIG")
	trees[1].Config = cfg
	s, _ := signerFor(t, "kmpack test key")
	src, err := source.OpenSource(testenv.ExampleSource(t, true))
	if err != nil {
		t.Fatal(err)
	}
	var warnings []string
	out := filepath.Join(t.TempDir(), "out")
	m, err := build.Build(context.Background(), src, trees, build.BuildOptions{Jobs: 2, OutputDir: out, Signers: []sign.Signer{*s},
		Warn: func(w string) { warnings = append(warnings, w) }})
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range m.Kernels {
		data, _, err := module.ReadMaybeCompressed(filepath.Join(out, k.Modules[0].File))
		if err != nil {
			t.Fatal(err)
		}
		signed := module.HasSignatureMagic(data)
		if signed != (i == 0) || (k.Modules[0].Signature != nil) != (i == 0) {
			t.Errorf("%s: signed %v, manifest %+v", k.Release, signed, k.Modules[0].Signature)
		}
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], testenv.Release54+" is configured without CONFIG_MODULE_SIG") {
		t.Errorf("warnings: %q", warnings)
	}
}
