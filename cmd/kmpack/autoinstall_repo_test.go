package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/target"
)

// flatRepo is a `file:` apt repository (flat: "deb [trusted=yes] file:DIR ./") indexed with
// dpkg-scanpackages.
type flatRepo struct {
	t   *testing.T
	dir string
}

func newFlatRepo(t *testing.T) *flatRepo {
	t.Helper()
	return &flatRepo{t: t, dir: filepath.Join(t.TempDir(), "repo")}
}

func (f *flatRepo) source() string { return "deb [trusted=yes] file:" + f.dir + " ./" }

// put copies the packages in and indexes the repository; depends are dependencies the index
// claims for the package named by its key (its package file says nothing of them).
func (f *flatRepo) put(debs []string, depends map[string]string) {
	f.t.Helper()
	os.MkdirAll(f.dir, 0o755)
	for _, d := range debs {
		testenv.CopyTree(f.t, d, filepath.Join(f.dir, filepath.Base(d)))
	}
	f.index(depends)
}

func (f *flatRepo) index(depends map[string]string) {
	f.t.Helper()
	cmd := exec.Command("dpkg-scanpackages", "--multiversion", ".")
	cmd.Dir = f.dir
	out, err := cmd.Output()
	if err != nil {
		f.t.Fatalf("dpkg-scanpackages: %v", err)
	}
	stanzas := strings.Split(string(out), "\n\n")
	for i, st := range stanzas {
		for pkg, dep := range depends {
			if strings.HasPrefix(st, "Package: "+pkg+"\n") {
				stanzas[i] = strings.Replace(st, "\nDepends: ", "\nDepends: "+dep+", ", 1)
			}
		}
	}
	idx := strings.Join(stanzas, "\n\n")
	if err := os.WriteFile(filepath.Join(f.dir, "Packages"), []byte(idx), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// fakeDeb is a package made with dpkg-deb: control fields beyond the basic ones in fields, a
// postinst when given.
func fakeDeb(t *testing.T, name, fields, postinst string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	os.MkdirAll(filepath.Join(dir, "DEBIAN"), 0o755)
	control := "Package: " + name + "\nVersion: 1.0-1\nArchitecture: all\nMaintainer: test <test@example.org>\nDescription: test\n" + fields
	os.WriteFile(filepath.Join(dir, "DEBIAN/control"), []byte(control), 0o644)
	if postinst != "" {
		os.WriteFile(filepath.Join(dir, "DEBIAN/postinst"), []byte(postinst), 0o755)
	}
	out := filepath.Join(t.TempDir(), name+"_1.0-1_all.deb")
	if o, err := exec.Command("dpkg-deb", "--root-owner-group", "-b", dir, out).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, o)
	}
	return out
}

// repoSystem is a root with Debian's real 53 and 54 kernels (54's headers installed), kmpack's
// runtime and abichange's package for 53 installed with the real dpkg, abichange's source
// registered, and an apt repository configured in its sources.list. abichange's 53 build does
// not load in 54 (an import's CRC changed): step 2 cannot serve 54.
type repoSystem struct {
	*aptRoot
	repo       *flatRepo
	debs       map[string]string
	pkg53      string
	pkg54      string
	r53, r54   string
	moduleName string
}

func newRepoSystem(t *testing.T, debs map[string]string) *repoSystem {
	t.Helper()
	r53, r54 := testenv.Release53, testenv.Release54
	s := &repoSystem{repo: newFlatRepo(t), debs: debs, r53: r53, r54: r54, moduleName: "kmpack-abichange",
		pkg53: "kmpack-abichange-modules-" + r53, pkg54: "kmpack-abichange-modules-" + r54}
	s.repo.put(nil, nil)
	s.aptRoot = newAptRoot(t, s.repo.source())
	// The root's own apt configuration, which kmpack's apt runs read: downloads as root (the
	// repository is in a private temporary directory).
	os.WriteFile(filepath.Join(s.root, "etc/apt/apt.conf.d/00test"), []byte("APT::Sandbox::User \"root\";\n"), 0o644)
	testenv.InstallKernel(t, s.root, r53)
	testenv.InstallKernel(t, s.root, r54)
	testenv.InstallHeaders(t, s.root, r54)
	s.recordsOnly()
	(&debSystem{t: t, root: s.root}).dpkg("-i", debs["kmpack"], debs[s.pkg53])
	if _, stderr, code := kmpack(t, "source", "--root", s.root, "add", testenv.TestModuleSource(t, "abi")); code != 0 {
		t.Fatalf("source add: %d %s", code, stderr)
	}
	return s
}

func (s *repoSystem) update() {
	s.t.Helper()
	if o, err := s.apt("update"); err != nil {
		s.t.Fatalf("apt-get update: %v\n%s", err, o)
	}
}

func (s *repoSystem) row() target.StatusRow {
	s.t.Helper()
	return statusJSON(s.t, s.root)[s.r54+" "+s.moduleName]
}

func (s *repoSystem) built() bool {
	_, err := os.Stat(filepath.Join(s.root, "lib/modules", s.r54, "updates/kmpack-built", s.moduleName))
	return err == nil
}

func (s *repoSystem) autoinstall() string {
	s.t.Helper()
	out, stderr, code := kmpack(s.t, "autoinstall", "--root", s.root, "--lock-timeout", "1m", s.r54)
	if code != 0 {
		s.t.Fatalf("autoinstall: %d\n%s\n%s", code, out, stderr)
	}
	return out + stderr
}

func repoDebs(t *testing.T) map[string]string {
	t.Helper()
	testenv.Need(t, "apt-get", "apt-cache", "apt-config", "dpkg", "dpkg-query", "dpkg-scanpackages", "dpkg-deb", "depmod", "run-parts", "setsid")
	return buildDebs(t, t.TempDir(), testenv.TestModuleSource(t, "abi"), testenv.Release53, testenv.Release54)
}

// TestAutoinstallFromRepository is step 3 with the real apt: kernel 54 arrives in a root where
// abichange's package for 53 is installed and its source registered (54's headers too, so a
// local build could be made). Run by a maintainer script inside the real dpkg with dpkg's
// variables cleared, autoinstall finds dpkg's lock held by its ancestor and defers. The kernel
// hook runs inside dpkg (DPKG_MAINTSCRIPT_NAME): it
// finds <name>-modules-54 in the configured `file:` repository, records it pending (status:
// missing, repo_pending; gate closed) and builds nothing. apt's next dpkg run fires the
// runtime's DPkg::Post-Invoke snippet, which starts autoinstall detached; its apt-get waits
// for the lock of the apt that started it, then installs the package into the root (its
// postinst registers it with kmpack while autoinstall does not hold its lock): status says
// installed-from-repo with the package and version, gate opens, nothing was built. Another
// run changes nothing.
func TestAutoinstallFromRepository(t *testing.T) {
	debs := repoDebs(t)
	s := newRepoSystem(t, debs)
	s.repo.put([]string{debs[s.pkg54], fakeDeb(t, "unrelated", "", "")}, nil)
	s.update()

	// Inside the real dpkg with dpkg's variables cleared: its lock, held by an ancestor, says so.
	cleared := fakeDeb(t, "env-cleared", "", "#!/bin/sh\nenv -u DPKG_MAINTSCRIPT_NAME -u DPKG_MAINTSCRIPT_PACKAGE \"$DPKG_ROOT/usr/bin/kmpack\" autoinstall --root \"$DPKG_ROOT\" "+s.r54+" || true\n")
	out, err := exec.Command("dpkg", "--root", s.root, "--force-script-chrootless", "-i", cleared).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "is held by process") || !strings.Contains(string(out), "waiting for "+s.pkg54) {
		t.Fatalf("autoinstall inside dpkg, its variables cleared: %v\n%s", err, out)
	}
	if row := s.row(); !row.RepoPending || s.built() || s.installed(s.pkg54) != "" {
		t.Fatalf("inside dpkg, its variables cleared: %+v, built %v", row, s.built())
	}

	// The kernel's postinst.d hook, as dpkg runs it (the runtime package installed it).
	cmd := exec.Command("run-parts", "--report", "--arg="+s.r54, "--arg=/boot/vmlinuz-"+s.r54, filepath.Join(s.root, "etc/kernel/postinst.d"))
	cmd.Env = append(os.Environ(), "DPKG_ROOT="+s.root, "DPKG_MAINTSCRIPT_NAME=postinst", "DPKG_MAINTSCRIPT_PACKAGE=linux-image-"+s.r54)
	out, err = cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "building") {
		t.Fatalf("postinst.d hook: %v\n%s", err, out)
	}
	row := s.row()
	if row.State != target.StateMissing || !row.RepoPending || row.RepoPackage != s.pkg54 || row.RepoVersion != "1.0-1" ||
		!strings.Contains(row.Reason, "waiting for "+s.pkg54) {
		t.Fatalf("after the hook inside dpkg: %+v\n%s", row, out)
	}
	if s.built() || s.installed(s.pkg54) != "" {
		t.Fatalf("the hook built or installed: built %v, dpkg %q", s.built(), s.installed(s.pkg54))
	}
	pending := filepath.Join(s.root, target.RepoPendingDir, s.r54)
	if _, err := os.Stat(pending); err != nil {
		t.Fatalf("no pending mark: %v", err)
	}
	if _, stderr, code := kmpack(t, "gate", "--root", s.root, s.r54); code != exitGateClosed || !strings.Contains(stderr, "waiting for") {
		t.Fatalf("gate while pending: %d %s", code, stderr)
	}

	// apt's DPkg::Post-Invoke: the runtime's snippet, its paths in the root (kmpack is a wrapper
	// adding --root).
	snippet := string(testenv.MustRead(t, filepath.Join(s.root, formats.RuntimeAptHook)))
	if !strings.Contains(snippet, target.RepoPendingDir) || !strings.Contains(snippet, "kmpack="+formats.RuntimeBinary+";") {
		t.Fatalf("the runtime's apt snippet:\n%s", snippet)
	}
	wrapper := filepath.Join(t.TempDir(), "kmpack")
	os.WriteFile(wrapper, []byte("#!/bin/sh\nsub=$1; shift\nexec "+bin+" \"$sub\" --root "+s.root+" \"$@\" >>"+s.root+"/var/log/kmpack.log 2>&1\n"), 0o755)
	snippet = strings.Replace(snippet, "kmpack="+formats.RuntimeBinary+";", "kmpack="+wrapper+";", 1)
	snippet = strings.Replace(snippet, target.RepoPendingDir, filepath.Join(s.root, target.RepoPendingDir), 1)
	// The gate recipe users copy (examples/gate/99kmpack-gate), its paths into the root, first
	// alone (the runtime's snippet set aside: apt ignores *.disabled): an apt run while 54's
	// package waits holds the reboot, naming 54.
	hold := filepath.Join(t.TempDir(), "kmpack-hold-reboot")
	recipe := string(testenv.MustRead(t, "../../examples/gate/99kmpack-gate"))
	for from, to := range map[string]string{"kmpack=/usr/bin/kmpack;": "kmpack=" + wrapper + ";",
		"modules=/lib/modules;": "modules=" + filepath.Join(s.root, "lib/modules") + ";", "hold=/run/kmpack-hold-reboot;": "hold=" + hold + ";"} {
		if !strings.Contains(recipe, from) {
			t.Fatalf("the gate recipe has no %q", from)
		}
		recipe = strings.Replace(recipe, from, to, 1)
	}
	os.WriteFile(filepath.Join(s.root, "etc/apt/apt.conf.d/99kmpack-gate"), []byte(recipe), 0o644)
	aptHook := filepath.Join(s.root, formats.RuntimeAptHook)
	os.Rename(aptHook, aptHook+".disabled")
	if o, err := s.apt("install", "unrelated"); err != nil {
		t.Fatalf("apt-get install unrelated: %v\n%s", err, o)
	}
	if b, err := os.ReadFile(hold); err != nil || strings.TrimSpace(string(b)) != "kernels with modules missing: "+s.r54 {
		t.Fatalf("the gate recipe's hold file while 54's package waits: %q %v", b, err)
	}
	os.Remove(aptHook + ".disabled")
	os.WriteFile(aptHook, []byte(snippet), 0o644)
	start := time.Now()
	if o, err := s.apt("install", "--reinstall", "unrelated"); err != nil {
		t.Fatalf("apt-get install --reinstall unrelated: %v\n%s", err, o)
	}
	for row = s.row(); row.State != target.StateFromRepo && time.Since(start) < 2*time.Minute; row = s.row() {
		time.Sleep(200 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(s.root, "var/log/kmpack.log"))
	if row.State != target.StateFromRepo || row.Package != s.pkg54 || row.Version != "1.0-1" || row.RepoPending {
		t.Fatalf("after apt's Post-Invoke: %+v\n%s", row, log)
	}
	t.Logf("installed from the repository %v after apt finished", time.Since(start).Round(time.Millisecond))
	// The detached runs end (the one the package's own dpkg run started too) before the root goes.
	for time.Since(start) < 2*time.Minute {
		if o, _ := exec.Command("pgrep", "-f", "--", "--root "+s.root).Output(); len(o) == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if s.installed(s.pkg54) != "ii" || s.built() || strings.Contains(string(log), "building") {
		t.Fatalf("dpkg %q, built %v\n%s", s.installed(s.pkg54), s.built(), log)
	}
	if _, err := os.Stat(pending); !os.IsNotExist(err) {
		t.Fatalf("the pending mark stays: %v", err)
	}
	if out, _, code := kmpack(t, "status", "--root", s.root); code != 0 || !strings.Contains(out, "installed-from-repo ("+s.pkg54+" 1.0-1)") {
		t.Fatalf("status text: %d\n%s", code, out)
	}
	if _, stderr, code := kmpack(t, "gate", "--root", s.root, s.r54); code != 0 {
		t.Fatalf("gate: %d %s", code, stderr)
	}
	// The gate recipe, run again by the detached run's own apt: released.
	if _, err := os.Stat(hold); !os.IsNotExist(err) {
		t.Fatalf("the gate recipe's hold file stays with every module available: %v", err)
	}
	if out := s.autoinstall(); strings.Contains(out, "installing") || strings.Contains(out, "building") || s.row().State != target.StateFromRepo {
		t.Fatalf("another run: %+v\n%s", s.row(), out)
	}
}

// TestAutoinstallRepositoryFallsThrough: step 3's failures are recorded and step 4 follows.
// The repository first has only a package that Provides <name>-modules-54 under another name:
// never installed; the source is built locally, the row says why the repositories did not
// serve. Then the index lists the package but its file is gone: apt-get fails, recorded, the
// local build stays. Then another dpkg run holds the lock: apt gives up within --repo-timeout,
// recorded. Then the package is there, its index claiming it depends on a package
// whose postinst runs kmpack autoinstall (inside dpkg, while the outer autoinstall waits for
// apt): nothing waits on itself, the package is installed, the local build goes.
func TestAutoinstallRepositoryFallsThrough(t *testing.T) {
	debs := repoDebs(t)
	s := newRepoSystem(t, debs)
	evil := fakeDeb(t, "evil-modules", "Provides: "+s.pkg54+"\n", "")
	s.repo.put([]string{evil}, nil)
	s.update()
	out := s.autoinstall()
	row := s.row()
	if row.State != target.StateBuiltLocally || row.RepoPackage != s.pkg54 || !strings.Contains(row.RepoReason, "no package "+s.pkg54+" in the configured repositories") {
		t.Fatalf("with only a provider: %+v\n%s", row, out)
	}
	if s.installed("evil-modules") != "" || !s.built() {
		t.Fatalf("the provider was installed (%q) or nothing built (%v)\n%s", s.installed("evil-modules"), s.built(), out)
	}
	if text, _, _ := kmpack(t, "status", "--root", s.root); !strings.Contains(text, "[repositories: no package "+s.pkg54) {
		t.Fatalf("status text:\n%s", text)
	}

	// Listed, but its file is gone: apt-get fails.
	nested := fakeDeb(t, "calls-kmpack", "", "#!/bin/sh\n\"$DPKG_ROOT/usr/bin/kmpack\" autoinstall --hook --root \"$DPKG_ROOT\"\necho nested autoinstall done\n")
	s.repo.put([]string{debs[s.pkg54], nested}, map[string]string{s.pkg54: "calls-kmpack"})
	s.update()
	os.Rename(filepath.Join(s.repo.dir, filepath.Base(debs[s.pkg54])), filepath.Join(s.repo.dir, "gone"))
	out = s.autoinstall()
	row = s.row()
	if row.State != target.StateBuiltLocally || !strings.Contains(row.RepoReason, "apt-get install "+s.pkg54+"=1.0-1") || strings.Contains(out, "building") {
		t.Fatalf("apt-get failing: %+v\n%s", row, out)
	}

	// The file is back, but another dpkg run (not this one's caller) holds the lock: apt waits
	// for it within --repo-timeout only, the failure is recorded, the local build stays.
	os.Rename(filepath.Join(s.repo.dir, "gone"), filepath.Join(s.repo.dir, filepath.Base(debs[s.pkg54])))
	flag := filepath.Join(t.TempDir(), "hold")
	os.WriteFile(flag, nil, 0o644)
	slow := fakeDeb(t, "slow", "", "#!/bin/sh\ntouch "+flag+".held\nwhile [ -e "+flag+" ]; do sleep 0.1; done\n")
	holder := exec.Command("dpkg", "--root", s.root, "--force-script-chrootless", "-i", slow)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		if _, err := os.Stat(flag + ".held"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	start := time.Now()
	o, stderr, code := kmpack(t, "autoinstall", "--root", s.root, "--repo-timeout", "4s", s.r54)
	took := time.Since(start)
	os.Remove(flag)
	holder.Wait()
	row = s.row()
	if code != 0 || row.State != target.StateBuiltLocally || !strings.Contains(row.RepoReason, "apt-get install "+s.pkg54) ||
		!strings.Contains(row.RepoReason, "lock") || took > 20*time.Second || s.installed(s.pkg54) != "" {
		t.Fatalf("apt waiting for another dpkg (%v): exit %d %+v\n%s%s", took, code, row, o, stderr)
	}
	t.Logf("with the lock held elsewhere, after %v: %s", took.Round(time.Millisecond), row.RepoReason)

	// Nothing holds the lock: installed (with calls-kmpack, whose postinst runs autoinstall
	// inside dpkg), the local build goes.
	start = time.Now()
	out = s.autoinstall()
	row = s.row()
	if row.State != target.StateFromRepo || row.Package != s.pkg54 || row.RepoReason != "" || s.built() || s.installed(s.pkg54) != "ii" {
		t.Fatalf("with the package: %+v built %v\n%s", row, s.built(), out)
	}
	// The nested run found the package in the repositories and, inside dpkg, left it pending.
	if !strings.Contains(out, "nested autoinstall done") || !strings.Contains(out, "waiting for "+s.pkg54) || time.Since(start) > time.Minute {
		t.Fatalf("the nested autoinstall (%v):\n%s", time.Since(start), out)
	}
	if _, err := os.Stat(filepath.Join(s.root, target.RepoPendingDir)); !os.IsNotExist(err) {
		t.Fatalf("a pending mark stays: %v", err)
	}
}
