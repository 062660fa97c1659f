package source_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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
profile: suse
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
		"bad name":         {"name: Foo Bar\nversion: '1'\n", `name: invalid package name "Foo Bar"`},
		"no version":       {"name: a\n", "version: required"},
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
		// Free-text fields end up in control files, where a line break starts a new field.
		"maintainer newline":     {"name: a\nversion: '1'\nmaintainer: \"X <x@y>\\nPre-Depends: evil\"\n", `maintainer "X <x@y>\nPre-Depends: evil": line break '\n' not allowed`},
		"summary CR":             {"name: a\nversion: '1'\nsummary: \"a\\rb\"\n", "summary"},
		"vendor NEL":             {"name: a\nversion: '1'\nvendor: \"a\\Nb\"\n", "vendor"},
		"url LS":                 {"name: a\nversion: '1'\nurl: \"a\\Lb\"\n", "url"},
		"license tab":            {"name: a\nversion: '1'\nlicense: \"GPL\\tMIT\"\n", "license"},
		"description NUL":        {"name: a\nversion: '1'\ndescription: \"a\\0b\"\n", "description"},
		"description ESC":        {"name: a\nversion: '1'\ndescription: \"a\\eb\"\n", "description"},
		"summary too long":       {"name: a\nversion: '1'\nsummary: " + strings.Repeat("x", source.MaxSummary+1) + "\n", "summary: longer than 200 bytes"},
		"description too long":   {"name: a\nversion: '1'\ndescription: " + strings.Repeat("x", source.MaxDescription+1) + "\n", "description: longer than"},
		"name newline":           {"name: \"a\\nb\"\nversion: '1'\n", "name: invalid package name"},
		"name slash":             {"name: a/b\nversion: '1'\n", "name: invalid package name"},
		"version dotdot":         {"name: a\nversion: '..'\n", "version: invalid version"},
		"version space":          {"name: a\nversion: '1 0'\n", "version: invalid version"},
		"release dash":           {"name: a\nversion: '1'\nrelease: 1-2\n", "release \"1-2\": no -"},
		"release newline":        {"name: a\nversion: '1'\nrelease: \"1\\n\"\n", "release: invalid version"},
		"unknown format":         {"name: a\nversion: '1'\nformats: [exe]\n", `formats[0]: unknown package format "exe"`},
		"unknown profile":        {"name: a\nversion: '1'\nprofile: windows\n", `profile: unknown packaging profile "windows"`},
		"rpm without profile":    {"name: a\nversion: '1'\nformats: [deb, rpm]\n", "rpm needs a profile"},
		"profile not in formats": {"name: a\nversion: '1'\nformats: [deb]\nprofile: suse\n", "suse makes rpm packages"},
		// kernels: entries naming repositories come from a file: no host files, no other schemes.
		"kernel repo file URL":     {"name: a\nversion: '1'\nkernels:\n  - repo: file:///srv/repo\n", "kernels[0].repo: a repository in a file must be an http or https URL"},
		"kernel repo apt file URL": {"name: a\nversion: '1'\nkernels:\n  - repo: deb file:///srv/debian bookworm main\n", "must be an http or https URL"},
		"kernel repo signed-by":    {"name: a\nversion: '1'\nkernels:\n  - repo: deb [signed-by=/etc/apt/trusted.gpg] http://h/debian bookworm main\n", "signed-by= names a file of the build host"},
		"kernel keyring outside":   {"name: a\nversion: '1'\nkernels:\n  - repo: http://h/repo\n    keyring: ../../etc/k.gpg\n", "kernels[0].keyring: \"../../etc/k.gpg\" is not a path inside the source"},
		"kernel keyring absolute":  {"name: a\nversion: '1'\nkernels:\n  - repo: http://h/repo\n    keyring: /etc/k.gpg\n", "is not a path inside the source"},
		"kernel bad release":       {"name: a\nversion: '1'\nkernels:\n  - repo: http://h/repo\n    release: '(('\n", "kernels[0].release: "},
		"kernel bad versions":      {"name: a\nversion: '1'\nkernels:\n  - repo: http://h/repo\n    versions: '~6'\n", "kernels[0].versions: "},
		"kernel negative latest":   {"name: a\nversion: '1'\nkernels:\n  - repo: http://h/repo\n    latest: -1\n", "kernels[0].latest"},
		"kernel path and repo":     {"name: a\nversion: '1'\nkernels:\n  - repo: http://h/repo\n    path: /usr/src\n", "path and repo are two entries"},
		"kernel path selection":    {"name: a\nversion: '1'\nkernels:\n  - path: /usr/src\n    latest: 2\n", "select from a repo:"},
		"kernel unknown key":       {"name: a\nversion: '1'\nkernels:\n  - repo: http://h/repo\n    flavour: amd64\n", `field "flavour" not found in a kernels entry`},
		"kernel empty entry":       {"name: a\nversion: '1'\nkernels:\n  - {}\n", "kernels[0]: a path or a repo"},
		"kernel sequence entry":    {"name: a\nversion: '1'\nkernels:\n  - [a, b]\n", "a kernels entry is a path or a mapping"},
		"kernel repo twice":        {"name: a\nversion: '1'\nkernels:\n  - repo: http://h/a\n    repo: http://h/b\n", `"repo" given twice`},
		"kernel flavor null":       {"name: a\nversion: '1'\nkernels:\n  - repo: http://h/a\n    flavor: ~\n", "flavor is empty"},
		"kernel flavor bad":        {"name: a\nversion: '1'\nkernels:\n  - repo: http://h/a\n    flavor: [\"a b\"]\n", "kernels[0].flavor: "},
		"kernel repo bad scheme":   {"name: a\nversion: '1'\nkernels:\n  - repo: ftp://h/repo\n", "kernels[0].repo: "},
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

// What dkms accepts, kmpack.yaml accepts: versions with "-" (0.3.0-1), names with "_" and upper
// case, descriptions over several lines with tabs, non-ASCII text.
func TestParseSpecAccepts(t *testing.T) {
	s, err := source.ParseSpec("kmpack.yaml", []byte("name: tp_smapi\nversion: 0.3.0-1\nrelease: '2.1'\n"+
		"maintainer: Jürgen Müller <j@example.org>\ndescription: \"first\\n\\n\\tverbatim\"\nformats: [deb, rpm]\nprofile: rhel\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "tp_smapi" || s.Version != "0.3.0-1" || s.Release != "2.1" || s.Description != "first\n\n\tverbatim" {
		t.Errorf("parsed %+v", s)
	}
	for _, name := range []string{"Acme_NIC", "a+b.c-d_e", "0"} {
		if _, err := source.ParseSpec("kmpack.yaml", []byte("name: "+name+"\nversion: '1'\n")); err != nil {
			t.Errorf("name %s: %v", name, err)
		}
	}
}

func TestSpecKernels(t *testing.T) {
	s, err := source.ParseSpec("/src/kmpack.yaml", []byte(`name: a
version: '1'
kernels:
  - /usr/src/linux-headers-*
  - kernels/linux-headers-6.1.0-53-amd64_6.1.158-1_amd64.deb
  - path: trees/x
  - repo: deb [arch=amd64] https://deb.debian.org/debian bookworm main
    flavor: amd64
    release: '^6\.1\.'
    versions: '>=6.1.140'
    latest: 2
    keyring: keys/debian.gpg
  - repo: https://download.opensuse.org/update/leap/15.6/sle/
    flavor: [default, rt]
`))
	if err != nil {
		t.Fatal(err)
	}
	paths, qs := s.KernelSources()
	if strings.Join(paths, " ") != "/usr/src/linux-headers-* /src/kernels/linux-headers-6.1.0-53-amd64_6.1.158-1_amd64.deb /src/trees/x" {
		t.Fatal(paths)
	}
	if len(qs) != 2 {
		t.Fatal(qs)
	}
	d, o := qs[0], qs[1]
	if d.Source.Kind != "apt" || d.Source.Arch != "amd64" || d.Source.Keyring != "keys/debian.gpg" || d.Source.KeyringDir != "/src" ||
		strings.Join(d.Selector.Flavors, ",") != "amd64" || d.Selector.Latest != 2 || d.Selector.Release.String() != `^6\.1\.` || d.Selector.Versions.String() != ">=6.1.140" {
		t.Fatalf("%+v %+v", d.Source, d.Selector)
	}
	if o.Source.Kind != "rpm-md" || o.Source.Keyring != "" || strings.Join(o.Selector.Flavors, ",") != "default,rt" || o.Selector.Latest != 0 {
		t.Fatalf("%+v %+v", o.Source, o.Selector)
	}
	// A path-only entry is written back as the string it was.
	var buf bytes.Buffer
	if err := source.WriteSpec(&buf, &source.Spec{Name: "a", Version: "1", Kernels: []source.SpecKernel{{Path: "/usr/src/x"}, {Repo: "http://h/r", Latest: 1}}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "kernels:\n  - /usr/src/x\n  - repo: http://h/r\n    latest: 1\n") {
		t.Fatal(buf.String())
	}
}

// WriteSpec writes what kmpack init produces; the expectation is written out by hand, so a change
// in how specs are written (a key renamed, a value no longer quoted where YAML would read it as a
// number) fails here rather than comparing the program with itself.
func TestWriteSpecRoundTrip(t *testing.T) {
	s, err := source.ParseSpec("kmpack.yaml", []byte(readmeSpec))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := source.WriteSpec(&b, s); err != nil {
		t.Fatal(err)
	}
	const want = `name: acme-nic
version: 2.4.1
release: "3"
license: GPL-2.0-only
summary: ACME NIC driver
description: |
  Out-of-tree driver for ACME network cards.
vendor: ACME Corp.
maintainer: Driver Team <drivers@acme.example>
url: https://acme.example/drivers
modules:
  - name: acme_core
    location: src/core
  - name: acme_eth
    location: src/eth
    dest-name: acme
    install-dir: extra/acme
    strip: false
    build-exclusive:
      config:
        - CONFIG_PCI
install-dir: updates
build:
  make-args:
    - ACME_DEBUG=0
  pre-build: ./configure --quiet
  post-build: "true"
  strip: true
patches:
  - file: patches/fix-6.1.patch
    match: ^6\.1\.
build-exclusive:
  kernel-min: "5.10"
  arch: x86_64|aarch64
  config:
    - CONFIG_MODULES
    - '!CONFIG_TRIM_UNUSED_KSYMS'
kernels:
  - /usr/src/linux-headers-*-amd64
formats:
  - deb
  - rpm
profile: suse
`
	if b.String() != want {
		t.Errorf("WriteSpec wrote:\n%s\nwant:\n%s", b.String(), want)
	}

	// Values YAML would read as numbers or booleans stay strings: 1.10 is not 1.1.
	s = &source.Spec{Name: "a", Version: "1.10", Release: "01", Summary: "yes"}
	b.Reset()
	if err := source.WriteSpec(&b, s); err != nil {
		t.Fatal(err)
	}
	if want := "name: a\nversion: \"1.10\"\nrelease: \"01\"\nsummary: \"yes\"\n"; b.String() != want {
		t.Errorf("WriteSpec wrote %q, want %q", b.String(), want)
	}
	again, err := source.ParseSpec("kmpack.yaml", []byte(b.String()))
	if err != nil || again.Version != "1.10" || again.Release != "01" || again.Summary != "yes" {
		t.Errorf("read back %+v, %v", again, err)
	}
}

// TestSpecIsReadContained: a kmpack.yaml that is a FIFO, a link to /dev/zero or a link out of
// the source is refused at once with one line naming it (it used to hang or exhaust memory).
func TestSpecIsReadContained(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "elsewhere.yaml")
	os.WriteFile(outside, []byte("name: a\nversion: '1'\n"), 0o644)
	for name, plant := range map[string]func(p string){
		"FIFO":         func(p string) { syscall.Mkfifo(p, 0o644) },
		"/dev/zero":    func(p string) { os.Symlink("/dev/zero", p) },
		"link outside": func(p string) { os.Symlink(outside, p) },
		"too large":    func(p string) { os.WriteFile(p, make([]byte, source.MaxSpecSize+1), 0o644) },
	} {
		dir := t.TempDir()
		p := filepath.Join(dir, "kmpack.yaml")
		plant(p)
		done := make(chan error, 1)
		go func() { _, err := source.ReadSpec(p); done <- err }()
		select {
		case err := <-done:
			if err == nil || !kmp.IsInputError(err) || !strings.HasPrefix(err.Error(), p+": ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: reading the spec hangs", name)
		}
	}
}
