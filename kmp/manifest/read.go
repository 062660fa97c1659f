package manifest

import (
	"encoding/json"
	"io"
	"os"
	"path"
	"path/filepath"
	"syscall"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
)

// OutputFormat and OutputFormatVersion mark a manifest.json as kmpack build's own: an output
// directory is only ever replaced when its manifest carries them.
const (
	OutputFormat        = "kmpack-build-output"
	OutputFormatVersion = 1
	// maxManifestSize bounds what is read of a manifest.json.
	maxManifestSize = 64 << 20
	// MaxKernels and MaxModulesPerKernel bound what a manifest may list.
	MaxKernels          = 4096
	MaxModulesPerKernel = 4096
)

// Read reads dir/manifest.json and checks that kmpack build wrote it. Anything
// else (no manifest, another program's manifest.json, an unknown format version) is an
// *InputError naming the directory.
func Read(dir string) (*Manifest, error) {
	p := filepath.Join(dir, "manifest.json")
	// Not following a link, not blocking on a FIFO, a regular file of bounded size.
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, kmp.InputErrorf(dir, "not a kmpack build output: %v", kmp.UnwrapPathError(err))
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, kmp.InputErrorf(p, "not a regular file: not a kmpack manifest")
	}
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, kmp.InputErrorf(p, "%v", kmp.UnwrapPathError(err))
	}
	if len(data) > maxManifestSize {
		return nil, kmp.InputErrorf(p, "larger than %d bytes: not a kmpack manifest", maxManifestSize)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, kmp.InputErrorf(p, "not a kmpack manifest: %v", err)
	}
	switch {
	case m.Format != OutputFormat:
		return nil, kmp.InputErrorf(p, "not a kmpack build manifest (no \"format\": %q)", OutputFormat)
	case m.FormatVersion != OutputFormatVersion:
		return nil, kmp.InputErrorf(p, "kmpack build output format version %d, this kmpack reads %d", m.FormatVersion, OutputFormatVersion)
	}
	// Names in the manifest become paths read by kmpack package: only kmpack's own pass, each
	// once (a file listed a million times would be read a million times).
	releases, files := map[string]bool{}, map[string]bool{}
	if len(m.Kernels) > MaxKernels {
		return nil, kmp.InputErrorf(p, "more than %d kernels", MaxKernels)
	}
	for _, k := range m.Kernels {
		if k == nil {
			return nil, kmp.InputErrorf(p, "an empty kernel record")
		}
		if releases[k.Release] {
			return nil, kmp.InputErrorf(p, "kernel %s is listed twice", k.Release)
		}
		releases[k.Release] = true
		if len(k.Modules) > MaxModulesPerKernel {
			return nil, kmp.InputErrorf(p, "kernel %s: more than %d modules", k.Release, MaxModulesPerKernel)
		}
		for _, bm := range k.Modules {
			if bm != nil && files[bm.File] {
				return nil, kmp.InputErrorf(p, "kernel %s: module file %q is listed twice", k.Release, bm.File)
			}
			if bm != nil {
				files[bm.File] = true
			}
		}
		if err := ident.KernelRelease(k.Release); err != nil {
			return nil, kmp.InputErrorf(p, "%v", err)
		}
		for _, bm := range k.Modules {
			if bm == nil {
				return nil, kmp.InputErrorf(p, "kernel %s: an empty module record", k.Release)
			}
			base := path.Base(bm.File)
			if ident.PathComponent(base) != nil || bm.File != path.Join("modules", k.Release, base) {
				return nil, kmp.InputErrorf(p, "kernel %s: module file %q is not one kmpack writes", k.Release, bm.File)
			}
		}
		if k.Symvers != "" && k.Symvers != path.Join("modules", k.Release, "Module.symvers") {
			return nil, kmp.InputErrorf(p, "kernel %s: symvers %q is not one kmpack writes", k.Release, k.Symvers)
		}
	}
	for _, k := range m.Kernels {
		if k.Status != StatusServed && k.ServedBy == "" {
			continue
		}
		by := m.Kernel(k.ServedBy)
		if k.Status != StatusServed || len(k.Modules) > 0 || by == nil || by.Status != StatusBuilt || by.Flavor != k.Flavor || by.Arch != k.Arch {
			return nil, kmp.InputErrorf(p, "kernel %s: served by %q, which is not a build of this output of its flavor", k.Release, k.ServedBy)
		}
	}
	for _, c := range m.Certificates {
		base := path.Base(c.File)
		if ident.PathComponent(base) != nil || c.File != path.Join("certs", base) || path.Ext(base) != ".der" {
			return nil, kmp.InputErrorf(p, "certificate file %q is not one kmpack writes", c.File)
		}
	}
	return &m, nil
}

// Kernel returns the record of release, or nil.
func (m *Manifest) Kernel(release string) *KernelBuild {
	for _, k := range m.Kernels {
		if k != nil && k.Release == release {
			return k
		}
	}
	return nil
}
