package formats

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/kmpack/kmpack/kmp/module"
)

// kmmProfile makes kmod images for Kernel Module Management (KMM, kubernetes-sigs/
// kernel-module-management): per kernel, an OCI image holding the modules where KMM's worker
// takes them from, /opt/lib/modules/<kernel>/ (docs/mkdocs/documentation/kmod_image.md:
// "<prefix>/lib/modules/[kernel-version]/", prefix /opt being the Module CRD's default
// dirName), with depmod's files beside them; and a Module resource mapping each kernel
// release to its image.
//
// The images hold the modules only. KMM's worker Pod copies them out of the image with an init
// container that runs `/bin/sh -c "mkdir -p ...; cp -R ..."` in the kmod image
// (internal/pod/workerpodmanager.go; kmod_image.md: "the kmod image also requires the cp
// binary"): push the image on a base that has a shell and cp (see the README's KMM section).
type kmmProfile struct{}

func (kmmProfile) Name() string   { return "kmm" }
func (kmmProfile) Format() string { return "oci" }

// KMMImageDefault is the image repository of --kmm-image when none is given: kmpack/<name>.
func KMMImageDefault(name string) string { return "kmpack/" + packageName("oci", name) }

// kmmModuleDir is where a kmod image holds a kernel's modules (KMM's default dirName, /opt).
func kmmModuleDir(release string) string { return "/opt/lib/modules/" + release }

// ociArch maps uname -m to the OCI (Go) architecture names of the image config.
func ociArch(arch string) string {
	switch arch {
	case "x86_64":
		return "amd64"
	case "aarch64", "arm64":
		return "arm64"
	case "i386", "i486", "i586", "i686", "x86":
		return "386"
	case "armv7l", "armv6l", "arm":
		return "arm"
	case "ppc64le", "s390x", "riscv64", "mips64le", "loong64":
		return arch
	}
	return arch
}

func (kmmProfile) KernelPackage(in *Input, k *Kernel, opts Options) (*Package, error) {
	md := in.Meta
	files, err := moduleFiles(k, kmmModuleDir(k.Release))
	if err != nil {
		return nil, err
	}
	// The modules the image's modules depend on (modinfo depends=) that it does not hold: they
	// come from the node's kernel, which the image's modules.dep cannot name (see the README).
	own := map[string]bool{}
	for _, m := range k.Modules {
		own[module.ModuleNameFromPath(m.FileName)] = true
	}
	var requires []Relation
	seen := map[string]bool{}
	for _, m := range k.Modules {
		if m.Info == nil {
			continue
		}
		for _, d := range m.Info.Depends {
			if d = strings.ReplaceAll(d, "-", "_"); !own[d] && !seen[d] {
				seen[d] = true
				requires = append(requires, Rel(d))
			}
		}
	}
	return &Package{
		Profile: "kmm", Kernel: k.Release,
		Name: packageName("oci", md.Name), Version: md.Version, Release: md.Release,
		Arch: ociArch(k.Arch), Summary: md.Summary, Description: md.Summary, License: md.License,
		Vendor: md.Vendor, Maintainer: md.Maintainer, URL: md.URL, Files: files, Requires: requires,
		base: opts.KMMBase,
	}, nil
}

// SourcePackage returns nil: a kmod image is built, KMM's in-cluster build is another path.
func (kmmProfile) SourcePackage(in *Input, opts Options) (*Package, error) { return nil, nil }

// imageRepoRE is an image reference without tag or digest (distribution's reference grammar:
// an optional registry host[:port], then lower-case path components).
var imageRepoRE = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]+)?/)?[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)

// CheckKMMImage refuses an --kmm-image that is not an image repository: kmpack adds the tag.
func CheckKMMImage(image string) error {
	if len(image) > 255 || !imageRepoRE.MatchString(image) {
		return fmt.Errorf("--kmm-image %q: want an image repository without tag, REGISTRY[:PORT]/PATH in lower case (e.g. quay.io/example/hello)", image)
	}
	return nil
}

// dnsLabelRE is what a Kubernetes object name may be (a DNS-1123 subdomain).
var dnsName = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$`)

// kmmObjectName maps a module source's name to a Module's metadata.name.
func kmmObjectName(name string) string {
	n := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, name)
	return strings.Trim(n, ".-")
}

// The Module resource as KMM's api/v1beta1/module_types.go and its CRD define it: only the
// fields kmpack fills, in the order of the documentation's example (deploy_kmod.md).
type (
	kmmModule struct {
		APIVersion string        `yaml:"apiVersion"`
		Kind       string        `yaml:"kind"`
		Metadata   kmmObjectMeta `yaml:"metadata"`
		Spec       kmmSpec       `yaml:"spec"`
	}
	kmmObjectMeta struct {
		Name        string            `yaml:"name"`
		Labels      map[string]string `yaml:"labels,omitempty"`
		Annotations map[string]string `yaml:"annotations,omitempty"`
	}
	kmmSpec struct {
		ModuleLoader kmmModuleLoader `yaml:"moduleLoader"`
		// Selector is required by the CRD; the documentation's examples select workers.
		Selector map[string]string `yaml:"selector"`
	}
	kmmModuleLoader struct {
		Container kmmContainer `yaml:"container"`
	}
	kmmContainer struct {
		Modprobe       kmmModprobe        `yaml:"modprobe"`
		KernelMappings []kmmKernelMapping `yaml:"kernelMappings"`
	}
	kmmModprobe struct {
		ModuleName string `yaml:"moduleName"`
		DirName    string `yaml:"dirName"`
	}
	kmmKernelMapping struct {
		Literal        string `yaml:"literal,omitempty"`
		Regexp         string `yaml:"regexp,omitempty"`
		ContainerImage string `yaml:"containerImage"`
	}
)

// ResourcePackage is the Module resource of a build's kmod images: one kernel mapping per
// image, the literal kernel release to <image>:<tag>, and modprobe's moduleName the
// --kmm-module-name or the first module built that no other module depends on.
func (kmmProfile) ResourcePackage(in *Input, kernelPkgs []*Package, opts Options) (*Package, error) {
	if len(kernelPkgs) == 0 {
		return nil, nil
	}
	image := opts.KMMImage
	if image == "" {
		image = KMMImageDefault(in.Meta.Name)
	}
	if err := CheckKMMImage(image); err != nil {
		return nil, err
	}
	modName := opts.KMMModuleName
	for _, k := range in.Kernels {
		if modName == "" && len(k.Modules) > 0 {
			modName = topModule(k.Modules)
		}
	}
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{1,56}$`).MatchString(modName) {
		return nil, fmt.Errorf("KMM module name %q is not a kernel module name", modName)
	}
	name := kmmObjectName(in.Meta.Name)
	if !dnsName.MatchString(name) {
		return nil, fmt.Errorf("%q cannot be made a Kubernetes object name", in.Meta.Name)
	}
	m := kmmModule{
		APIVersion: "kmm.sigs.x-k8s.io/v1beta1", Kind: "Module",
		Metadata: kmmObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": "kmpack"},
			Annotations: map[string]string{"io.kmpack.version": in.Meta.Version + "-" + in.Meta.Release}},
		Spec: kmmSpec{
			ModuleLoader: kmmModuleLoader{Container: kmmContainer{Modprobe: kmmModprobe{ModuleName: modName, DirName: "/opt"}}},
			Selector:     map[string]string{"node-role.kubernetes.io/worker": ""},
		},
	}
	for _, p := range kernelPkgs {
		m.Spec.ModuleLoader.Container.KernelMappings = append(m.Spec.ModuleLoader.Container.KernelMappings,
			kmmKernelMapping{Literal: p.Kernel, ContainerImage: image + ":" + ociTag(p.Kernel)})
	}
	var b bytes.Buffer
	b.WriteString("# KMM Module for " + in.Meta.Name + " " + in.Meta.Version + ", written by kmpack: one kmod image per kernel.\n")
	b.WriteString("# Push each kernel's image, NAME_VERSION-RELEASE_TAG.oci.tar, to the image named below:\n")
	b.WriteString("#   skopeo copy oci-archive:NAME_VERSION-RELEASE_TAG.oci.tar:TAG docker://" + image + ":TAG\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return &Package{
		Profile: "kmm", Name: packageName("oci", in.Meta.Name), Version: in.Meta.Version, Release: in.Meta.Release,
		Arch: "noarch", Summary: in.Meta.Summary, Description: in.Meta.Summary, License: in.Meta.License,
		Vendor: in.Meta.Vendor, Maintainer: in.Meta.Maintainer, URL: in.Meta.URL, resource: b.Bytes(),
	}, nil
}

// topModule is the module modprobe should load: the first that no other module depends on
// (modprobe loads what it depends on from modules.dep), else the first.
func topModule(mods []Module) string {
	needed := map[string]bool{}
	for _, m := range mods {
		if m.Info != nil {
			for _, d := range m.Info.Depends {
				needed[strings.ReplaceAll(d, "-", "_")] = true
			}
		}
	}
	for _, m := range mods {
		if n := module.ModuleNameFromPath(m.FileName); !needed[n] {
			return n
		}
	}
	return module.ModuleNameFromPath(mods[0].FileName)
}

// resourceProfile is a profile that describes, besides its per-kernel packages, one file
// derived from them all (kmm: the Module resource).
type resourceProfile interface {
	ResourcePackage(in *Input, kernelPkgs []*Package, opts Options) (*Package, error)
}
