package target

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/weakupdates"
)

// Autoinstall's step 3: a prebuilt module package for the kernel, installed from the machine's
// configured repositories by the system's own package manager.
//
// Which package, with apt: the registrations say it. A module package of the debian profile is
// <name>-modules-<kernel> and registers (add-kmp) its package name and kernel; for kernel K2 the
// package is that name with the kernel release replaced: <name>-modules-K2. Only that exact
// name at the version the repositories offer for it (name=version) is ever installed: a package
// that merely Provides the name is not that name, and apt is never left to pick it. With dnf
// and zypper (rpm.go) the name is the rpm profile's, the same for every kernel, and the build
// for K2 is the version that carries K2's tag.
//
// The package manager is found at fixed paths (never a command a file names), runs with a
// bounded time (RepoTimeout), removes nothing (--no-remove) and installs no recommendations.
// It runs while autoinstall does NOT hold its lock: the package's maintainer scripts run kmpack
// (weak-updates add-kmp, which takes the engine's lock; possibly autoinstall or source add,
// which take autoinstall's), and nothing may wait for itself.

// Fixed paths of the package managers' tools.
const (
	aptGetPath    = "/usr/bin/apt-get"
	aptCachePath  = "/usr/bin/apt-cache"
	aptConfigPath = "/usr/bin/apt-config"
	dpkgQueryPath = "/usr/bin/dpkg-query"
)

// DefaultRepoTimeout bounds one package manager run (a query, or an install with its download).
const DefaultRepoTimeout = 10 * time.Minute

// repoPendingDir holds one empty file per kernel whose step 3 waits for the package manager
// that is running now (a kernel hook inside dpkg): the runtime's apt DPkg::Post-Invoke snippet
// runs kmpack autoinstall again when the marker is there.
const repoPendingDir = autoDir + "/repo-pending"

// RepoPendingDir is repoPendingDir from the root, for the runtime package's apt snippet.
const RepoPendingDir = "/" + repoPendingDir

// InPackageTransaction tells whether this process runs inside a package manager's transaction
// (a maintainer script, or a kernel hook a maintainer script runs), where the package manager
// cannot be called: dpkg holds its lock until the transaction ends. dpkg sets
// DPKG_MAINTSCRIPT_NAME for every maintainer script and its children.
func InPackageTransaction() bool {
	return os.Getenv("DPKG_MAINTSCRIPT_NAME") != ""
}

// inTransaction is InPackageTransaction, or one of the package manager's transaction locks
// held by one of this process's ancestors (then its pid): a script that cleared the
// environment, or a kernel hook an rpm scriptlet runs (rpm sets no variable), still runs
// inside the transaction, and a package manager started now would wait for its own caller.
func (o *Options) inTransaction(r *os.Root, locks []txLock) (bool, int) {
	if InPackageTransaction() {
		return true, 0
	}
	for _, l := range locks {
		if pid := l.holder(r); pid > 0 && isAncestor(pid) {
			o.logf("%s is held by process %d, which runs this one", o.display(l.path), pid)
			return true, pid
		}
	}
	return false, 0
}

// txLock is a package manager's lock: a POSIX record lock on path (dpkg, apt, rpm), or a file
// holding the pid of the process that holds it (libzypp's zypp.pid, which is not locked). host
// says path is on this machine, whatever the root (libzypp's lock is, even with --root).
type txLock struct {
	path    string
	pidFile bool
	host    bool
}

// holder is the process holding the lock, 0 when none or unknown.
func (l txLock) holder(r *os.Root) int {
	if !l.pidFile {
		return fcntlLockHolder(r, l.path)
	}
	var f *os.File
	var err error
	if l.host {
		f, err = os.OpenFile(l.path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	} else {
		f, err = r.OpenFile(l.path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	}
	if err != nil {
		return 0
	}
	defer f.Close()
	b := make([]byte, 32)
	n, _ := io.ReadFull(f, b)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil || pid < 1 {
		return 0
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		return 0 // a stale file: libzypp checks the process too
	}
	return pid
}

// fcntlLockHolder is the process holding a POSIX record lock on name (dpkg's and apt's kind of
// lock), 0 when none or unknown.
func fcntlLockHolder(r *os.Root, name string) int {
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return 0
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil || lk.Type == syscall.F_UNLCK {
		return 0
	}
	return int(lk.Pid)
}

// isAncestor tells whether pid is this process's parent, or its parent's, and so on.
func isAncestor(pid int) bool {
	// A package manager that is PID 1 (a container build's RUN dnf install) counts too.
	for p, n := os.Getppid(), 0; p >= 1 && n < 64; n++ {
		if p == pid {
			return true
		}
		if p == 1 {
			return false
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			return false
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses, the last ")" ends it.
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if i < 0 || len(f) < 2 {
			return false
		}
		if _, err := fmt.Sscan(f[1], &p); err != nil {
			return false
		}
	}
	return false
}

// repoManager is the system's package manager as step 3 drives it.
type repoManager interface {
	name() string
	// packageFor is the name of module's package for kernel k, "" when none can be named.
	packageFor(kmps []weakupdates.KMP, module, k string) string
	// candidate is the version the repositories offer of pkg as the build for kernel k, ""
	// when none.
	candidate(ctx context.Context, pkg, k string) (string, error)
	// install installs exactly pkg at version and checks that it is installed.
	install(ctx context.Context, pkg, version string) error
	// locks are the package database's locks (from the root) that the package manager holds
	// for a whole transaction: held by an ancestor, this process runs inside one.
	locks() []txLock
	// deferSelf tells whether a deferred step 3 must be run by autoinstall itself once the
	// transaction ended (no package manager hook does it).
	deferSelf() bool
	// queryInTransaction tells whether candidate can run inside the package manager's own
	// transaction (zypper's query waits for the lock the transaction holds).
	queryInTransaction() bool
	close()
}

// repoManagerFor is the package manager that manages the root, nil when none this kmpack
// drives is (no apt, dnf or zypper on this machine) or no repository is configured.
func (o *Options) repoManagerFor(r *os.Root) (repoManager, error) {
	if !dpkgManaged(r) {
		if m := o.rpmManagerFor(r); m != nil {
			return m, nil
		}
		return nil, nil
	}
	for _, p := range []string{aptGetPath, aptCachePath, dpkgQueryPath} {
		if _, err := os.Stat(p); err != nil {
			return nil, nil
		}
	}
	if !aptSourcesConfigured(r) {
		return nil, nil
	}
	a := &aptManager{o: o}
	if o.root() == "/" {
		return a, nil
	}
	root, err := filepath.Abs(o.root())
	if err != nil {
		return nil, err
	}
	if strings.ContainsAny(root, "\"{};\n\r\\") {
		return nil, fmt.Errorf("%s: a root path apt's configuration cannot quote", root)
	}
	// apt reads the file APT_CONFIG names, then the root's own apt.conf and apt.conf.d (Dir);
	// never this machine's. dpkg installs into the root, running maintainer scripts with
	// DPKG_ROOT set, as kmpack's tests and image builders install there.
	dir, err := os.MkdirTemp("", "kmpack-apt-")
	if err != nil {
		return nil, err
	}
	a.tmp = dir
	a.conf = filepath.Join(dir, "apt.conf")
	conf := `Dir "` + root + `/";
Dir::State::status "` + root + `/var/lib/dpkg/status";
DPkg::Options { "--root=` + root + `"; "--force-script-chrootless"; "--log=` + root + `/var/log/dpkg.log"; };
`
	if err := os.WriteFile(a.conf, []byte(conf), 0o600); err != nil {
		a.close()
		return nil, err
	}
	a.admindir = root + "/var/lib/dpkg"
	// Never let dpkg install into this machine: the configuration apt ends with must pass the
	// root to dpkg (the root's apt.conf.d could say otherwise).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := a.run(ctx, aptConfigPath, "dump")
	if err == nil {
		err = checkAptDump(out, root)
	}
	if err != nil {
		a.close()
		return nil, fmt.Errorf("apt's configuration for %s: %v: not installing there", root, err)
	}
	return a, nil
}

// checkAptDump checks apt-config dump's answer for a root: apt's Dir is the root, and dpkg is
// given --root=ROOT and no other root, instdir, admindir or chroot (the root's apt.conf.d, read
// after kmpack's file, could say otherwise, and dpkg would install into this machine).
func checkAptDump(out, root string) error {
	rootOK, dirOK := false, false
	for _, l := range strings.Split(out, "\n") {
		key, val, ok := strings.Cut(strings.TrimSpace(l), " ")
		if !ok {
			continue
		}
		val = strings.TrimSuffix(strings.TrimPrefix(val, `"`), `";`)
		switch {
		case strings.EqualFold(key, "Dir"):
			if val != root+"/" {
				return fmt.Errorf("Dir is %q", val)
			}
			dirOK = true
		case strings.EqualFold(key, "DPkg::Options::"):
			for _, opt := range []string{"--root", "--instdir", "--admindir"} {
				if strings.HasPrefix(val, opt) {
					if val != "--root="+root {
						return fmt.Errorf("dpkg is given %s", val)
					}
					rootOK = true
				}
			}
		case strings.HasPrefix(strings.ToLower(key), "dpkg::chroot-directory"):
			if val != "/" && val != "" {
				return fmt.Errorf("dpkg runs chrooted into %s", val)
			}
		}
	}
	if !rootOK || !dirOK {
		return fmt.Errorf("apt-config dump does not show Dir %q and dpkg's --root=%s", root+"/", root)
	}
	return nil
}

// aptSourcesConfigured tells whether the root has apt repositories configured (sources.list or
// a file in sources.list.d) and package lists.
func aptSourcesConfigured(r *os.Root) bool {
	if _, err := r.Stat("var/lib/apt/lists"); err != nil {
		return false
	}
	if fi, err := r.Stat("etc/apt/sources.list"); err == nil && fi.Size() > 0 {
		return true
	}
	d, err := r.Open("etc/apt/sources.list.d")
	if err != nil {
		return false
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	for _, n := range names {
		if strings.HasSuffix(n, ".list") || strings.HasSuffix(n, ".sources") {
			return true
		}
	}
	return false
}

type aptManager struct {
	o *Options
	// conf is the APT_CONFIG file for a root other than "/", tmp its directory; admindir the
	// root's dpkg database.
	conf, tmp, admindir string
}

func (a *aptManager) name() string { return "apt" }

func (a *aptManager) close() {
	if a.tmp != "" {
		os.RemoveAll(a.tmp)
	}
}

// env is this process's environment without what would make apt or dpkg act as part of a
// transaction that is not theirs (a maintainer script's variables, apt's lock hand-over), in
// the C locale (the output is parsed), non-interactive.
func (a *aptManager) env() []string {
	var env []string
	for _, e := range os.Environ() {
		k, _, _ := strings.Cut(e, "=")
		if strings.HasPrefix(k, "DPKG_") || (k == "APT_CONFIG" && a.conf != "") || k == "LC_ALL" || k == "LANGUAGE" || k == "DEBIAN_FRONTEND" {
			continue
		}
		env = append(env, e)
	}
	env = append(env, "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	if a.conf != "" {
		env = append(env, "APT_CONFIG="+a.conf)
	}
	return env
}

// run runs a tool with a bounded time and output, its stdout and stderr together; the whole
// process group (apt's dpkg and maintainer scripts) is killed when the time is up.
func (a *aptManager) run(ctx context.Context, tool string, args ...string) (string, error) {
	out := &boundedBuffer{max: maxToolOutput}
	err := runToolTo(ctx, a.env(), out, out, tool, args...)
	return string(out.b), err
}

func (a *aptManager) packageFor(kmps []weakupdates.KMP, module, k string) string {
	return repoPackageFor(kmps, module, k)
}

func (a *aptManager) locks() []txLock {
	return []txLock{{path: "var/lib/dpkg/lock-frontend"}, {path: "var/lib/dpkg/lock"}}
}

// deferSelf: the runtime package's DPkg::Post-Invoke snippet runs the deferred step 3.
func (a *aptManager) deferSelf() bool { return false }

func (a *aptManager) queryInTransaction() bool { return true }

func (a *aptManager) candidate(ctx context.Context, pkg, _ string) (string, error) {
	out, err := a.run(ctx, aptCachePath, "policy", pkg)
	if err != nil {
		return "", fmt.Errorf("apt-cache policy %s: %v: %s", pkg, err, lastLines(out))
	}
	return aptCandidate(out, pkg)
}

// aptCandidate reads apt-cache policy's answer for exactly pkg (a name that is a pattern may
// have answers for others): its Candidate, "" when "(none)" (a purely virtual name too).
func aptCandidate(out, pkg string) (string, error) {
	in := false
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, " ") {
			in = l == pkg+":"
			continue
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Candidate:"); ok && in {
			v = strings.TrimSpace(v)
			if v == "(none)" {
				return "", nil
			}
			if err := validPackageVersion(v); err != nil {
				return "", fmt.Errorf("apt-cache policy %s: candidate %v", pkg, err)
			}
			return v, nil
		}
	}
	return "", nil
}

// validPackageVersion checks a version a package manager printed before it goes back into a
// command line: an optional numeric epoch, then ident's version rules.
func validPackageVersion(v string) error {
	rest := v
	if e, r, ok := strings.Cut(v, ":"); ok {
		if e == "" || len(e) > 9 || strings.Trim(e, "0123456789") != "" {
			return &ident.Error{Kind: "version", Value: v, Why: "epoch is not a number"}
		}
		rest = r
	}
	return ident.Version(rest)
}

func (a *aptManager) install(ctx context.Context, pkg, version string) error {
	// name=version: exactly that package, never a provider apt would choose for the name.
	out, err := a.run(ctx, aptGetPath, "-q", "-y", "--no-install-recommends", "--no-remove",
		"-o", "DPkg::Lock::Timeout="+fmt.Sprint(int(lockWait(ctx).Seconds())), "install", pkg+"="+version)
	if err != nil {
		return fmt.Errorf("apt-get install %s=%s: %v: %s", pkg, version, err, lastLines(out))
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		a.o.logf("  apt: %s", l)
	}
	args := []string{"-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}", pkg}
	if a.admindir != "" {
		args = append([]string{"--admindir=" + a.admindir}, args...)
	}
	q, err := a.run(ctx, dpkgQueryPath, args...)
	if got := strings.TrimSpace(q); err != nil || got != pkg+" "+version+" ii" {
		return fmt.Errorf("apt-get install %s=%s succeeded but dpkg says %q", pkg, version, got)
	}
	return nil
}

// lockWait is how long apt waits for dpkg's lock (another apt run: the one whose
// DPkg::Post-Invoke started this run holds it until its whole upgrade is done): half of what
// is left of the time budget.
func lockWait(ctx context.Context) time.Duration {
	d := DefaultRepoTimeout / 2
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl) / 2
	}
	return max(d, time.Second)
}

// lastLines is the end of a tool's output, on one line, for a recorded reason.
func lastLines(out string) string {
	var keep []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			keep = append(keep, l)
		}
	}
	if len(keep) > 3 {
		keep = keep[len(keep)-3:]
	}
	return kmp.OneLine(strings.Join(keep, " / "))
}

// repoPackageFor is the package that would be the build of name for kernel k, derived from the
// debian-format registrations of name: <prefix><their kernel> becomes <prefix>k. "" when no
// registration is named that way.
func repoPackageFor(kmps []weakupdates.KMP, name, k string) string {
	for _, kp := range kmps {
		if kp.Name != name || kp.Kernel == k || (kp.Format != "" && kp.Format != weakupdates.FormatDeb) {
			continue
		}
		prefix, ok := strings.CutSuffix(kp.Package, kp.Kernel)
		if !ok || !strings.HasSuffix(prefix, "-") {
			continue
		}
		if p := prefix + k; ident.PackageName(p) == nil {
			return p
		}
	}
	return ""
}

// repoWant is a kernel × module whose step 3 found a package to install.
type repoWant struct {
	kernel, module, pkg, version string
}

// repoOutcome is what became of a repoWant: err "" when the package is installed.
type repoOutcome struct {
	pkg, version, err string
}

func markRepoPending(r *os.Root, k string, pending bool) error {
	if !pending {
		err := r.Remove(repoPendingDir + "/" + k)
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		r.Remove(repoPendingDir) // only when empty
		return err
	}
	return weakupdates.WriteAtomic(r, repoPendingDir+"/"+k, nil)
}
