package formats

import (
	"fmt"
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
	// ServedBy is set for a kernel not built for (build --classes): Modules are the build of
	// the kernel ServedBy, which load in this one. Profiles package it or leave it to
	// weak-updates (Options.Served).
	ServedBy string
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
	// Runtimes, when set, add the kmpack runtime packages: the debs the debian profile's
	// packages depend on, and the rpms (one for rhel and suse) that hook kmpack autoinstall
	// into kernel installs; one per architecture of the profile's kernels packaged, each carrying the Runtimes entry of
	// that architecture (a kmpack binary built for it). A packaged architecture without one
	// is an error; entries for other architectures are not written.
	Runtimes []*Runtime
	// Signing, when set, signs RPMs (OpenPGP) and apk packages (RSA).
	Signing *PackageSigning
	// Served says what a kernel served by another kernel's build gets: ServedPackage (a
	// package of its own carrying that build), ServedWeakUpdates (none: the build's package
	// reaches it through weak-updates), or "" for each profile's default (ServedDefault).
	Served string
	// Cache, when set, keeps package files with a large payload (the runtime package) for
	// the next packaging with the same inputs. PackageBuild uses it only when
	// SOURCE_DATE_EPOCH is set: otherwise every run dates its packages anew.
	Cache *PackageCache
	// KMMImage is the image repository (REGISTRY/PATH, no tag) the kmm profile's Module
	// resource names; default KMMImageDefault. KMMModuleName is the module KMM's worker
	// loads with modprobe; default the first module built.
	KMMImage, KMMModuleName string
	// KMMBase is the image the kmm profile's kmod images are layered on (see OCIBase); nil
	// makes images of the modules alone.
	KMMBase *OCIBase
}

// What a served kernel gets (Options.Served).
const (
	ServedPackage     = "package"
	ServedWeakUpdates = "weak-updates"
)

// ServedDefault is a profile's choice for served kernels. SUSE and Red Hat users install one
// KMP/kmod per kernel series and let weak-updates link it into every kernel it loads in (the
// distributions' own practice: a KMP built for a service pack's first kernel); a Debian, Arch
// or Alpine package is per kernel release (it depends on that kernel's image and installs into
// its /lib/modules), so a served kernel gets a package of its own carrying the class build.
func ServedDefault(profile string) string {
	switch profile {
	case "suse", "rhel":
		return ServedWeakUpdates
	}
	return ServedPackage
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
	// What each kernel gets: its own build, or (served) the build that serves it.
	from := make([]*manifest.KernelBuild, len(m.Kernels))
	for i, kb := range m.Kernels {
		switch kb.Status {
		case manifest.StatusBuilt:
			from[i] = kb
		case manifest.StatusServed:
			// manifest.Read checked that it names a build of this output.
			if from[i] = m.Kernel(kb.ServedBy); from[i] == nil || from[i].Status != manifest.StatusBuilt {
				return nil, kmp.InputErrorf(filepath.Join(outDir, "manifest.json"), "kernel %s: served by %q, which is not a build of this output", kb.Release, kb.ServedBy)
			}
		}
		if from[i] != nil && len(from[i].Modules) == 0 {
			from[i] = nil
		}
	}
	// Parsing a kernel's Module.symvers (some MB) takes longest: they are read side by side.
	symvers := make([]*module.Symvers, len(m.Kernels))
	errs := make([]error, len(m.Kernels))
	var wg sync.WaitGroup
	for i, kb := range m.Kernels {
		t := trees[kb.Release]
		if from[i] == nil || t == nil || t.Symvers == nil || t.Symvers.Path == "" {
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
	built := map[string][]Module{}
	var out []Kernel
	for i, kb := range m.Kernels {
		if from[i] == nil {
			continue
		}
		if errs[i] != nil {
			return nil, errs[i]
		}
		k := Kernel{Release: kb.Release, Flavor: kb.Flavor, Arch: kb.Arch, Symvers: symvers[i]}
		if from[i] != kb {
			k.ServedBy = from[i].Release
		}
		mods, ok := built[from[i].Release]
		if !ok {
			files, err := manifest.ReadModules(root, outDir, from[i])
			if err != nil {
				return nil, err
			}
			for _, f := range files {
				mods = append(mods, Module{Info: f.Info, FileName: filepath.Base(f.Path), Body: f.Body})
			}
			built[from[i].Release] = mods
		}
		k.Modules = mods
		out = append(out, k)
	}
	return out, nil
}
