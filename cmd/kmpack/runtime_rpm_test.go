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

// The rhel and suse profiles write the kmpack runtime as an rpm (one for both, named for
// rhel when it is packaged): kmpack, systemd's kernel-install plugin, the boot unit and its
// wants link, the man page and bash completion, and none of the Debian-only files nor the
// depmod.d file; it requires kmod, and provides itself at kmpack's version in rpm syntax
// (0.1.0~dev, before 0.1.0). The <name>-dkms rpm requires (dkms or kmpack >= RuntimeMinVersion),
// a rich dependency the real rpm reads back, and the real dnf installs it beside the runtime
// rpm into a root that has no dkms. Same inputs and SOURCE_DATE_EPOCH give the same bytes
// from an empty and a warm package cache; rpmlint finds no errors; the suse profile alone writes the same runtime rpm
// under its own profile, with the deb beside it when debian is packaged too.
func TestRuntimeRPM(t *testing.T) {
	testenv.Need(t, "rpm", "rpmbuild", "dnf")
	cache := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	if _, stderr, code := kmpackIn(t, cache, "build", "-q", "--no-runtime-package", "-o", out, "-p", "rhel",
		"-k", testenv.HeadersDir(t, testenv.Release53), testenv.TestModuleSource(t, "hello")); code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	dir := filepath.Join(out, formats.PackagesDir)
	rpms := func() map[string][]byte {
		t.Helper()
		files, _ := filepath.Glob(filepath.Join(dir, "*"))
		m := map[string][]byte{}
		for _, f := range files {
			if !strings.HasSuffix(f, ".json") {
				m[filepath.Base(f)] = testenv.MustRead(t, f)
			}
		}
		return m
	}
	pkg := func(cache string, args ...string) {
		t.Helper()
		if _, errOut, code := kmpackIn(t, cache, append(append([]string{"package"}, args...), out)...); code != 0 || errOut != "" {
			t.Fatalf("package %v: exit %d: %s", args, code, errOut)
		}
	}
	const rt = "kmpack-0.1.0~dev-1.x86_64.rpm"
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	var runs []map[string][]byte
	for _, c := range []string{t.TempDir(), cache, cache} {
		pkg(c, "-p", "rhel")
		runs = append(runs, rpms())
	}
	var dkms string
	for f := range runs[0] {
		if strings.HasSuffix(f, "-dkms-1.0-1.noarch.rpm") {
			dkms = f
		}
	}
	if len(runs[0]) != 3 || runs[0][rt] == nil || dkms == "" {
		t.Fatalf("packages: %v", keys(runs[0]))
	}
	for i := 1; i < len(runs); i++ {
		if !slices.Equal(keys(runs[i]), keys(runs[0])) {
			t.Errorf("run %d: packages %v", i, keys(runs[i]))
		}
		for f, b := range runs[0] {
			if !bytes.Equal(runs[i][f], b) {
				t.Errorf("%s differs between packaging runs 0 and %d (same inputs and SOURCE_DATE_EPOCH)", f, i)
			}
		}
	}

	q := func(file string, args ...string) []string {
		t.Helper()
		o, err := exec.Command("rpm", append(append([]string{"-qp"}, args...), filepath.Join(dir, file))...).Output()
		if err != nil {
			t.Fatalf("rpm -qp %v %s: %v", args, file, err)
		}
		return strings.Split(strings.TrimSpace(string(o)), "\n")
	}
	wantFiles := []string{formats.RuntimeBinary, formats.RuntimeKernelInstall, formats.RuntimeAutoinstallUnit,
		formats.RuntimeAutoinstallWants, formats.RuntimeManPage, "/usr/share/bash-completion/completions/kmpack"}
	slices.Sort(wantFiles)
	if got := q(rt, "-l"); !slices.Equal(got, wantFiles) {
		t.Errorf("%s files:\n%s\nwant\n%s", rt, strings.Join(got, "\n"), strings.Join(wantFiles, "\n"))
	}
	if got := q(rt, "--qf", "[%{FILEMODES:perms} %{FILENAMES} %{FILELINKTOS}\n]"); !slices.Contains(got, "lrwxrwxrwx "+formats.RuntimeAutoinstallWants+" ../kmpack-autoinstall.service") ||
		!slices.Contains(got, "-rwxr-xr-x "+formats.RuntimeKernelInstall+" ") || !slices.Contains(got, "-rwxr-xr-x "+formats.RuntimeBinary+" ") {
		t.Errorf("%s modes and links:\n%s", rt, strings.Join(got, "\n"))
	}
	reqs := q(rt, "--requires")
	var libc []string
	for _, r := range reqs {
		if strings.HasPrefix(r, "libc.so.6(") {
			libc = append(libc, r)
		} else if r != "kmod" && !strings.HasPrefix(r, "rpmlib(") {
			t.Errorf("%s requires %q", rt, r)
		}
	}
	if !slices.Contains(reqs, "kmod") || !slices.Contains(reqs, "rpmlib(TildeInVersions) <= 4.10.0-1") || slices.Contains(reqs, "rpmlib(PayloadIsXz) <= 5.2-1") {
		t.Errorf("%s requires:\n%s", rt, strings.Join(reqs, "\n"))
	}
	if got := q(rt, "--provides"); !slices.Equal(got, []string{"kmpack = 0.1.0~dev-1", "kmpack(x86-64) = 0.1.0~dev-1"}) && !slices.Equal(got, []string{"kmpack = 0.1.0~dev-1"}) {
		t.Errorf("%s provides: %q", rt, got)
	}
	if got := q(rt, "--qf", "%{ARCH} %{PAYLOADCOMPRESSOR} %{GROUP} %{BUILDTIME}"); got[0] != "x86_64 gzip System Environment/Kernel 1700000000" {
		t.Errorf("%s: %q", rt, got)
	}
	if got := q(rt, "--scripts"); len(got) != 1 || got[0] != "" {
		t.Errorf("%s has scriptlets: %q", rt, got)
	}
	// rpmlint (with the project's filters) finds no errors: the man page is %doc.
	if _, err := exec.LookPath("rpmlint"); err == nil {
		config, _ := filepath.Abs("../../scripts/rpmlint.toml")
		o, err := exec.Command("rpmlint", "--config", config, filepath.Join(dir, rt)).CombinedOutput()
		if err != nil || strings.Contains(string(o), ": E: ") || !strings.Contains(string(o), " 1 packages and 0 specfiles checked; 0 errors,") {
			t.Errorf("rpmlint %s: %v\n%s", rt, err, o)
		}
	}
	if got := q(rt, "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]"); !slices.Contains(got, "d "+formats.RuntimeManPage) {
		t.Errorf("%s: the man page is not %%doc: %q", rt, got)
	}
	// rpm sorts the runtime's version before the release it leads to, after the minimum.
	if o, err := exec.Command("rpm", "--eval", "%{lua: print(rpm.vercmp('0.1.0~dev', '0.1.0'), rpm.vercmp('0.1.0~dev', '"+formats.RuntimeMinVersion+"'))}").Output(); err != nil || strings.TrimSpace(string(o)) != "-1\t1" {
		t.Errorf("rpm.vercmp: %q %v", o, err)
	}
	// The kernel-install plugin is the deb's, unchanged.
	x := t.TempDir()
	cmd := exec.Command("sh", "-c", "rpm2cpio "+filepath.Join(dir, rt)+" | cpio -idm --quiet")
	cmd.Dir = x
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("rpm2cpio: %v\n%s", err, o)
	}
	plugin := string(testenv.MustRead(t, filepath.Join(x, formats.RuntimeKernelInstall)))
	if !strings.Contains(plugin, `"$kmpack" autoinstall --hook --no-initramfs "$2"`) || !strings.Contains(plugin, `"$kmpack" autoinstall --hook --removed "$2"`) {
		t.Errorf("%s:\n%s", formats.RuntimeKernelInstall, plugin)
	}
	if o, err := exec.Command(filepath.Join(x, formats.RuntimeBinary), "--version").Output(); err != nil || !strings.HasPrefix(string(o), "kmpack version 0.1.0-dev") {
		t.Errorf("%s --version: %q %v", formats.RuntimeBinary, o, err)
	}

	// The -dkms rpm: dkms, or the runtime.
	rich := "(dkms or kmpack >= " + formats.RuntimeMinVersion + ")"
	reqs = q(dkms, "--qf", "[%{REQUIRENAME} %{REQUIREFLAGS:deptype}\n]")
	for _, want := range []string{rich + " manual", rich + " post", rich + " preun", "rpmlib(RichDependencies) rpmlib", "rpmlib(TildeInVersions) rpmlib"} {
		if !slices.Contains(reqs, want) {
			t.Errorf("%s requires no %q:\n%s", dkms, want, strings.Join(reqs, "\n"))
		}
	}
	for _, r := range reqs {
		if strings.HasPrefix(r, "dkms ") {
			t.Errorf("%s still requires %q", dkms, r)
		}
	}

	// dnf installs both into a root without dkms: kmpack satisfies the rich dependency. A
	// base package provides what a distribution's would (kmod, libc, the release).
	base := []string{"kmod", "system-release(releasever) = 9", "/bin/sh"}
	base = append(base, libc...)
	baseRPM := testenv.BuildRPM(t, testenv.RPMSpec{Name: "fake-base", Version: "1", Arch: "noarch", Stage: t.TempDir(), Files: []string{}, Provides: base}, t.TempDir())
	root := t.TempDir()
	dnf := func(args ...string) (string, error) {
		cmd := exec.Command("dnf", append([]string{"-y", "--installroot=" + root, "--releasever=9", "--disablerepo=*",
			"--setopt=tsflags=noscripts", "--setopt=install_weak_deps=False"}, args...)...)
		o, err := cmd.CombinedOutput()
		return string(o), err
	}
	// Without the runtime (and without dkms) the -dkms rpm is refused, naming the dependency.
	if o, err := dnf("install", baseRPM, filepath.Join(dir, dkms)); err == nil || !strings.Contains(o, rich) {
		t.Errorf("dnf install without dkms and kmpack: %v\n%s", err, o)
	}
	if o, err := dnf("install", baseRPM, filepath.Join(dir, rt), filepath.Join(dir, dkms)); err != nil {
		t.Fatalf("dnf install: %v\n%s", err, o)
	}
	if o, err := exec.Command("rpm", "--root", root, "-q", "kmpack", "fake-base", strings.TrimSuffix(dkms, ".noarch.rpm")).CombinedOutput(); err != nil {
		t.Errorf("rpm -q: %v\n%s", err, o)
	}
	if o, err := exec.Command("rpm", "--root", root, "-q", "--whatprovides", "dkms").CombinedOutput(); err == nil {
		t.Errorf("dkms is installed: %s", o)
	}
	if _, err := os.Lstat(filepath.Join(root, formats.RuntimeAutoinstallWants)); err != nil {
		t.Errorf("installed: %v", err)
	}

	// suse alone: the same runtime rpm (the suse group); rhel, suse and debian: one rpm, and the deb.
	pkg(cache, "-p", "suse")
	got := rpms()
	if len(got) != 3 || got[rt] == nil || got[dkms] == nil {
		t.Fatalf("suse packages: %v", keys(got))
	}
	if g := q(rt, "--qf", "%{GROUP}"); g[0] != "System/Kernel" {
		t.Errorf("suse runtime group %q", g)
	}
	pkg(cache, "-p", "rhel,suse,debian")
	var names []string
	for f := range rpms() {
		if strings.HasPrefix(f, "kmpack-0") || strings.HasPrefix(f, "kmpack_") {
			names = append(names, f)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{rt, "kmpack_0.1.0~dev-1_amd64.deb"}) {
		t.Errorf("runtime packages for rhel, suse and debian: %v", names)
	}
	if !bytes.Equal(rpms()[rt], runs[0][rt]) {
		t.Errorf("%s differs when debian and suse are packaged too", rt)
	}
}
