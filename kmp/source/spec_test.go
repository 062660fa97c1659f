package source_test

import (
	"os"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/source"
)

// readmeSpec is the full example of the README; the test keeps the two in step.
const readmeSpec = `name: acme-nic
version: "2.4.1"
release: "3"
license: GPL-2.0-only
summary: ACME NIC driver
description: |
  Out-of-tree driver for ACME network cards.
vendor: ACME Corp.
maintainer: Driver Team <drivers@acme.example>
url: https://acme.example/drivers
install-dir: updates
modules:
  - name: acme_core
    location: src/core
  - name: acme_eth
    location: src/eth
    dest-name: acme
    install-dir: extra/acme
    strip: false
    build-exclusive:
      config: [CONFIG_PCI]
build:
  make-args: [ACME_DEBUG=0]
  pre-build: ./configure --quiet
  post-build: "true"
  strip: true
patches:
  - file: patches/fix-6.1.patch
    match: '^6\.1\.'
build-exclusive:
  kernel-min: "5.10"
  arch: x86_64|aarch64
  config: [CONFIG_MODULES, "!CONFIG_TRIM_UNUSED_KSYMS"]
kernels:
  - /usr/src/linux-headers-*-amd64
formats: [deb, rpm]
profile: debian
`

func TestParseSpecReadmeExample(t *testing.T) {
	s, err := source.ParseSpec("kmpack.yaml", []byte(readmeSpec))
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "acme-nic" || s.Version != "2.4.1" || len(s.Modules) != 2 || s.Modules[1].DestName != "acme" ||
		*s.Modules[1].Strip || s.Build.MakeArgs[0] != "ACME_DEBUG=0" || s.BuildExclusive.KernelMin != "5.10" {
		t.Errorf("parsed %+v", s)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), readmeSpec) {
		t.Error("README.md does not hold the spec example of this test verbatim")
	}
}

func TestParseSpecErrors(t *testing.T) {
	cases := map[string]struct{ yaml, want string }{
		"unknown key":      {"name: a\nversion: '1'\nbuidl: {}\n", "field buidl not found"},
		"unknown nested":   {"name: a\nversion: '1'\nmodules:\n  - name: m\n    locaton: x\n", "field locaton not found"},
		"no name":          {"version: '1'\n", "name: required"},
		"bad name":         {"name: Foo Bar\nversion: '1'\n", "name \"Foo Bar\""},
		"no version":       {"name: a\n", "version: required"},
		"bad version":      {"name: a\nversion: '1 0'\n", "version \"1 0\""},
		"location escapes": {"name: a\nversion: '1'\nmodules:\n  - name: m\n    location: ../x\n", "outside the source tree"},
		"install escapes":  {"name: a\nversion: '1'\ninstall-dir: ../../etc\n", "install-dir"},
		"ko suffix":        {"name: a\nversion: '1'\nmodules:\n  - name: m.ko\n", "without .ko"},
		"same dest":        {"name: a\nversion: '1'\nmodules:\n  - name: m\n  - name: n\n    dest-name: m\n", "two modules install as m.ko"},
		"patch escapes":    {"name: a\nversion: '1'\npatches:\n  - file: /etc/passwd\n", "inside the source tree"},
		"bad regex":        {"name: a\nversion: '1'\nbuild-exclusive:\n  kernel: '(('\n", "not a regular expression"},
		"bad config":       {"name: a\nversion: '1'\nbuild-exclusive:\n  config: [PCI]\n", "CONFIG_"},
		"not yaml":         {"name: [a\n", "kmpack.yaml: "},
		"empty":            {"", "empty spec"},
		"two documents":    {"name: a\nversion: '1'\n---\nname: b\n", "more than one"},
		"wrong type":       {"name: a\nversion: '1'\nmodules: yes\n", "kmpack.yaml: "},
	}
	for name, c := range cases {
		_, err := source.ParseSpec("kmpack.yaml", []byte(c.yaml))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !kmp.IsInputError(err) || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "kmpack.yaml: ") ||
			strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %q, want a one-line input error with %q", name, err, c.want)
		}
	}
}

func TestWriteSpecRoundTrip(t *testing.T) {
	s, err := source.ParseSpec("kmpack.yaml", []byte(readmeSpec))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := source.WriteSpec(&b, s); err != nil {
		t.Fatal(err)
	}
	again, err := source.ParseSpec("kmpack.yaml", []byte(b.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	var b2 strings.Builder
	source.WriteSpec(&b2, again)
	if b.String() != b2.String() {
		t.Errorf("round trip changed the spec:\n%s\n---\n%s", b.String(), b2.String())
	}
}
