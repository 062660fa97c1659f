package formats

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
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
	out := make([]Written, len(pkgs))
	errs := make([]error, len(pkgs))
	// Packages are independent: they are emitted side by side, at most one per CPU, each into
	// its own file, and listed in pkgs' order whatever order they finish in. The largest
	// payloads start first (the runtime package's binary takes longer than all the rest).
	order := make([]int, len(pkgs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(pkgs[b].payloadSize(), pkgs[a].payloadSize()) })
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(pkgs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				out[i], errs[i] = writeOne(pkgs[i], stage)
			}
		}()
	}
	for _, i := range order {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := firstError(errs); err != nil {
		return nil, err
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

// writeOne emits p into the file p.FileName in dir.
func writeOne(p *Package, dir string) (Written, error) {
	e, err := EmitterFor(p.Format)
	if err != nil {
		return Written{}, err
	}
	var key string
	var data []byte
	if p.cacheable() {
		if key, err = p.cacheKey(p.cache.Salt); err != nil {
			return Written{}, err
		}
		data = p.cache.Get(p.cacheSlot(), key)
	}
	if data == nil {
		var buf bytes.Buffer
		if err := e.Write(p, &buf); err != nil {
			return Written{}, fmt.Errorf("writing %s: %w", p.FileName, err)
		}
		data = buf.Bytes()
		if key != "" {
			p.cache.Put(p.cacheSlot(), key, data)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, p.FileName), data, 0o644); err != nil {
		return Written{}, err
	}
	sum := sha256.Sum256(data)
	return Written{File: p.FileName, Name: p.Name, Version: p.Version, Release: p.Release,
		Arch: p.Arch, Format: p.Format, Profile: p.Profile, Kernel: p.Kernel,
		SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}, nil
}

// firstError is the error of the first package (in pkgs' order) that failed, so that the
// message does not depend on which emitter finished first.
func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
