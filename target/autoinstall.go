package target

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	debversion "github.com/knqyf263/go-deb-version"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/sign"
	"github.com/kmpack/kmpack/kmp/source"
	"github.com/kmpack/kmpack/weakupdates"
)

// AutoinstallOptions describe kmpack autoinstall.
type AutoinstallOptions struct {
	Options
	// Kernels are the releases to act for; none: every installed kernel under the root's
	// /lib/modules.
	Kernels []string
	// BuildTimeout bounds one source's build for one kernel (DefaultBuildTimeout when 0).
	BuildTimeout time.Duration
	// Jobs is the build's job budget (one per CPU when 0).
	Jobs int
	// Rebuild builds sources again where an earlier build failed or succeeded (izmod -R); a
	// build that failed for a temporary cause (a signal, a full disk) is retried anyway.
	// Steps 1 and 2 still come first: a package's build for the kernel, or a link, is never
	// doubled by a local one.
	Rebuild bool
	// Only restricts the run to one module (kmpack load); "" is every registered module.
	Only string
	// Sign is the signing policy for local builds: SignAuto (""), SignAlways or SignNever.
	Sign string
	// NoInitramfs leaves initramfs images alone: the kernel hooks pass it, as the
	// distribution's initramfs hook runs after them. Otherwise an initramfs that holds a
	// module whose files autoinstall changed is regenerated (refreshInitramfs).
	NoInitramfs bool

	key       *MachineKey // the machine's signing key, once looked for
	keyLooked bool
	// NoRepo skips step 3 (the repositories); Rebuild does too. RepoTimeout bounds one
	// package manager run (DefaultRepoTimeout when 0).
	NoRepo      bool
	RepoTimeout time.Duration

	pm repoManager // step 3's package manager, nil when none is used
	// inTx says, once looked at (txKnown), whether this run is inside the package manager's
	// transaction; txHolder is the ancestor holding its lock (0: unknown).
	inTx, txKnown bool
	txHolder      int
	// AfterPID makes autoinstall wait, before anything else, until process AfterPID has
	// ended (at most RepoTimeout): the run a deferred step 3 starts waits for the package
	// manager's transaction that deferred it.
	AfterPID int
	// AfterStart is AfterPID's start time (/proc/PID/stat's 22nd field) when it deferred: a
	// process with another is not it (the pid was reused). 0: not checked.
	AfterStart uint64
	// Defer starts, detached, a run of autoinstall for kernels that waits (AfterPID,
	// AfterStart) for process pid, the package manager whose transaction this run is inside:
	// step 3 found packages it could not install meanwhile, and no package manager hook will
	// run kmpack afterwards (dnf, zypper). The CLI sets it (it knows how to run itself); nil:
	// the boot unit or the next run installs them.
	Defer func(pid int, start uint64, kernels []string) error
}

// inTransactionOnce is inTransaction, looked at once per run.
func (o *AutoinstallOptions) inTransactionOnce(r *os.Root) bool {
	if !o.txKnown {
		o.txKnown = true
		o.inTx, o.txHolder = o.inTransaction(r, o.pm.locks())
	}
	return o.inTx
}

// DefaultBuildTimeout bounds one local build: a kernel hook must end.
const DefaultBuildTimeout = time.Hour

// KillPointEnv is weakupdates' variable: tests make autoinstall SIGKILL itself at a named point
// ("autoinstall-after-install": modules installed, state not yet written).
const KillPointEnv = weakupdates.KillPointEnv

func killPoint(name string) {
	if os.Getenv(KillPointEnv) == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

// ErrFailures is returned (wrapped) by Autoinstall when a kernel × module ended failed: the
// run went on with the others and recorded everything.
var ErrFailures = errors.New("some modules are not available")

// Autoinstall gives every registered module (module packages and sources) a build for each
// kernel, the cheapest correct way first, and records the outcome in the state file:
//
//  1. a registered package built for that kernel is installed: nothing to do;
//  2. a build for another kernel loads there (weakupdates' compat check): linked by the
//     weak-updates engine;
//  3. a prebuilt package for that kernel in the machine's configured repositories: installed
//     by the system's package manager (apt, dnf or zypper; repo.go and rpm.go say which name
//     is looked for), then served as in step 1 and recorded installed-from-repo. Inside a
//     package manager's transaction (a kernel hook run by dpkg or rpm) the package manager
//     cannot run: the row is recorded missing with repo_pending (and not built: the package
//     comes a moment later), and the runtime's apt DPkg::Post-Invoke snippet (dpkg) or a
//     detached run of autoinstall (Defer: rpm) runs autoinstall again once the transaction has
//     finished. A package that is not in the repositories, or that the package manager fails
//     to install, is recorded (repo_reason) and step 4 follows;
//  4. a registered source: built with kmpack's build engine against the root's
//     /lib/modules/<kernel>/build, installed under updates/kmpack-built/<name>/, depmod;
//  5. otherwise a failure, with its reason.
//
// A local build is signed with the machine's key (Sign; see machineSigner). A kernel whose
// initramfs holds a module whose files changed gets it regenerated (refreshInitramfs), unless
// NoInitramfs.
//
// Runs hold one lock, so two at once end as one after the other, and a module already built
// for a kernel from the same source version is not built again. The lock is released while
// the package manager runs (its maintainer scripts call kmpack, which takes the lock: nothing
// waits on itself); the rows it was for are decided again under the lock afterwards. A run
// killed midway is repaired by the next: pending depmods are redone and an unrecorded build is
// made again. Failures are recorded and reported as ErrFailures after every kernel and module
// was tried.
func Autoinstall(ctx context.Context, o AutoinstallOptions) (*State, error) {
	// Names become paths under the root: checked here too, for callers other than the CLI.
	if err := validKernels(o.Kernels); err != nil {
		return nil, err
	}
	if o.Only != "" {
		if err := ident.PackageName(o.Only); err != nil {
			return nil, kmp.InputErrorf(o.Only, "%v", err)
		}
	}
	switch o.Sign {
	case "", SignAuto, SignAlways, SignNever:
	default:
		return nil, kmp.InputErrorf(o.Sign, "signing policy must be auto, always or never")
	}
	if !o.NoRepo && !o.Rebuild {
		r, err := os.OpenRoot(o.root())
		if err != nil {
			return nil, err
		}
		o.pm, err = o.repoManagerFor(r)
		r.Close()
		if err != nil {
			o.warnf("the repositories are not used (step 3): %v", err)
		}
		if o.pm != nil {
			defer o.pm.close()
		}
	}
	if o.AfterPID > 0 {
		o.waitForTransaction(ctx)
	}
	var st *State
	var wants []repoWant
	var n counts
	err := o.locked(func(r *os.Root) error {
		var err error
		st, wants, n, err = autoinstall(ctx, r, &o, nil)
		return err
	})
	if err == nil && len(wants) > 0 {
		// Step 3's installs, without the lock, then those rows decided again under it.
		outcomes := map[string]*repoOutcome{}
		var kernels []string
		for _, w := range wants {
			outcomes[w.kernel+" "+w.module] = o.installFromRepo(ctx, w)
			if !slices.Contains(kernels, w.kernel) {
				kernels = append(kernels, w.kernel)
			}
		}
		o2 := o
		o2.Kernels = kernels
		err = o.locked(func(r *os.Root) error {
			var err error
			var n2 counts
			st, _, n2, err = autoinstall(ctx, r, &o2, outcomes)
			n.failed, n.pending = n.failed+n2.failed, n.pending+n2.pending
			return err
		})
	}
	if err == nil && n.pending > 0 && o.pm != nil && o.pm.deferSelf() && o.txHolder > 0 && o.AfterPID == 0 && o.Defer != nil {
		start, _ := procStartTime(o.txHolder)
		// Every kernel: another hook of the same transaction (another kernel) may have left
		// rows pending too, and one deferred run (per transaction) serves them all.
		if derr := o.Defer(o.txHolder, start, nil); derr != nil {
			o.warnf("could not start the run that installs the packages after the transaction: %v (the boot unit, or kmpack autoinstall by hand, does)", derr)
		} else {
			o.logf("a kmpack autoinstall waits for process %d (%s's transaction) to end, then installs the packages", o.txHolder, o.pm.name())
		}
	}
	switch {
	case err != nil:
	case n.failed > 0 && n.pending > 0:
		err = fmt.Errorf("%w: %d failed, %d waiting for the package manager to finish (kmpack status says why)", ErrFailures, n.failed, n.pending)
	case n.failed > 0:
		err = fmt.Errorf("%w: %d failed (kmpack status says why)", ErrFailures, n.failed)
	case n.pending > 0:
		err = fmt.Errorf("%w: %d waiting for the package manager to finish (kmpack status says why)", ErrFailures, n.pending)
	}
	return st, err
}

// waitForTransaction waits, at most RepoTimeout, until the transaction of process AfterPID
// has ended: the process is gone (or another has its pid, or it is a zombie), or it holds none
// of the package manager's locks any more (a daemon such as PackageKit lives on after its
// transaction).
func (o *AutoinstallOptions) waitForTransaction(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, o.repoTimeout())
	defer cancel()
	r, err := os.OpenRoot(o.root())
	if err != nil {
		return
	}
	defer r.Close()
	began := time.Now()
	defer func() {
		o.logf("waited %v for process %d's transaction to end", time.Since(began).Round(time.Millisecond), o.AfterPID)
	}()
	for {
		start, alive := procStartTime(o.AfterPID)
		if !alive || (o.AfterStart != 0 && start != o.AfterStart) {
			return
		}
		held := o.pm == nil
		if o.pm != nil {
			for _, l := range o.pm.locks() {
				held = held || l.holder(r) == o.AfterPID
			}
		}
		if !held {
			return
		}
		select {
		case <-ctx.Done():
			o.warnf("process %d still holds the package manager's lock after %v: going on", o.AfterPID, o.repoTimeout())
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// procStartTime is process pid's start time (/proc/PID/stat's 22nd field); alive is false
// when there is no such process or it is a zombie.
func procStartTime(pid int) (start uint64, alive bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, false
	}
	start, _ = strconv.ParseUint(f[19], 10, 64)
	return start, true
}

// DeferredLog is where the runs Defer starts write (from the root): they run detached.
const DeferredLog = "/" + autoDir + "/deferred.log"

// OpenDeferredLog opens DeferredLog for appending, through the root (no link followed), made
// 0600; one that grew past 1 MiB is emptied first.
func OpenDeferredLog(o Options) (*os.File, error) {
	r, err := os.OpenRoot(o.root())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if err := r.MkdirAll(autoDir, 0o755); err != nil {
		return nil, err
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND | syscall.O_NOFOLLOW | syscall.O_NONBLOCK // never a FIFO's wait
	if fi, err := r.Lstat(strings.TrimPrefix(DeferredLog, "/")); err == nil && fi.Size() > 1<<20 {
		flags |= os.O_TRUNC
	}
	return r.OpenFile(strings.TrimPrefix(DeferredLog, "/"), flags, 0o600)
}

// counts are a pass's rows that are not available: failed, or waiting for a repository
// package (step 3 deferred).
type counts struct{ failed, pending int }

// installFromRepo installs w's package with the package manager, its time bounded.
func (o *AutoinstallOptions) installFromRepo(ctx context.Context, w repoWant) *repoOutcome {
	ctx, cancel := context.WithTimeout(ctx, o.repoTimeout())
	defer cancel()
	o.logf("%s: installing %s %s from the repositories (%s)", w.kernel, w.pkg, w.version, o.pm.name())
	out := &repoOutcome{pkg: w.pkg, version: w.version}
	if err := o.pm.install(ctx, w.pkg, w.version); err != nil {
		out.err = kmp.OneLine(err.Error())
		o.warnf("%s: %s", w.kernel, out.err)
	}
	return out
}

// autoinstall is one pass under the lock. outcomes is nil for the first pass, which returns
// the rows whose step 3 found a package to install (their rows are left for the second pass);
// the second pass decides only those rows, with what became of their installs.
func autoinstall(ctx context.Context, r *os.Root, o *AutoinstallOptions, outcomes map[string]*repoOutcome) (*State, []repoWant, counts, error) {
	st := readState(r, &o.Options)
	eng := o.engine()
	kernels := o.Kernels
	if len(kernels) == 0 {
		kernels = weakupdates.InstalledKernels(r)
	}
	// Bad input before any change: every kernel named must be installed.
	for _, k := range kernels {
		if _, err := r.Stat("lib/modules/" + k + "/kernel"); err != nil {
			return st, nil, counts{}, kmp.InputErrorf(k, "no such kernel installed (%s)", o.display("lib/modules/"+k+"/kernel"))
		}
	}
	// Kernels whose depmod a killed run never finished.
	for _, k := range pendingDepmods(r) {
		if err := o.reindex(r, eng, k); err != nil {
			return st, nil, counts{}, err
		}
	}
	if !o.NoInitramfs {
		o.pendingInitramfs(ctx, r)
	}
	// Step 2 first, for every module at once: the engine links all builds that load (once per
	// flavor: each run recomputes every kernel of it).
	flavors := map[string]bool{}
	for _, k := range kernels {
		if f := kernel.FlavorFromRelease(k); !flavors[f] {
			flavors[f] = true
			if err := eng.AddKernel(k); err != nil {
				o.warnf("weak-updates for %s: %v", k, err)
			}
		}
	}
	kmps, plans, err := engineFacts(eng)
	if err != nil {
		return st, nil, counts{}, err
	}
	sources := newestSources(readSources(r, &o.Options))
	kmps = o.rpmRegistrations(ctx, r, kmps, sources)
	var n counts
	var wants []repoWant
	for _, k := range kernels {
		var plan *weakupdates.Plan
		for _, p := range plans {
			if p.Kernel == k {
				plan = p
			}
		}
		rows := decide(r, k, kmps, plan, sources)
		if o.Only != "" {
			rows = slices.DeleteFunc(rows, func(rw row) bool { return rw.name != o.Only })
			if len(rows) == 0 {
				return st, nil, counts{}, kmp.InputErrorf(o.Only, "no module package or source of that name is registered for %s (kmpack source add DIR)", k)
			}
		}
		if outcomes != nil {
			// The second pass: only the rows whose package was installed (or tried).
			rows = slices.DeleteFunc(rows, func(rw row) bool { return outcomes[k+" "+rw.name] == nil })
		}
		changed := false
		var touched []string // modules whose files changed in k
		for _, row := range rows {
			prev := st.get(k, row.name)
			var out *repoOutcome
			if outcomes != nil {
				out = outcomes[k+" "+row.name]
			}
			res, want, ch, err := o.realize(ctx, r, st, k, row, kmps, out)
			if err != nil {
				return st, nil, counts{}, err
			}
			changed = changed || ch
			if want != nil {
				wants = append(wants, *want)
				continue
			}
			if ch {
				touched = appendModuleNames(touched, res.Files)
				if prev != nil {
					touched = appendModuleNames(touched, prev.Files)
				}
			}
			res.Time = time.Now().UTC().Format(time.RFC3339)
			st.set(k, row.name, res)
			switch {
			case res.RepoPending:
				n.pending++
				o.logf("%s: %s: waiting for %s from the repositories: the package manager runs this; autoinstall installs it once it has finished",
					k, row.name, strings.TrimSpace(res.RepoPackage+" "+res.RepoVersion))
			case res.State == StateFailed:
				n.failed++
				o.logf("%s: %s: failed: %s", k, row.name, res.Reason)
			case res.State == StateBuiltLocally && res.Attempted != res.Version:
				n.failed++ // available, but the registered version is not what runs
				o.logf("%s: %s: %s", k, row.name, res.Reason)
			}
		}
		// Rows of modules no longer registered go, with whatever autoinstall built for them.
		for name, res := range st.Kernels[k] {
			if o.Only == "" && outcomes == nil && !slices.ContainsFunc(rows, func(rw row) bool { return rw.name == name }) {
				ch, err := o.dropBuilt(r, k, res)
				if err != nil {
					return st, nil, counts{}, err
				}
				changed = changed || ch
				if ch {
					touched = appendModuleNames(touched, res.Files)
				}
				delete(st.Kernels[k], name)
			}
		}
		if changed {
			if err := o.reindex(r, eng, k); err != nil {
				return st, nil, counts{}, err
			}
		}
		var initramfs *initramfsJob
		if !o.NoInitramfs {
			initramfs = o.planInitramfs(r, k, touched)
		}
		if err := writeState(r, st); err != nil {
			return st, nil, counts{}, err
		}
		pending := false
		for _, res := range st.Kernels[k] {
			pending = pending || res.RepoPending
		}
		if err := markRepoPending(r, k, pending); err != nil {
			return st, nil, counts{}, err
		}
		o.runInitramfs(ctx, r, initramfs)
	}
	return st, wants, n, nil
}

// appendModuleNames adds the module names of files (paths) to names, once each.
func appendModuleNames(names []string, files []string) []string {
	for _, f := range files {
		if n := module.ModuleNameFromPath(path.Base(f)); !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// engineFacts are the weak-updates engine's registrations and its plan for every installed
// kernel (steps 1 and 2, decided; links for step 2 made by the engine beforehand).
func engineFacts(eng *weakupdates.Engine) ([]weakupdates.KMP, []*weakupdates.Plan, error) {
	kmps, err := eng.Registrations()
	if err != nil {
		return nil, nil, err
	}
	plans, err := eng.Status()
	return kmps, plans, err
}

func validKernels(kernels []string) error {
	for _, k := range kernels {
		if err := ident.KernelRelease(k); err != nil {
			return kmp.InputErrorf(k, "%v", err)
		}
	}
	return nil
}

func (o *Options) engine() *weakupdates.Engine {
	return &weakupdates.Engine{Root: o.Root, Log: o.Log, Warn: o.Warn, LockTimeout: o.LockTimeout}
}

// row is what decide found for one module in one kernel before anything is built.
type row struct {
	name string
	// own and linked are steps 1 and 2; src is step 4's source, nil when none.
	own      *weakupdates.KMP
	linkFrom string
	linkPkg  string
	src      *SourceRecord
	// why the registered builds do not load here (step 2's rejections).
	rejected []string
}

// decide finds, for kernel k, each module's own build (step 1), link (step 2, from the
// engine's plan) and source (step 4), without changing anything.
func decide(r *os.Root, k string, kmps []weakupdates.KMP, plan *weakupdates.Plan, sources []SourceRecord) []row {
	flavor := kernel.FlavorFromRelease(k)
	byName := map[string]*row{}
	get := func(n string) *row {
		if byName[n] == nil {
			byName[n] = &row{name: n}
		}
		return byName[n]
	}
	for i := range kmps {
		kp := &kmps[i]
		if kernel.FlavorFromRelease(kp.Kernel) != flavor {
			continue // built for another flavor: not meant for this kernel
		}
		rw := get(kp.Name)
		if kp.Kernel == k && modulesPresent(r, kp.Modules) {
			rw.own = kp
		}
	}
	if plan != nil {
		for n := range byName {
			if from, ok := plan.From[n]; ok && len(plan.Unlinked[n]) == 0 {
				byName[n].linkFrom, byName[n].linkPkg = from, strings.Fields(plan.Chosen[n])[0]
			}
			byName[n].rejected = plan.Rejected[n]
		}
	}
	// Links the distribution's weak-modules made for the rpm profiles' builds (kmpack's engine
	// does not make them: those packages do not register with it).
	for n, kp := range distroWeakLinks(r, k, kmps) {
		if rw := byName[n]; rw != nil && rw.own == nil && rw.linkFrom == "" {
			rw.linkFrom, rw.linkPkg = kp.Kernel, kp.Package
		}
	}
	for _, s := range sources {
		s := s
		get(s.Name).src = &s
	}
	var out []row
	for _, n := range slices.Sorted(func(yield func(string) bool) {
		for n := range byName {
			if !yield(n) {
				return
			}
		}
	}) {
		out = append(out, *byName[n])
	}
	return out
}

// newestSources keeps the highest version (dpkg's order) of each source name.
func newestSources(all []SourceRecord) []SourceRecord {
	best := map[string]SourceRecord{}
	for _, s := range all {
		b, ok := best[s.Name]
		if !ok || compareVersions(s.Version, b.Version) > 0 {
			best[s.Name] = s
		}
	}
	var out []SourceRecord
	for _, s := range best {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func compareVersions(a, b string) int {
	va, errA := debversion.NewVersion(a)
	vb, errB := debversion.NewVersion(b)
	if errA != nil || errB != nil {
		return strings.Compare(a, b)
	}
	return va.Compare(vb)
}

func modulesPresent(r *os.Root, mods []string) bool {
	for _, m := range mods {
		fi, err := r.Stat(strings.TrimPrefix(m, "/"))
		if err != nil || !fi.Mode().IsRegular() {
			return false
		}
	}
	return len(mods) > 0
}

// realize makes row's outcome in kernel k: nothing, a link (already made), a package from the
// repositories, a local build, or a failure. changed says the kernel needs depmod. want is set,
// and the result nil, when step 3 found a package to install: the caller installs it without
// the lock and calls realize again with its outcome (out).
func (o *AutoinstallOptions) realize(ctx context.Context, r *os.Root, st *State, k string, rw row, kmps []weakupdates.KMP, out *repoOutcome) (res *Result, want *repoWant, changed bool, err error) {
	prev := st.get(k, rw.name)
	switch {
	case rw.own != nil:
		ch, err := o.dropBuilt(r, k, prev)
		res := &Result{State: StateBuiltForKernel, Package: rw.own.Package, Version: rw.own.Version}
		// The package step 3 installed, now or in an earlier run, stays installed-from-repo.
		if (out != nil && out.err == "" && out.pkg == rw.own.Package) || (prev != nil && prev.State == StateFromRepo && prev.Package == rw.own.Package) {
			res.State = StateFromRepo
		}
		return res, nil, ch, err
	case rw.linkFrom != "":
		ch, err := o.dropBuilt(r, k, prev)
		return &Result{State: StateWeakLinked, From: rw.linkFrom, Package: rw.linkPkg}, nil, ch, err
	}
	// Step 3: the repositories' build of the module for k.
	var repo Result
	switch {
	case out != nil:
		repo.RepoPackage, repo.RepoVersion, repo.RepoReason = out.pkg, out.version, out.err
		if out.err == "" {
			repo.RepoReason = fmt.Sprintf("%s %s was installed from the repositories but registered no build for %s", out.pkg, out.version, k)
		}
	case o.pm != nil:
		pkg := o.pm.packageFor(kmps, rw.name, k)
		if pkg == "" {
			break
		}
		// The package manager runs this (a kernel hook): its lock is held until it finishes.
		// Not built either: the package serves a moment later; the state says what waits.
		pending := func(v string) (*Result, *repoWant, bool, error) {
			then := "apt's DPkg::Post-Invoke, the boot unit, or by hand"
			if o.pm.deferSelf() {
				then = "a kmpack autoinstall started now waits for it; else the boot unit, or by hand"
			}
			what := pkg + " " + v
			if v == "" {
				// zypper cannot even be asked inside a transaction (its query takes the lock).
				what = pkg + " (or, when the repositories have none, a local build)"
			}
			why := fmt.Sprintf("waiting for %s from the repositories: the package manager runs this (a kernel hook or a package's script inside its transaction); "+
				"kmpack autoinstall installs it once %s has finished (%s)", what, o.pm.name(), then)
			if prev != nil && prev.State == StateBuiltLocally && filesPresent(r, prev.Files) {
				kept := *prev
				kept.RepoPackage, kept.RepoVersion, kept.RepoPending, kept.RepoReason = pkg, v, true, ""
				return &kept, nil, false, nil
			}
			ch, err := o.dropBuilt(r, k, prev)
			return &Result{State: StateMissing, Reason: why, RepoPackage: pkg, RepoVersion: v, RepoPending: true}, nil, ch, err
		}
		if !o.pm.queryInTransaction() && o.inTransactionOnce(r) {
			return pending("")
		}
		qctx, cancel := context.WithTimeout(ctx, o.repoTimeout())
		v, err := o.pm.candidate(qctx, pkg, k)
		cancel()
		repo.RepoPackage, repo.RepoVersion = pkg, v
		switch {
		case err != nil:
			repo.RepoReason = kmp.OneLine(err.Error())
		case v == "":
			repo.RepoReason = "no package " + pkg + " in the configured repositories (" + o.pm.name() + ")"
		case o.inTransactionOnce(r):
			return pending(v)
		default:
			return nil, &repoWant{kernel: k, module: rw.name, pkg: pkg, version: v}, false, nil
		}
	}
	withRepo := func(res *Result) *Result {
		if res != nil && res != prev {
			res.RepoPackage, res.RepoVersion, res.RepoReason = repo.RepoPackage, repo.RepoVersion, repo.RepoReason
		}
		return res
	}
	if rw.src != nil {
		if prev != nil && prev.State == StateBuiltLocally && prev.Version == rw.src.Version && filesPresent(r, prev.Files) && !o.Rebuild &&
			!o.resignNeeded(r, k, prev) {
			kept := *prev // built before, from this very source version, signed as it must be
			kept.RepoPending = false
			return withRepo(&kept), nil, false, nil
		}
		// The same source version failed the same way for this kernel before (not for a
		// temporary cause): a boot-time run must not spend minutes failing again. --rebuild
		// retries.
		if prev != nil && prev.FailureKind == build.FailureBuild && prev.Attempted == rw.src.Version && !o.Rebuild {
			kept := *prev
			kept.RepoPending = false
			return withRepo(&kept), nil, false, nil
		}
		res, ch, err := o.buildLocally(ctx, r, k, *rw.src, prev)
		return withRepo(res), nil, ch, err
	}
	why := "no build of " + rw.name + " is installed for " + k + " and no source is registered"
	if repo.RepoReason != "" {
		why += "; " + repo.RepoReason
	}
	if len(rw.rejected) > 0 {
		why += "; builds for other kernels do not load here: " + strings.Join(rw.rejected, "; ")
	}
	ch, err := o.dropBuilt(r, k, prev)
	return withRepo(&Result{State: StateFailed, Reason: why}), nil, ch, err
}

func (o *AutoinstallOptions) repoTimeout() time.Duration {
	if o.RepoTimeout == 0 {
		return DefaultRepoTimeout
	}
	return o.RepoTimeout
}

func filesPresent(r *os.Root, files []string) bool {
	for _, f := range files {
		if !ownFile(r, f) {
			return false
		}
	}
	return len(files) > 0
}

// ownFile tells whether f (a path the state file lists, validated) is a regular file reached
// through real directories only from lib/modules/K on: a symbolic link planted on the way,
// even one that stays in the root, makes it someone else's file. Above K, /lib is a link to
// usr/lib on every usr-merged system (Debian 12, Fedora, Arch), as installBuilt allows.
func ownFile(r *os.Root, f string) bool {
	parts := strings.Split(strings.TrimPrefix(f, "/"), "/")
	if len(parts) < 4 || parts[0] != "lib" || parts[1] != "modules" {
		return false
	}
	for i := 3; i < len(parts); i++ {
		if fi, err := r.Lstat(strings.Join(parts[:i], "/")); err != nil || !fi.IsDir() {
			return false
		}
	}
	fi, err := r.Lstat(strings.Join(parts, "/"))
	return err == nil && fi.Mode().IsRegular()
}

// removeOwn removes f when it is autoinstall's (ownFile); anything else in its place is left
// alone.
func removeOwn(r *os.Root, f string) error {
	if !ownFile(r, f) {
		return nil
	}
	if err := r.Remove(strings.TrimPrefix(f, "/")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// dropBuilt removes the modules an earlier run built locally, now that a cheaper way serves
// the kernel (two copies under updates/ would leave depmod to pick one).
func (o *Options) dropBuilt(r *os.Root, k string, prev *Result) (bool, error) {
	if prev == nil || len(prev.Files) == 0 {
		return false, nil
	}
	if err := weakupdates.WriteAtomic(r, depmodPendingDir+"/"+k, nil); err != nil {
		return false, err
	}
	for _, f := range prev.Files {
		o.logf("remove %s (no longer needed)", f)
		if err := removeOwn(r, f); err != nil {
			return true, err
		}
	}
	r.Remove(strings.TrimPrefix(path.Dir(prev.Files[0]), "/")) // only when empty
	return true, nil
}

// HeadersPackage names the package that installs kernel k's headers on the root's
// distribution (by its package database): what to tell the user to install.
func HeadersPackage(r *os.Root, k string) string {
	if _, err := r.Stat("var/lib/dpkg"); err == nil {
		return "linux-headers-" + k
	}
	for _, db := range []string{"usr/lib/sysimage/rpm", "var/lib/rpm"} {
		if _, err := r.Stat(db); err == nil {
			return "kernel-devel-uname-r = " + k + " (kernel-devel, or kernel-<flavor>-devel on SUSE)"
		}
	}
	return "the headers of " + k
}

// kernelTree finds k's headers through the root's /lib/modules/<k>/build: symbolic links are
// resolved inside the root (an absolute link is taken from the root, as dpkg --root sees it).
// A missing tree is a failure reason naming the package to install, not an error.
func (o *Options) kernelTree(r *os.Root, k string) (*kernel.KernelTree, string) {
	missing := fmt.Sprintf("the headers of %s are not installed (no /lib/modules/%s/build/include): install %s", k, k, HeadersPackage(r, k))
	dir, err := securejoin.SecureJoin(o.root(), "lib/modules/"+k+"/build")
	if err != nil {
		return nil, missing
	}
	if fi, err := os.Stat(filepath.Join(dir, "include")); err != nil || !fi.IsDir() {
		return nil, missing
	}
	tree, err := kernel.OpenKernelTree(dir)
	if err != nil {
		return nil, fmt.Sprintf("the headers of %s are unusable: %s (reinstall %s)", k, kmp.OneLine(err.Error()), HeadersPackage(r, k))
	}
	if tree.Release != k {
		return nil, fmt.Sprintf("/lib/modules/%s/build is the headers tree of %s, not %s", k, tree.Release, k)
	}
	return tree, ""
}

// buildLocally is step 4: build src for k, install its modules, record where the log is.
func (o *AutoinstallOptions) buildLocally(ctx context.Context, r *os.Root, k string, rec SourceRecord, prev *Result) (*Result, bool, error) {
	// fail records why rec could not be built; a build of an earlier version (or of this
	// one, for --rebuild) that still serves the kernel is kept and the row says so: missing
	// headers or a broken new version must not take a working module away.
	fail := func(reason, log, kind string) (*Result, bool, error) {
		if prev != nil && prev.State == StateBuiltLocally && filesPresent(r, prev.Files) {
			kept := *prev
			kept.Reason = fmt.Sprintf("%s %s could not be built, the build of %s stays: %s", rec.Name, rec.Version, prev.Version, reason)
			kept.Attempted, kept.FailureKind = rec.Version, kind
			if log != "" {
				kept.Log = log
			}
			return &kept, false, nil
		}
		ch, err := o.dropBuilt(r, k, prev)
		return &Result{State: StateFailed, Version: rec.Version, Attempted: rec.Version, Reason: reason, Log: log, FailureKind: kind}, ch, err
	}
	tree, why := o.kernelTree(r, k)
	if tree == nil {
		return fail(why, "", "")
	}
	key, err := o.machineSigner(tree)
	if err != nil {
		if why := o.signaturesRequired(tree); why != "" {
			return fail(fmt.Sprintf("%s, and no module signing key is usable: %s", why, kmp.OneLine(err.Error())), "", "")
		}
		o.warnf("%s: building %s unsigned: %v", k, rec.Name, err)
	}
	var signers []sign.Signer
	if key != nil {
		signers = []sign.Signer{*key.Signer}
	}
	srcDir, err := securejoin.SecureJoin(o.root(), sourceDir(rec.Name, rec.Version))
	if err != nil {
		return nil, false, err
	}
	src, err := source.OpenSource(srcDir)
	if err != nil {
		return fail("the source "+rec.Dir+" is unusable: "+kmp.OneLine(err.Error()), "", "")
	}
	switch src.Kind {
	case source.SourceDKMS, source.SourceKbuild:
		// Registered name and version; a dkms.conf whose evaluation says otherwise fails its
		// plan (source.Plan compares).
		if err := src.SetIdentity(rec.Name, rec.Version); err != nil {
			return nil, false, err
		}
	default:
		if src.Name != rec.Name || src.Version != rec.Version {
			return fail(fmt.Sprintf("%s now says %s %s, registered as %s %s (kmpack source add it again)", rec.Dir, src.Name, src.Version, rec.Name, rec.Version), "", "")
		}
	}
	outRel := autoBuildsDir + "/" + k + "/" + rec.Name
	if err := r.MkdirAll(filepath.Dir(outRel), 0o755); err != nil {
		return nil, false, err
	}
	out, err := securejoin.SecureJoin(o.root(), outRel)
	if err != nil {
		return nil, false, err
	}
	timeout := o.BuildTimeout
	if timeout == 0 {
		timeout = DefaultBuildTimeout
	}
	o.logf("%s: building %s %s against %s", k, rec.Name, rec.Version, tree.Dir)
	m, err := build.Build(ctx, src, []*kernel.KernelTree{tree}, build.BuildOptions{
		OutputDir: out, Jobs: o.Jobs, Timeout: timeout, Signers: signers,
		Warn: func(s string) { o.warnf("%s: %s", rec.Name, s) },
	})
	if m == nil {
		if err != nil && (kmp.IsInputError(err) || errors.Is(err, build.ErrBuildFailed)) {
			// The source's description is wrong (a dkms.conf that does not evaluate): the same
			// every time.
			return fail("build: "+kmp.OneLine(err.Error()), "", build.FailureBuild)
		}
		return nil, false, err
	}
	kb := m.Kernels[0]
	log := ""
	if kb.Log != "" {
		log = "/" + outRel + "/" + kb.Log
	}
	switch kb.Status {
	case manifest.StatusSkipped:
		ch, err := o.dropBuilt(r, k, prev)
		return &Result{State: StateSkipped, Version: rec.Version, Attempted: rec.Version, Reason: kb.Reason, Log: log}, ch, err
	case manifest.StatusBuilt:
	default:
		reason := "build failed: " + kb.Reason
		if l := tellingLine(kb.LogTail); l != "" {
			reason += " (" + l + ")"
		}
		return fail(reason, log, kb.FailureKind)
	}
	files, err := o.installBuilt(r, k, rec.Name, out, kb)
	if err != nil {
		return nil, true, err
	}
	killPoint("autoinstall-after-install")
	if prev != nil {
		for _, f := range prev.Files {
			if !slices.Contains(files, f) {
				removeOwn(r, f)
			}
		}
	}
	res := &Result{State: StateBuiltLocally, Version: rec.Version, Attempted: rec.Version, Log: log, Files: files}
	signed := ""
	if len(kb.Modules) > 0 && kb.Modules[0].Signature != nil && key != nil {
		res.Signer, res.KeyID = key.Signer.Cert.Issuer.CommonName, key.KeyID()
		signed = ", signed with " + key.Origin + "'s key " + res.KeyID
	}
	o.logf("%s: installed %s%s", k, strings.Join(files, " "), signed)
	return res, true, nil
}

// resignNeeded tells whether prev, a local build, is not signed with the key that would sign
// it now: a key made or installed since (Secure Boot turned on, dkms generate_mok) must reach
// the modules built before it.
func (o *AutoinstallOptions) resignNeeded(r *os.Root, k string, prev *Result) bool {
	if o.Sign == SignNever {
		return false
	}
	if !o.keyLooked {
		key, err := FindMachineKey(o.Options)
		if err != nil {
			return false // buildLocally would not sign either; it says why when it builds
		}
		o.key, o.keyLooked = key, true
	}
	if o.key == nil || prev.KeyID == o.key.KeyID() && prev.Signer == o.key.Signer.Cert.Issuer.CommonName {
		return false
	}
	tree, _ := o.kernelTree(r, k)
	return tree != nil && tree.Signing.Enabled
}

// tellingLine is the line of a failed build's log tail a user needs first: the first
// compiler or make error, else the last line that says anything.
func tellingLine(tail []string) string {
	last := ""
	for _, l := range tail {
		l = strings.TrimSpace(l)
		if strings.Contains(l, "error:") || strings.Contains(l, "Error ") {
			return kmp.OneLine(l)
		}
		if l != "" && !strings.HasPrefix(l, "#") && strings.Trim(l, "-=") != "" {
			last = l
		}
	}
	return kmp.OneLine(last)
}

// installBuilt copies a build's modules to /lib/modules/<k>/updates/kmpack-built/<name>/,
// each atomically (a new name, synced, renamed over), after marking the kernel's depmod as
// pending, so a run killed midway has the next one re-index.
func (o *Options) installBuilt(r *os.Root, k, name, out string, kb *manifest.KernelBuild) ([]string, error) {
	if fi, err := r.Lstat("lib/modules/" + k); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory (a symbolic link?): not installing there", o.display("lib/modules/"+k))
	}
	if err := weakupdates.WriteAtomic(r, depmodPendingDir+"/"+k, nil); err != nil {
		return nil, err
	}
	dir := strings.Trim(builtPrefix(k, name), "/")
	if err := r.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// Through real directories only: a link planted on the way would put the module (and
	// later removals) somewhere else.
	for d := dir; d != "lib/modules"; d = path.Dir(d) {
		if fi, err := r.Lstat(d); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("%s is not a directory (a symbolic link?): not installing there", o.display(d))
		}
	}
	or, err := os.OpenRoot(out)
	if err != nil {
		return nil, err
	}
	defer or.Close()
	var files []string
	for _, bm := range kb.Modules {
		base := filepath.Base(bm.File)
		if ident.PathComponent(base) != nil || !module.IsModuleFileName(base) {
			return nil, fmt.Errorf("%s: module file %q: not a module file name", out, bm.File)
		}
		in, _, err := kmp.OpenRootFile(or, bm.File, true)
		if err != nil {
			return nil, err
		}
		tmp := dir + "/." + base + ".kmpack-tmp"
		r.Remove(tmp)
		f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
		if err != nil {
			in.Close()
			return nil, err
		}
		_, err = io.Copy(f, io.LimitReader(in, weakupdates.MaxModuleSize))
		in.Close()
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = r.Rename(tmp, dir+"/"+base)
		}
		if err != nil {
			r.Remove(tmp)
			return nil, err
		}
		files = append(files, "/"+dir+"/"+base)
	}
	sort.Strings(files)
	return files, nil
}

// reindex runs depmod for k (through the weak-updates engine, with the root's depmod.d) and
// clears its pending mark.
func (o *Options) reindex(r *os.Root, eng *weakupdates.Engine, k string) error {
	if err := eng.Reindex(k); err != nil {
		return err
	}
	return weakupdates.RemoveDurably(r, depmodPendingDir+"/"+k)
}

func pendingDepmods(r *os.Root) []string {
	return pendingMarks(r, depmodPendingDir, func(k string) bool {
		_, err := r.Stat("lib/modules/" + k + "/kernel")
		return err == nil
	})
}

// pendingMarks lists, sorted, the kernels marked in dir (one file per release, as the
// depmod- and initramfs-pending marks are) that still need their work (need); a mark naming no
// valid release, or a kernel that no longer needs it (gone since, or not ours), is removed.
func pendingMarks(r *os.Root, dir string, need func(k string) bool) []string {
	d, err := r.Open(dir)
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(maxStateKernels)
	d.Close()
	var out []string
	for _, n := range names {
		if ident.KernelRelease(n) == nil && need(n) {
			out = append(out, n)
			continue
		}
		r.Remove(dir + "/" + n)
	}
	sort.Strings(out)
	return out
}

// readState reads the state file; one that is missing starts empty, one that is invalid is
// reported and started afresh (every run recomputes what it records).
func readState(r *os.Root, o *Options) *State {
	b, _, err := kmp.ReadRootFile(r, stateFile, MaxStateSize)
	if errors.Is(err, fs.ErrNotExist) {
		return newState()
	}
	if err != nil {
		o.warnf("%s: %s; starting afresh", o.display(stateFile), kmp.OneLine(err.Error()))
		return newState()
	}
	st, err := ParseState(o.display(stateFile), b)
	if err != nil {
		o.warnf("%s; starting afresh", err)
		return newState()
	}
	return st
}

func writeState(r *os.Root, st *State) error {
	b, err := marshalState(st)
	if err != nil {
		return err
	}
	return weakupdates.WriteAtomic(r, stateFile, b)
}

// uninstallBuilt removes every module autoinstall built from source name, in every kernel,
// re-indexes those kernels and forgets the rows.
func uninstallBuilt(r *os.Root, o *Options, name string) error {
	st := readState(r, o)
	eng := o.engine()
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range st.Kernels {
			if !yield(k) {
				return
			}
		}
	}) {
		res := st.get(k, name)
		if res == nil {
			continue
		}
		res.Files = append(res.Files, unrecordedFiles(r, k, name, res.Files)...)
		ch, err := o.dropBuilt(r, k, res)
		if err != nil {
			return err
		}
		delete(st.Kernels[k], name)
		if ch {
			job := o.planInitramfs(r, k, appendModuleNames(nil, res.Files))
			if err := writeState(r, st); err != nil {
				return err
			}
			if err := o.reindex(r, eng, k); err != nil {
				return err
			}
			o.runInitramfs(context.Background(), r, job)
		}
	}
	// A run killed between installing a build and recording it leaves files no row lists (the
	// next autoinstall would replace them): they are autoinstall's too, in its own directory.
	for _, k := range weakupdates.InstalledKernels(r) {
		if st.get(k, name) != nil {
			continue
		}
		if files := unrecordedFiles(r, k, name, nil); len(files) > 0 {
			if _, err := o.dropBuilt(r, k, &Result{Files: files}); err != nil {
				return err
			}
			job := o.planInitramfs(r, k, appendModuleNames(nil, files))
			if err := o.reindex(r, eng, k); err != nil {
				return err
			}
			o.runInitramfs(context.Background(), r, job)
		}
	}
	return writeState(r, st)
}

// unrecordedFiles are the module files in autoinstall's directory for name in kernel k
// (reached through real directories only) that known does not list.
func unrecordedFiles(r *os.Root, k, name string, known []string) []string {
	prefix := builtPrefix(k, name)
	d, err := r.Open(strings.Trim(prefix, "/"))
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(maxStateFiles)
	d.Close()
	var out []string
	for _, n := range names {
		f := prefix + n
		if module.IsModuleFileName(n) && ident.PathComponent(n) == nil && !slices.Contains(known, f) && ownFile(r, f) {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

// RemoveKernels is for kernels that were removed (the kernel hooks' postrm and kernel-install
// remove): what autoinstall built for each goes (its modules, build directory and rows), then
// the weak-updates engine drops the kernel's links. A kernel whose modules are still
// installed (lib/modules/<k>/kernel) keeps autoinstall's builds, as the engine keeps its links:
// a hook run too early must not strip a working kernel.
func RemoveKernels(o Options, kernels []string) error {
	if err := validKernels(kernels); err != nil {
		return err
	}
	err := o.locked(func(r *os.Root) error {
		st := readState(r, &o)
		for _, k := range kernels {
			if _, err := r.Lstat("lib/modules/" + k + "/kernel"); err == nil {
				o.warnf("%s is still installed (%s exists): its modules built by autoinstall are kept", k, o.display("lib/modules/"+k+"/kernel"))
				continue
			}
			for name, res := range st.Kernels[k] {
				for _, f := range res.Files {
					o.logf("remove %s", f)
					if err := removeOwn(r, f); err != nil {
						return err
					}
				}
				// Empty directories only: what a package put there stays.
				for d := strings.Trim(builtPrefix(k, name), "/"); d != "lib/modules"; d = path.Dir(d) {
					if r.Remove(d) != nil {
						break
					}
				}
			}
			delete(st.Kernels, k)
			if err := r.RemoveAll(autoBuildsDir + "/" + k); err != nil {
				return err
			}
			if err := weakupdates.RemoveDurably(r, depmodPendingDir+"/"+k); err != nil {
				return err
			}
		}
		return writeState(r, st)
	})
	if err != nil {
		return err
	}
	eng := o.engine()
	for _, k := range kernels {
		if err := eng.RemoveKernel(k); err != nil {
			return err
		}
	}
	return nil
}
