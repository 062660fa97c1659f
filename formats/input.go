package formats

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/source"
)

// Metadata describes the software being packaged, whatever the format.
type Metadata struct {
	Name, Version, Release        string
	License, Summary, Description string
	Vendor, Maintainer, URL       string
}

// Kernel is one kernel's built modules and what packaging needs to know about that kernel.
type Kernel struct {
	Release string
	// Flavor is the build tree's flavor (Debian's amd64, cloud-amd64); profiles that name
	// flavors their own way (SUSE: the last dash component of the release) derive theirs.
	Flavor string
	Arch   string // uname -m spelling: x86_64, aarch64, ...
	// Symvers is the kernel's own Module.symvers: the rhel profile needs it to tell kernel()
	// from ksym() requirements; others may leave it nil.
	Symvers *module.Symvers
	Modules []Module
}

// Module is one module file as it installs.
type Module struct {
	Info     *module.ModuleInfo
	FileName string // base name as installed: foo.ko, foo.ko.xz
	Body     []byte
}

// Source is the module source shipped by the dkms fallback packages: its files, and the
// dkms.conf that builds it (the original, or one generated from kmpack.yaml).
type Source struct {
	Files    []source.SourceFile
	DKMSConf []byte
}

// Input is everything the profiles describe packages from.
type Input struct {
	Meta    Metadata
	Kernels []Kernel
	Source  *Source
	// Certs are the certificates that sign the modules: the suse, rhel and debian profiles
	// ship them in a package the packages of signed modules require.
	Certs []Cert
	// MTime stamps every file and the packages' build time (SOURCE_DATE_EPOCH).
	MTime time.Time
}

// Options are choices a user makes about all packages.
type Options struct {
	// UsrMerge installs modules under /usr/lib/modules (SUSE Tumbleweed/SLE 16); default /lib/modules.
	UsrMerge bool
	// NoSource leaves out the <name>-dkms source fallback packages.
	NoSource bool
	// Runtime, when set, adds the kmpack runtime package the debian profile's packages depend on.
	Runtime *Runtime
	// Signing, when set, signs RPMs (OpenPGP) and apk packages (RSA).
	Signing *PackageSigning
	// Cache, when set, keeps package files with a large payload (the runtime package) for
	// the next packaging with the same inputs. PackageBuild uses it only when
	// SOURCE_DATE_EPOCH is set: otherwise every run dates its packages anew.
	Cache *PackageCache
}

// SourceDateEpoch returns SOURCE_DATE_EPOCH as a time, or the current time when it is unset.
// A malformed value is an error: silently falling back would break reproducible builds.
func SourceDateEpoch() (time.Time, error) {
	e := os.Getenv("SOURCE_DATE_EPOCH")
	if e == "" {
		return time.Now().UTC().Truncate(time.Second), nil
	}
	n, err := strconv.ParseInt(e, 10, 64)
	if err != nil || n < 0 || n > 1<<32-1 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970 that fit in 32 bits", e)
	}
	return time.Unix(n, 0).UTC(), nil
}

// MetadataFor fills package metadata from a source: kmpack.yaml's fields, or for dkms.conf
// and bare Kbuild sources the name and version plus what the modules' modinfo says.
func MetadataFor(src *source.Source, m *manifest.Manifest) Metadata {
	md := Metadata{Name: src.Name, Version: src.Version}
	if s := src.Spec; s != nil {
		md = Metadata{Name: s.Name, Version: s.Version, Release: s.Release, License: s.License,
			Summary: s.Summary, Description: s.Description, Vendor: s.Vendor,
			Maintainer: s.Maintainer, URL: s.URL}
	}
	if md.License == "" && m != nil {
		for _, k := range m.Kernels {
			for _, bm := range k.Modules {
				if md.License == "" && bm.License != "" {
					md.License = spdxForModuleLicense(bm.License)
				}
			}
		}
	}
	return md.withDefaults()
}

func (md Metadata) withDefaults() Metadata {
	if md.Release == "" {
		md.Release = "1"
	}
	if md.License == "" {
		md.License = "GPL-2.0-only"
	}
	if md.Summary == "" {
		md.Summary = md.Name + " kernel modules"
	}
	if md.Description == "" {
		md.Description = "Kernel modules of " + md.Name + " " + md.Version + ", packaged by kmpack."
	}
	if md.Maintainer == "" {
		md.Maintainer = "kmpack <kmpack@example.org>"
	}
	if md.Vendor == "" {
		md.Vendor = md.Name
	}
	return md
}

// spdxForModuleLicense maps MODULE_LICENSE strings (include/linux/module.h) to SPDX.
func spdxForModuleLicense(l string) string {
	switch l {
	case "GPL", "GPL v2", "GPL and additional rights":
		return "GPL-2.0-only"
	case "Dual BSD/GPL":
		return "BSD-3-Clause OR GPL-2.0-only"
	case "Dual MIT/GPL":
		return "MIT OR GPL-2.0-only"
	case "Dual MPL/GPL":
		return "MPL-1.1 OR GPL-2.0-only"
	}
	return "LicenseRef-" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '-'
	}, l)
}

// InputFromBuild reads a build's output directory: the modules of every kernel that built,
// with each kernel's symvers taken from trees (by release) when given.
func InputFromBuild(outDir string, m *manifest.Manifest, trees map[string]*kernel.KernelTree) ([]Kernel, error) {
	root, err := os.OpenRoot(outDir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	// Parsing a kernel's Module.symvers (some MB) takes longest: they are read side by side.
	symvers := make([]*module.Symvers, len(m.Kernels))
	errs := make([]error, len(m.Kernels))
	var wg sync.WaitGroup
	for i, kb := range m.Kernels {
		t := trees[kb.Release]
		if kb.Status != manifest.StatusBuilt || len(kb.Modules) == 0 || t == nil || t.Symvers == nil || t.Symvers.Path == "" {
			continue
		}
		if t.Symvers.Parsed != nil { // kept when the tree was opened
			symvers[i] = t.Symvers.Parsed
		} else {
			wg.Add(1)
			go func() {
				defer wg.Done()
				symvers[i], errs[i] = module.ReadSymvers(t.Symvers.Path)
			}()
		}
	}
	wg.Wait()
	var out []Kernel
	for i, kb := range m.Kernels {
		if kb.Status != manifest.StatusBuilt || len(kb.Modules) == 0 {
			continue
		}
		if errs[i] != nil {
			return nil, errs[i]
		}
		k := Kernel{Release: kb.Release, Flavor: kb.Flavor, Arch: kb.Arch, Symvers: symvers[i]}
		for _, bm := range kb.Modules {
			p := filepath.Join(outDir, filepath.FromSlash(bm.File))
			body, err := readBuiltModule(root, bm.File, p)
			if err != nil {
				return nil, err
			}
			data, _, err := module.Decompress(p, body)
			if err != nil {
				return nil, err
			}
			info, err := module.ParseModule(p, data)
			if err != nil {
				return nil, err
			}
			k.Modules = append(k.Modules, Module{Info: info, FileName: filepath.Base(p), Body: body})
		}
		out = append(out, k)
	}
	return out, nil
}

// readBuiltModule reads a module file of a build output through root: the files kmpack writes
// there are regular files, so a symlink, FIFO, device or directory in their place (or a path
// leaving the output directory) is refused as bad input rather than followed or blocked on.
func readBuiltModule(root *os.Root, rel, p string) ([]byte, error) {
	name := filepath.FromSlash(rel)
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return nil, fmt.Errorf("%s: %w", p, err)
	} else if err != nil {
		// Typically a path that leaves the output directory.
		return nil, kmp.InputErrorf(p, "%w", unwrapPathError(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, kmp.InputErrorf(p, "not a regular file (%s): kmpack writes module files as regular files", fi.Mode().Type())
	}
	body, _, err := kmp.ReadRootFile(root, name, module.MaxInputFile)
	if err != nil {
		return nil, kmp.InputErrorf(p, "%w", unwrapPathError(err))
	}
	return body, nil
}

// unwrapPathError drops an *fs.PathError's operation and path, which the InputError repeats.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
