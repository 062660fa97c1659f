package formats

import (
	"testing"

	"github.com/kmpack/kmpack/kmp/module"
)

// Kernel releases become image tags (the distribution spec's grammar), image repositories are
// checked as the reference grammar has them, and a source's name becomes a Kubernetes name.
func TestKMMNames(t *testing.T) {
	for release, tag := range map[string]string{
		"6.1.0-53-amd64":               "6.1.0-53-amd64",
		"5.14.0-427.13.1.el9_4.x86_64": "5.14.0-427.13.1.el9_4.x86_64",
		"6.12.117+deb12-amd64":         "6.12.117_deb12-amd64",
		"-rc1":                         "_rc1",
	} {
		if got := ociTag(release); got != tag || !ociTagRE.MatchString(got) {
			t.Errorf("ociTag(%q) = %q, want %q", release, got, tag)
		}
	}
	for _, ok := range []string{"kmpack/hello", "quay.io/example/hello", "127.0.0.1:5000/kmm/kmpack-hello", "registry.example.org/a/b__c"} {
		if err := CheckKMMImage(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Hello", "quay.io/x/hello:1.0", "quay.io/x/hello@sha256:00", "/hello", "hello/", "a b"} {
		if CheckKMMImage(bad) == nil {
			t.Errorf("%q accepted as an image repository", bad)
		}
	}
	for name, want := range map[string]string{"kmpack-hello": "kmpack-hello", "tp_smapi": "tp-smapi", "-Foo.": "foo"} {
		if got := kmmObjectName(name); got != want {
			t.Errorf("kmmObjectName(%q) = %q, want %q", name, got, want)
		}
	}
	for arch, want := range map[string]string{"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"} {
		if got := ociArch(arch); got != want {
			t.Errorf("ociArch(%q) = %q, want %q", arch, got, want)
		}
	}
}

// A kmod image names the modules its modules depend on and do not hold (modinfo depends=):
// the node's kernel must provide them.
func TestKMMInTreeDependencies(t *testing.T) {
	k := &Kernel{Release: "6.1.0-53-amd64", Arch: "x86_64", Modules: []Module{
		{FileName: "a.ko", Body: []byte("a"), Info: &module.ModuleInfo{Depends: []string{"videodev", "b-two"}}},
		{FileName: "b_two.ko", Body: []byte("b"), Info: &module.ModuleInfo{Depends: []string{"videodev", "mc"}}},
	}}
	in := &Input{Meta: Metadata{Name: "x", Version: "1", Release: "1"}, Kernels: []Kernel{*k}}
	p, err := kmmProfile{}.KernelPackage(in, k, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ociLabels(p)["io.kmpack.depends"]; got != "videodev,mc" {
		t.Errorf("io.kmpack.depends = %q, want videodev,mc", got)
	}
	if p.Arch != "amd64" || p.Files[0].Path != "/opt/lib/modules/6.1.0-53-amd64/a.ko" {
		t.Errorf("package %+v", p)
	}
}
