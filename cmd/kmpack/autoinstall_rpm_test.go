package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/target"
)

// holdLock is this test binary run as a package manager in its transaction (TestMain, with
// KMPACK_TEST_HOLD_LOCK set): it takes rpm's transaction lock as rpm does (fcntl, whole file),
// runs args (a kernel hook) as its child, then writes the file KMPACK_TEST_HOLD_UNTIL + ".ran";
// once KMPACK_TEST_HOLD_UNTIL is gone (the rest of the transaction; at most a minute) it
// releases the lock and lives on for 5 s, as a daemon (PackageKit) does after its transaction.
func holdLock(lock string, args []string) int {
	f, err := os.OpenFile(lock, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return 90
	}
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLKW, &lk); err != nil {
		return 91
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Run()
	until := os.Getenv("KMPACK_TEST_HOLD_UNTIL")
	os.WriteFile(until+".ran", nil, 0o644)
	for i := 0; i < 600; i++ {
		if _, err := os.Stat(until); err != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	lk.Type = syscall.F_UNLCK
	syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk)
	time.Sleep(5 * time.Second)
	if err != nil {
		return 92
	}
	return 0
}

var (
	rpmBuildsOnce sync.Once
	rpmBuilds     map[string]string // kernel release -> build output with rhel and suse packages
)

// abiRPMOutputs are kmpack builds (rhel and suse profiles) of the abichange test module for 53
// and for 54, one output each, made once per test binary. Without the runtime rpm: each
// build's would differ (no SOURCE_DATE_EPOCH), and a repository takes one kmpack-*.rpm.
func abiRPMOutputs(t *testing.T) map[string]string {
	t.Helper()
	rpmBuildsOnce.Do(func() {
		dir := filepath.Join(filepath.Dir(bin), "rpm-builds")
		m := map[string]string{}
		for _, k := range []string{testenv.Release53, testenv.Release54} {
			out := filepath.Join(dir, k)
			if _, stderr, code := kmpackIn(t, filepath.Join(dir, "cache"), "build", "-q", "-o", out, "-p", "rhel,suse", "--no-source-package", "--no-runtime-package",
				"-k", testenv.HeadersDir(t, k), testenv.TestModuleSource(t, "abi")); code != 0 {
				t.Fatalf("build for %s: exit %d: %s", k, code, stderr)
			}
			m[k] = out
		}
		rpmBuilds = m
	})
	if rpmBuilds == nil {
		t.Fatal("the rpm builds failed in an earlier test")
	}
	return rpmBuilds
}

// rpmSystem is a root managed by rpm with dnf's or zypper's repository configuration: Debian's
// real 53 and 54 kernels' modules, a kernel package for each (test-built, providing the
// kernel()/ksym() CRCs the module's builds require, as RHEL's and SUSE's kernels do), /bin/sh
// (a static busybox: the packages' scriptlets run chrooted), abichange's package for 53
// installed by the package manager, abichange's source registered. An rpm-md repository kmpack
// publishes serves the packages.
type rpmSystem struct {
	t        *testing.T
	root     string
	repo     string
	zypper   bool
	r53, r54 string
	pkg      string
}

func newRPMSystem(t *testing.T, zypper bool, kernels ...string) *rpmSystem {
	t.Helper()
	testenv.Need(t, "rpm", "rpmbuild", "busybox", "depmod")
	s := &rpmSystem{t: t, root: t.TempDir(), repo: filepath.Join(t.TempDir(), "repo"), zypper: zypper,
		r53: testenv.Release53, r54: testenv.Release54, pkg: "kmod-kmpack-abichange"}
	if zypper {
		testenv.Need(t, "zypper")
		s.pkg = "kmpack-abichange-kmp-amd64"
		// libzypp's lock file is this machine's (/run/zypp.pid) whatever --root says: the
		// test's zyppers and kmpack's use their own.
		lockRoot := t.TempDir()
		os.MkdirAll(filepath.Join(lockRoot, "run"), 0o755)
		t.Setenv("ZYPP_LOCKFILE_ROOT", lockRoot)
	} else {
		testenv.Need(t, "dnf")
	}
	outs := abiRPMOutputs(t)
	s.publish(kernels...)
	os.MkdirAll(filepath.Join(s.root, "bin"), 0o755)
	testenv.CopyTree(t, "/bin/busybox", filepath.Join(s.root, "bin/busybox"))
	os.Symlink("busybox", filepath.Join(s.root, "bin/sh"))
	if zypper {
		if o, err := s.pm("ar", "--no-gpgcheck", "-t", "rpm-md", "file://"+s.repo, "kmpack"); err != nil {
			t.Fatalf("zypper ar: %v\n%s", err, o)
		}
	} else {
		os.MkdirAll(filepath.Join(s.root, "etc/yum.repos.d"), 0o755)
		os.WriteFile(filepath.Join(s.root, "etc/yum.repos.d/kmpack.repo"),
			[]byte("[kmpack]\nname=kmpack\nbaseurl=file://"+s.repo+"\ngpgcheck=0\nmetadata_expire=0\n"), 0o644)
	}
	kdir := t.TempDir()
	for _, k := range []string{s.r53, s.r54} {
		rpms, _ := filepath.Glob(filepath.Join(outs[k], "packages", s.pkg+"-*.rpm"))
		if len(rpms) != 1 {
			t.Fatalf("%s's package: %v", k, rpms)
		}
		kernelRPM := fakeKernelRPM(t, k, importedSymbols(t, rpms[0]), kdir, zypper)
		if o, err := s.rpm("-i", "--nodeps", kernelRPM); err != nil {
			t.Fatalf("rpm -i %s: %v\n%s", kernelRPM, err, o)
		}
		testenv.InstallKernel(t, s.root, k)
	}
	s.refresh()
	if o, err := s.pm(s.installArgs(s.spec(s.r53))...); err != nil {
		t.Fatalf("installing 53's package: %v\n%s", err, o)
	}
	if _, stderr, code := kmpack(t, "source", "--root", s.root, "add", testenv.TestModuleSource(t, "abi")); code != 0 {
		t.Fatalf("source add: %d %s", code, stderr)
	}
	return s
}

// publish makes the repository hold the packages for kernels (one at least).
func (s *rpmSystem) publish(kernels ...string) {
	s.t.Helper()
	outs := abiRPMOutputs(s.t)
	args := []string{"publish", "--repo", s.repo}
	for _, k := range kernels {
		args = append(args, outs[k])
	}
	if stdout, stderr, code := kmpack(s.t, args...); code != 0 {
		s.t.Fatalf("publish: %d %s%s", code, stdout, stderr)
	}
}

// refresh is the administrator's metadata refresh (kmpack never refreshes on its own).
func (s *rpmSystem) refresh() {
	s.t.Helper()
	args := []string{"makecache"}
	if s.zypper {
		args = []string{"ref", "-f"}
	}
	if o, err := s.pm(args...); err != nil {
		s.t.Fatalf("%v: %v\n%s", args, err, o)
	}
}

// spec names the package for kernel k, in the package manager's syntax.
func (s *rpmSystem) spec(k string) string {
	if s.zypper {
		return s.pkg + "=1.0_k" + strings.ReplaceAll(strings.TrimSuffix(k, "-amd64"), "-", "_") + "-1"
	}
	return s.pkg + "-1.0-1." + strings.ReplaceAll(k, "-", "_")
}

func (s *rpmSystem) installArgs(spec string) []string {
	if s.zypper {
		return []string{"in", "--no-recommends", spec}
	}
	return []string{"install", spec}
}

func (s *rpmSystem) pm(args ...string) (string, error) {
	var cmd *exec.Cmd
	if s.zypper {
		cmd = exec.Command("zypper", append([]string{"--root", s.root, "-n"}, args...)...)
	} else {
		cmd = exec.Command("dnf", append([]string{"-y", "--installroot=" + s.root}, args...)...)
	}
	cmd.Env = append(os.Environ(), "ZYPP_MODALIAS_SYSFS="+filepath.Join(s.root, "no-modaliases"))
	o, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok && s.zypper && ee.ExitCode() >= 100 {
		err = nil // done, with a remark (107: a scriptlet failed in the test root)
	}
	return string(o), err
}

func (s *rpmSystem) rpm(args ...string) (string, error) {
	o, err := exec.Command("rpm", append([]string{"--root", s.root}, args...)...).CombinedOutput()
	return string(o), err
}

// installed are the installed instances of the module's package.
func (s *rpmSystem) installed() []string {
	o, _ := s.rpm("-q", "--qf", "%{VERSION}-%{RELEASE}\n", s.pkg)
	var vs []string
	for _, l := range strings.Split(strings.TrimSpace(o), "\n") {
		if !strings.Contains(l, "not installed") && l != "" {
			vs = append(vs, l)
		}
	}
	slices.Sort(vs)
	return vs
}

func (s *rpmSystem) version(k string) string {
	if s.zypper {
		return "1.0_k" + strings.ReplaceAll(strings.TrimSuffix(k, "-amd64"), "-", "_") + "-1"
	}
	return "1.0-1." + strings.ReplaceAll(k, "-", "_")
}

func (s *rpmSystem) row(k string) target.StatusRow {
	s.t.Helper()
	return statusJSON(s.t, s.root)[k+" kmpack-abichange"]
}

func (s *rpmSystem) built() bool {
	_, err := os.Stat(filepath.Join(s.root, "lib/modules", s.r54, "updates/kmpack-built"))
	return err == nil
}

func (s *rpmSystem) autoinstall(wantCode int, args ...string) string {
	s.t.Helper()
	out, stderr, code := kmpack(s.t, append([]string{"autoinstall", "--root", s.root, "--lock-timeout", "1m"}, args...)...)
	if code != wantCode {
		s.t.Fatalf("autoinstall %v: exit %d, want %d\n%s\n%s", args, code, wantCode, out, stderr)
	}
	return out + stderr
}

// TestAutoinstallFromDnfRepository is step 3 on a Red Hat system with the real dnf and rpm:
// abichange's kmod for 53 is installed and its source registered; 54 arrives, whose CRCs the
// 53 build does not match (step 2 cannot serve). With no package for 54 in the repository,
// the row fails (54's headers are not installed) saying the repositories have none. Once the
// repository has it, autoinstall installs kmod-kmpack-abichange's 54 build with dnf, *beside*
// 53's (a second version of a kmod is an upgrade to dnf unless install-only): status says
// installed-from-repo, gate opens, nothing is built, another run changes nothing. Then, run
// as a kernel hook inside an rpm transaction (rpm's lock held by an ancestor), autoinstall
// cannot run dnf: the row waits (repo_pending, gate closed) and a detached autoinstall,
// started by it, installs the package once the transaction has ended.
func TestAutoinstallFromDnfRepository(t *testing.T) {
	s := newRPMSystem(t, false, testenv.Release53)
	out := s.autoinstall(exitAutoinstallFailed, s.r54)
	row := s.row(s.r54)
	if row.State != target.StateFailed || !strings.Contains(row.RepoReason, "no package "+s.pkg+" in the configured repositories (dnf)") ||
		!strings.Contains(row.Reason, "the headers of "+s.r54+" are not installed") {
		t.Fatalf("without 54's package in the repository: %+v\n%s", row, out)
	}

	s.publish(s.r53, s.r54)
	s.refresh()
	out = s.autoinstall(0, s.r54)
	row = s.row(s.r54)
	if row.State != target.StateFromRepo || row.Package != s.pkg || row.Version != s.version(s.r54) || row.RepoReason != "" {
		t.Fatalf("after autoinstall: %+v\n%s", row, out)
	}
	if got, want := s.installed(), []string{s.version(s.r53), s.version(s.r54)}; !slices.Equal(got, want) {
		t.Fatalf("installed %v, want both kernels' builds %v\n%s", got, want, out)
	}
	if s.built() || !strings.Contains(out, "installing "+s.pkg+" "+s.version(s.r54)+" from the repositories (dnf)") {
		t.Fatalf("built %v\n%s", s.built(), out)
	}
	if r53 := s.row(s.r53); r53.State != target.StateBuiltForKernel || r53.Version != s.version(s.r53) {
		t.Fatalf("53: %+v", r53)
	}
	if _, stderr, code := kmpack(t, "gate", "--root", s.root, s.r54); code != 0 {
		t.Fatalf("gate: %d %s", code, stderr)
	}
	if out := s.autoinstall(0, s.r54); strings.Contains(out, "installing") || s.row(s.r54).State != target.StateFromRepo {
		t.Fatalf("another run: %+v\n%s", s.row(s.r54), out)
	}

	// Inside an rpm transaction: a kernel's %posttrans runs kernel-install, which runs kmpack.
	if o, err := s.rpm("-e", "--noscripts", s.pkg+"-"+s.version(s.r54)); err != nil {
		t.Fatalf("rpm -e: %v\n%s", err, o)
	}
	dbpath, err := exec.Command("rpm", "--eval", "%_dbpath").Output()
	if err != nil {
		t.Fatal(err)
	}
	lock := filepath.Join(s.root, strings.TrimSpace(string(dbpath)), ".rpm.lock")
	until := filepath.Join(t.TempDir(), "transaction")
	os.WriteFile(until, nil, 0o644)
	logFile := filepath.Join(t.TempDir(), "hook.log")
	logw, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	hook := exec.Command(os.Args[0], bin, "autoinstall", "--hook", "--root", s.root, s.r54)
	hook.Env = append(os.Environ(), "KMPACK_TEST_HOLD_LOCK="+lock, "KMPACK_TEST_HOLD_UNTIL="+until)
	hook.Stdout, hook.Stderr = logw, logw
	if err := hook.Start(); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(until)
	for i := 0; i < 600; i++ {
		if _, err := os.Stat(until + ".ran"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	o := string(testenv.MustRead(t, logFile))
	if !strings.Contains(o, "is held by process") || !strings.Contains(o, "a kmpack autoinstall waits for process") {
		t.Fatalf("the hook inside the transaction:\n%s", o)
	}
	// Still inside the transaction: the row waits, the gate is closed, nothing is installed.
	// (dnf is not even asked: zypper's query would wait for the transaction's lock.)
	if row = s.row(s.r54); row.State != target.StateMissing || !row.RepoPending || row.RepoPackage != s.pkg ||
		!strings.Contains(row.Reason, "once dnf has finished") || s.built() {
		t.Fatalf("inside the transaction: %+v, built %v\n%s", row, s.built(), o)
	}
	if _, stderr, code := kmpack(t, "gate", "--root", s.root, s.r54); code != exitGateClosed || !strings.Contains(stderr, "waiting for") {
		t.Fatalf("gate inside the transaction: %d %s", code, stderr)
	}
	if got := s.installed(); !slices.Equal(got, []string{s.version(s.r53)}) {
		t.Fatalf("installed inside the transaction: %v", got)
	}
	// The transaction ends (the holder releases rpm's lock and lives on): the detached run,
	// which waited for that, installs.
	os.Remove(until)
	done := make(chan error, 1)
	go func() { done <- hook.Wait() }()
	start := time.Now()
	for row = s.row(s.r54); row.State != target.StateFromRepo && time.Since(start) < 2*time.Minute; row = s.row(s.r54) {
		time.Sleep(200 * time.Millisecond)
	}
	if row.State != target.StateFromRepo || row.Version != s.version(s.r54) || s.built() {
		t.Fatalf("after the transaction: %+v, built %v\n%s", row, s.built(), o)
	}
	select {
	case <-done:
		t.Errorf("installed only after the lock's holder exited (%v), not once its transaction ended", time.Since(start))
	default:
	}
	if err := <-done; err != nil {
		t.Fatalf("the transaction: %v\n%s", err, o)
	}
	if got, want := s.installed(), []string{s.version(s.r53), s.version(s.r54)}; !slices.Equal(got, want) {
		t.Fatalf("installed after the transaction %v, want %v", got, want)
	}
	dlog := string(testenv.MustRead(t, filepath.Join(s.root, target.DeferredLog)))
	if !strings.Contains(dlog, "transaction to end") || !strings.Contains(dlog, "installing "+s.pkg) {
		t.Fatalf("the deferred run's log:\n%s", dlog)
	}
	t.Logf("installed by the deferred run %v after the transaction ended", time.Since(start).Round(time.Millisecond))
	for left := true; left; {
		o, _ := exec.Command("pgrep", "-f", "--", "--root "+s.root).Output()
		if left = len(o) > 0; left && time.Since(start) > time.Minute {
			t.Fatalf("the deferred run is still running: %s", o)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestAutoinstallFromZypperRepository is step 3 on a SUSE system with the real zypper: the
// repository has abichange's KMPs for 53 and 54 (one name, <name>-kmp-<flavor>; the kernel in
// the version); 53's is installed. Without zypp.conf's multiversion for KMPs, zypper's plan
// would upgrade 53's KMP away: autoinstall asks for the plan first and refuses it, saying why
// (53's stays; the row fails, 54's headers being absent). With SUSE's default multiversion
// = provides:multiversion(kernel), 54's KMP is installed beside 53's.
func TestAutoinstallFromZypperRepository(t *testing.T) {
	s := newRPMSystem(t, true, testenv.Release53, testenv.Release54)
	os.WriteFile(filepath.Join(s.root, "no-modaliases"), nil, 0o644)
	out := s.autoinstall(exitAutoinstallFailed, s.r54)
	row := s.row(s.r54)
	if row.State != target.StateFailed || !strings.Contains(row.RepoReason, "would change installed packages (upgrade "+s.pkg+" "+s.version(s.r53)) ||
		!strings.Contains(row.RepoReason, "multiversion") {
		t.Fatalf("without multiversion: %+v\n%s", row, out)
	}
	if got := s.installed(); !slices.Equal(got, []string{s.version(s.r53)}) {
		t.Fatalf("installed %v, want 53's KMP alone\n%s", got, out)
	}

	os.MkdirAll(filepath.Join(s.root, "etc/zypp"), 0o755)
	os.WriteFile(filepath.Join(s.root, "etc/zypp/zypp.conf"), []byte("[main]\nmultiversion = provides:multiversion(kernel)\n"), 0o644)
	out = s.autoinstall(0, s.r54)
	row = s.row(s.r54)
	if row.State != target.StateFromRepo || row.Package != s.pkg || row.Version != s.version(s.r54) || s.built() {
		t.Fatalf("with multiversion: %+v, built %v\n%s", row, s.built(), out)
	}
	if got, want := s.installed(), []string{s.version(s.r53), s.version(s.r54)}; !slices.Equal(got, want) {
		t.Fatalf("installed %v, want both kernels' KMPs %v\n%s", got, want, out)
	}
	if text, _, _ := kmpack(t, "status", "--root", s.root); !strings.Contains(text, "installed-from-repo ("+s.pkg+" "+s.version(s.r54)+")") {
		t.Fatalf("status text:\n%s", text)
	}
}
