package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/weakupdates"
)

// debSystem is a dpkg root holding real Debian kernels, into which the tests install kmpack's
// packages with the real dpkg (--force-script-chrootless: maintainer scripts run here with
// $DPKG_ROOT set, the way Debian's image builders install into a chroot-less root).
type debSystem struct {
	t    *testing.T
	root string
}

func (s *debSystem) dpkg(args ...string) {
	s.t.Helper()
	cmd := exec.Command("dpkg", append([]string{"--root", s.root, "--force-script-chrootless"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// kernelHook runs the runtime package's /etc/kernel/<kind>.d hooks as a kernel package's
// maintainer script does (run-parts, release and image path as arguments).
func (s *debSystem) kernelHook(kind, release string) {
	s.t.Helper()
	cmd := exec.Command("run-parts", "--report", "--exit-on-error", "--arg="+release, "--arg=/boot/vmlinuz-"+release,
		filepath.Join(s.root, "etc/kernel", kind+".d"))
	cmd.Env = append(os.Environ(), "DPKG_ROOT="+s.root)
	// The hooks report a module they cannot make available and go on (autoinstall --hook);
	// only their own failure line ("run it again by hand") means the hook failed.
	if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "run it again by hand") {
		s.t.Fatalf("%s hook for %s: %v\n%s", kind, release, err, out)
	}
}

func (s *debSystem) links(release string) map[string]string {
	return testenv.WeakUpdatesLinks(s.root, release)
}

// modprobeFinds is the file modinfo (the kernel's module lookup through modules.dep) picks for
// module in release, "" when modinfo says the module is not found. Since modinfo says that
// too when the lookup itself is broken (no indexes, a wrong root), an absence only counts
// when the same lookup finds a module the kernel itself ships; any other failure fails the
// test.
func (s *debSystem) modprobeFinds(release, module string) string {
	s.t.Helper()
	f, notFound := s.modinfo(release, module)
	if !notFound {
		return f
	}
	dep, err := os.ReadFile(filepath.Join(s.root, "lib/modules", release, "modules.dep"))
	if err != nil {
		s.t.Fatalf("looking up %s in %s: no modules.dep: %v", module, release, err)
	}
	for _, l := range strings.Split(string(dep), "\n") {
		if ko, _, ok := strings.Cut(l, ":"); ok && strings.HasPrefix(ko, "kernel/") {
			control := strings.TrimSuffix(filepath.Base(ko), ".ko")
			if c, nf := s.modinfo(release, control); nf || c != filepath.Join(s.root, "lib/modules", release, ko) {
				s.t.Fatalf("looking up %s in %s: the lookup is broken: the kernel's own %s is found at %q", module, release, control, c)
			}
			return ""
		}
	}
	s.t.Fatalf("looking up %s in %s: modules.dep lists no module of the kernel", module, release)
	return ""
}

// modinfo runs modinfo -F filename; notFound is its "Module ... not found" answer, any other
// failure fails the test.
func (s *debSystem) modinfo(release, module string) (file string, notFound bool) {
	s.t.Helper()
	var stderr strings.Builder
	cmd := exec.Command("modinfo", "-b", s.root, "-k", release, "-F", "filename", module)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if strings.TrimSpace(stderr.String()) == "modinfo: ERROR: Module "+module+" not found." {
			return "", true
		}
		s.t.Fatalf("modinfo %s in %s: %v: %s", module, release, err, stderr.String())
	}
	if file = strings.TrimSpace(string(out)); file == "" {
		s.t.Fatalf("modinfo %s in %s: no file name printed", module, release)
	}
	return file, false
}

func (s *debSystem) registrations() map[string]string {
	out := map[string]string{}
	files, _ := filepath.Glob(filepath.Join(s.root, "var/lib/kmpack/weak-updates/kmps/*.json"))
	for _, f := range files {
		var k struct{ Package, Version string }
		b, _ := os.ReadFile(f)
		json.Unmarshal(b, &k)
		out[k.Package] = k.Version
	}
	return out
}

// buildDebs runs kmpack build with the debian profile and returns the written packages by name.
func buildDebs(t *testing.T, cache, src string, releases ...string) map[string]string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	args := []string{"build", "-q", "-o", out, "--profile", "debian", "--no-source-package"}
	for _, r := range releases {
		args = append(args, "-k", testenv.HeadersDir(t, r))
	}
	if _, stderr, code := kmpackIn(t, cache, append(args, src)...); code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	b, err := os.ReadFile(filepath.Join(out, formats.PackagesDir, "packages.json"))
	if err != nil {
		t.Fatal(err)
	}
	var written []formats.Written
	if err := json.Unmarshal(b, &written); err != nil {
		t.Fatal(err)
	}
	debs := map[string]string{}
	for _, w := range written {
		debs[w.Name] = filepath.Join(out, formats.PackagesDir, w.File)
	}
	return debs
}

func withVersion(t *testing.T, src, version string) string {
	t.Helper()
	spec := filepath.Join(src, "kmpack.yaml")
	b, _ := os.ReadFile(spec)
	if err := os.WriteFile(spec, []byte(strings.Replace(string(b), `version: "1.0"`, `version: "`+version+`"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	return src
}

// The whole life of the debian profile's packages and the kmpack runtime package on a root
// with Debian's real 6.1.0-53 and -54 kernels, driven by the real dpkg and the runtime's own
// kernel hooks, checking the weak-updates links and what the kernel's module lookup finds
// after every step.
func TestDebianWeakUpdatesLifeCycle(t *testing.T) {
	testenv.Need(t, "dpkg", "depmod", "run-parts", "modinfo", "lintian")
	r53, r54 := testenv.Release53, testenv.Release54
	cache := t.TempDir()
	hello10 := buildDebs(t, cache, testenv.TestModuleSource(t, "hello"), r53)
	abi := buildDebs(t, cache, testenv.TestModuleSource(t, "abi"), r53)
	hello11 := buildDebs(t, cache, withVersion(t, testenv.TestModuleSource(t, "hello"), "1.1"), r53, r54)
	pkg53, pkg54, abi53 := "kmpack-hello-modules-"+r53, "kmpack-hello-modules-"+r54, "kmpack-abichange-modules-"+r53

	s := &debSystem{t: t, root: testenv.DpkgRoot(t)}
	testenv.InstallKernel(t, s.root, r53)
	const helloLink = "kmpack-hello/kmpack_hello.ko"
	own53 := "/lib/modules/" + r53 + "/updates/kmpack-hello/kmpack_hello.ko"
	own54 := "/lib/modules/" + r54 + "/updates/kmpack-hello/kmpack_hello.ko"
	weak54 := "/lib/modules/" + r54 + "/weak-updates/" + helloLink
	check := func(step string, want map[string]string, finds string) {
		t.Helper()
		got := s.links(r54)
		if len(got) != len(want) || got[helloLink] != want[helloLink] {
			t.Errorf("%s: %s weak-updates holds %v, want %v", step, r54, got, want)
		}
		if finds != "" {
			if f := s.modprobeFinds(r54, "kmpack_hello"); f != s.root+finds {
				t.Errorf("%s: module lookup in %s finds %q, want %s", step, r54, f, finds)
			}
		}
	}

	// Install: the runtime, then both packages for 53. 53 uses its own builds: no links.
	if out, err := exec.Command("lintian", "--fail-on", "error", hello10["kmpack"]).CombinedOutput(); err != nil {
		t.Errorf("lintian finds errors in the runtime package: %v\n%s", err, out)
	}
	s.dpkg("-i", hello10["kmpack"])
	if b, err := os.ReadFile(filepath.Join(s.root, formats.RuntimeDepmodConf)); err != nil || !strings.Contains(string(b), "search updates weak-updates built-in") {
		t.Fatalf("runtime package did not install the depmod.d file: %v", err)
	}
	// The manual page renders with man, and the bash completion, loaded as bash-completion
	// would, completes against the installed binary.
	if out, err := exec.Command("man", "-l", filepath.Join(s.root, formats.RuntimeManPage)).Output(); err != nil || !strings.Contains(string(out), "weak-updates") {
		t.Errorf("installed manual page: %v", err)
	}
	comp := exec.Command("bash", "-c", `source "$1"; COMP_WORDS=(kmpack weak-updates add-ke); COMP_CWORD=2; _kmpack_complete; echo "${COMPREPLY[*]}"`,
		"-", filepath.Join(s.root, "usr/share/bash-completion/completions/kmpack"))
	comp.Env = append(os.Environ(), "PATH="+filepath.Join(s.root, "usr/bin")+":"+os.Getenv("PATH"))
	if out, err := comp.Output(); err != nil || strings.TrimSpace(string(out)) != "add-kernel" {
		t.Errorf("installed bash completion: %q %v", out, err)
	}
	for _, f := range []string{"usr/share/zsh/vendor-completions/_kmpack", "usr/share/fish/vendor_completions.d/kmpack.fish"} {
		if _, err := os.Stat(filepath.Join(s.root, f)); err != nil {
			t.Errorf("runtime package lacks %s", f)
		}
	}
	s.dpkg("-i", hello10[pkg53], abi[abi53])
	if len(s.links(r53)) != 0 {
		t.Errorf("53 got links to its own builds: %v", s.links(r53))
	}
	if f := s.modprobeFinds(r53, "kmpack_hello"); f != s.root+own53 {
		t.Errorf("53's lookup finds %q", f)
	}
	if r := s.registrations(); r[pkg53] != "1.0-1" || r[abi53] != "1.0-1" {
		t.Errorf("registrations after install: %v", r)
	}

	// A second kernel arrives: its hook links the stable module, not the one whose imports changed.
	testenv.InstallKernel(t, s.root, r54)
	s.kernelHook("postinst", r54)
	check("54 installed", map[string]string{helloLink: own53}, weak54)
	if f := s.modprobeFinds(r54, "kmpack_abi"); f != "" {
		t.Errorf("54's lookup finds the incompatible module at %s", f)
	}
	status, _, code := kmpackIn(t, cache, "weak-updates", "--root", s.root, "status")
	if code != 0 || !strings.Contains(status, "kmpack-abichange         not linked:") || !strings.Contains(status, "_dev_info") {
		t.Errorf("status does not say why kmpack-abichange is not linked (exit %d):\n%s", code, status)
	}

	// A dry run prints what removing the package would do and changes nothing; names that
	// would lead outside --root are refused as bad input.
	dry, _, code := kmpackIn(t, cache, "weak-updates", "--root", s.root, "--dry-run", "remove-kmp", pkg53)
	if code != 0 || !strings.Contains(dry, "unlink "+weak54+" -> "+own53) {
		t.Errorf("dry-run remove-kmp (exit %d) does not print the unlink:\n%s", code, dry)
	}
	check("dry-run remove-kmp", map[string]string{helloLink: own53}, weak54)
	for _, args := range [][]string{{"remove-kernel", "../../x"}, {"remove-kmp", "../../../../etc/x"}, {"add-kernel", "a/b"}} {
		if _, stderr, code := kmpackIn(t, cache, append([]string{"weak-updates", "--root", s.root}, args...)...); code != exitInput ||
			!strings.Contains(stderr, "invalid") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("weak-updates %s: exit %d, stderr %q; want exit %d and a one-line error", strings.Join(args, " "), code, stderr, exitInput)
		}
	}

	// Upgrade of the module package, then a reinstall of the same version: the link stays
	// (bsc#1257055: a reinstall's old-package scripts must not undo the new one's work).
	s.dpkg("-i", hello11[pkg53])
	check("upgrade to 1.1", map[string]string{helloLink: own53}, weak54)
	if r := s.registrations(); r[pkg53] != "1.1-1" {
		t.Errorf("registration after upgrade: %v", r)
	}
	s.dpkg("-i", hello11[pkg53])
	check("reinstall", map[string]string{helloLink: own53}, weak54)

	// The package's own build for 54 wins over the link, which goes; its removal brings it back.
	s.dpkg("-i", hello11[pkg54])
	check("54's own build installed", map[string]string{}, own54)
	s.dpkg("-r", pkg54)
	check("54's own build removed", map[string]string{helloLink: own53}, weak54)

	// Concurrent runs (a kernel hook while the runtime resyncs) and runs killed midway end in the
	// state one run alone makes, with the indexes in line with the links.
	os.RemoveAll(filepath.Join(s.root, "lib/modules", r54, "weak-updates"))
	runtimeBin := filepath.Join(s.root, formats.RuntimeBinary)
	done := make(chan error, 2)
	for _, sub := range []string{"add-kernel", "sync"} {
		go func() {
			args := []string{"weak-updates", "--root", s.root, sub}
			if sub == "add-kernel" {
				args = append(args, r54)
			}
			out, err := exec.Command(runtimeBin, args...).CombinedOutput()
			if err != nil {
				err = fmt.Errorf("%s: %v: %s", sub, err, out)
			}
			done <- err
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("concurrent run: %v", err)
		}
	}
	check("concurrent runs", map[string]string{helloLink: own53}, weak54)
	// Each killed run starts from a state without the link, indexed as such, and is killed at
	// a named point of its run (the engine SIGKILLs itself there, see
	// weakupdates.KillPointEnv): after marking depmod pending, after the first link, before
	// depmod and after it. Killed after linking but before depmod, it leaves the indexes
	// stale: the next run must re-index.
	for _, point := range []string{"after-pending", "after-link", "before-depmod", "after-depmod"} {
		os.RemoveAll(filepath.Join(s.root, "lib/modules", r54, "weak-updates"))
		if out, err := exec.Command("depmod", "-b", s.root, "-a", r54).CombinedOutput(); err != nil {
			t.Fatalf("depmod: %v: %s", err, out)
		}
		if f := s.modprobeFinds(r54, "kmpack_hello"); f != "" {
			t.Fatalf("before the run killed %s: the lookup finds %s", point, f)
		}
		cmd := exec.Command(runtimeBin, "weak-updates", "--root", s.root, "add-kernel", r54)
		cmd.Env = append(os.Environ(), weakupdates.KillPointEnv+"="+point)
		out, err := cmd.CombinedOutput()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("the run was not killed %s (%v): %s", point, err, out)
		}
		s.kernelHook("postinst", r54)
		check("run killed "+point, map[string]string{helloLink: own53}, weak54)
	}

	// The kernel goes: dpkg removes its files, its postrm hook drops what kmpack made there
	// (the image's postrm itself removes the generated indexes only on purge).
	s.dpkg("-r", "linux-image-"+r54)
	s.kernelHook("postrm", r54)
	if _, err := os.Lstat(filepath.Join(s.root, "lib/modules", r54, "weak-updates")); err == nil {
		t.Errorf("removed kernel's weak-updates left behind")
	}

	// A package for a kernel whose image is not installed is refused on its Depends.
	cmd := exec.Command("dpkg", "--root", s.root, "--force-script-chrootless", "-i", hello11[pkg54])
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "linux-image-"+r54) {
		t.Errorf("dpkg configured the %s package without its kernel image (err %v):\n%s", r54, err, out)
	}
	s.dpkg("-P", pkg54)

	// Removal of the module packages unregisters them and re-indexes their kernel; purging the
	// runtime leaves nothing.
	s.dpkg("-r", pkg53, abi53)
	if r := s.registrations(); len(r) != 0 {
		t.Errorf("registrations after removal: %v", r)
	}
	if f := s.modprobeFinds(r53, "kmpack_hello"); f != "" {
		t.Errorf("53's lookup still finds %s after removal", f)
	}
	if _, err := os.Stat(filepath.Join(s.root, "lib/modules", r53, "updates/kmpack-hello")); err == nil {
		t.Errorf("the module directory was left behind")
	}
	s.dpkg("-P", "kmpack")
	for _, p := range []string{"var/lib/kmpack", "usr/bin/kmpack", strings.TrimPrefix(formats.RuntimeDepmodConf, "/"), strings.TrimPrefix(formats.RuntimePostinstHook, "/")} {
		if _, err := os.Stat(filepath.Join(s.root, p)); err == nil {
			t.Errorf("%s left after purge", p)
		}
	}
}
