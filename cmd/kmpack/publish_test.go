package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
)

// snapshot maps every file under dir to its content.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			files[rel] = string(b)
		}
		return nil
	})
	return files
}

func sameFiles(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// aptRoot is a root apt-get installs into with this machine's apt and dpkg: its own
// configuration through APT_CONFIG (so the host's apt.conf.d is not read), dpkg --root with
// maintainer scripts run chroot-less ($DPKG_ROOT set), the host's kmod and libc6 recorded as
// installed.
type aptRoot struct {
	t          *testing.T
	root, conf string
}

func newAptRoot(t *testing.T, source string) *aptRoot {
	t.Helper()
	r := &aptRoot{t: t, root: testenv.DpkgRoot(t)}
	for _, d := range []string{"etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "etc/apt/trusted.gpg.d",
		"var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/log"} {
		os.MkdirAll(filepath.Join(r.root, d), 0o755)
	}
	os.WriteFile(filepath.Join(r.root, "etc/apt/sources.list"), []byte(source+"\n"), 0o644)
	r.conf = filepath.Join(t.TempDir(), "apt.conf")
	conf := `Dir "` + r.root + `/";
Dir::State::status "` + r.root + `/var/lib/dpkg/status";
APT::Architecture "amd64";
APT::Sandbox::User "root";
DPkg::Options { "--root=` + r.root + `"; "--force-script-chrootless"; "--log=` + r.root + `/var/log/dpkg.log"; };
`
	os.WriteFile(r.conf, []byte(conf), 0o644)
	// Never let dpkg install into this machine: the configuration apt uses must name the root.
	out, err := r.cmd("apt-config", "dump").Output()
	if err != nil || !strings.Contains(string(out), `"--root=`+r.root+`"`) {
		t.Fatalf("apt-config dump does not pass --root to dpkg: %v\n%s", err, out)
	}
	return r
}

func (r *aptRoot) cmd(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "APT_CONFIG="+r.conf, "DEBIAN_FRONTEND=noninteractive")
	return cmd
}

func (r *aptRoot) apt(args ...string) (string, error) {
	out, err := r.cmd("apt-get", append([]string{"-q", "-y"}, args...)...).CombinedOutput()
	return string(out), err
}

// recordsOnly drops the relations of the packages recorded in the root's status (the host's
// kmod and libc6, a kernel image): the root holds those records, not their dependency
// closures, and apt would try to repair them.
func (r *aptRoot) recordsOnly() {
	r.t.Helper()
	status := filepath.Join(r.root, "var/lib/dpkg/status")
	var keep []string
	skipping := false
	for _, l := range strings.Split(string(testenv.MustRead(r.t, status)), "\n") {
		if strings.HasPrefix(l, " ") && skipping {
			continue
		}
		name, _, _ := strings.Cut(l, ":")
		switch name {
		case "Depends", "Pre-Depends", "Recommends", "Suggests", "Breaks", "Conflicts":
			skipping = true
			continue
		}
		skipping = false
		keep = append(keep, l)
	}
	if err := os.WriteFile(status, []byte(strings.Join(keep, "\n")), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// installed is dpkg-query's status of pkg in the root ("" when unknown).
func (r *aptRoot) installed(pkg string) string {
	out, _ := exec.Command("dpkg-query", "--root", r.root, "-W", "-f", "${db:Status-Abbrev}", pkg).Output()
	return strings.TrimSpace(string(out))
}

// The apt repository kmpack publishes, judged by the real apt: with the key given as
// signed-by, apt-get update accepts the signed InRelease and apt-get installs the module
// package and the kmpack runtime into a root holding the kernel (dpkg records them installed,
// the module is on disk); without the key, apt-get update refuses the repository; a root
// without the kernel image cannot install the module package. Publishing twice changes no
// byte; publishing more keeps what is there; a package file that is not what packages.json
// says is a one-line error naming it, and the repository is left as it was.
func TestPublishAptJudgedByApt(t *testing.T) {
	testenv.Need(t, "apt-get", "apt-config", "dpkg", "dpkg-query", "gpg", "depmod")
	r53 := testenv.Release53
	cache := t.TempDir()
	// Packages and metadata dated alike: the runtime package built twice is the same file.
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	debs := buildDebs(t, cache, testenv.TestModuleSource(t, "hello"), r53)
	out := filepath.Dir(filepath.Dir(debs["kmpack"]))
	secret, _, keyring := testenv.GPGKey(t, "s3cret")
	t.Setenv("KMPACK_GPG_PASSPHRASE", "s3cret")
	repo := filepath.Join(t.TempDir(), "repo")

	publish := func(outputs ...string) (string, string, int) {
		return kmpackIn(t, cache, append([]string{"publish", "--repo", repo, "--gpg-key", secret}, outputs...)...)
	}
	if stdout, stderr, code := publish(out); code != 0 {
		t.Fatalf("publish: exit %d: %s%s", code, stdout, stderr)
	}
	first := snapshot(t, repo)
	for _, f := range []string{"dists/kmpack/InRelease", "dists/kmpack/Release.gpg", "dists/kmpack/main/binary-amd64/Packages.gz"} {
		if _, ok := first[f]; !ok {
			t.Errorf("the repository lacks %s", f)
		}
	}
	// gpgv, given the key, checks InRelease and Release.gpg as apt does.
	for _, args := range [][]string{{"dists/kmpack/InRelease"}, {"dists/kmpack/Release.gpg", "dists/kmpack/Release"}} {
		cmd := exec.Command("gpgv", append([]string{"--keyring", keyring}, args...)...)
		cmd.Dir = repo
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("gpgv %v: %v\n%s", args, err, o)
		}
	}
	// Twice: not a byte changes.
	if stdout, stderr, code := publish(out, "--json"); code != 0 || !strings.Contains(stdout, `"changed": false`) || !strings.Contains(stdout, `"packages": 2`) {
		t.Fatalf("second publish: exit %d: %s%s", code, stdout, stderr)
	}
	if !sameFiles(first, snapshot(t, repo)) {
		t.Errorf("publishing the same packages again changed the repository")
	}
	// Without SOURCE_DATE_EPOCH (metadata would be dated now) too: nothing to write, nothing written.
	t.Setenv("SOURCE_DATE_EPOCH", "")
	if stdout, stderr, code := publish(out); code != 0 || !strings.Contains(stdout, "unchanged") || !sameFiles(first, snapshot(t, repo)) {
		t.Fatalf("publish without SOURCE_DATE_EPOCH: exit %d: %s%s", code, stdout, stderr)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")

	// apt with the key: update accepts the signature, install works.
	pkg := "kmpack-hello-modules-" + r53
	signed := newAptRoot(t, "deb [signed-by="+keyring+"] file:"+repo+" kmpack main")
	testenv.InstallKernel(t, signed.root, r53)
	signed.recordsOnly()
	if o, err := signed.apt("update"); err != nil || strings.Contains(o, "W:") {
		t.Fatalf("apt-get update with the key: %v\n%s", err, o)
	}
	if o, err := signed.apt("install", pkg); err != nil {
		t.Fatalf("apt-get install %s: %v\n%s", pkg, err, o)
	}
	for _, p := range []string{pkg, "kmpack"} {
		if s := signed.installed(p); s != "ii" {
			t.Errorf("dpkg status of %s in the root: %q, want ii", p, s)
		}
	}
	ko := filepath.Join(signed.root, "lib/modules", r53, "updates/kmpack-hello/kmpack_hello.ko")
	if _, err := os.Stat(ko); err != nil {
		t.Errorf("the module is not in the root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(signed.root, formats.RuntimeBinary)); err != nil {
		t.Errorf("the runtime is not in the root: %v", err)
	}

	// A root without the kernel image: apt refuses the module package, naming the image.
	noKernel := newAptRoot(t, "deb [signed-by="+keyring+"] file:"+repo+" kmpack main")
	noKernel.recordsOnly()
	noKernel.apt("update")
	if o, err := noKernel.apt("install", pkg); err == nil || !strings.Contains(o, "Depends: linux-image-"+r53) {
		t.Errorf("apt-get install without the kernel image: %v, want the unmet Depends\n%s", err, o)
	}
	if s := noKernel.installed(pkg); s == "ii" {
		t.Errorf("installed without its kernel")
	}

	// apt without the key refuses the repository.
	unsigned := newAptRoot(t, "deb file:"+repo+" kmpack main")
	if o, err := unsigned.apt("update"); err == nil || !strings.Contains(o, "NO_PUBKEY") || !strings.Contains(o, "is not signed") {
		t.Errorf("apt-get update without the key: %v, want NO_PUBKEY and 'is not signed'\n%s", err, o)
	}

	// Hostile OUTPUTs: a package file changed after packaging, a file that is no .deb though
	// the index says it is. One line naming the file, exit 3, the repository untouched.
	bad := filepath.Join(t.TempDir(), "bad")
	testenv.CopyTree(t, out, bad)
	badDeb := filepath.Join(bad, formats.PackagesDir, filepath.Base(debs[pkg]))
	os.WriteFile(badDeb, []byte("!<arch>\nnot a deb"), 0o644)
	fake := filepath.Join(t.TempDir(), "fake")
	testenv.CopyTree(t, out, fake)
	fakeDeb := filepath.Join(fake, formats.PackagesDir, filepath.Base(debs[pkg]))
	os.WriteFile(fakeDeb, []byte("!<arch>\nnot a deb"), 0o644)
	reindex(t, fake)
	for _, c := range []struct{ dir, file string }{{bad, badDeb}, {fake, fakeDeb}} {
		stdout, stderr, code := publish(c.dir)
		if code != 3 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.file) || stdout != "" {
			t.Errorf("publish of %s: exit %d, stderr %q, stdout %q; want exit 3 and one line naming it", c.file, code, stderr, stdout)
		}
		if !sameFiles(first, snapshot(t, repo)) {
			t.Errorf("a refused publication changed the repository")
		}
	}

	// More packages: what was there stays, byte for byte, and apt sees both versions.
	more := buildDebs(t, cache, withVersion(t, testenv.TestModuleSource(t, "hello"), "1.1"), r53)
	if stdout, stderr, code := publish(filepath.Dir(filepath.Dir(more[pkg]))); code != 0 {
		t.Fatalf("publish 1.1: exit %d: %s%s", code, stdout, stderr)
	}
	now := snapshot(t, repo)
	for f, b := range first {
		if strings.HasPrefix(f, "pool/") && now[f] != b {
			t.Errorf("%s changed or vanished", f)
		}
	}
	if o, err := signed.apt("update"); err != nil {
		t.Fatalf("apt-get update after adding: %v\n%s", err, o)
	}
	policy, _ := signed.cmd("apt-cache", "madison", pkg).Output()
	if !strings.Contains(string(policy), "1.0-1") || !strings.Contains(string(policy), "1.1-1") {
		t.Errorf("apt-cache madison %s after adding 1.1: %s", pkg, policy)
	}
	if o, err := signed.apt("install", pkg); err != nil || signed.installed(pkg) != "ii" {
		t.Errorf("apt-get upgrade to 1.1: %v\n%s", err, o)
	}
	v, _ := exec.Command("dpkg-query", "--root", signed.root, "-W", "-f", "${Version}", pkg).Output()
	if string(v) != "1.1-1" {
		t.Errorf("installed version after the upgrade: %q", v)
	}
}

// reindex rewrites an OUTPUT's packages.json with its files' current sizes and sha256.
func reindex(t *testing.T, out string) {
	t.Helper()
	index := filepath.Join(out, formats.PackagesDir, "packages.json")
	var written []formats.Written
	if err := json.Unmarshal(testenv.MustRead(t, index), &written); err != nil {
		t.Fatal(err)
	}
	for i, w := range written {
		b := testenv.MustRead(t, filepath.Join(out, formats.PackagesDir, w.File))
		written[i].Size = int64(len(b))
		written[i].SHA256 = sha256hex(b)
	}
	b, _ := json.Marshal(written)
	os.WriteFile(index, bytes.TrimSpace(b), 0o644)
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// symvers maps the exports of release's real Module.symvers to their CRCs (0x-prefixed).
func symvers(t *testing.T, release string) map[string]string {
	t.Helper()
	crcs := map[string]string{}
	for _, l := range strings.Split(string(testenv.MustRead(t, filepath.Join(testenv.HeadersDir(t, release), "Module.symvers"))), "\n") {
		if f := strings.Split(l, "\t"); len(f) >= 2 {
			crcs[f[1]] = f[0]
		}
	}
	return crcs
}

// fakeKernelRPM is a package that provides, as a Red Hat kernel does, kernel(SYM) = CRC for
// each of syms with the CRCs of release's real Module.symvers (with suse, as a SUSE kernel
// does, ksym(amd64:SYM) = CRC), and what the module packages' scriptlets require.
func fakeKernelRPM(t *testing.T, release string, syms []string, out string, suse bool) string {
	t.Helper()
	crcs := symvers(t, release)
	// system-release(releasever) is how dnf tells a root's release (a RHEL root has it from
	// redhat-release).
	provides := []string{"/usr/sbin/depmod", "/usr/sbin/weak-modules", "/bin/sh", "coreutils", "grep", "suse-kernel-rpm-scriptlets", "system-release(releasever) = 9"}
	for _, s := range syms {
		if crcs[s] == "" {
			t.Fatalf("%s: no CRC for %s", release, s)
		}
		if suse {
			provides = append(provides, "ksym(amd64:"+s+") = "+strings.TrimPrefix(crcs[s], "0x"))
		} else {
			provides = append(provides, "kernel("+s+") = "+crcs[s])
		}
	}
	stage := t.TempDir()
	os.MkdirAll(filepath.Join(stage, "boot"), 0o755)
	os.WriteFile(filepath.Join(stage, "boot", "config-"+release), []byte("# fake\n"), 0o644)
	name := "fake-kernel-" + strings.NewReplacer("+", "_", "~", "_").Replace(release)
	return testenv.BuildRPM(t, testenv.RPMSpec{Name: name, Version: "1", Arch: "noarch", Stage: stage, Provides: provides}, out)
}

// importedSymbols are the symbols an RPM requires as kernel(SYM) or ksym(FLAVOR:SYM), read
// with rpm -qp.
func importedSymbols(t *testing.T, rpmFile string) []string {
	t.Helper()
	reqs, err := exec.Command("rpm", "-qp", "--requires", rpmFile).Output()
	if err != nil {
		t.Fatal(err)
	}
	var syms []string
	for _, l := range strings.Split(string(reqs), "\n") {
		if s, ok := strings.CutPrefix(l, "kernel("); ok {
			syms = append(syms, s[:strings.Index(s, ")")])
		} else if s, ok := strings.CutPrefix(l, "ksym("); ok {
			s = s[:strings.Index(s, ")")]
			syms = append(syms, s[strings.Index(s, ":")+1:])
		}
	}
	if len(syms) == 0 {
		t.Fatalf("%s requires no kernel symbols", rpmFile)
	}
	return syms
}

// The rpm-md repository kmpack publishes, judged by the real dnf (--installroot): with the
// key, dnf checks repomd.xml.asc and installs the rhel kmod into a root whose kernel provides
// the kernel() symbols at the CRCs the module was built against; in a root whose kernel has
// other CRCs, dnf refuses it naming the kernel() requirement; a repomd.xml changed after
// signing is refused.
func TestPublishRPMMDJudgedByDnf(t *testing.T) {
	testenv.Need(t, "dnf", "rpm", "rpmbuild", "gpgconf")
	r53, other := testenv.Release53, testenv.Release612
	cache := t.TempDir()
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	out := filepath.Join(t.TempDir(), "out")
	if _, stderr, code := kmpackIn(t, cache, "build", "-q", "-o", out, "--profile", "rhel", "--no-source-package",
		"-k", testenv.HeadersDir(t, r53), testenv.TestModuleSource(t, "hello")); code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	secret, public, _ := testenv.GPGKey(t, "s3cret")
	t.Setenv("KMPACK_GPG_PASSPHRASE", "s3cret")
	repo := filepath.Join(t.TempDir(), "repo")
	if stdout, stderr, code := kmpackIn(t, cache, "publish", "--repo", repo, "--gpg-key", secret, out); code != 0 {
		t.Fatalf("publish: exit %d: %s%s", code, stdout, stderr)
	}
	first := snapshot(t, repo)
	if stdout, _, code := kmpackIn(t, cache, "publish", "--repo", repo, "--gpg-key", secret, out); code != 0 || !strings.Contains(stdout, "unchanged") || !sameFiles(first, snapshot(t, repo)) {
		t.Errorf("second publish: exit %d %s, or the repository changed", code, stdout)
	}
	kmods, _ := filepath.Glob(filepath.Join(repo, "rpms/x86_64/kmod-kmpack-hello-*.rpm"))
	if len(kmods) != 1 {
		t.Fatalf("kmod in the repository: %v", kmods)
	}
	syms := importedSymbols(t, kmods[0])
	kernels := t.TempDir()
	good, bad := fakeKernelRPM(t, r53, syms, kernels, false), fakeKernelRPM(t, other, syms, kernels, false)

	dnf := func(root string, args ...string) (string, error) {
		base := []string{"-y", "--installroot=" + root, "--releasever=9", "--refresh", "--repofrompath=kmpack,file://" + repo,
			"--repo=kmpack", "--setopt=kmpack.gpgcheck=0", "--setopt=kmpack.repo_gpgcheck=1", "--setopt=kmpack.gpgkey=file://" + public,
			"--setopt=skip_if_unavailable=False", "--setopt=tsflags=noscripts"}
		cmd := exec.Command("dnf", append(base, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+root)
		o, err := cmd.CombinedOutput()
		// repo_gpgcheck leaves a gpg-agent behind for the root's keyring.
		rings, _ := filepath.Glob(filepath.Join(root, "var/cache/dnf/*/pubring"))
		for _, r := range rings {
			exec.Command("gpgconf", "--homedir", r, "--kill", "gpg-agent").Run()
		}
		return string(o), err
	}
	rpmQ := func(root, pkg string) bool {
		cmd := exec.Command("rpm", "--root", root, "-q", pkg)
		cmd.Env = append(os.Environ(), "HOME="+root)
		return cmd.Run() == nil
	}
	pkg := "kmod-kmpack-hello"
	root := t.TempDir()
	if o, err := dnf(root, "install", good); err != nil {
		t.Fatalf("dnf install the kernel: %v\n%s", err, o)
	}
	if o, err := dnf(root, "install", pkg); err != nil || !rpmQ(root, pkg) {
		t.Fatalf("dnf install %s: %v\n%s", pkg, err, o)
	}
	ko, _ := filepath.Glob(filepath.Join(root, "lib/modules", r53, "extra/*/kmpack_hello.ko*"))
	if len(ko) != 1 {
		t.Errorf("the module is not in the root: %v", ko)
	}

	otherRoot := t.TempDir()
	if o, err := dnf(otherRoot, "install", bad); err != nil {
		t.Fatalf("dnf install the other kernel: %v\n%s", err, o)
	}
	if o, err := dnf(otherRoot, "install", pkg); err == nil || !strings.Contains(o, "nothing provides kernel(") || rpmQ(otherRoot, pkg) {
		t.Errorf("dnf install %s against other CRCs: %v, want 'nothing provides kernel(...)'\n%s", pkg, err, o)
	}

	// repomd.xml changed after signing: refused.
	md := filepath.Join(repo, "repodata/repomd.xml")
	os.WriteFile(md, append(testenv.MustRead(t, md), ' '), 0o644)
	if o, err := dnf(t.TempDir(), "install", pkg); err == nil || !strings.Contains(o, "GPG signature verification error") {
		t.Errorf("dnf with a repomd.xml changed after signing: %v\n%s", err, o)
	}
}

// pacmanRoot is a root pacman installs into, with its own configuration naming the published
// database; withKernel records a "linux" package as installed (pacman's local database).
func pacmanRoot(t *testing.T, repo string, withKernel bool) func(args ...string) (string, error) {
	t.Helper()
	root := t.TempDir()
	local := filepath.Join(root, "var/lib/pacman/local")
	os.MkdirAll(local, 0o755)
	os.WriteFile(filepath.Join(local, "ALPM_DB_VERSION"), []byte("9\n"), 0o644)
	if withKernel {
		os.MkdirAll(filepath.Join(local, "linux-6.1.0-1"), 0o755)
		os.WriteFile(filepath.Join(local, "linux-6.1.0-1/desc"), []byte("%NAME%\nlinux\n\n%VERSION%\n6.1.0-1\n\n"), 0o644)
		os.WriteFile(filepath.Join(local, "linux-6.1.0-1/files"), []byte("%FILES%\n\n"), 0o644)
	}
	conf := filepath.Join(t.TempDir(), "pacman.conf")
	os.WriteFile(conf, []byte("[options]\nArchitecture = x86_64\nSigLevel = Never\n[kmpack]\nServer = file://"+repo+"/archlinux\n"), 0o644)
	return func(args ...string) (string, error) {
		base := []string{"--root", root, "--dbpath", filepath.Join(root, "var/lib/pacman"), "--config", conf,
			"--cachedir", filepath.Join(root, "var/cache/pacman/pkg"), "--logfile", filepath.Join(root, "var/log/pacman.log"),
			"--hookdir", filepath.Join(root, "etc/pacman.d/hooks"), "--gpgdir", filepath.Join(root, "etc/pacman.d/gnupg"), "--noconfirm"}
		out, err := exec.Command("pacman", append(base, args...)...).CombinedOutput()
		if err == nil && strings.Contains(string(out), "error:") {
			err = fmt.Errorf("pacman printed an error")
		}
		if len(args) > 0 && args[0] == "-Q" {
			return string(out), err
		}
		return string(out) + "\n[root " + root + "]", err
	}
}

// The Arch database kmpack publishes, judged by the real pacman (--root): -Sy reads it, -S
// installs the module package (after checking its sha256 against the database) into a root
// whose local database holds the kernel, and refuses it in a root without; a package file
// changed after publishing is refused as corrupted.
func TestPublishArchJudgedByPacman(t *testing.T) {
	testenv.Need(t, "pacman")
	r53 := testenv.Release53
	cache := t.TempDir()
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	out := filepath.Join(t.TempDir(), "out")
	if _, stderr, code := kmpackIn(t, cache, "build", "-q", "-o", out, "--profile", "arch", "--no-source-package",
		"-k", testenv.HeadersDir(t, r53), testenv.TestModuleSource(t, "hello")); code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	repo := filepath.Join(t.TempDir(), "repo")
	if stdout, stderr, code := kmpackIn(t, cache, "publish", "--repo", repo, out); code != 0 {
		t.Fatalf("publish: exit %d: %s%s", code, stdout, stderr)
	}
	first := snapshot(t, repo)
	if stdout, _, code := kmpackIn(t, cache, "publish", "--repo", repo, out); code != 0 || !strings.Contains(stdout, "unchanged") || !sameFiles(first, snapshot(t, repo)) {
		t.Errorf("second publish: exit %d %s, or the repository changed", code, stdout)
	}
	pkg := "kmpack-hello-modules-" + r53
	pacman := pacmanRoot(t, repo, true)
	if o, err := pacman("-Sy"); err != nil {
		t.Fatalf("pacman -Sy: %v\n%s", err, o)
	}
	if o, err := pacman("-S", pkg); err != nil {
		t.Fatalf("pacman -S %s: %v\n%s", pkg, err, o)
	}
	if o, err := pacman("-Q", pkg); err != nil || strings.TrimSpace(o) != pkg+" 1.0-1" {
		t.Errorf("pacman -Q %s: %v %q", pkg, err, o)
	}
	if o, _ := pacman("-Ql", pkg); !strings.Contains(o, "/usr/lib/modules/"+r53+"/updates/kmpack-hello/kmpack_hello.ko") {
		t.Errorf("pacman -Ql %s: %s", pkg, o)
	}

	noKernel := pacmanRoot(t, repo, false)
	noKernel("-Sy")
	if o, err := noKernel("-S", pkg); err == nil || !strings.Contains(o, "unable to satisfy dependency 'linux'") {
		t.Errorf("pacman -S without the kernel: %v, want the unsatisfied dependency\n%s", err, o)
	}

	files, _ := filepath.Glob(filepath.Join(repo, "archlinux/*.pkg.tar.zst"))
	if len(files) != 1 {
		t.Fatalf("packages in the repository: %v", files)
	}
	b := testenv.MustRead(t, files[0])
	b[len(b)-1] ^= 1
	os.WriteFile(files[0], b, 0o644)
	corrupt := pacmanRoot(t, repo, true)
	corrupt("-Sy")
	if o, err := corrupt("-S", pkg); err == nil || !strings.Contains(o, "corrupted") {
		t.Errorf("pacman -S of a changed package file: %v, want it refused as corrupted\n%s", err, o)
	}
}

// The rpm-md repository kmpack publishes, judged by the real zypper (--root), as SUSE users
// install a KMP: the repository holds the builds for 6.1.0-53 and 6.12; the root's (test-built)
// kernel package provides ksym(amd64:SYM) = CRC for the module's imports with 53's real CRCs.
// zypper checks repomd.xml.asc with the key it imports from repomd.xml.key, installs the 53
// build asked for by its <name>-kmp-<flavor>-k<kver> provide, and refuses the 6.12 build,
// naming the ksym() requirement 53's kernel does not provide.
func TestPublishRPMMDJudgedByZypper(t *testing.T) {
	testenv.Need(t, "zypper", "rpm", "rpmbuild", "busybox")
	r53, r612 := testenv.Release53, testenv.Release612
	cache := t.TempDir()
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	out := filepath.Join(t.TempDir(), "out")
	if _, stderr, code := kmpackIn(t, cache, "build", "-q", "-o", out, "--profile", "suse", "--no-source-package",
		"-k", testenv.HeadersDir(t, r53), "-k", testenv.HeadersDir(t, r612), testenv.TestModuleSource(t, "hello")); code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	secret, _, _ := testenv.GPGKey(t, "s3cret")
	t.Setenv("KMPACK_GPG_PASSPHRASE", "s3cret")
	repo := filepath.Join(t.TempDir(), "repo")
	if stdout, stderr, code := kmpackIn(t, cache, "publish", "--repo", repo, "--gpg-key", secret, out); code != 0 {
		t.Fatalf("publish: exit %d: %s%s", code, stdout, stderr)
	}
	kmp53, _ := filepath.Glob(filepath.Join(repo, "rpms/x86_64/kmpack-hello-kmp-amd64-*_k6.1.0_53-1.x86_64.rpm"))
	kmp612, _ := filepath.Glob(filepath.Join(repo, "rpms/x86_64/kmpack-hello-kmp-amd64-*_k6.12*.rpm"))
	if len(kmp53) != 1 || len(kmp612) != 1 {
		t.Fatalf("KMPs in the repository: %v %v", kmp53, kmp612)
	}
	kernel := fakeKernelRPM(t, r53, importedSymbols(t, kmp53[0]), t.TempDir(), true)

	root := t.TempDir()
	zypper := func(args ...string) (string, int) {
		cmd := exec.Command("zypper", append([]string{"--root", root, "-n"}, args...)...)
		cmd.Env = append(os.Environ(), "HOME=/root", "ZYPP_MODALIAS_SYSFS="+filepath.Join(root, "no-modaliases"))
		o, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(o), code
	}
	installed := func(pkg string) bool {
		cmd := exec.Command("rpm", "--root", root, "-q", pkg)
		cmd.Env = append(os.Environ(), "HOME=/root")
		return cmd.Run() == nil
	}
	os.WriteFile(filepath.Join(root, "no-modaliases"), nil, 0o644)
	// The KMP's scriptlets run for real, chrooted into the root, with a static busybox as
	// /bin/sh; they find SUSE's kernel-scriptlets tools absent and say so.
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	if err := exec.Command("cp", "/bin/busybox", filepath.Join(root, "bin/busybox")).Run(); err != nil {
		t.Fatal(err)
	}
	os.Symlink("busybox", filepath.Join(root, "bin/sh"))
	if o, code := zypper("ar", "-t", "rpm-md", "file://"+repo, "kmpack"); code != 0 {
		t.Fatalf("zypper ar: %d\n%s", code, o)
	}
	if o, code := zypper("--gpg-auto-import-keys", "ref"); code != 0 || !strings.Contains(o, "gpg-pubkey") {
		t.Fatalf("zypper ref (importing repomd.xml.key, checking repomd.xml.asc): %d\n%s", code, o)
	}
	// The test kernel is an unsigned local file: only its installation skips signature checks.
	if o, code := zypper("--no-gpg-checks", "in", "--no-recommends", kernel); code != 0 {
		t.Fatalf("zypper in the kernel: %d\n%s", code, o)
	}
	want53 := "kmpack-hello-kmp-amd64-k6.1.0_53"
	if o, code := zypper("in", "--no-recommends", want53); code != 0 || !installed("kmpack-hello-kmp-amd64") ||
		!strings.Contains(o, "Cannot execute /usr/lib/module-init-tools/kernel-scriptlets/kmp-post") {
		t.Fatalf("zypper in %s: %d, want it installed and its %%post run\n%s", want53, code, o)
	}
	if _, err := os.Stat(filepath.Join(root, "lib/modules", r53, "updates/kmpack_hello.ko")); err != nil {
		ko, _ := filepath.Glob(filepath.Join(root, "lib/modules", r53, "*/*kmpack_hello.ko*"))
		if len(ko) == 0 {
			t.Errorf("the module is not in the root")
		}
	}
	q, _ := exec.Command("rpm", "--root", root, "-q", "--qf", "%{VERSION}", "kmpack-hello-kmp-amd64").Output()
	if string(q) != "1.0_k6.1.0_53" {
		t.Errorf("installed KMP version %q, want the 53 build", q)
	}
	want612 := "kmpack-hello-kmp-amd64-k" + strings.TrimSuffix(r612, "-amd64")
	crcs := symvers(t, r612)
	o, code := zypper("in", "--no-recommends", want612)
	if code == 0 || code == 107 || !strings.Contains(o, "nothing provides ksym(amd64:") {
		t.Errorf("zypper in %s against 53's symbols: %d, want the missing ksym() named\n%s", want612, code, o)
	}
	named := false
	for _, s := range importedSymbols(t, kmp612[0]) {
		if strings.Contains(o, "ksym(amd64:"+s+") = "+strings.TrimPrefix(crcs[s], "0x")) {
			named = true
		}
	}
	if !named {
		t.Errorf("zypper's refusal names no ksym() of 6.12's CRCs:\n%s", o)
	}
	// A repomd.xml changed after signing: zypper's refresh refuses it.
	md := filepath.Join(repo, "repodata/repomd.xml")
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(md, append(b, "<!-- changed -->\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	if o, code := zypper("ref", "-f", "kmpack"); code == 0 || !strings.Contains(strings.ToLower(o), "signature verification failed") {
		t.Errorf("zypper ref with a repomd.xml changed after signing: %d, want a refusal naming the signature\n%s", code, o)
	}
}
