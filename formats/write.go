package formats

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// Written is one package file on disk.
type Written struct {
	File    string `json:"file"`
	Name    string `json:"name"`
	Version string `json:"version"`
	Release string `json:"release"`
	Arch    string `json:"arch"`
	Format  string `json:"format"`
	Profile string `json:"profile"`
	// Kernel is the release the package's modules were built for; empty for source packages.
	Kernel string `json:"kernel,omitempty"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Write writes every package into dir, replacing what dir held. The packages are written into
// a sibling staging directory first, so a failure leaves dir as it was and no partial package.
func Write(pkgs []*Package, dir string) ([]Written, error) {
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	stage, err := os.MkdirTemp(parent, ".kmpack-packages-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(stage, 0o755); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(stage)
		}
	}()
	var out []Written
	for _, p := range pkgs {
		e, err := EmitterFor(p.Format)
		if err != nil {
			return nil, err
		}
		var buf bytes.Buffer
		if err := e.Write(p, &buf); err != nil {
			return nil, fmt.Errorf("writing %s: %w", p.FileName, err)
		}
		if err := os.WriteFile(filepath.Join(stage, p.FileName), buf.Bytes(), 0o644); err != nil {
			return nil, err
		}
		sum := sha256.Sum256(buf.Bytes())
		out = append(out, Written{File: p.FileName, Name: p.Name, Version: p.Version, Release: p.Release,
			Arch: p.Arch, Format: p.Format, Profile: p.Profile, Kernel: p.Kernel,
			SHA256: hex.EncodeToString(sum[:]), Size: int64(buf.Len())})
	}
	old := stage + ".old"
	if _, err := os.Stat(dir); err == nil {
		if err := os.Rename(dir, old); err != nil {
			return nil, err
		}
	}
	if err := os.Rename(stage, dir); err != nil {
		os.Rename(old, dir)
		return nil, err
	}
	ok = true
	os.RemoveAll(old)
	return out, nil
}
