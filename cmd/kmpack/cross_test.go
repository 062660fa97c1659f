package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
)

// An arm64 tree from Debian's .deb files beside the host's amd64 tree: kernels shows its
// architecture and cross build, --arch selects trees by architecture (Debian's or uname -m's
// name), and a build for arm64 packages its modules as arm64 (deb) and aarch64 (rpm), the same
// bytes again from a second build with the same SOURCE_DATE_EPOCH. (The arm64 runtime package
// needs an arm64 kmpack: TestRuntimePackagePerArchitecture.)
func TestCrossArm64KernelsArchAndPackages(t *testing.T) {
	testenv.Need(t, "dpkg-deb", "rpm", "aarch64-linux-gnu-gcc-12")
	cache := t.TempDir()
	host := testenv.HeadersDir(t, testenv.Release53)
	kernels := append(testenv.Arm64Debs(t), host)

	out, errOut, code := kmpackIn(t, cache, append([]string{"kernels", "--arch", "arm64"}, kernels...)...)
	if code != 0 || !strings.Contains(out, "6.1.0-53-arm64  (debian layout, flavor arm64, aarch64)") ||
		!strings.Contains(out, "cross build:  ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- (this host is x86_64)") ||
		!strings.Contains(out, "on this host: /usr/bin/aarch64-linux-gnu-gcc-12") || strings.Contains(out, "6.1.0-53-amd64") || strings.Contains(out, "warning") {
		t.Fatalf("kernels --arch arm64: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = kmpackIn(t, cache, append([]string{"kernels", "--dirs", "--arch", "x86_64"}, kernels...)...)
	if code != 0 || out != host+"\n" {
		t.Errorf("kernels --arch x86_64: exit %d %q %q", code, out, errOut)
	}
	armDir := ""
	out, errOut, code = kmpackIn(t, cache, append([]string{"kernels", "--dirs", "--arch", "arm64"}, kernels...)...)
	if armDir = strings.TrimSpace(out); code != 0 || !strings.HasSuffix(armDir, "/usr/src/linux-headers-6.1.0-53-arm64") {
		t.Fatalf("kernels --dirs --arch arm64: exit %d %q %q", code, out, errOut)
	}
	// The kernel's symbol versions as an RPM are the tree's architecture too, from the tree or
	// from a bare symvers file whose release names it.
	ks := t.TempDir()
	for _, args := range [][]string{{"-k", armDir}, {"-k", filepath.Join(armDir, "Module.symvers"), "--release", "5.14.0-362.el9.aarch64"}} {
		if out, errOut, code := kmpackIn(t, cache, append([]string{"ksyms", "-p", "rhel", "--package", ks}, args...)...); code != 0 {
			t.Fatalf("ksyms %v: exit %d %s%s", args, code, out, errOut)
		}
	}
	for _, f := range []string{"kernel-ksyms-6.1.0-53_arm64.aarch64.rpm", "kernel-ksyms-5.14.0-362.el9.aarch64.rpm"} {
		if a, err := exec.Command("rpm", "-qp", "--qf", "%{ARCH}", filepath.Join(ks, f)).Output(); err != nil || string(a) != "aarch64" {
			t.Errorf("%s: ARCH %q %v", f, a, err)
		}
	}
	out, errOut, code = kmpackIn(t, cache, "kernels", "--arch", "ppc64el", host)
	if code != 3 || out != "" || errOut != "kmpack: no kernel tree of architecture ppc64le among the 1 found (x86_64)\n" {
		t.Errorf("kernels --arch ppc64el: exit %d %q %q", code, out, errOut)
	}

	src := testenv.CorpusSource(t, "acpi-call-dkms", t.TempDir())
	var debs, rpms [][]byte
	for run := 0; run < 2; run++ {
		o := filepath.Join(t.TempDir(), "out")
		args := []string{"build", "-q", "--arch", "aarch64", "-p", "debian,rhel", "--no-runtime-package", "-o", o}
		for _, k := range kernels {
			args = append(args, "--kernel", k)
		}
		cmd := exec.Command(bin, append(args, src)...)
		cmd.Env = append(os.Environ(), "KMPACK_CACHE_DIR="+cache, "SOURCE_DATE_EPOCH=1700000000")
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("build: %v\n%s", err, b)
		}
		deb := filepath.Join(o, "packages/acpi-call-modules-6.1.0-53-arm64_1.2.2-1_arm64.deb")
		rpm := filepath.Join(o, "packages/kmod-acpi-call-1.2.2-1.6.1.0_53_arm64.aarch64.rpm")
		if a, err := exec.Command("dpkg-deb", "-f", deb, "Architecture").Output(); err != nil || string(a) != "arm64\n" {
			t.Errorf("%s: Architecture %q %v", deb, a, err)
		}
		if a, err := exec.Command("rpm", "-qp", "--qf", "%{ARCH}", rpm).Output(); err != nil || string(a) != "aarch64" {
			t.Errorf("%s: ARCH %q %v", rpm, a, err)
		}
		x := t.TempDir()
		if b, err := exec.Command("dpkg-deb", "-x", deb, x).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x: %v %s", err, b)
		}
		ko := filepath.Join(x, "lib/modules/6.1.0-53-arm64/updates/acpi-call/acpi_call.ko")
		if f, err := exec.Command("file", "-b", ko).Output(); err != nil || !strings.Contains(string(f), "ARM aarch64") {
			t.Errorf("%s: %q %v", ko, f, err)
		}
		if i, err := exec.Command(bin, "inspect", ko).Output(); err != nil || !strings.Contains(string(i), "machine:      aarch64") {
			t.Errorf("inspect %s: %v\n%s", ko, err, i)
		}
		debs, rpms = append(debs, testenv.MustRead(t, deb)), append(rpms, testenv.MustRead(t, rpm))
		if run == 0 {
			// The compat check measures the arm64 tree's struct module with a probe it builds
			// for arm64: the module fits its own kernel, and not the amd64 one.
			out, errOut, code := kmpackIn(t, cache, "compat", "-k", armDir, "-k", host, ko)
			if code != 0 || !strings.Contains(out, "acpi_call  yes             no (") || !strings.Contains(out, "arch             built for aarch64, the kernel is x86_64") {
				t.Errorf("compat: exit %d\n%s%s", code, out, errOut)
			}
		}
	}
	if !bytes.Equal(debs[0], debs[1]) || !bytes.Equal(rpms[0], rpms[1]) {
		t.Error("two builds with the same SOURCE_DATE_EPOCH made different arm64 packages")
	}

	// Signing is kmpack's own and the same for every architecture: the cached arm64 build,
	// signed, verifies with the certificate, and kmod's modinfo reads the signer.
	keys := t.TempDir()
	if out, errOut, code := kmpackIn(t, cache, "keygen", "--out", keys); code != 0 {
		t.Fatalf("keygen: exit %d %s%s", code, out, errOut)
	}
	o := filepath.Join(t.TempDir(), "signed")
	args := []string{"build", "-q", "--arch", "arm64", "--sign-key", filepath.Join(keys, "kmpack-signing.key"),
		"--sign-cert", filepath.Join(keys, "kmpack-signing.crt"), "-o", o}
	for _, k := range kernels {
		args = append(args, "--kernel", k)
	}
	if out, errOut, code := kmpackIn(t, cache, append(args, src)...); code != 0 {
		t.Fatalf("signed build: exit %d %s%s", code, out, errOut)
	}
	ko := filepath.Join(o, "modules/6.1.0-53-arm64/acpi_call.ko")
	if out, errOut, code := kmpackIn(t, cache, "verify", "--cert", filepath.Join(keys, "kmpack-signing.crt"), ko); code != 0 || out != ko+": ok\n" {
		t.Errorf("verify: exit %d %q %q", code, out, errOut)
	}
	if s, err := exec.Command("modinfo", "-F", "sig_hashalgo", ko).Output(); err != nil || string(s) != "sha256\n" {
		t.Errorf("modinfo sig_hashalgo: %q %v", s, err)
	}
}

// --arch selects a repository's index: an apt source without arch= lists, and builds for, the
// arm64 kernel with the amd64 linux-kbuild-6.1 from the host's index (the arm64 index has none,
// as in Debian's archive the arm64 one would not run here).
func TestCrossArm64FromRepo(t *testing.T) {
	testenv.Need(t, "aarch64-linux-gnu-gcc-12")
	r := testenv.NewAptRepo(t)
	r.AddArm64(t)
	spec := "deb " + r.Srv.URL + " bookworm main"
	cache := t.TempDir()
	out, errOut, code := kmpackIn(t, cache, "kernels", "--repo", spec, "--arch", "arm64")
	if code != 0 || !strings.Contains(out, "6.1.0-53-arm64  (debian layout, flavor arm64, arm64, ") ||
		!strings.Contains(out, "linux-kbuild-6.1 6.1.192-3") || strings.Contains(out, "-amd64  (") {
		t.Fatalf("kernels --repo --arch arm64: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = kmpackIn(t, cache, "kernels", "--repo", spec, "--arch", "arm64", "--arch", "amd64")
	if code != 0 || !strings.Contains(out, "6.1.0-53-arm64  (") || !strings.Contains(out, "6.1.0-57-amd64  (") {
		t.Fatalf("kernels --repo --arch arm64 --arch amd64: exit %d\n%s%s", code, out, errOut)
	}
	o := filepath.Join(t.TempDir(), "out")
	src := testenv.CorpusSource(t, "acpi-call-dkms", t.TempDir())
	out, errOut, code = kmpackIn(t, cache, "build", "-q", "--kernel-repo", spec, "--arch", "arm64", "-o", o, src)
	if code != 0 {
		t.Fatalf("build --kernel-repo --arch arm64: exit %d\n%s%s", code, out, errOut)
	}
	if f, err := exec.Command("file", "-b", filepath.Join(o, "modules/6.1.0-53-arm64/acpi_call.ko")).Output(); err != nil || !strings.Contains(string(f), "ARM aarch64") {
		t.Errorf("acpi_call.ko: %q %v", f, err)
	}
}

// An aarch64 RHEL-style kernel-devel RPM (staged from real parts, testenv.StageRHELDevelArm64)
// given to kmpack as a package file: kernels says its tools are AArch64 and will be rebuilt,
// build rebuilds them into the cache and writes an aarch64 kmod RPM whose module is AArch64;
// the same tree without the tools' sources is refused (exit 3) naming fixdep, nothing written.
func TestCrossArm64RHELDevelRPM(t *testing.T) {
	testenv.Need(t, "rpm", "rpmbuild", "rpm2cpio", "cpio", "file", "flex", "bison", "aarch64-linux-gnu-gcc-12")
	cache := t.TempDir()
	stage, _ := testenv.StageRHELDevelArm64(t, true)
	rpmFile := testenv.BuildRPM(t, testenv.RPMSpec{Name: "kernel-devel", Version: "6.1.187", Arch: "aarch64", Stage: stage}, t.TempDir())
	out, errOut, code := kmpackIn(t, cache, "kernels", "--arch", "aarch64", rpmFile)
	if code != 0 || !strings.Contains(out, "6.1.0-53-arm64  (rhel layout, flavor default, aarch64)") ||
		!strings.Contains(out, "host tool scripts/basic/fixdep is built for AArch64, which this x86_64 machine cannot run: kmpack build rebuilds them for this machine from the tree's scripts/ sources, once (cached)") {
		t.Fatalf("kernels: exit %d\n%s%s", code, out, errOut)
	}
	o := filepath.Join(t.TempDir(), "out")
	// No aarch64 kmpack for the runtime rpm here (TestRuntimePackagePerArchitecture builds one).
	out, errOut, code = kmpackIn(t, cache, "build", "-q", "-p", "rhel", "--no-runtime-package", "-o", o, "--kernel", rpmFile, testenv.ExampleSource(t, true))
	if code != 0 {
		t.Fatalf("build: exit %d\n%s%s", code, out, errOut)
	}
	m, _ := filepath.Glob(filepath.Join(o, "packages/kmod-*.rpm"))
	if len(m) != 1 {
		t.Fatalf("packages: %v", m)
	}
	if a, err := exec.Command("rpm", "-qp", "--qf", "%{ARCH}", m[0]).Output(); err != nil || string(a) != "aarch64" {
		t.Errorf("%s: ARCH %q %v", m[0], a, err)
	}
	x := exec.Command("bash", "-c", "rpm2cpio "+m[0]+" | cpio -idm --quiet && file -b $(find . -name '*.ko*')")
	x.Dir = t.TempDir()
	if b, err := x.CombinedOutput(); err != nil || !strings.Contains(string(b), "ARM aarch64") {
		t.Errorf("the module in %s: %v %s", m[0], err, b)
	}
	if h, _ := filepath.Glob(filepath.Join(cache, "hosttools", "*", "tree")); len(h) != 1 {
		t.Errorf("hosttools cache: %v", h)
	}

	bare, _ := testenv.StageRHELDevelArm64(t, false)
	bareRPM := testenv.BuildRPM(t, testenv.RPMSpec{Name: "kernel-devel", Version: "6.1.187", Release: "2", Arch: "aarch64", Stage: bare}, t.TempDir())
	o = filepath.Join(t.TempDir(), "out")
	out, errOut, code = kmpackIn(t, cache, "build", "-q", "-p", "rhel", "--no-runtime-package", "-o", o, "--kernel", bareRPM, testenv.ExampleSource(t, true))
	if code != 3 || !strings.Contains(errOut, "/usr/src/kernels/6.1.0-53-arm64: host tool scripts/basic/fixdep is built for AArch64, which this x86_64 machine cannot run") {
		t.Errorf("a tree without tool sources: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Lstat(o); !os.IsNotExist(err) {
		t.Errorf("the refused build left %s", o)
	}
}
