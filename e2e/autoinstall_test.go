package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/target"
)

// TestAutoinstallBuildLoadsInQemu is the target side's proof: a root with Debian's real 53 and
// 54 kernels (54's headers installed as Debian lays them out), the abichange module package
// built for 53 registered (add-kmp, as its postinst does) and its source registered (source
// add). 54 arrives: the build for 53 does not load there (_dev_info's CRC changed), so
// autoinstall builds the source against 54's headers; 54 then boots under qemu from an
// initramfs made from the root and loads the module from updates/.
func TestAutoinstallBuildLoadsInQemu(t *testing.T) {
	testenv.Need(t, "qemu-system-x86_64", "busybox", "cpio", "gzip", "depmod", "modprobe")
	start := time.Now()
	r53, r54 := testenv.Release53, testenv.Release54
	bin := filepath.Join(t.TempDir(), "kmpack")
	run(t, "go", "build", "-o", bin, "../cmd/kmpack")
	root := testenv.DpkgRoot(t)
	testenv.InstallKernel(t, root, r53)
	testenv.InstallKernel(t, root, r54)
	testenv.InstallHeaders(t, root, r54)

	// The module package for 53: its build installed where the debian profile puts it.
	out := filepath.Join(t.TempDir(), "out")
	run(t, bin, "--cache-dir", t.TempDir(), "build", "-q", "-o", out, "-k", testenv.HeadersDir(t, r53), testenv.TestModuleSource(t, "abi"))
	var m manifest.Manifest
	if err := json.Unmarshal(testenv.MustRead(t, filepath.Join(out, "manifest.json")), &m); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "lib/modules", r53, "updates/kmpack-abichange")
	os.MkdirAll(dir, 0o755)
	for _, mod := range m.Kernels[0].Modules {
		testenv.CopyTree(t, filepath.Join(out, mod.File), filepath.Join(dir, filepath.Base(mod.File)))
	}
	run(t, bin, "weak-updates", "--root", root, "add-kmp", "--name", "kmpack-abichange", "--package", "kmpack-abichange-modules-"+r53,
		"--version", "1.0-1", "--kernel", r53)
	run(t, bin, "source", "--root", root, "add", testenv.TestModuleSource(t, "abi"))

	// 54's hook.
	run(t, bin, "autoinstall", "--hook", "--root", root, r54)
	var rep target.Report
	if err := json.Unmarshal([]byte(run(t, bin, "status", "--root", root, "--json")), &rep); err != nil {
		t.Fatal(err)
	}
	var results []result
	for _, row := range rep.Rows {
		want := target.StateBuiltForKernel
		if row.Kernel == r54 {
			want = target.StateBuiltLocally
		}
		results = append(results, result{"status", row.Kernel, row.Module, want, row.State})
	}
	if len(rep.Rows) != 2 {
		t.Fatalf("status rows: %+v", rep.Rows)
	}

	pkgs := map[string]*testPackage{"kmpack-abichange": {probe: "kmpack_abi"}}
	// boot's checks of the other test packages are off: they are not in this root.
	expect := map[[2]string]string{{r54, "kmpack-abichange"}: "updates", {r54, "kmpack-hello"}: "absent",
		{r54, "kmpack-pair"}: "absent", {r54, "v4l2loopback"}: "absent"}
	rows, err := boot(t, root, r54, []string{"kmpack-abichange"}, pkgs, expect, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	results = append(results, rows...)
	built := filepath.Join(root, "lib/modules", r54, "updates/kmpack-built/kmpack-abichange/kmpack_abi.ko")
	if _, err := os.Stat(built); err != nil || !strings.Contains(string(testenv.MustRead(t, filepath.Join(root, "lib/modules", r54, "modules.dep"))), "updates/kmpack-built/kmpack-abichange/kmpack_abi.ko:") {
		t.Errorf("the local build is not where the kernel finds it: %v", err)
	}
	results = append(results, loadInGuest(t, root, r54, filepath.Join(out, m.Kernels[0].Modules[0].File))...)
	report(t, results, start)
}

// loadInGuest boots k with kmpack itself (static) in the initramfs, over the root's state and
// k's modules, and runs kmpack load there, in the running kernel: the local build loads; a
// local build that does not match the kernel (planted: the 53 build of the same module, as
// "kmpack-bad") is refused, with the kernel's own words.
func loadInGuest(t *testing.T, root, k, stale string) []result {
	stage := t.TempDir()
	bin := filepath.Join(stage, "kmpack")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/kmpack")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("static kmpack: %v %s", err, out)
	}
	modDir := filepath.Join("lib/modules", k)
	for _, d := range []string{"var/lib/kmpack", filepath.Join(modDir, "updates/kmpack-built")} {
		os.MkdirAll(filepath.Dir(filepath.Join(stage, d)), 0o755)
		run(t, "cp", "-a", filepath.Join(root, d), filepath.Join(stage, d))
	}
	os.MkdirAll(filepath.Join(stage, modDir, "kernel"), 0o755) // k counts as installed
	bad := filepath.Join(modDir, "updates/kmpack-built/kmpack-bad/kmpack_bad.ko")
	os.MkdirAll(filepath.Dir(filepath.Join(stage, bad)), 0o755)
	run(t, "cp", stale, filepath.Join(stage, bad))
	var st map[string]any
	stateFile := filepath.Join(stage, "var/lib/kmpack/autoinstall/state.json")
	if err := json.Unmarshal(testenv.MustRead(t, stateFile), &st); err != nil {
		t.Fatal(err)
	}
	st["kernels"].(map[string]any)[k].(map[string]any)["kmpack-bad"] = map[string]any{"state": "built-locally", "version": "1.0", "files": []string{"/" + bad}}
	b, _ := json.Marshal(st)
	os.WriteFile(stateFile, b, 0o644)
	os.MkdirAll(filepath.Join(stage, "var/lib/kmpack/sources/kmpack-bad"), 0o755)
	os.WriteFile(filepath.Join(stage, "var/lib/kmpack/sources/kmpack-bad/1.0.json"),
		[]byte(`{"name":"kmpack-bad","version":"1.0","kind":"kmpack.yaml","dir":"/usr/src/kmpack-bad-1.0","owned":true}`), 0o644)
	run(t, "depmod", "-b", stage, k)

	initScript := `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "E2E kernel $(uname -r)"
/kmpack load kmpack-bad >/tmp/out 2>&1
echo "E2E load bad $? $(tr '
' ' ' </tmp/out)"
/kmpack load kmpack-abichange >/tmp/out 2>&1
echo "E2E load good $? $(tr '
' ' ' </tmp/out)"
echo "E2E loaded $(cut -d' ' -f1 /proc/modules | tr '
' ' ')"
echo "E2E end"
poweroff -f
`
	initrd, err := initramfs(t, stage, initScript, "/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	vmlinuz := filepath.Join(testenv.KernelImage(t, k), "boot/vmlinuz-"+k)
	lines, err := guest(k, "qemu-system-x86_64", "-nographic", "-no-reboot", "-m", "512", "-kernel", vmlinuz, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == "load" {
			got[f[1]] = strings.Join(f[2:], " ")
		} else if len(f) > 0 && f[0] == "loaded" {
			got["loaded"] = l
		}
	}
	var rows []result
	row := func(what string, ok bool, want, observed string) {
		if ok {
			observed = want
		}
		rows = append(rows, result{"qemu", k, what, want, observed})
	}
	row("load (running)", strings.HasPrefix(got["good"], "0 ") && strings.Contains(got["good"], "loaded kmpack_abi in "+k) &&
		strings.Contains(got["loaded"], "kmpack_abi"), "exit 0, kmpack_abi loaded", got["good"])
	row("load (refused)", strings.HasPrefix(got["bad"], "9 ") && strings.Contains(got["bad"], "disagrees about version of symbol"),
		"exit 9, the kernel's reason", got["bad"])
	return rows
}

// TestTargetLifeCycleInDpkgRoot is issue 18's proof on a root managed by the real dpkg: the
// runtime, the hello and abichange module packages built for 53 and their -dkms packages (which
// register their sources with kmpack) installed with dpkg --root. Then kernels arrive, each
// through the runtime's own postinst.d hook run as Debian's kernel packages run it (run-parts,
// $DPKG_ROOT; the image's other maintainer scripts would touch this machine's boot loader):
//   - 6.12 with its headers: no build for 53 loads in the 6.12 series, so both sources are
//     built against 6.12's headers; 6.12 boots under qemu from the root and loads both from
//     updates/ (xz-compressed, as 6.12's own modules);
//   - 54 without headers: hello's 53 build loads there (weak link); abichange's does not
//     (_dev_info) and its build fails naming linux-headers-54: gate 54 exits 8, the hook 0;
//   - abichange's -dkms package is removed (its source with it: 6.12's build goes, status says
//     6.12 is missing it); 54's hook again: abichange fails there for want of a source or a
//     build that loads, gate exits 8 for both kernels, the hook succeeds.
func TestTargetLifeCycleInDpkgRoot(t *testing.T) {
	testenv.Need(t, "qemu-system-x86_64", "busybox", "cpio", "gzip", "depmod", "dpkg", "run-parts")
	start := time.Now()
	r53, r54, r612 := testenv.Release53, testenv.Release54, testenv.Release612
	bin := filepath.Join(t.TempDir(), "kmpack")
	run(t, "go", "build", "-o", bin, "../cmd/kmpack")
	cache := t.TempDir()
	debs := map[string]string{}
	for _, src := range []string{"hello", "abi"} {
		out := filepath.Join(t.TempDir(), "out")
		run(t, bin, "--cache-dir", cache, "build", "-q", "-o", out, "--profile", "debian", "-k", testenv.HeadersDir(t, r53), testenv.TestModuleSource(t, src))
		var written []formats.Written
		if err := json.Unmarshal(testenv.MustRead(t, filepath.Join(out, formats.PackagesDir, "packages.json")), &written); err != nil {
			t.Fatal(err)
		}
		for _, w := range written {
			debs[w.Name] = filepath.Join(out, formats.PackagesDir, w.File)
		}
	}
	root := testenv.DpkgRoot(t)
	testenv.InstallKernel(t, root, r53)
	dpkg := func(args ...string) {
		run(t, "dpkg", append([]string{"--root", root, "--force-script-chrootless"}, args...)...)
	}
	dpkg("-i", debs["kmpack"])
	dpkg("-i", debs["kmpack-hello-modules-"+r53], debs["kmpack-abichange-modules-"+r53])
	// dkms is not installed: the -dkms packages depend on dkms or kmpack's runtime, which is.
	dpkg("-i", debs["kmpack-hello-dkms"], debs["kmpack-abichange-dkms"])
	hook := func(k string) {
		cmd := exec.Command("run-parts", "--report", "--exit-on-error", "--arg="+k, "--arg=/boot/vmlinuz-"+k, filepath.Join(root, "etc/kernel/postinst.d"))
		cmd.Env = append(os.Environ(), "DPKG_ROOT="+root)
		if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "run it again by hand") {
			t.Fatalf("postinst.d hook for %s (the kernel package's installation would fail): %v\n%s", k, err, out)
		}
	}
	status := func() map[string]target.StatusRow {
		var rep target.Report
		if err := json.Unmarshal([]byte(run(t, bin, "status", "--root", root, "--json")), &rep); err != nil {
			t.Fatal(err)
		}
		rows := map[string]target.StatusRow{}
		for _, r := range rep.Rows {
			rows[r.Kernel+" "+r.Module] = r
		}
		return rows
	}
	var results []result
	want := func(k, mod, state string, ok func(target.StatusRow) bool) {
		r := status()[k+" "+mod]
		observed := r.State
		if r.State == state && (ok == nil || ok(r)) {
			observed = state
		} else {
			observed += ": " + r.Reason
		}
		results = append(results, result{"status", k, mod, state, observed})
	}

	// 6.12 arrives, with its headers.
	testenv.InstallKernel(t, root, r612)
	testenv.InstallHeaders(t, root, r612)
	hook(r612)
	for _, mod := range []string{"kmpack-hello", "kmpack-abichange"} {
		want(r53, mod, target.StateBuiltForKernel, nil)
		want(r612, mod, target.StateBuiltLocally, nil)
	}
	pkgs := map[string]*testPackage{"kmpack-hello": {probe: "kmpack_hello", params: []string{"greeting=4711"}}, "kmpack-abichange": {probe: "kmpack_abi"}}
	expect := map[[2]string]string{{r612, "kmpack-hello"}: "updates", {r612, "kmpack-abichange"}: "updates",
		{r612, "kmpack-pair"}: "absent", {r612, "v4l2loopback"}: "absent"}
	rows, err := boot(t, root, r612, []string{"kmpack-hello", "kmpack-abichange"}, pkgs, expect, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	results = append(results, rows...)

	// 54 arrives, without headers.
	testenv.InstallKernel(t, root, r54)
	hook(r54)
	want(r54, "kmpack-hello", target.StateWeakLinked, func(r target.StatusRow) bool { return r.From == r53 })
	want(r54, "kmpack-abichange", target.StateFailed, func(r target.StatusRow) bool {
		return strings.Contains(r.Reason, "install linux-headers-"+r54)
	})
	gate := func(k, missing string) {
		cmd := exec.Command(bin, "gate", "--root", root, k)
		out, err := cmd.CombinedOutput()
		code := cmd.ProcessState.ExitCode()
		observed := fmt.Sprintf("exit %d", code)
		if code == 8 && strings.Contains(string(out), missing) {
			observed = "exit 8 naming " + missing
		} else {
			observed += fmt.Sprintf(" %v %s", err, out)
		}
		results = append(results, result{"gate", k, "", "exit 8 naming " + missing, observed})
	}
	gate(r54, "linux-headers-"+r54)

	// abichange's source goes with its -dkms package: 6.12's build of it goes too, and 54 is
	// left with nothing that serves it, which status and gate say.
	dpkg("-r", "kmpack-abichange-dkms")
	if _, err := os.Stat(filepath.Join(root, "lib/modules", r612, "updates/kmpack-built/kmpack-abichange")); !os.IsNotExist(err) {
		t.Errorf("6.12's build of the removed source is still installed: %v", err)
	}
	hook(r54) // as a reinstall of 54 would
	want(r54, "kmpack-abichange", target.StateFailed, func(r target.StatusRow) bool {
		return strings.Contains(r.Reason, "no source is registered") && strings.Contains(r.Reason, "_dev_info")
	})
	want(r612, "kmpack-abichange", target.StateMissing, func(r target.StatusRow) bool {
		return strings.Contains(r.Reason, "run kmpack autoinstall "+r612)
	})
	gate(r54, "no source is registered")
	gate(r612, "run kmpack autoinstall "+r612)
	report(t, results, start)
}
