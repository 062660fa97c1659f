package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
)

// goBuild builds ./cmd/kmpack (or pkg in dir) for goarch with CGO_ENABLED=0, as the README
// says to build a --runtime-binary, plus extra flags.
func goBuild(t *testing.T, dir, pkg, goarch, out string, extra ...string) string {
	t.Helper()
	cmd := exec.Command("go", append(append([]string{"build", "-trimpath"}, extra...), "-o", out, pkg)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOARCH="+goarch, "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s for %s: %v\n%s", pkg, goarch, err, b)
	}
	return out
}

// The debian profile writes a runtime package per architecture of the kernels it packages,
// each carrying kmpack for that architecture: for an arm64 build beside an amd64 one, the
// amd64 runtime is this kmpack and the arm64 one the --runtime-binary built here with
// GOARCH=arm64, checked (never run) and stripped with aarch64-linux-gnu-strip; the arm64 module
// package depends on it. Without the arm64 binary packaging fails saying how to build it; a
// file that is no ELF executable, is dynamically linked, is for an architecture no packaged
// kernel has, is not kmpack or another version of it, or is a second one for an
// architecture, is refused naming the file. Same inputs and SOURCE_DATE_EPOCH give the same
// bytes, from an empty or a warm package cache, and another binary is another package; without
// aarch64-linux-gnu-strip the binary goes in as it is, with a warning.
func TestRuntimePackagePerArchitecture(t *testing.T) {
	testenv.Need(t, "dpkg-deb", "dpkg", "file", "aarch64-linux-gnu-gcc-12", "aarch64-linux-gnu-strip")
	cache := t.TempDir()
	host := testenv.HeadersDir(t, testenv.Release53)
	arm := testenv.Arm64Debs(t)
	tools := t.TempDir()
	arm64 := goBuild(t, ".", ".", "arm64", filepath.Join(tools, "kmpack-arm64"))
	// The same kmpack with another Go build ID: other bytes, same version.
	arm64b := goBuild(t, ".", ".", "arm64", filepath.Join(tools, "kmpack-arm64-b"), "-ldflags=-buildid=kmpack-test")
	other := goBuild(t, ".", ".", "arm64", filepath.Join(tools, "kmpack-arm64-9"), "-ldflags=-X=main.version=9.9.9")
	hello := filepath.Join(t.TempDir(), "hello")
	os.MkdirAll(hello, 0o755)
	os.WriteFile(filepath.Join(hello, "go.mod"), []byte("module example.com/hello\n\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(hello, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644)
	notKmpack := goBuild(t, hello, ".", "arm64", filepath.Join(tools, "hello-arm64"))
	amd64Static := goBuild(t, hello, ".", "amd64", filepath.Join(tools, "hello-amd64"))

	src := testenv.TestModuleSource(t, "hello")
	both, armOnly := filepath.Join(t.TempDir(), "both"), filepath.Join(t.TempDir(), "arm")
	for _, o := range []struct {
		out  string
		args []string
	}{{both, append(append([]string{}, arm...), host)}, {armOnly, arm}} {
		args := []string{"build", "-q", "--no-runtime-package", "-o", o.out}
		for _, k := range o.args {
			args = append(args, "-k", k)
		}
		if out, errOut, code := kmpackIn(t, cache, append(args, src)...); code != 0 {
			t.Fatalf("build: exit %d\n%s%s", code, out, errOut)
		}
	}

	// kmpack build checks before building: no arm64 binary, one that is not this kmpack.
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "kmpack: the debian packages for 6.1.0-53-arm64 (aarch64) depend on the kmpack runtime package for arm64"},
		{[]string{"--runtime-binary", other}, "kmpack: --runtime-binary " + other + ": not this kmpack (version 9.9.9"},
	} {
		o := filepath.Join(t.TempDir(), "out")
		args := append([]string{"build", "-q", "-p", "debian", "-o", o}, c.args...)
		for _, k := range arm {
			args = append(args, "-k", k)
		}
		out, errOut, code := kmpackIn(t, cache, append(args, src)...)
		if _, err := os.Stat(o); code == 0 || !strings.HasPrefix(errOut, c.want) || out != "" || err == nil {
			t.Errorf("build %v: exit %d, output directory made (%v)\n%s%s", c.args, code, err == nil, out, errOut)
		}
	}

	pkg := func(cache, out string, args ...string) (string, int) {
		t.Helper()
		_, errOut, code := kmpackIn(t, cache, append(append([]string{"package", "-p", "debian", "--no-source-package"}, args...), out)...)
		return errOut, code
	}
	for _, c := range []struct {
		out  string
		args []string
		code int
		want string
	}{
		{both, nil, exitUsage, "kmpack: the debian packages for 6.1.0-53-arm64 (aarch64) depend on the kmpack runtime package for arm64, which carries kmpack built for aarch64: build it from this kmpack's source (CGO_ENABLED=0 GOARCH=arm64 go build -trimpath -o kmpack-arm64 ./cmd/kmpack) and give it with --runtime-binary kmpack-arm64, or leave the runtime package out with --no-runtime-package\n"},
		{both, []string{"--runtime-binary", "/etc/passwd"}, exitInput, "kmpack: --runtime-binary /etc/passwd: not an ELF executable ("},
		{both, []string{"--runtime-binary", "/bin/ls"}, exitInput, "kmpack: --runtime-binary /bin/ls: dynamically linked (x86_64): build it with CGO_ENABLED=0\n"},
		{armOnly, []string{"--runtime-binary", amd64Static}, exitInput, "kmpack: --runtime-binary " + amd64Static + ": built for x86_64, and no kernel packaged is (aarch64)\n"},
		{both, []string{"--runtime-binary", notKmpack}, exitInput, "kmpack: --runtime-binary " + notKmpack + `: not kmpack: its main package is "example.com/hello" (module "example.com/hello"), not github.com/kmpack/kmpack/cmd/kmpack` + "\n"},
		{both, []string{"--runtime-binary", other}, exitInput, "kmpack: --runtime-binary " + other + ": not this kmpack (version 9.9.9, this kmpack's 0.1.0-dev): build it from this kmpack's source\n"},
		{both, []string{"--runtime-binary", arm64, "--runtime-binary", arm64b}, exitUsage, "kmpack: --runtime-binary " + arm64b + ": a second kmpack for aarch64 (" + arm64 + " is one)\n"},
		{both, []string{"--runtime-binary", arm64, "--no-runtime-package"}, exitUsage, "kmpack: --runtime-binary: no runtime package is written"},
	} {
		errOut, code := pkg(cache, c.out, c.args...)
		if code != c.code || !strings.HasPrefix(errOut, c.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("package %v: exit %d (want %d)\n%s\nwant (prefix)\n%s", c.args, code, c.code, errOut, c.want)
		}
	}

	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	runtimeDebs := func(out string) map[string][]byte {
		t.Helper()
		debs, _ := filepath.Glob(filepath.Join(out, formats.PackagesDir, "*.deb"))
		m := map[string][]byte{}
		for _, d := range debs {
			m[filepath.Base(d)] = testenv.MustRead(t, d)
		}
		return m
	}
	var runs []map[string][]byte
	for i, c := range []string{t.TempDir(), cache, cache} {
		if errOut, code := pkg(c, both, "--runtime-binary", arm64); code != 0 || errOut != "" {
			t.Fatalf("package %d: exit %d: %s", i, code, errOut)
		}
		runs = append(runs, runtimeDebs(both))
	}
	const rtArm, rtAmd, modArm = "kmpack_0.1.0~dev-1_arm64.deb", "kmpack_0.1.0~dev-1_amd64.deb", "kmpack-hello-modules-6.1.0-53-arm64_1.0-1_arm64.deb"
	if len(runs[0]) != 4 || runs[0][rtArm] == nil || runs[0][rtAmd] == nil || runs[0][modArm] == nil {
		t.Fatalf("packages: %v", keys(runs[0]))
	}
	for i := 1; i < len(runs); i++ {
		for f, b := range runs[0] {
			if !bytes.Equal(runs[i][f], b) {
				t.Errorf("%s differs between packaging runs 0 and %d (same inputs and SOURCE_DATE_EPOCH)", f, i)
			}
		}
	}
	dir := filepath.Join(both, formats.PackagesDir)
	field := func(deb, f string) string {
		b, err := exec.Command("dpkg-deb", "-f", filepath.Join(dir, deb), f).Output()
		if err != nil {
			t.Fatalf("dpkg-deb -f %s %s: %v", deb, f, err)
		}
		return strings.TrimSpace(string(b))
	}
	if a := field(rtArm, "Architecture"); a != "arm64" {
		t.Errorf("%s: Architecture %q", rtArm, a)
	}
	if a := field(rtAmd, "Architecture"); a != "amd64" {
		t.Errorf("%s: Architecture %q", rtAmd, a)
	}
	dep := field(modArm, "Depends")
	if !strings.Contains(dep, "kmpack (>= "+formats.RuntimeMinVersion+")") || field(modArm, "Architecture") != "arm64" {
		t.Errorf("%s: Depends %q", modArm, dep)
	}
	if err := exec.Command("dpkg", "--compare-versions", field(rtArm, "Version"), "ge", formats.RuntimeMinVersion).Run(); err != nil {
		t.Errorf("the arm64 runtime's version %s does not satisfy the module package's dependency", field(rtArm, "Version"))
	}
	x := t.TempDir()
	if b, err := exec.Command("dpkg-deb", "-x", filepath.Join(dir, rtArm), x).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v %s", err, b)
	}
	desc, err := exec.Command("file", "-b", filepath.Join(x, formats.RuntimeBinary)).Output()
	if d := string(desc); err != nil || !strings.Contains(d, "ARM aarch64") || !strings.Contains(d, "statically linked") || !strings.Contains(d, ", stripped") {
		t.Errorf("%s in %s: %q %v", formats.RuntimeBinary, rtArm, desc, err)
	}
	if _, err := os.Stat(filepath.Join(x, formats.RuntimeDepmodConf)); err != nil {
		t.Errorf("%s: %v", rtArm, err)
	}
	// lintian: no errors (a static Go binary's statically-linked-binary is overridden).
	if _, err := exec.LookPath("lintian"); err == nil {
		if out, err := exec.Command("lintian", "--fail-on", "error", filepath.Join(dir, rtArm)).CombinedOutput(); err != nil {
			t.Errorf("lintian finds errors in %s: %v\n%s", rtArm, err, out)
		}
	}

	// Another arm64 binary, the package cache warm: another arm64 runtime package, the amd64
	// one from the cache unchanged; and back to the first binary: its bytes again.
	if errOut, code := pkg(cache, both, "--runtime-binary", arm64b); code != 0 || errOut != "" {
		t.Fatalf("package with the other binary: exit %d: %s", code, errOut)
	}
	b := runtimeDebs(both)
	if bytes.Equal(b[rtArm], runs[0][rtArm]) || !bytes.Equal(b[rtAmd], runs[0][rtAmd]) {
		t.Errorf("another --runtime-binary: arm64 runtime changed %v (want true), amd64 runtime unchanged %v (want true)",
			!bytes.Equal(b[rtArm], runs[0][rtArm]), bytes.Equal(b[rtAmd], runs[0][rtAmd]))
	}
	if errOut, code := pkg(cache, both, "--runtime-binary", arm64); code != 0 || errOut != "" || !bytes.Equal(runtimeDebs(both)[rtArm], runs[0][rtArm]) {
		t.Errorf("the first binary again: exit %d %s, same bytes %v", code, errOut, bytes.Equal(runtimeDebs(both)[rtArm], runs[0][rtArm]))
	}

	// Without aarch64-linux-gnu-strip the binary is packaged as it is, with a warning.
	cmd := exec.Command(bin, "package", "-p", "debian", "--no-source-package", "--runtime-binary", arm64, both)
	cmd.Env = append(os.Environ(), "KMPACK_CACHE_DIR="+t.TempDir(), "PATH="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "kmpack: warning: --runtime-binary "+arm64+" is packaged unstripped: no aarch64-linux-gnu-strip here (Debian's binutils-aarch64-linux-gnu)") {
		t.Errorf("package without aarch64-linux-gnu-strip: %v\n%s", err, out)
	}
	x = t.TempDir()
	if b, err := exec.Command("dpkg-deb", "-x", filepath.Join(dir, rtArm), x).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v %s", err, b)
	}
	if !bytes.Equal(testenv.MustRead(t, filepath.Join(x, formats.RuntimeBinary)), testenv.MustRead(t, arm64)) {
		t.Errorf("without aarch64-linux-gnu-strip: %s is not the --runtime-binary as it was given", formats.RuntimeBinary)
	}

	// Only arm64 kernels: only the arm64 runtime.
	if errOut, code := pkg(cache, armOnly, "--runtime-binary", arm64); code != 0 || errOut != "" {
		t.Fatalf("package arm64 only: exit %d: %s", code, errOut)
	}
	if got := keys(runtimeDebs(armOnly)); strings.Join(got, " ") != "kmpack-hello-modules-6.1.0-53-arm64_1.0-1_arm64.deb "+rtArm {
		t.Errorf("arm64 only: %v", got)
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// What tells kmpack builds apart, where the binaries record it: the version read from the
// binary, the module version, the VCS revision and its modified flag, shared dependencies.
func TestCompareIdentity(t *testing.T) {
	dev := buildIdentity{version: "0.1.0-dev", deps: map[string]string{"example.com/a": "v1.0.0"}}
	with := func(f func(*buildIdentity)) buildIdentity {
		id := dev
		id.deps = map[string]string{"example.com/a": "v1.0.0"}
		f(&id)
		return id
	}
	for _, c := range []struct {
		name         string
		ours, theirs buildIdentity
		want         string
	}{
		{"same version", dev, dev, ""},
		{"same revision", with(func(i *buildIdentity) { i.revision, i.modified = "abc", "false" }), with(func(i *buildIdentity) { i.revision, i.modified = "abc", "false" }), ""},
		{"other revision", with(func(i *buildIdentity) { i.revision = "abc" }), with(func(i *buildIdentity) { i.revision = "def" }), "VCS revision def, this kmpack's abc"},
		{"modified", with(func(i *buildIdentity) { i.revision, i.modified = "abc", "false" }), with(func(i *buildIdentity) { i.revision, i.modified = "abc", "true" }), "vcs.modified true"},
		{"other module version", with(func(i *buildIdentity) { i.module = "v1.2.0" }), with(func(i *buildIdentity) { i.module = "v1.1.0" }), "module version v1.1.0, this kmpack's v1.2.0"},
		{"module version on one side", with(func(i *buildIdentity) { i.module = "v1.2.0" }), dev, "module version none"},
		{"stripped, same module version", with(func(i *buildIdentity) { i.module = "v1.2.0" }), with(func(i *buildIdentity) { i.module, i.version = "v1.2.0", "" }), ""},
		{"stripped, nothing to tell", dev, with(func(i *buildIdentity) { i.version = "" }), "cannot tell whether it is this kmpack"},
		{"other dependency", dev, with(func(i *buildIdentity) { i.deps["example.com/a"] = "v1.0.1" }), "dependency example.com/a v1.0.1"},
		{"dependency only one links", dev, with(func(i *buildIdentity) { i.deps["example.com/b"] = "v2.0.0" }), ""},
	} {
		err := compareIdentity(c.ours, c.theirs)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
