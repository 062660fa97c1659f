package formats_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/source"
)

const epoch = "1700000000"

var mtime = time.Unix(1700000000, 0).UTC()

// built is one real build of a test module, shared by the tests that only read it.
type built struct {
	src      *source.Source
	manifest *manifest.Manifest
	out      string
	trees    []*kernel.KernelTree
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*built{}
	workDir  string
)

func TestMain(m *testing.M) {
	var err error
	if workDir, err = os.MkdirTemp("", "kmpack-formats-test-"); err != nil {
		panic(err)
	}
	os.Setenv("SOURCE_DATE_EPOCH", epoch)
	code := m.Run()
	os.RemoveAll(workDir)
	os.Exit(code)
}

// buildModule builds testdata/modules/<name> for releases once per test run.
func buildModule(t *testing.T, name string, releases ...string) *built {
	t.Helper()
	return buildModuleWith(t, name, "", releases...)
}

// buildModuleWith builds with a module compression other than the kernel's ("" keeps it).
func buildModuleWith(t *testing.T, name string, comp module.Compression, releases ...string) *built {
	t.Helper()
	buildsMu.Lock()
	defer buildsMu.Unlock()
	key := name + " " + string(comp) + " " + strings.Join(releases, " ")
	if b := builds[key]; b != nil {
		return b
	}
	dir := filepath.Join(workDir, fmt.Sprintf("build-%d", len(builds)))
	srcDir := filepath.Join(dir, "src")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.CopyTree(t, testenv.TestModuleSource(t, name), srcDir)
	src, err := source.OpenSource(srcDir)
	if err != nil {
		t.Fatal(err)
	}
	trees := testenv.KernelTrees(t, releases...)
	out := filepath.Join(dir, "out")
	m, err := build.Build(context.Background(), src, trees, build.BuildOptions{Jobs: 2, OutputDir: out, Compression: comp})
	if err != nil {
		t.Fatalf("building %s: %v", name, err)
	}
	b := &built{src: src, manifest: m, out: out, trees: trees}
	builds[key] = b
	return b
}

// packageBuild packages b with profiles into a copy of its output directory.
func packageBuild(t *testing.T, b *built, profiles ...string) (string, []formats.Written) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	testenv.CopyTree(t, b.out, out)
	written, err := formats.PackageBuild(formats.Request{Source: b.src, Manifest: b.manifest, OutputDir: out,
		Trees: b.trees, Profiles: profiles})
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(out, formats.PackagesDir), written
}

func find(t *testing.T, written []formats.Written, profile, kernel string) string {
	t.Helper()
	for _, w := range written {
		if w.Profile == profile && w.Kernel == kernel {
			return w.File
		}
	}
	t.Fatalf("no %s package for kernel %q in %+v", profile, kernel, written)
	return ""
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// writeRPM writes a package described in Go with kmpack's own rpm emitter.
func writeRPM(t *testing.T, p *formats.Package, dir string) string {
	t.Helper()
	e, err := formats.EmitterFor("rpm")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := e.Write(p, &buf); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, e.FileName(p))
	if err := os.WriteFile(f, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// rpmRoot makes an rpm database in a fresh root holding a stand-in for the distro's base
// system (what a KMP needs besides the kernel: coreutils, the scriptlet packages) and the
// kernel symbol provides of release, written by kmpack ksyms' code from the real symvers.
func rpmRoot(t *testing.T, profile, release string) string {
	t.Helper()
	root := t.TempDir()
	mustRun(t, "rpm", "--root", root, "--initdb")
	base := &formats.Package{Name: "distro-base", Version: "1", Release: "1", Arch: "noarch", Summary: "base",
		Description: "base", License: "MIT", MTime: mtime}
	for _, p := range []string{"coreutils", "grep", "suse-kernel-rpm-scriptlets", "/usr/sbin/depmod", "/usr/sbin/weak-modules", "dkms"} {
		base.Provides = append(base.Provides, formats.Rel(p))
	}
	tree := testenv.KernelTrees(t, release)[0]
	sv, err := module.ReadSymvers(tree.Symvers.Path)
	if err != nil {
		t.Fatal(err)
	}
	ksyms, err := formats.KernelSymbolsPackage(tree, sv, profile, mtime)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mustRun(t, "rpm", "--root", root, "-i", "--noscripts", writeRPM(t, base, dir), writeRPM(t, ksyms, dir))
	return root
}

// A KMP and a kmod built for 6.1.0-53 install with the real rpm against the symbol provides
// of that kernel, and rpm refuses them, naming the symbol, against 6.1.0-54's, where
// _dev_info has another CRC.
func TestRPMSymbolDependenciesResolveWithRPM(t *testing.T) {
	testenv.Need(t, "rpm")
	b := buildModule(t, "abi", testenv.Release53)
	dir, written := packageBuild(t, b, "suse", "rhel")
	for _, c := range []struct {
		profile, missing string
	}{
		{"suse", "ksym(amd64:_dev_info) = 591d140a"},
		{"rhel", "kernel(_dev_info) = 0x591d140a"},
	} {
		t.Run(c.profile, func(t *testing.T) {
			pkg := filepath.Join(dir, find(t, written, c.profile, testenv.Release53))
			good := rpmRoot(t, c.profile, testenv.Release53)
			mustRun(t, "rpm", "--root", good, "-i", "--noscripts", pkg)
			files := mustRun(t, "rpm", "--root", good, "-qlp", pkg)
			for _, f := range strings.Fields(files) {
				if _, err := os.Lstat(filepath.Join(good, f)); err != nil {
					t.Errorf("%s not installed: %v", f, err)
				}
			}
			mustRun(t, "rpm", "--root", good, "-e", "--noscripts", strings.TrimSuffix(filepath.Base(pkg), ".rpm"))
			for _, f := range strings.Fields(files) {
				if _, err := os.Lstat(filepath.Join(good, f)); err == nil {
					t.Errorf("%s left behind after rpm -e (the package must own its directories)", f)
				}
			}

			bad := rpmRoot(t, c.profile, testenv.Release54)
			out, err := run(t, "rpm", "--root", bad, "-i", "--noscripts", pkg)
			if err == nil {
				t.Fatalf("rpm installed %s against %s's symbols", filepath.Base(pkg), testenv.Release54)
			}
			if !strings.Contains(out, c.missing+" is needed by") {
				t.Errorf("rpm's refusal does not name %q:\n%s", c.missing, out)
			}
		})
	}
}

// Same inputs and SOURCE_DATE_EPOCH give byte-identical packages of every format.
func TestPackagesAreReproducible(t *testing.T) {
	b := buildModule(t, "abi", testenv.Release53, testenv.Release54)
	profiles := formats.Profiles()
	dir1, w1 := packageBuild(t, b, profiles...)
	dir2, w2 := packageBuild(t, b, profiles...)
	// One package per profile and kernel, and the -dkms source packages: one rpm (suse and rhel
	// share it), the deb and the Arch package (Alpine and kmm have none), and kmm's Module.
	if want := len(profiles)*2 + 3 + 1; len(w1) != want || len(w2) != want {
		t.Fatalf("got %d and %d packages, want %d", len(w1), len(w2), want)
	}
	for i := range w1 {
		a, _ := os.ReadFile(filepath.Join(dir1, w1[i].File))
		c, _ := os.ReadFile(filepath.Join(dir2, w2[i].File))
		if w1[i].File != w2[i].File || sha256.Sum256(a) != sha256.Sum256(c) || len(a) == 0 {
			t.Errorf("%s differs between two runs", w1[i].File)
		}
	}
	os.Setenv("SOURCE_DATE_EPOCH", "1700000001")
	defer os.Setenv("SOURCE_DATE_EPOCH", epoch)
	dir3, w3 := packageBuild(t, b, "debian")
	a, _ := os.ReadFile(filepath.Join(dir1, find(t, w1, "debian", testenv.Release53)))
	c, _ := os.ReadFile(filepath.Join(dir3, find(t, w3, "debian", testenv.Release53)))
	if bytes.Equal(a, c) {
		t.Errorf("SOURCE_DATE_EPOCH does not reach the package")
	}
}

// rpmlint and lintian, the distributions' own package checkers, find no errors; the warnings
// kmpack keeps on purpose are filtered by scripts/rpmlint.toml and listed in the README. "No
// errors" is only worth something if the checkers read the packages' payloads (rpmlint unpacks
// one with rpm2cpio | cpio and ignores a failure; kmpack's rpms once unpacked to nothing), so
// each run must also show it read every package and files inside: rpmlint's summary counts
// every rpm and it reports each module as unstripped-binary-or-object (it looks at the file's
// ELF contents, not the header's file list); lintian names each deb's changelog.Debian.gz
// (initial-upload-closes-no-bugs, read from the changelog itself) and, in a classification tag,
// each module file.
func TestPackagesPassLinters(t *testing.T) {
	testenv.Need(t, "rpmlint", "lintian", "rpm", "dpkg-deb")
	b := buildModule(t, "abi", testenv.Release53, testenv.Release54)
	dir, written := packageBuild(t, b, "suse", "rhel", "debian")
	var rpms, debs []string
	var rpmModules, debModules, changelogs []string
	for _, w := range written {
		pkg := filepath.Join(dir, w.File)
		switch w.Format {
		case "rpm":
			rpms = append(rpms, pkg)
			if out, err := run(t, "rpm", "-K", pkg); err != nil {
				t.Errorf("%s: %v\n%s", w.File, err, out)
			}
			for _, f := range strings.Fields(mustRun(t, "rpm", "-qlp", pkg)) {
				if strings.HasSuffix(f, ".ko") {
					rpmModules = append(rpmModules, f)
				}
			}
		case "deb":
			debs = append(debs, pkg)
			name := strings.TrimSpace(mustRun(t, "dpkg-deb", "-f", pkg, "Package"))
			changelogs = append(changelogs, "usr/share/doc/"+name+"/changelog.Debian.gz")
			for _, line := range strings.Split(mustRun(t, "dpkg-deb", "-c", pkg), "\n") {
				if f := strings.Fields(line); len(f) > 0 && strings.HasSuffix(f[len(f)-1], ".ko") {
					debModules = append(debModules, strings.TrimPrefix(f[len(f)-1], "./"))
				}
			}
		}
	}
	// Two kernels: the suse and rhel rpms and the debian debs carry two modules each.
	if len(rpms) != 5 || len(rpmModules) != 4 || len(debs) != 3 || len(debModules) != 2 {
		t.Fatalf("%d rpms with %d modules, %d debs with %d modules: want 5 with 4 and 3 with 2", len(rpms), len(rpmModules), len(debs), len(debModules))
	}

	config, _ := filepath.Abs("../scripts/rpmlint.toml")
	out, err := run(t, "rpmlint", append([]string{"--config", config}, rpms...)...)
	if err != nil || strings.Contains(out, ": E: ") {
		t.Errorf("rpmlint: %v\n%s", err, out)
	}
	if want := fmt.Sprintf("\n %d packages and 0 specfiles checked; 0 errors,", len(rpms)); !strings.Contains(out, want) {
		t.Errorf("rpmlint did not check all %d packages (no %q):\n%s", len(rpms), strings.TrimSpace(want), out)
	}
	for _, ko := range rpmModules {
		if !strings.Contains(out, ": W: unstripped-binary-or-object "+ko+"\n") {
			t.Errorf("rpmlint did not read %s from the payload (no unstripped-binary-or-object for it):\n%s", ko, out)
		}
	}

	out, err = run(t, "lintian", append([]string{"--fail-on", "error", "--display-level", "+classification"}, debs...)...)
	if err != nil || strings.Contains("\n"+out, "\nE: ") {
		t.Errorf("lintian: %v\n%s", err, out)
	}
	for _, f := range changelogs {
		if !strings.Contains(out, ": initial-upload-closes-no-bugs ["+f+":1]\n") {
			t.Errorf("lintian did not read %s (no initial-upload-closes-no-bugs for it):\n%s", f, out)
		}
	}
	for _, ko := range debModules {
		if !strings.Contains(out, " ["+ko+"]\n") {
			t.Errorf("lintian names no tag on %s:\n%s", ko, out)
		}
	}
}

// The tags nfpm cannot write are in the RPM as rpm reads them: Supplements with SUSE's
// modalias encoding, Enhances, Requires(pre/post/preun/postun), the self-Conflicts, and the
// scriptlets that hand over to suse-module-tools.
func TestSUSEKMPHeader(t *testing.T) {
	testenv.Need(t, "rpm")
	b := buildModule(t, "abi", testenv.Release53)
	dir, written := packageBuild(t, b, "suse")
	pkg := filepath.Join(dir, find(t, written, "suse", testenv.Release53))
	q := func(args ...string) string {
		return mustRun(t, "rpm", append([]string{"-qp"}, append(args, pkg)...)...)
	}
	if got := q("--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}"); got != "kmpack-abichange-kmp-amd64 1.0_k6.1.0_53 1 x86_64" {
		t.Errorf("NVRA = %q", got)
	}
	for _, c := range []struct{ query, want string }{
		{"--supplements", "(kernel-amd64 and kmpack-abichange)\nmodalias(kernel-amd64:pci:v00001234d0000567[89]sv*sd*bc*sc*i*)\n"},
		{"--enhances", "kernel-amd64\n"},
		{"--conflicts", "kmpack-abichange-kmp-amd64-k6.1.0_53\n"},
	} {
		if got := q(c.query); got != c.want {
			t.Errorf("%s = %q, want %q", c.query, got, c.want)
		}
	}
	reqs := q("--qf", "[%{REQUIREFLAGS:deptype} %{REQUIRENAME} %{REQUIREFLAGS:depflags} %{REQUIREVERSION}\n]")
	for _, want := range []string{"pre suse-kernel-rpm-scriptlets", "post suse-kernel-rpm-scriptlets",
		"preun suse-kernel-rpm-scriptlets", "postun suse-kernel-rpm-scriptlets",
		"manual ksym(amd64:module_layout) = ", "manual ksym(amd64:_dev_info) = 591d140a"} {
		if !strings.Contains(reqs, want) {
			t.Errorf("requires lack %q:\n%s", want, reqs)
		}
	}
	provides := q("--provides")
	for _, want := range []string{"kmod(kmpack_abi.ko)", "multiversion(kernel)", "kmpack-abichange-kmp = 1.0\n", "kmpack-abichange-kmp = 1.0_k6.1.0_53\n"} {
		if !strings.Contains(provides, want) {
			t.Errorf("provides lack %q:\n%s", want, provides)
		}
	}
	scripts := q("--scripts")
	for _, op := range []string{"pre", "post", "preun", "postun", "posttrans"} {
		want := `/usr/lib/module-init-tools/kernel-scriptlets/kmp-` + op + ` --name "kmpack-abichange-kmp-amd64"`
		if !strings.Contains(scripts, want) {
			t.Errorf("scriptlets lack %q:\n%s", want, scripts)
		}
	}
}

// Metadata a format forbids, or two modules on one path, are refused before anything is
// written: the packages directory does not appear.
func TestInvalidPackagesWriteNothing(t *testing.T) {
	b := buildModule(t, "abi", testenv.Release53)
	for _, c := range []struct {
		name    string
		edit    func(*source.Source, *manifest.Manifest)
		profile string
		want    string
	}{
		{"rpm version with a space", func(s *source.Source, _ *manifest.Manifest) { s.Spec.Version = "1.0 2" }, "suse", `version "1.0 2_k6.1.0_53" is not valid`},
		{"deb version not starting with a digit", func(s *source.Source, _ *manifest.Manifest) { s.Spec.Version = "v1.0" }, "debian", `version "v1.0" is not valid`},
		{"apk version with a word apk has no suffix for", func(s *source.Source, _ *manifest.Manifest) { s.Spec.Version = "1.0.foo" }, "alpine", `version "1.0.foo" is not valid`},
		{"apk version not starting with a digit", func(s *source.Source, _ *manifest.Manifest) { s.Spec.Version = "v1.0" }, "alpine", `version "v1.0" is not valid`},
		{"maintainer with a line break", func(s *source.Source, _ *manifest.Manifest) { s.Spec.Maintainer = "X <x@y>\nPre-Depends: evil" }, "debian", `maintainer "X <x@y>\nPre-Depends: evil": line break`},
		{"summary with a control character", func(s *source.Source, _ *manifest.Manifest) { s.Spec.Summary = "a\x1b[2Jb" }, "suse", `summary "a\x1b[2Jb": control character`},
		{"two modules on one path", func(_ *source.Source, m *manifest.Manifest) {
			k := m.Kernels[0]
			k.Modules = append(k.Modules, k.Modules[0])
		}, "rhel", "both install to"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			testenv.CopyTree(t, b.out, out)
			src, err := source.OpenSource(b.src.Dir)
			if err != nil {
				t.Fatal(err)
			}
			spec := *src.Spec
			src.Spec = &spec
			m := *b.manifest
			k := *m.Kernels[0]
			k.Modules = append([]*manifest.BuiltModule{}, k.Modules...)
			m.Kernels = []*manifest.KernelBuild{&k}
			c.edit(src, &m)
			_, err = formats.PackageBuild(formats.Request{Source: src, Manifest: &m, OutputDir: out, Trees: b.trees, Profiles: []string{c.profile}})
			if err == nil || !formats.IsInvalid(err) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want an invalid-package error containing %q", err, c.want)
			}
			if _, err := os.Stat(filepath.Join(out, formats.PackagesDir)); err == nil {
				t.Errorf("a packages directory was written")
			}
		})
	}
}

// Versions apk refused before it had a mapping (a Debian revision, a dotted pre-release word)
// are written as the alpine profile maps them.
func TestAPKVersionsWritten(t *testing.T) {
	b := buildModule(t, "abi", testenv.Release53)
	for version, want := range map[string]string{
		"1.0-2":    "kmpack-abichange-modules-6.1.0-53-amd64-1.0_p2-r1.x86_64.apk",
		"1.0.beta": "kmpack-abichange-modules-6.1.0-53-amd64-1.0_beta-r1.x86_64.apk",
	} {
		src, err := source.OpenSource(b.src.Dir)
		if err != nil {
			t.Fatal(err)
		}
		spec := *src.Spec
		spec.Version = version
		src.Spec = &spec
		out := filepath.Join(t.TempDir(), "out")
		testenv.CopyTree(t, b.out, out)
		written, err := formats.PackageBuild(formats.Request{Source: src, Manifest: b.manifest, OutputDir: out, Trees: b.trees,
			Profiles: []string{"alpine"}})
		if err != nil {
			t.Fatalf("%s: %v", version, err)
		}
		if got := find(t, written, "alpine", testenv.Release53); got != want {
			t.Errorf("%s: wrote %s, want %s", version, got, want)
		}
	}
}

// The source fallback deb carries a dkms.conf (generated from kmpack.yaml) that the real dkms
// builds into the same module.
func TestSourcePackageBuildsWithDKMS(t *testing.T) {
	testenv.Need(t, "dkms", "dpkg-deb")
	b := buildModule(t, "abi", testenv.Release53)
	dir, written := packageBuild(t, b, "debian")
	tree := t.TempDir()
	mustRun(t, "dpkg-deb", "-x", filepath.Join(dir, find(t, written, "debian", "")), tree)
	srcRoot := filepath.Join(tree, "usr/src")
	conf, err := os.ReadFile(filepath.Join(srcRoot, "kmpack-abichange-1.0", "dkms.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "BUILT_MODULE_NAME[0]=kmpack_abi") {
		t.Errorf("dkms.conf:\n%s", conf)
	}
	dkmsTree := t.TempDir()
	out := mustRun(t, "dkms", "build", "--dkmstree", dkmsTree, "--sourcetree", srcRoot,
		"-m", "kmpack-abichange", "-v", "1.0", "-k", testenv.Release53)
	ko, _ := filepath.Glob(filepath.Join(dkmsTree, "kmpack-abichange/1.0", testenv.Release53, "*/module/kmpack_abi.ko*"))
	if len(ko) != 1 {
		t.Fatalf("dkms built no kmpack_abi.ko:\n%s", out)
	}
	m, err := module.ReadModule(ko[0])
	if err != nil {
		t.Fatal(err)
	}
	if want := b.manifest.Kernels[0].Modules[0].SrcVersion; m.SrcVersion != want {
		t.Errorf("dkms built srcversion %s, kmpack %s", m.SrcVersion, want)
	}
}

// The metadata gate holds for a Package built in Go: a line break in any single-line field is
// refused by Validate and by every emitter, and a description (which may span lines) cannot
// start a control field either: dpkg and rpm, reading the packages, see no injected field.
func TestControlFieldInjection(t *testing.T) {
	testenv.Need(t, "dpkg-deb", "rpm")
	pkg := func(format string) *formats.Package {
		return &formats.Package{Format: format, Name: "inject-test", Version: "1.0", Release: "1", Arch: "all",
			Summary: "summary", License: "MIT", Maintainer: "X <x@example.org>",
			Description: "synopsis\nfirst paragraph\n\nPre-Depends: evil\n\n Depends: evil2\n.\nConflicts: evil3",
			MTime:       mtime}
	}
	for _, format := range []string{"deb", "rpm", "apk", "archlinux"} {
		for _, field := range []string{"Maintainer", "Summary", "Vendor", "URL", "License", "Group", "Section"} {
			p := pkg(format)
			if format == "rpm" {
				p.Arch = "noarch"
			}
			*map[string]*string{"Maintainer": &p.Maintainer, "Summary": &p.Summary, "Vendor": &p.Vendor, "URL": &p.URL,
				"License": &p.License, "Group": &p.Group, "Section": &p.Section}[field] = "x\nPre-Depends: evil"
			if err := formats.Validate(p); err == nil || !strings.Contains(err.Error(), "line break") {
				t.Errorf("%s %s: Validate: %v", format, field, err)
			}
			e, _ := formats.EmitterFor(format)
			var buf bytes.Buffer
			if err := e.Write(p, &buf); err == nil || buf.Len() > 0 {
				t.Errorf("%s %s: the emitter wrote %d bytes (err %v)", format, field, buf.Len(), err)
			}
		}
		p := pkg(format)
		p.Requires = []formats.Relation{formats.Rel("a, evil")}
		if format == "deb" {
			if err := formats.Validate(p); err == nil {
				t.Errorf("deb: a relation name with a comma was accepted")
			}
		}
	}

	dir := t.TempDir()
	deb := filepath.Join(dir, "inject.deb")
	var buf bytes.Buffer
	e, _ := formats.EmitterFor("deb")
	if err := e.Write(pkg("deb"), &buf); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(deb, buf.Bytes(), 0o644)
	info := mustRun(t, "dpkg-deb", "--info", deb)
	for _, field := range []string{"Pre-Depends", "Depends", "Conflicts"} {
		if got := strings.TrimSpace(mustRun(t, "dpkg-deb", "--field", deb, field)); got != "" {
			t.Errorf("dpkg-deb --field %s = %q:\n%s", field, got, info)
		}
	}
	if !strings.Contains(info, "\n  first paragraph\n  .\n  Pre-Depends: evil\n") {
		t.Errorf("the description is not kept as continuation lines:\n%s", info)
	}
	rp := pkg("rpm")
	rp.Arch = "noarch"
	f := writeRPM(t, rp, dir)
	if got := mustRun(t, "rpm", "-qp", "--qf", "%{PACKAGER}|%{SUMMARY}|[%{REQUIRENAME},][%{CONFLICTNAME},]", f); strings.Contains(got, "evil") || !strings.HasPrefix(got, "X <x@example.org>|summary|") {
		t.Errorf("rpm header: %q", got)
	}
	if got := mustRun(t, "rpm", "-qp", "--qf", "%{DESCRIPTION}", f); !strings.Contains(got, "Pre-Depends: evil") {
		t.Errorf("rpm description lost its text: %q", got)
	}
}

// The -dkms source package never ships a file from outside the source: a symlink chain that
// leaves it (a/b/c/x -> ../.. then p.patch -> a/b/c/x/../../../secret) is an input error naming
// the link, and nothing is written. In-source links (self -> .) ship as symlinks.
func TestSourcePackageSymlinks(t *testing.T) {
	testenv.Need(t, "dpkg-deb")
	b := buildModule(t, "abi", testenv.Release53)
	pack := func(t *testing.T, links [][2]string) (string, []formats.Written, error) {
		top := t.TempDir()
		secret := filepath.Join(top, "secret")
		os.WriteFile(secret, []byte("host secret\n"), 0o600)
		srcDir := filepath.Join(top, "src")
		testenv.CopyTree(t, b.src.Dir, srcDir)
		os.MkdirAll(filepath.Join(srcDir, "a/b/c"), 0o755)
		for _, l := range links {
			if err := os.Symlink(l[1], filepath.Join(srcDir, l[0])); err != nil {
				t.Fatal(err)
			}
		}
		src, err := source.OpenSource(srcDir)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(top, "out")
		testenv.CopyTree(t, b.out, out)
		written, err := formats.PackageBuild(formats.Request{Source: src, Manifest: b.manifest, OutputDir: out,
			Trees: b.trees, Profiles: []string{"debian", "suse", "arch"}})
		return filepath.Join(out, formats.PackagesDir), written, err
	}
	dir, _, err := pack(t, [][2]string{{"a/b/c/x", "../.."}, {"p.patch", "a/b/c/x/../../../secret"}})
	if err == nil || !kmp.IsInputError(err) || !strings.Contains(err.Error(), "p.patch: symlink to \"a/b/c/x/../../../secret\" leads outside the source tree") {
		t.Errorf("err = %v, want an input error naming p.patch", err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("a packages directory was written")
	}

	dir, written, err := pack(t, [][2]string{{"self", "."}, {"a/b/c/x", "../.."}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ profile, tool string }{{"debian", "dpkg-deb -c"}, {"arch", "tar --zstd -tvf"}, {"suse", "rpm -qlvp"}} {
		args := append(strings.Fields(c.tool)[1:], filepath.Join(dir, find(t, written, c.profile, "")))
		list := mustRun(t, strings.Fields(c.tool)[0], args...)
		for _, want := range []string{"usr/src/kmpack-abichange-1.0/self -> .\n", "usr/src/kmpack-abichange-1.0/a/b/c/x -> ../..\n"} {
			if !strings.Contains(list, want) {
				t.Errorf("the %s source package lacks %q:\n%s", c.profile, want, list)
			}
		}
	}
}

// A package whose name, version and kernel release use every character kmp/ident lets through
// gets scriptlets that sh and bash parse, and the debian postinst/postrm do what they are for:
// run the real depmod for that kernel in $DPKG_ROOT, which then indexes (and drops) the module.
func TestScriptletsAtIdentifierEdges(t *testing.T) {
	testenv.Need(t, "dpkg-deb", "depmod", "bash")
	b := buildModule(t, "abi", testenv.Release53)
	kernels, err := formats.InputFromBuild(b.out, b.manifest, map[string]*kernel.KernelTree{testenv.Release53: b.trees[0]})
	if err != nil {
		t.Fatal(err)
	}
	const release = "6.1.0+x.y-53-amd64"
	kernels[0].Release = release
	files, conf, err := b.src.Files()
	if err != nil {
		t.Fatal(err)
	}
	md := formats.MetadataFor(b.src, b.manifest)
	md.Name, md.Version, md.Release = "0+a.b-c", "1.0+git.1~rc1", "2.1"
	in := &formats.Input{Meta: md, Kernels: kernels, MTime: mtime, Source: &formats.Source{Files: files, DKMSConf: conf}}
	pkgs, err := formats.Describe(in, []string{"debian", "suse", "rhel", "arch"}, formats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var deb *formats.Package
	for _, p := range pkgs {
		if p.Profile == "debian" && p.Kernel != "" {
			deb = p
		}
		for i, s := range []string{p.Scripts.PreInstall, p.Scripts.PostInstall, p.Scripts.PreRemove, p.Scripts.PostRemove, p.Scripts.PostTrans} {
			if s == "" {
				continue
			}
			f := filepath.Join(dir, fmt.Sprintf("%s-%d", p.FileName, i))
			os.WriteFile(f, []byte(s), 0o755)
			for _, shell := range []string{"sh", "bash"} {
				if out, err := run(t, shell, "-n", f); err != nil {
					t.Errorf("%s -n: %s script %d: %v\n%s\n%s", shell, p.FileName, i, err, out, s)
				}
			}
		}
	}
	if deb == nil {
		t.Fatal("no debian package")
	}
	e, _ := formats.EmitterFor("deb")
	var buf bytes.Buffer
	if err := e.Write(deb, &buf); err != nil {
		t.Fatal(err)
	}
	debFile := filepath.Join(dir, deb.FileName)
	os.WriteFile(debFile, buf.Bytes(), 0o644)
	root, control := filepath.Join(dir, "root"), filepath.Join(dir, "control")
	mustRun(t, "dpkg-deb", "-x", debFile, root)
	mustRun(t, "dpkg-deb", "-e", debFile, control)
	os.MkdirAll(filepath.Join(root, "lib/modules", release, "kernel"), 0o755)
	script := func(name, arg string) {
		cmd := exec.Command("sh", filepath.Join(control, name), arg)
		cmd.Env = append(os.Environ(), "DPKG_ROOT="+root)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, arg, err, out)
		}
	}
	dep := filepath.Join(root, "lib/modules", release, "modules.dep")
	script("postinst", "configure")
	if got, _ := os.ReadFile(dep); !strings.Contains(string(got), "updates/0+a.b-c/kmpack_abi.ko:") {
		t.Errorf("postinst configure: modules.dep = %q", got)
	}
	os.RemoveAll(filepath.Join(root, "lib/modules", release, "updates"))
	script("postrm", "remove")
	if got, err := os.ReadFile(dep); err != nil || strings.Contains(string(got), "kmpack_abi") {
		t.Errorf("postrm remove: modules.dep = %q (%v)", got, err)
	}
}

// gzip-compressed modules, packaged, are read back by independent tools: the module file each
// package carries is a .ko.gz that gzip decompresses into the module kmpack built, as modinfo
// reads it (this kmod is built without zlib, so modinfo cannot read .ko.gz itself).
func TestGzipModulesReadBack(t *testing.T) {
	testenv.Need(t, "gzip", "modinfo", "dpkg-deb", "rpm2cpio", "cpio")
	b := buildModuleWith(t, "abi", module.CompressGzip, testenv.Release53)
	bm := b.manifest.Kernels[0].Modules[0]
	if bm.Compression != module.CompressGzip || !strings.HasSuffix(bm.File, ".ko.gz") {
		t.Fatalf("built %s compressed %s", bm.File, bm.Compression)
	}
	dir, written := packageBuild(t, b, "debian", "suse")
	for _, profile := range []string{"debian", "suse"} {
		root := t.TempDir()
		pkg := filepath.Join(dir, find(t, written, profile, testenv.Release53))
		if profile == "debian" {
			mustRun(t, "dpkg-deb", "-x", pkg, root)
		} else {
			mustRun(t, "sh", "-c", `rpm2cpio "$2" | cpio -idm --quiet --no-absolute-filenames -D "$1"`, "sh", root, pkg)
		}
		gz, _ := filepath.Glob(filepath.Join(root, "lib/modules", testenv.Release53, "updates", "*kmpack_abi.ko.gz"))
		more, _ := filepath.Glob(filepath.Join(root, "lib/modules", testenv.Release53, "updates", "*", "kmpack_abi.ko.gz"))
		gz = append(gz, more...)
		if len(gz) != 1 {
			t.Fatalf("%s: no kmpack_abi.ko.gz in %s", profile, mustRun(t, "find", root))
		}
		ko := filepath.Join(root, "kmpack_abi.ko")
		mustRun(t, "sh", "-c", `gzip -t "$1" && gzip -dc "$1" > "$2"`, "sh", gz[0], ko)
		for field, want := range map[string]string{"name": "kmpack_abi", "license": bm.License, "vermagic": strings.TrimSpace(bm.Vermagic)} {
			if got := strings.TrimSpace(mustRun(t, "modinfo", "-F", field, ko)); got != want || want == "" {
				t.Errorf("%s: modinfo -F %s = %q, want %q", profile, field, got, want)
			}
		}
	}
}

// Names and versions dkms accepts become packages: tp_smapi 0.3.0-1 is the Debian package
// tp-smapi-modules-<release> 0.3.0-1-1 and tp-smapi-dkms (as dh_dkms users name it), the KMP
// tp_smapi-kmp-<flavor> 0.3.0_1_k<kver> and kmod-tp_smapi 0.3.0_1 (rpm versions have no -), the
// apk tp_smapi-modules-<release> 0.3.0_p1-r1 (as Alpine packagers write it), with the module
// file names, /usr/src/tp_smapi-0.3.0-1 and the dkms scriptlets' -v kept; the real dkms builds
// the source package's tree.
func TestPackageNamesAndVersionsMapped(t *testing.T) {
	testenv.Need(t, "dpkg-deb", "rpm", "dkms", "tar")
	b := buildModule(t, "abi", testenv.Release53)
	src, err := source.OpenSource(b.src.Dir)
	if err != nil {
		t.Fatal(err)
	}
	spec := *src.Spec
	spec.Name, spec.Version = "tp_smapi", "0.3.0-1"
	src.Spec = &spec
	out := filepath.Join(t.TempDir(), "out")
	testenv.CopyTree(t, b.out, out)
	written, err := formats.PackageBuild(formats.Request{Source: src, Manifest: b.manifest, OutputDir: out, Trees: b.trees,
		Profiles: []string{"debian", "suse", "rhel", "arch", "alpine"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(out, formats.PackagesDir)
	for _, c := range []struct{ profile, kernel, file string }{
		{"debian", testenv.Release53, "tp-smapi-modules-6.1.0-53-amd64_0.3.0-1-1_amd64.deb"},
		{"debian", "", "tp-smapi-dkms_0.3.0-1-1_all.deb"},
		{"suse", testenv.Release53, "tp_smapi-kmp-amd64-0.3.0_1_k6.1.0_53-1.x86_64.rpm"},
		{"rhel", testenv.Release53, "kmod-tp_smapi-0.3.0_1-1.6.1.0_53_amd64.x86_64.rpm"},
		{"suse", "", "tp_smapi-dkms-0.3.0_1-1.noarch.rpm"},
		{"arch", testenv.Release53, "tp_smapi-modules-6.1.0-53-amd64-0.3.0_1-1-x86_64.pkg.tar.zst"},
		{"alpine", testenv.Release53, "tp_smapi-modules-6.1.0-53-amd64-0.3.0_p1-r1.x86_64.apk"},
	} {
		if got := find(t, written, c.profile, c.kernel); got != c.file {
			t.Errorf("%s %q: %s, want %s", c.profile, c.kernel, got, c.file)
		}
	}
	deb := filepath.Join(dir, "tp-smapi-modules-6.1.0-53-amd64_0.3.0-1-1_amd64.deb")
	if got := mustRun(t, "dpkg-deb", "-f", deb, "Package", "Version", "Provides"); got != "Package: tp-smapi-modules-6.1.0-53-amd64\nVersion: 0.3.0-1-1\nProvides: tp-smapi-modules\n" {
		t.Errorf("deb control:\n%s", got)
	}
	if got := mustRun(t, "dpkg-deb", "-c", deb); !strings.Contains(got, "./lib/modules/6.1.0-53-amd64/updates/tp_smapi/kmpack_abi.ko\n") {
		t.Errorf("deb contents:\n%s", got)
	}
	kmpRPM := filepath.Join(dir, "tp_smapi-kmp-amd64-0.3.0_1_k6.1.0_53-1.x86_64.rpm")
	if got := mustRun(t, "rpm", "-qp", "--qf", "%{NAME} %{VERSION}-%{RELEASE}", kmpRPM); got != "tp_smapi-kmp-amd64 0.3.0_1_k6.1.0_53-1" {
		t.Errorf("KMP: %s", got)
	}
	if got := mustRun(t, "rpm", "-qp", "--scripts", filepath.Join(dir, "tp_smapi-dkms-0.3.0_1-1.noarch.rpm")); !strings.Contains(got, `version="0.3.0-1"`) {
		t.Errorf("dkms rpm scriptlets:\n%s", got)
	}
	// An apk is gzip streams of tar segments (control, then data); GNU tar reads them as one.
	apk := filepath.Join(dir, "tp_smapi-modules-6.1.0-53-amd64-0.3.0_p1-r1.x86_64.apk")
	pkginfo := mustRun(t, "tar", "-xzOf", apk, "--ignore-zeros", ".PKGINFO")
	for _, want := range []string{"\npkgname = tp_smapi-modules-6.1.0-53-amd64\n", "\npkgver = 0.3.0_p1-r1\n"} {
		if !strings.Contains("\n"+pkginfo, want) {
			t.Errorf(".PKGINFO lacks %q:\n%s", strings.TrimSpace(want), pkginfo)
		}
	}
	if got := mustRun(t, "tar", "-tzf", apk, "--ignore-zeros"); !strings.Contains(got, "lib/modules/6.1.0-53-amd64/extra/tp_smapi/kmpack_abi.ko\n") {
		t.Errorf("apk contents:\n%s", got)
	}
	root := t.TempDir()
	mustRun(t, "dpkg-deb", "-x", filepath.Join(dir, "tp-smapi-dkms_0.3.0-1-1_all.deb"), root)
	conf, err := os.ReadFile(filepath.Join(root, "usr/src/tp_smapi-0.3.0-1/dkms.conf"))
	if err != nil || !strings.Contains(string(conf), "PACKAGE_NAME=tp_smapi\nPACKAGE_VERSION=0.3.0-1\n") {
		t.Fatalf("dkms.conf: %v\n%s", err, conf)
	}
	dkmsTree := t.TempDir()
	log := mustRun(t, "dkms", "build", "--dkmstree", dkmsTree, "--sourcetree", filepath.Join(root, "usr/src"),
		"-m", "tp_smapi", "-v", "0.3.0-1", "-k", testenv.Release53)
	if ko, _ := filepath.Glob(filepath.Join(dkmsTree, "tp_smapi/0.3.0-1", testenv.Release53, "*/module/kmpack_abi.ko*")); len(ko) != 1 {
		t.Errorf("dkms built no kmpack_abi.ko:\n%s", log)
	}
}

// kmpack.yaml's formats and profile are checked where the spec is read, against kmp's table of
// profiles: it must be this package's.
func TestSpecProfilesMatchFormats(t *testing.T) {
	want := map[string]string{}
	for _, name := range formats.Profiles() {
		p, _ := formats.ProfileFor(name)
		want[name] = p.Format()
	}
	if got := source.SpecProfiles(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("kmp.SpecProfiles() = %v, formats has %v", got, want)
	}
}

// The RPM payload's member names are relative (./usr/...), as rpmbuild writes them: rpmlint and
// anyone else unpacking with rpm2cpio | cpio -id get the files in their directory, not on /.
func TestRPMPayloadNamesAreRelative(t *testing.T) {
	testenv.Need(t, "rpm", "rpm2cpio", "cpio")
	p := &formats.Package{Name: "payload-test", Version: "1", Release: "1", Arch: "noarch", Summary: "s",
		Description: "d", License: "MIT", MTime: mtime,
		Files: []formats.File{{Path: "/usr/src/payload-test-1", Kind: formats.Directory, Mode: 0o755},
			{Path: "/usr/src/payload-test-1/a", Body: []byte("a\n"), Mode: 0o644},
			{Path: "/usr/src/payload-test-1/l", Kind: formats.Symlink, Target: "a"}}}
	f := writeRPM(t, p, t.TempDir())
	if got := mustRun(t, "sh", "-c", `rpm2cpio "$1" | cpio -t --quiet`, "sh", f); got != "./usr/src/payload-test-1\n./usr/src/payload-test-1/a\n./usr/src/payload-test-1/l\n" {
		t.Errorf("payload names:\n%s", got)
	}
	if got := mustRun(t, "rpm", "-qlp", f); got != "/usr/src/payload-test-1\n/usr/src/payload-test-1/a\n/usr/src/payload-test-1/l\n" {
		t.Errorf("rpm -qlp:\n%s", got)
	}
	dir := t.TempDir()
	mustRun(t, "sh", "-c", `cd "$1" && rpm2cpio "$2" | cpio -idm --quiet --no-absolute-filenames`, "sh", dir, f)
	if b, err := os.ReadFile(filepath.Join(dir, "usr/src/payload-test-1/l")); err != nil || string(b) != "a\n" {
		t.Errorf("unpacked: %q %v", b, err)
	}
	root := t.TempDir()
	mustRun(t, "rpm", "--root", root, "-i", "--nodeps", "--noscripts", f)
	if b, err := os.ReadFile(filepath.Join(root, "usr/src/payload-test-1/a")); err != nil || string(b) != "a\n" {
		t.Errorf("installed: %q %v", b, err)
	}
}

// A module file of a build output replaced by a FIFO or by a symlink to a file outside the
// output directory is refused as bad input naming the file: packaging neither blocks on the
// FIFO nor packs the host file the link points at.
func TestInputFromBuildRefusesSpecialModuleFiles(t *testing.T) {
	b := buildModule(t, "hello", testenv.Release53)
	bm := b.manifest.Kernels[0].Modules[0]
	host := filepath.Join(t.TempDir(), "host-secret")
	if err := os.WriteFile(host, []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		plant func(p string) error
	}{
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o644) }},
		{"symlink", func(p string) error { return os.Symlink(host, p) }},
		{"relative symlink out", func(p string) error {
			rel, err := filepath.Rel(filepath.Dir(p), host)
			if err != nil {
				return err
			}
			return os.Symlink(rel, p)
		}},
	} {
		out := filepath.Join(t.TempDir(), "out")
		testenv.CopyTree(t, b.out, out)
		p := filepath.Join(out, filepath.FromSlash(bm.File))
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := c.plant(p); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := formats.InputFromBuild(out, b.manifest, nil)
			done <- err
		}()
		select {
		case err := <-done:
			if !kmp.IsInputError(err) || !strings.Contains(err.Error(), p) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s: InputFromBuild = %v; want a one-line input error naming %s", c.name, err, p)
			}
		case <-time.After(10 * time.Second):
			// Unblock the reader so the test ends.
			if f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close()
			}
			t.Fatalf("%s: InputFromBuild still running after 10s (blocked on %s)", c.name, p)
		}
	}
}
