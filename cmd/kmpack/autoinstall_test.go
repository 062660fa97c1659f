package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/sign"
	"github.com/kmpack/kmpack/target"
)

func statusJSON(t *testing.T, root string) map[string]target.StatusRow {
	t.Helper()
	out, stderr, code := kmpack(t, "status", "--root", root, "--json")
	if code != 0 {
		t.Fatalf("status: %d %s", code, stderr)
	}
	var rep target.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if rep.Schema != "kmpack-status/1" {
		t.Fatalf("schema %q", rep.Schema)
	}
	rows := map[string]target.StatusRow{}
	for _, r := range rep.Rows {
		rows[r.Kernel+" "+r.Module] = r
	}
	return rows
}

// TestAutoinstallBuildsRegisteredSource: a dpkg root with Debian's real 53 and 54 kernels, the
// 53 headers installed and the 54 ones not, the real hello source registered. Two autoinstall
// processes for 53 at once build it once, install it under updates/ with the 53 vermagic, and
// depmod indexes it; status says built-locally. For 54 the hook-less run fails naming
// linux-headers-6.1.0-54-amd64 (exit 7), --hook exits 0, and gate 54 exits 8 while gate 53
// exits 0.
func TestAutoinstallBuildsRegisteredSource(t *testing.T) {
	testenv.Need(t, "depmod", "modinfo")
	root := testenv.DpkgRoot(t)
	k53, k54 := testenv.Release53, testenv.Release54
	testenv.InstallKernel(t, root, k53)
	testenv.InstallKernel(t, root, k54)
	testenv.InstallHeaders(t, root, k53)
	if _, stderr, code := kmpack(t, "source", "--root", root, "add", testenv.ExampleSource(t, true)); code != 0 {
		t.Fatalf("source add: %d %s", code, stderr)
	}
	if rows := statusJSON(t, root); rows[k53+" kmpack-hello"].State != target.StateMissing {
		t.Fatalf("before autoinstall: %+v", rows)
	}

	// A run killed once its build is installed, before it records it: the next run repairs it
	// (the build is made again, depmod runs).
	cmd := exec.Command(bin, "autoinstall", "--root", root, k53)
	cmd.Env = append(os.Environ(), target.KillPointEnv+"=autoinstall-after-install")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("the kill point did not kill: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/kmpack/autoinstall/depmod-pending", k53)); err != nil {
		t.Fatalf("no depmod-pending mark after the kill: %v", err)
	}

	// Two hooks at once, one for 53, one for 54 and 53 (two kernels arriving together): the
	// lock serializes them, one repairs 53, the other finds the build made; 54, without
	// headers, fails in its run (exit 7).
	var wg sync.WaitGroup
	outs := make([]string, 2)
	codes := make([]int, 2)
	for i, kernels := range [][]string{{k53}, {k54, k53}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var errs string
			outs[i], errs, codes[i] = kmpack(t, append([]string{"autoinstall", "--root", root}, kernels...)...)
			outs[i] += errs
		}()
	}
	wg.Wait()
	builds := strings.Count(outs[0]+outs[1], "building kmpack-hello")
	if codes[0] != 0 || codes[1] != exitAutoinstallFailed || builds != 1 {
		t.Fatalf("two runs: codes %v, %d builds\n%s\n---\n%s", codes, builds, outs[0], outs[1])
	}
	ko := filepath.Join(root, "lib/modules", k53, "updates/kmpack-built/kmpack-hello/kmpack_hello.ko")
	vermagic, err := exec.Command("modinfo", "-F", "vermagic", ko).Output()
	if err != nil || !strings.HasPrefix(string(vermagic), k53+" SMP ") {
		t.Fatalf("modinfo vermagic %s: %q %v", ko, vermagic, err)
	}
	found, err := exec.Command("modinfo", "-b", root, "-k", k53, "-F", "filename", "kmpack_hello").Output()
	if err != nil || strings.TrimSpace(string(found)) != ko {
		t.Fatalf("depmod did not index the build: %q %v", found, err)
	}
	row := statusJSON(t, root)[k53+" kmpack-hello"]
	if row.State != target.StateBuiltLocally || row.Version != "1.0" || row.Log == "" {
		t.Fatalf("status after build: %+v", row)
	}
	if _, err := os.Stat(filepath.Join(root, row.Log)); err != nil {
		t.Fatalf("log: %v", err)
	}

	// 54 has no headers: a recorded failure naming the package, never a hook failure.
	_, stderr, code := kmpack(t, "autoinstall", "--root", root, k54)
	if code != exitAutoinstallFailed || !strings.Contains(stderr, "failed") {
		t.Fatalf("autoinstall %s: %d %s", k54, code, stderr)
	}
	if _, stderr, code := kmpack(t, "autoinstall", "--hook", "--root", root, k54); code != 0 || !strings.Contains(stderr, "kernel's installation goes on") {
		t.Fatalf("autoinstall --hook %s: %d %s", k54, code, stderr)
	}
	row = statusJSON(t, root)[k54+" kmpack-hello"]
	if row.State != target.StateFailed || !strings.Contains(row.Reason, "install linux-headers-"+k54) {
		t.Fatalf("status of %s: %+v", k54, row)
	}
	if _, stderr, code := kmpack(t, "gate", "--root", root, k54); code != exitGateClosed || !strings.Contains(stderr, "linux-headers-"+k54) {
		t.Fatalf("gate %s: %d %s", k54, code, stderr)
	}
	if out, stderr, code := kmpack(t, "gate", "--root", root, k53); code != 0 {
		t.Fatalf("gate %s: %d %s %s", k53, code, out, stderr)
	}
	// load (izmod's): available in 53 (not the running kernel: not loaded), --rebuild builds
	// it again, 54 says which package to install, an unknown name is bad input.
	if out, stderr, code := kmpack(t, "load", "--root", root, "--kernel", k53, "kmpack-hello"); code != 0 ||
		!strings.Contains(out, "kmpack_hello available in "+k53+" (built-locally); not loaded") || strings.Contains(out, "building") {
		t.Fatalf("load %s: %d\n%s\n%s", k53, code, out, stderr)
	}
	if out, stderr, code := kmpack(t, "load", "--root", root, "--kernel", k53, "--rebuild", "kmpack-hello"); code != 0 || strings.Count(out, "building kmpack-hello") != 1 {
		t.Fatalf("load --rebuild %s: %d\n%s\n%s", k53, code, out, stderr)
	}
	if _, stderr, code := kmpack(t, "load", "--root", root, "--kernel", k54, "kmpack-hello"); code != exitAutoinstallFailed || !strings.Contains(stderr, "install linux-headers-"+k54) {
		t.Fatalf("load %s: %d %s", k54, code, stderr)
	}
	if _, stderr, code := kmpack(t, "load", "--root", root, "--kernel", k53, "nope"); code != exitInput || !strings.Contains(stderr, "no module package or source") {
		t.Fatalf("load nope: %d %s", code, stderr)
	}

	// Every installed kernel, again: nothing is rebuilt for 53.
	out, _, _ := kmpack(t, "autoinstall", "--root", root)
	if strings.Contains(out, "building") {
		t.Fatalf("rebuilt:\n%s", out)
	}

	// A module package built for 53 arrives (its registration, as its postinst makes it): 53
	// is served by it and autoinstall's own build goes; 54 gets a weak-updates link from it,
	// and its gate opens.
	pkgKo := filepath.Join(root, "lib/modules", k53, "updates/kmpack-hello/kmpack_hello.ko")
	os.MkdirAll(filepath.Dir(pkgKo), 0o755)
	testenv.CopyTree(t, ko, pkgKo)
	if _, stderr, code := kmpack(t, "weak-updates", "--root", root, "add-kmp", "--name", "kmpack-hello", "--package", "kmpack-hello-modules-"+k53,
		"--version", "1.0-1", "--kernel", k53); code != 0 {
		t.Fatalf("add-kmp: %d %s", code, stderr)
	}
	if _, stderr, code := kmpack(t, "autoinstall", "--root", root); code != 0 {
		t.Fatalf("autoinstall with the package: %d %s", code, stderr)
	}
	rows := statusJSON(t, root)
	if r := rows[k53+" kmpack-hello"]; r.State != target.StateBuiltForKernel || r.Package != "kmpack-hello-modules-"+k53 {
		t.Fatalf("53 with its package: %+v", r)
	}
	if r := rows[k54+" kmpack-hello"]; r.State != target.StateWeakLinked || r.From != k53 {
		t.Fatalf("54 with the package for 53: %+v", r)
	}
	if _, err := os.Stat(ko); !os.IsNotExist(err) {
		t.Fatalf("autoinstall's build left beside the package's: %v", err)
	}
	if found, err := exec.Command("modinfo", "-b", root, "-k", k53, "-F", "filename", "kmpack_hello").Output(); err != nil || strings.TrimSpace(string(found)) != pkgKo {
		t.Fatalf("53 not re-indexed: %q %v", found, err)
	}
	if _, stderr, code := kmpack(t, "gate", "--root", root, k54); code != 0 {
		t.Fatalf("gate %s with a link: %d %s", k54, code, stderr)
	}
	if _, stderr, code := kmpack(t, "source", "--root", root, "remove", "kmpack-hello"); code != 0 {
		t.Fatalf("source remove: %d %s", code, stderr)
	}
}

// TestSourceRemoveUninstallsBuilds: removing a source takes autoinstall's builds of it out of
// every kernel and re-indexes them; removing a kernel (autoinstall --removed, the postrm hook)
// takes out what autoinstall made for it.
func TestSourceRemoveUninstallsBuilds(t *testing.T) {
	testenv.Need(t, "depmod", "modinfo")
	root := testenv.DpkgRoot(t)
	k53 := testenv.Release53
	testenv.InstallKernel(t, root, k53)
	testenv.InstallHeaders(t, root, k53)
	if _, stderr, code := kmpack(t, "source", "--root", root, "add", testenv.ExampleSource(t, true)); code != 0 {
		t.Fatalf("source add: %d %s", code, stderr)
	}
	if _, stderr, code := kmpack(t, "autoinstall", "--root", root); code != 0 {
		t.Fatalf("autoinstall: %d %s", code, stderr)
	}
	ko := filepath.Join(root, "lib/modules", k53, "updates/kmpack-built/kmpack-hello/kmpack_hello.ko")
	if _, err := os.Stat(ko); err != nil {
		t.Fatal(err)
	}

	// In a copy: a run killed after installing a build and before recording it, then the
	// source removed: the unrecorded build goes too.
	killed := filepath.Join(t.TempDir(), "root")
	if out, err := exec.Command("cp", "-a", root, killed).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	os.Remove(filepath.Join(killed, "var/lib/kmpack/autoinstall/state.json"))
	os.Remove(filepath.Join(killed, strings.TrimPrefix(ko, root)))
	cmd := exec.Command(bin, "autoinstall", "--root", killed, k53)
	cmd.Env = append(os.Environ(), target.KillPointEnv+"=autoinstall-after-install")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("the kill point did not kill: %v\n%s", err, out)
	}
	if _, stderr, code := kmpack(t, "source", "--root", killed, "remove", "kmpack-hello"); code != 0 {
		t.Fatalf("source remove after a killed run: %d %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(killed, strings.TrimPrefix(ko, root))); !os.IsNotExist(err) {
		t.Fatalf("the unrecorded build survived the source's removal: %v", err)
	}

	// The kernel goes, in a copy of this root: its image's files go (dpkg), then the postrm
	// hook's autoinstall --removed takes out what autoinstall made for it. Run before the
	// image is gone, it keeps everything.
	gone := filepath.Join(t.TempDir(), "root")
	if out, err := exec.Command("cp", "-a", root, gone).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	goneKo := filepath.Join(gone, strings.TrimPrefix(ko, root))
	if _, stderr, code := kmpack(t, "autoinstall", "--root", gone, "--removed", k53); code != 0 || !strings.Contains(stderr, "still installed") {
		t.Fatalf("--removed with the kernel installed: %d %s", code, stderr)
	}
	if _, err := os.Stat(goneKo); err != nil {
		t.Fatalf("--removed took a build out of an installed kernel: %v", err)
	}
	// The image's files and the headers package's build link.
	os.RemoveAll(filepath.Join(gone, "lib/modules", k53, "kernel"))
	os.Remove(filepath.Join(gone, "lib/modules", k53, "build"))
	for _, f := range []string{"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.symbols", "modules.symbols.bin",
		"modules.builtin", "modules.builtin.bin", "modules.builtin.alias.bin", "modules.builtin.modinfo", "modules.devname", "modules.softdep", "modules.order"} {
		os.Remove(filepath.Join(gone, "lib/modules", k53, f))
	}
	if _, stderr, code := kmpack(t, "autoinstall", "--root", gone, "--removed", k53); code != 0 {
		t.Fatalf("--removed: %d %s", code, stderr)
	}
	if _, err := os.Lstat(filepath.Join(gone, "lib/modules", k53)); !os.IsNotExist(err) {
		left, _ := exec.Command("find", filepath.Join(gone, "lib/modules", k53)).Output()
		t.Fatalf("the removed kernel's directory is left:\n%s", left)
	}
	if m, _ := filepath.Glob(filepath.Join(gone, "var/lib/kmpack/autoinstall/builds/*")); len(m) != 0 {
		t.Fatalf("build directories left: %v", m)
	}
	if rows := statusJSON(t, gone); len(rows) != 0 {
		t.Fatalf("status after the kernel went: %v", rows)
	}

	if _, stderr, code := kmpack(t, "source", "--root", root, "remove", "kmpack-hello"); code != 0 {
		t.Fatalf("source remove: %d %s", code, stderr)
	}
	if _, err := os.Stat(ko); !os.IsNotExist(err) {
		t.Fatalf("%s left after source remove: %v", ko, err)
	}
	if out, err := exec.Command("modinfo", "-b", root, "-k", k53, "-F", "filename", "kmpack_hello").CombinedOutput(); err == nil {
		t.Fatalf("still indexed: %s", out)
	}
}

// runtimeFile is the body of one file of the runtime package built around this test's kmpack.
func runtimeFile(t *testing.T, path string) []byte {
	t.Helper()
	p, err := formats.RuntimePackage(&formats.Runtime{Binary: testenv.MustRead(t, bin), Version: "0.1.0", Arch: "x86_64"},
		&formats.Input{MTime: time.Unix(0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range p.Files {
		if f.Path == path {
			return f.Body
		}
	}
	t.Fatalf("the runtime package has no %s", path)
	return nil
}

// TestKernelHooksRunAutoinstall runs the runtime package's two kernel hooks the way their
// callers do: the Debian postinst.d hook through run-parts with $DPKG_ROOT, and the systemd
// kernel-install plugin through systemd's real kernel-install (pointed at the plugin with
// $KERNEL_INSTALL_PLUGINS; kernel-install has no root, so the plugin's kmpack is a wrapper
// adding --root). The kernel has no headers: each records the failure and exits 0, and so
// does kernel-install. Then its headers arrive and their header_postinst.d hook builds the
// source.
func TestKernelHooksRunAutoinstall(t *testing.T) {
	testenv.Need(t, "run-parts", "kernel-install")
	k54 := testenv.Release54
	root := testenv.DpkgRoot(t)
	testenv.InstallKernel(t, root, k54)
	if _, stderr, code := kmpack(t, "source", "--root", root, "add", testenv.ExampleSource(t, true)); code != 0 {
		t.Fatalf("source add: %d %s", code, stderr)
	}
	failedFor := func(step string) {
		t.Helper()
		row := statusJSON(t, root)[k54+" kmpack-hello"]
		if row.State != target.StateFailed || !strings.Contains(row.Reason, "linux-headers-"+k54) {
			t.Fatalf("%s: status %+v", step, row)
		}
		if out, _, code := kmpack(t, "status", "--root", root); code != 0 || !strings.Contains(out, "kmpack-hello") ||
			!strings.Contains(out, "failed (1.0): the headers of "+k54+" are not installed") {
			t.Fatalf("%s: status text (exit %d):\n%s", step, code, out)
		}
		os.Remove(filepath.Join(root, "var/lib/kmpack/autoinstall/state.json"))
	}

	// Debian: /etc/kernel/postinst.d, the binary under $DPKG_ROOT.
	os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
	testenv.CopyTree(t, bin, filepath.Join(root, formats.RuntimeBinary))
	hookDir := filepath.Join(root, filepath.Dir(formats.RuntimePostinstHook))
	os.MkdirAll(hookDir, 0o755)
	os.WriteFile(filepath.Join(root, formats.RuntimePostinstHook), runtimeFile(t, formats.RuntimePostinstHook), 0o755)
	cmd := exec.Command("run-parts", "--report", "--exit-on-error", "--arg="+k54, "--arg=/boot/vmlinuz-"+k54, hookDir)
	cmd.Env = append(os.Environ(), "DPKG_ROOT="+root)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "goes on") {
		t.Fatalf("postinst.d hook: %v\n%s", err, out)
	}
	failedFor("postinst.d hook")

	// systemd: kernel-install add.
	dir := t.TempDir()
	wrapper := filepath.Join(dir, "kmpack")
	os.WriteFile(wrapper, []byte("#!/bin/sh\nsub=$1; shift\nexec "+bin+" \"$sub\" --root "+root+" \"$@\"\n"), 0o755)
	plugin := filepath.Join(dir, filepath.Base(formats.RuntimeKernelInstall))
	body := string(runtimeFile(t, formats.RuntimeKernelInstall))
	if line := "kmpack=\"" + formats.RuntimeBinary + "\"\n"; strings.Contains(body, line) {
		body = strings.Replace(body, line, "kmpack="+wrapper+"\n", 1)
	} else {
		t.Fatalf("the plugin does not set kmpack= as expected:\n%s", body)
	}
	os.WriteFile(plugin, []byte(body), 0o755)
	image := filepath.Join(dir, "vmlinuz-"+k54)
	os.WriteFile(image, []byte("not a kernel"), 0o644)
	os.MkdirAll(filepath.Join(dir, "conf"), 0o755)
	cmd = exec.Command("kernel-install", "add", k54, image)
	cmd.Env = append(os.Environ(), "KERNEL_INSTALL_PLUGINS="+plugin, "BOOT_ROOT="+filepath.Join(dir, "boot"),
		"KERNEL_INSTALL_CONF_ROOT="+filepath.Join(dir, "conf"), "KERNEL_INSTALL_MACHINE_ID=0123456789abcdef0123456789abcdef")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "goes on") {
		t.Fatalf("kernel-install add: %v\n%s", err, out)
	}
	failedFor("kernel-install add")
	cmd = exec.Command("kernel-install", "remove", k54)
	cmd.Env = append(os.Environ(), "KERNEL_INSTALL_PLUGINS="+plugin, "BOOT_ROOT="+filepath.Join(dir, "boot"),
		"KERNEL_INSTALL_CONF_ROOT="+filepath.Join(dir, "conf"), "KERNEL_INSTALL_MACHINE_ID=0123456789abcdef0123456789abcdef")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kernel-install remove: %v\n%s", err, out)
	}

	// 54's headers are configured after its image: their header_postinst.d hook builds the
	// source (Debian's linux-headers postinst runs it with the release).
	testenv.InstallHeaders(t, root, k54)
	headerDir := filepath.Join(root, filepath.Dir(formats.RuntimeHeaderHook))
	os.MkdirAll(headerDir, 0o755)
	os.WriteFile(filepath.Join(root, formats.RuntimeHeaderHook), runtimeFile(t, formats.RuntimeHeaderHook), 0o755)
	cmd = exec.Command("run-parts", "--report", "--exit-on-error", "--arg="+k54, headerDir)
	cmd.Env = append(os.Environ(), "DPKG_ROOT="+root)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "building kmpack-hello") {
		t.Fatalf("header_postinst.d hook: %v\n%s", err, out)
	}
	if row := statusJSON(t, root)[k54+" kmpack-hello"]; row.State != target.StateBuiltLocally {
		t.Fatalf("after the headers' hook: %+v", row)
	}
}

// TestDKMSPackageRegistersWithKmpack: the debian profile's <name>-dkms package, installed with
// the real dpkg into a root where kmpack's runtime package is, registers its source with
// kmpack in place (not with dkms, which is absent here: the package depends on dkms or kmpack) and runs autoinstall,
// which records that the kernel's headers are missing; a second configure is a no-op; its
// removal forgets the source.
func TestDKMSPackageRegistersWithKmpack(t *testing.T) {
	testenv.Need(t, "dpkg")
	k53 := testenv.Release53
	cache := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	if _, stderr, code := kmpackIn(t, cache, "build", "-q", "-o", out, "--profile", "debian", "-k", testenv.HeadersDir(t, k53),
		testenv.ExampleSource(t, true)); code != 0 {
		t.Fatalf("build: %d %s", code, stderr)
	}
	var written []formats.Written
	if err := json.Unmarshal(testenv.MustRead(t, filepath.Join(out, formats.PackagesDir, "packages.json")), &written); err != nil {
		t.Fatal(err)
	}
	debs := map[string]string{}
	for _, w := range written {
		debs[w.Name] = filepath.Join(out, formats.PackagesDir, w.File)
	}
	s := &debSystem{t: t, root: testenv.DpkgRoot(t)}
	testenv.InstallKernel(t, s.root, k53)
	s.dpkg("-i", debs["kmpack"])
	s.dpkg("-i", debs["kmpack-hello-dkms"])
	list, err := target.ListSources(target.Options{Root: s.root})
	if err != nil || len(list) != 1 || list[0].Name != "kmpack-hello" || list[0].Owned {
		t.Fatalf("sources after installing the -dkms package: %+v %v", list, err)
	}
	if row := statusJSON(t, s.root)[k53+" kmpack-hello"]; row.State != target.StateFailed || !strings.Contains(row.Reason, "linux-headers-"+k53) {
		t.Fatalf("status: %+v", row)
	}
	s.dpkg("-i", debs["kmpack-hello-dkms"]) // reinstall: prerm upgrade, postinst configure
	if list, _ := target.ListSources(target.Options{Root: s.root}); len(list) != 1 {
		t.Fatalf("sources after a reinstall: %+v", list)
	}
	s.dpkg("-r", "kmpack-hello-dkms")
	if list, _ := target.ListSources(target.Options{Root: s.root}); len(list) != 0 {
		t.Fatalf("sources after removal: %+v", list)
	}
	if _, err := os.Stat(filepath.Join(s.root, "usr/src/kmpack-hello-1.0")); !os.IsNotExist(err) {
		t.Fatalf("the package's source is left: %v", err)
	}
}

// TestAutoinstallBuildFailure: a source that does not compile is recorded failed with the
// compiler's complaint and its log; the next run does not build it again (a boot-time run
// must not spend minutes failing the same way), --rebuild does; gate says why.
func TestAutoinstallBuildFailure(t *testing.T) {
	root := testenv.DpkgRoot(t)
	k53 := testenv.Release53
	testenv.InstallKernel(t, root, k53)
	testenv.InstallHeaders(t, root, k53)
	src := testenv.ExampleSource(t, true)
	c := filepath.Join(src, "hello.c")
	if err := os.WriteFile(c, append(testenv.MustRead(t, c), "\n#error kmpack-test-broken\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := kmpack(t, "source", "--root", root, "add", src); code != 0 {
		t.Fatalf("source add: %d %s", code, stderr)
	}
	out, stderr, code := kmpack(t, "autoinstall", "--root", root, k53)
	if code != exitAutoinstallFailed || !strings.Contains(out, "building kmpack-hello") {
		t.Fatalf("autoinstall: %d\n%s\n%s", code, out, stderr)
	}
	row := statusJSON(t, root)[k53+" kmpack-hello"]
	if row.State != target.StateFailed || !strings.Contains(row.Reason, "kmpack-test-broken") || row.Log == "" {
		t.Fatalf("status: %+v", row)
	}
	if !strings.Contains(string(testenv.MustRead(t, filepath.Join(root, row.Log))), "#error kmpack-test-broken") {
		t.Fatalf("the log %s does not hold the compiler's error", row.Log)
	}
	if out, _, code := kmpack(t, "autoinstall", "--root", root, k53); code != exitAutoinstallFailed || strings.Contains(out, "building") {
		t.Fatalf("second run: %d, built again:\n%s", code, out)
	}
	if out, _, code := kmpack(t, "autoinstall", "--rebuild", "--root", root, k53); code != exitAutoinstallFailed || !strings.Contains(out, "building") {
		t.Fatalf("--rebuild: %d, not built again:\n%s", code, out)
	}
	if _, stderr, code := kmpack(t, "gate", "--root", root, k53); code != exitGateClosed || !strings.Contains(stderr, "kmpack-test-broken") {
		t.Fatalf("gate: %d %s", code, stderr)
	}

	// A version that builds (1.2) replaces the failure; a broken version after it (1.3) does
	// not take the working build away: it stays, and status, gate and the exit status say so.
	if _, stderr, code := kmpack(t, "source", "--root", root, "add", withVersion(t, testenv.ExampleSource(t, true), "1.2")); code != 0 {
		t.Fatalf("source add 1.2: %d %s", code, stderr)
	}
	if out, stderr, code := kmpack(t, "autoinstall", "--root", root, k53); code != 0 {
		t.Fatalf("autoinstall 1.2: %d\n%s\n%s", code, out, stderr)
	}
	if _, stderr, code := kmpack(t, "source", "--root", root, "add", withVersion(t, src, "1.3")); code != 0 {
		t.Fatalf("source add 1.3: %d %s", code, stderr)
	}
	if out, _, code := kmpack(t, "autoinstall", "--root", root, k53); code != exitAutoinstallFailed || !strings.Contains(out, "building kmpack-hello 1.3") {
		t.Fatalf("autoinstall 1.3: %d\n%s", code, out)
	}
	row = statusJSON(t, root)[k53+" kmpack-hello"]
	if row.State != target.StateBuiltLocally || row.Version != "1.2" || !strings.Contains(row.Reason, "1.3 could not be built, the build of 1.2 stays") {
		t.Fatalf("status with 1.3 broken: %+v", row)
	}
	ko := filepath.Join(root, "lib/modules", k53, "updates/kmpack-built/kmpack-hello/kmpack_hello.ko")
	if found, err := exec.Command("modinfo", "-b", root, "-k", k53, "-F", "filename", "kmpack_hello").Output(); err != nil || strings.TrimSpace(string(found)) != ko {
		t.Fatalf("the 1.2 build is not indexed: %q %v", found, err)
	}
	if _, stderr, code := kmpack(t, "gate", "--root", root, k53); code != 0 {
		t.Fatalf("gate with 1.2 kept: %d %s", code, stderr)
	}
	if out, _, _ := kmpack(t, "autoinstall", "--root", root, k53); strings.Contains(out, "building") {
		t.Fatalf("1.3 built again:\n%s", out)
	}
}

// TestRPMDKMSPackageRegistersWithKmpack: the rhel profile's <name>-dkms RPM, installed,
// upgraded and erased with the real rpm into a root holding a static kmpack and busybox as
// /bin/sh (rpm runs scriptlets chrooted into --root), registers its source with kmpack in
// place, replaces the old version on upgrade (the old package's %preun runs after the new
// %post and leaves it alone), and forgets it on erase. dkms is absent (--nodeps).
func TestRPMDKMSPackageRegistersWithKmpack(t *testing.T) {
	testenv.Need(t, "rpm", "busybox")
	k53 := testenv.Release53
	cache := t.TempDir()
	dkmsRPM := func(version string) string {
		out := filepath.Join(t.TempDir(), "out")
		if _, stderr, code := kmpackIn(t, cache, "build", "-q", "-o", out, "--profile", "rhel", "-k", testenv.HeadersDir(t, k53),
			withVersion(t, testenv.ExampleSource(t, true), version)); code != 0 {
			t.Fatalf("build: %d %s", code, stderr)
		}
		var written []formats.Written
		if err := json.Unmarshal(testenv.MustRead(t, filepath.Join(out, formats.PackagesDir, "packages.json")), &written); err != nil {
			t.Fatal(err)
		}
		for _, w := range written {
			if strings.HasSuffix(w.Name, "-dkms") {
				return filepath.Join(out, formats.PackagesDir, w.File)
			}
		}
		t.Fatalf("no -dkms package in %+v", written)
		return ""
	}
	rpm10, rpm11 := dkmsRPM("1.0"), dkmsRPM("1.1")

	root := t.TempDir()
	for _, d := range []string{"bin", "usr/bin", "dev", "tmp"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	testenv.CopyTree(t, "/bin/busybox", filepath.Join(root, "bin/busybox"))
	os.Symlink("busybox", filepath.Join(root, "bin/sh"))
	cmd := exec.Command("go", "build", "-o", filepath.Join(root, "usr/bin/kmpack"), ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("static kmpack: %v %s", err, out)
	}
	rpm := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("rpm", append([]string{"--root", root, "--nodeps"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("rpm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := exec.Command("rpm", "--root", root, "--initdb").CombinedOutput(); err != nil {
		t.Fatalf("rpm --initdb: %v %s", err, out)
	}
	versions := func() []string {
		t.Helper()
		list, err := target.ListSources(target.Options{Root: root})
		if err != nil {
			t.Fatal(err)
		}
		var v []string
		for _, s := range list {
			if s.Owned {
				t.Errorf("%s %s registered as kmpack's copy, not in place", s.Name, s.Version)
			}
			v = append(v, s.Name+"/"+s.Version)
		}
		return v
	}
	rpm("-i", rpm10)
	if v := versions(); strings.Join(v, " ") != "kmpack-hello/1.0" {
		t.Fatalf("after install: %v", v)
	}
	rpm("-U", rpm11)
	if v := versions(); strings.Join(v, " ") != "kmpack-hello/1.1" {
		t.Fatalf("after upgrade: %v", v)
	}
	rpm("-e", "kmpack-hello-dkms")
	if v := versions(); len(v) != 0 {
		t.Fatalf("after erase: %v", v)
	}
}

// TestAutoinstallSignsWithMachineKey: local builds are signed with the machine's key. A root
// with dkms's key (made by the command dkms 3 runs, real openssl) signs with it under the
// default policy (Debian's 53 checks signatures: CONFIG_MODULE_SIG), and status says so; the
// signature verifies against that certificate and modinfo reads its signer. A root with no
// key and --sign always gets kmpack's own key, made once, private, and a message saying how
// to enroll it; a build made unsigned before a key existed is signed by the next run.
func TestAutoinstallSignsWithMachineKey(t *testing.T) {
	testenv.Need(t, "depmod", "modinfo", "openssl", "cpio", "zstd")
	k53 := testenv.Release53
	setup := func() string {
		root := testenv.DpkgRoot(t)
		testenv.InstallKernel(t, root, k53)
		testenv.InstallHeaders(t, root, k53)
		if _, stderr, code := kmpack(t, "source", "--root", root, "add", testenv.ExampleSource(t, true)); code != 0 {
			t.Fatalf("source add: %d %s", code, stderr)
		}
		return root
	}
	ko := func(root string) string {
		return filepath.Join(root, "lib/modules", k53, "updates/kmpack-built/kmpack-hello/kmpack_hello.ko")
	}
	signer := func(root string) string {
		out, err := exec.Command("modinfo", "-F", "signer", ko(root)).Output()
		if err != nil {
			t.Fatalf("modinfo: %v", err)
		}
		return strings.TrimSpace(string(out))
	}

	// Unsigned first (no key, auto): then dkms's key appears and the next run signs.
	root := setup()
	if _, stderr, code := kmpack(t, "autoinstall", "--root", root, k53); code != 0 {
		t.Fatalf("autoinstall: %d %s", code, stderr)
	}
	if s := signer(root); s != "" {
		t.Fatalf("signed without a key: %q", s)
	}
	if r := statusJSON(t, root)[k53+" kmpack-hello"]; r.Signature == nil || r.Signature.State != "unsigned" {
		t.Fatalf("status before a key: %+v", r.Signature)
	}
	// dkms's files are links (one absolute, as the root's system resolves it), as an owner
	// who keeps the enrolled key elsewhere makes them.
	dkms := filepath.Join(root, "var/lib/dkms")
	mokKey := func(dir, cn string) {
		os.MkdirAll(dir, 0o755)
		if out, err := exec.Command("openssl", "req", "-new", "-x509", "-nodes", "-days", "36500", "-subj", "/CN="+cn,
			"-newkey", "rsa:2048", "-keyout", filepath.Join(dir, "mok.key"), "-addext", "extendedKeyUsage=codeSigning",
			"-outform", "DER", "-out", filepath.Join(dir, "mok.pub")).CombinedOutput(); err != nil {
			t.Fatalf("openssl: %v\n%s", err, out)
		}
	}
	mokKey(filepath.Join(dkms, "keys"), "DKMS module signing key")
	os.Symlink("/var/lib/dkms/keys/mok.key", filepath.Join(dkms, "mok.key"))
	os.Symlink("keys/mok.pub", filepath.Join(dkms, "mok.pub"))
	// 53's initramfs holds the module (the real cpio and zstd, as initramfs-tools writes it):
	// the signed build replaces it, so the initramfs is stale; in a root kmpack says what to
	// run there instead of regenerating this machine's.
	initrd(t, root, k53, "usr/lib/modules/"+k53+"/updates/kmpack-built/kmpack-hello/kmpack_hello.ko")
	out, stderr, code := kmpack(t, "autoinstall", "--root", root, k53)
	if code != 0 || !strings.Contains(out, "signed with dkms's key") {
		t.Fatalf("autoinstall with dkms's key: %d\n%s\n%s", code, out, stderr)
	}
	if !strings.Contains(stderr, "initrd.img-"+k53+" must be regenerated (it holds kmpack_hello): not done in a root; run /usr/sbin/update-initramfs -u -k "+k53+" in it") {
		t.Fatalf("no word on the stale initramfs:\n%s", stderr)
	}
	if s := signer(root); s != "DKMS module signing key" {
		t.Fatalf("signer %q", s)
	}
	cert, err := sign.LoadCertificate(filepath.Join(dkms, "keys/mok.pub"))
	if err != nil {
		t.Fatal(err)
	}
	data := testenv.MustRead(t, ko(root))
	if err := sign.VerifyModule(ko(root), data, cert); err != nil {
		t.Fatalf("the signature does not verify with dkms's certificate: %v", err)
	}
	r := statusJSON(t, root)[k53+" kmpack-hello"]
	if g := r.Signature; g == nil || g.State != "signed" || g.Signer != "DKMS module signing key" || !g.MachineKey || g.Enrolled != "" {
		t.Fatalf("status signature: %+v", g)
	}
	if text, _, _ := kmpack(t, "status", "--root", root); !strings.Contains(text, "[signed by DKMS module signing key") {
		t.Fatalf("status text:\n%s", text)
	}
	if out, _, _ := kmpack(t, "autoinstall", "--root", root, k53); strings.Contains(out, "building") {
		t.Fatalf("rebuilt although signed with the machine's key:\n%s", out)
	}
	// dkms's framework.conf names another key (the Debian wiki's recipe): it is dkms's chosen
	// key, so the next run signs with it.
	mokKey(filepath.Join(root, "etc/mykeys"), "framework key")
	os.MkdirAll(filepath.Join(root, "etc/dkms/framework.conf.d"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/dkms/framework.conf.d/signing.conf"),
		[]byte("mok_signing_key=\"/etc/mykeys/mok.key\"\nmok_certificate=/etc/mykeys/mok.pub\n"), 0o644)
	if out, stderr, code := kmpack(t, "autoinstall", "--root", root, k53); code != 0 || !strings.Contains(out, "signed with dkms framework.conf's key") {
		t.Fatalf("autoinstall with framework.conf's key: %d\n%s\n%s", code, out, stderr)
	}
	if s := signer(root); s != "framework key" {
		t.Fatalf("signer with framework.conf %q", s)
	}

	// No key, --sign always: kmpack makes its own, once (an empty key directory left by hand
	// is no key).
	root = setup()
	os.MkdirAll(filepath.Join(root, target.MachineKeyDir), 0o700)
	out, stderr, code = kmpack(t, "autoinstall", "--root", root, "--sign", "always", k53)
	if code != 0 || !strings.Contains(stderr, "made a module signing key because --sign always") || !strings.Contains(stderr, "mokutil --import /var/lib/kmpack/mok/kmpack-signing.der") {
		t.Fatalf("autoinstall --sign always: %d\n%s\n%s", code, out, stderr)
	}
	keyFile := filepath.Join(root, target.MachineKeyDir, sign.KeyFile)
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("machine key %s: %v", keyFile, err)
	}
	if s := signer(root); s != "kmpack machine module signing key" {
		t.Fatalf("signer %q", s)
	}
	// An initramfs without the module is left alone; one with it is too when the kernel hooks
	// say the distribution's initramfs hook comes after them (--no-initramfs).
	initrd(t, root, k53, "usr/lib/modules/"+k53+"/kernel/fs/ext4/ext4.ko")
	if _, stderr, code := kmpack(t, "autoinstall", "--root", root, "--sign", "always", "--rebuild", k53); code != 0 ||
		strings.Contains(stderr, "made a module signing key") || strings.Contains(stderr, "initrd") {
		t.Fatalf("second run: %d %s", code, stderr)
	}
	initrd(t, root, k53, "usr/lib/modules/"+k53+"/updates/kmpack-built/kmpack-hello/kmpack_hello.ko")
	if _, stderr, code := kmpack(t, "autoinstall", "--root", root, "--rebuild", "--no-initramfs", k53); code != 0 || strings.Contains(stderr, "initrd") {
		t.Fatalf("--no-initramfs: %d %s", code, stderr)
	}
	// An image kmpack cannot read may hold the module: it must be regenerated.
	os.WriteFile(filepath.Join(root, "boot/initrd.img-"+k53), []byte("\x04\x22\x4d\x18 an lz4 frame"), 0o644)
	if _, stderr, code := kmpack(t, "autoinstall", "--root", root, "--rebuild", k53); code != 0 ||
		!strings.Contains(stderr, "must be regenerated (it cannot be read to tell whether it holds kmpack_hello") {
		t.Fatalf("unreadable initramfs: %d %s", code, stderr)
	}
	if _, stderr, code := kmpack(t, "autoinstall", "--root", root, "--sign", "sometimes", k53); code != exitInput || !strings.Contains(stderr, "auto, always or never") {
		t.Fatalf("--sign sometimes: %d %s", code, stderr)
	}
}

// initrd writes root's /boot/initrd.img-K holding files, with the real cpio and zstd.
func initrd(t *testing.T, root, k string, files ...string) {
	t.Helper()
	tree := t.TempDir()
	for _, f := range files {
		os.MkdirAll(filepath.Join(tree, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(tree, f), []byte("x"), 0o644)
	}
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	cmd := exec.Command("sh", "-c", "find . | cpio --quiet -o -H newc | zstd -q -c > "+filepath.Join(root, "boot/initrd.img-"+k))
	cmd.Dir = tree
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("initrd: %v\n%s", err, out)
	}
}
