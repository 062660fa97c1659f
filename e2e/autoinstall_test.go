package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	vmlinuz := filepath.Join(testenv.UnpackedDeb(t, "linux-image-"+k), "boot/vmlinuz-"+k)
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
