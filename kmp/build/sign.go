package build

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/sign"
)

// signModules signs a built (or cached) kernel's modules in the stage, after the cache has
// what the build made: no key or signature ever depends on the cache. Each module is taken
// back to its stripped, uncompressed bytes, signed, and compressed again, the order of
// Kbuild's modules_install and dkms.
func (b *builder) signModules(j *kernelJob) error {
	r, t := j.result, j.tree
	if len(b.opts.Signers) == 0 || r.Status != manifest.StatusBuilt || len(r.Modules) == 0 {
		return nil
	}
	if !t.Config.Enabled("CONFIG_MODULE_SIG") {
		b.warn(fmt.Sprintf("kernel %s is configured without CONFIG_MODULE_SIG (it checks no module signature): its modules are not signed", t.Release))
		return nil
	}
	hashName := t.Config["CONFIG_MODULE_SIG_HASH"]
	hash, err := sign.ParseHash(hashName)
	if err != nil {
		return kmp.InputErrorf(t.Dir+"/.config", "CONFIG_MODULE_SIG_HASH %q: %v", hashName, err)
	}
	var signers []manifest.ModuleSignerKey
	for _, s := range b.opts.Signers {
		// As modinfo prints them: signer is the issuer's common name, sig_key the serial.
		signers = append(signers, manifest.ModuleSignerKey{Signer: s.Cert.Issuer.CommonName,
			KeyID: module.HexBytes(s.Cert.SerialNumber.Bytes()).String()})
	}
	for _, m := range r.Modules {
		p := b.stagePath(m.File)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		raw, _, err := module.Decompress(p, data)
		if err != nil {
			return err
		}
		if module.HasSignatureMagic(raw) {
			// The build signed it itself: the signature kmpack makes replaces that one.
			body, _, err := module.SplitSignature(p, raw)
			if err != nil {
				return err
			}
			raw = body
			b.warn(fmt.Sprintf("%s for %s came signed from its build: that signature is replaced", m.Name, t.Release))
		}
		signed, err := sign.SignModule(raw, hash, b.opts.Signers...)
		if err != nil {
			return fmt.Errorf("signing %s for %s: %w", m.Name, t.Release, err)
		}
		packed, err := module.CompressBytes(signed, m.Compression)
		if err != nil {
			return err
		}
		if err := os.WriteFile(p, packed, 0o644); err != nil {
			return err
		}
		sum := sha256.Sum256(packed)
		m.SHA256, m.Size = hex.EncodeToString(sum[:]), int64(len(packed))
		m.Signature = &manifest.ModuleSignature{Hash: sign.HashName(hash), Signers: signers}
	}
	return nil
}

// writeCertificates writes each signer's certificate (DER) into the stage's certs/ directory,
// named by its serial as the modules' signature records name it, so that packaging (now or a
// later kmpack package) can ship the certificates the modules need trusted.
func (b *builder) writeCertificates() ([]manifest.Certificate, error) {
	var out []manifest.Certificate
	seen := map[string]bool{}
	for _, s := range b.opts.Signers {
		serial := s.Cert.SerialNumber.Bytes()
		name := hex.EncodeToString(serial)
		if name == "" {
			name = "00"
		}
		sum := sha256.Sum256(s.Cert.Raw)
		if seen[name] {
			// Two certificates with one serial: keep both apart by fingerprint.
			name += "-" + hex.EncodeToString(sum[:4])
		}
		seen[name] = true
		rel := "certs/" + name + ".der"
		if err := os.MkdirAll(b.stagePath("certs"), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(b.stagePath(rel), s.Cert.Raw, 0o644); err != nil {
			return nil, err
		}
		out = append(out, manifest.Certificate{File: rel, KeyID: module.HexBytes(serial).String(),
			Signer: s.Cert.Issuer.CommonName, SHA256: hex.EncodeToString(sum[:])})
	}
	return out, nil
}
