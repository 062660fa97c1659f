package weakupdates

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/module"
)

// Engine keeps <root>/lib/modules/<release>/weak-updates/ in line with the registered KMPs:
// every kernel of a KMP's flavor that has no build of it gets links to the newest build whose
// modules all load there (weakupdates.Check), KMPs that need each other resolved to a fixpoint.
// Every run recomputes the whole state from the registrations and the kernels, so a run
// interrupted at any point is repaired by the next one.
//
// Everything under Root is reached through an os.Root: no registration, symbolic link or
// directory planted under Root can make the engine read or write outside it. Directories the
// engine writes into (weak-updates and the directories under it) are refused when they are
// symbolic links.
type Engine struct {
	Root   string
	DryRun bool
	// Log receives one line per change (and, for Status, the state).
	Log io.Writer
	// Warn receives warnings (a registration skipped, a kernel or link refused); default
	// os.Stderr.
	Warn io.Writer
	// Depmod re-indexes one kernel; default runs depmod -b <root> -a <release>.
	Depmod func(release string) error
	// LockTimeout bounds the wait for another run (DefaultLockTimeout when 0); DepmodTimeout
	// bounds one depmod run (DefaultDepmodTimeout when 0).
	LockTimeout   time.Duration
	DepmodTimeout time.Duration
}

// DefaultDepmodTimeout is how long one depmod may run (seconds on real systems).
const DefaultDepmodTimeout = 5 * time.Minute

// DepmodConf is the depmod.d file the runtime package installs: a package's own modules
// first, then weak-updates links, then the kernel's.
const DepmodConf = "# Installed by kmpack: modules of a package built for this kernel (updates) win over\n" +
	"# compatible builds for sibling kernels (weak-updates), which win over the kernel's own.\n" +
	"search updates weak-updates built-in\n"

// stateDir holds registrations, the lock and depmod-pending markers, relative to the root.
const stateDir = "var/lib/kmpack/weak-updates"

// KillPointEnv names the environment variable tests set to make the engine SIGKILL itself at
// a named point of a run ("after-pending", "after-link", "before-depmod", "after-depmod"):
// crash recovery is tested at exact points rather than after guessed delays.
const KillPointEnv = "KMPACK_TEST_KILL_AT"

func killPoint(name string) {
	if os.Getenv(KillPointEnv) == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}

func (e *Engine) root() string {
	if e.Root == "" {
		return "/"
	}
	return e.Root
}

func (e *Engine) logf(format string, args ...any) {
	if e.Log != nil {
		fmt.Fprintf(e.Log, format+"\n", args...)
	}
}

func (e *Engine) warnf(format string, args ...any) {
	w := e.Warn
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, "kmpack: weak-updates: warning: "+format+"\n", args...)
}

// session is one run: the root opened once, the lock held.
type session struct {
	e *Engine
	r *os.Root
}

// display is a path under the root as the user knows it.
func (s *session) display(name string) string { return filepath.Join(s.e.root(), name) }

// run opens the root, takes the lock (shared, and never created, for read-only runs) and
// runs fn.
func (e *Engine) run(write bool, fn func(s *session) error) error {
	r, err := os.OpenRoot(e.root())
	if err != nil {
		return err
	}
	defer r.Close()
	timeout := e.LockTimeout
	if timeout == 0 {
		timeout = DefaultLockTimeout
	}
	lockName := stateDir + "/lock"
	unlock, err := LockFile(r, lockName, !write || e.DryRun, timeout)
	if err != nil {
		return fmt.Errorf("%s: %v", filepath.Join(e.root(), lockName), err)
	}
	defer unlock()
	return fn(&session{e: e, r: r})
}

func registrationFile(pkg string) string { return stateDir + "/kmps/" + pkg + ".json" }

// kmps reads the registrations. One that cannot be read or is not valid is skipped with a
// warning naming its file: it must not stop the others (or a kernel's hooks).
func (s *session) kmps() []KMP {
	dir := stateDir + "/kmps"
	d, err := s.r.Open(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.e.warnf("%s: %v", s.display(dir), err)
		}
		return nil
	}
	entries, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		s.e.warnf("%s: %v", s.display(dir), err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	var out []KMP
	for _, ent := range entries {
		if !strings.HasSuffix(ent.Name(), ".json") {
			continue
		}
		name := dir + "/" + ent.Name()
		b, _, err := kmp.ReadRootFile(s.r, name, MaxRegistrationSize)
		if err != nil {
			s.e.warnf("skipping registration %s: %s", s.display(name), oneLine(err.Error()))
			continue
		}
		k, err := ParseRegistration(s.display(name), b)
		if err != nil {
			s.e.warnf("skipping registration %s", oneLine(err.Error()))
			continue
		}
		out = append(out, k)
	}
	return out
}

// AddKMP registers a package's modules and links them into every kernel they load in.
// Registering a package again (upgrade, reinstall) replaces its registration: links are never
// lost on reinstall (SUSE's bsc#1257055). A dry run prints the changes the registration would
// make and writes nothing.
func (e *Engine) AddKMP(k KMP) error {
	if len(k.Modules) == 0 {
		mods, err := e.InstalledModules(k)
		if err != nil {
			return err
		}
		k.Modules = mods
	}
	if err := k.Validate(); err != nil {
		return fmt.Errorf("add-kmp: %v", err)
	}
	k.Format = k.format() // recorded, so the version order never has to be guessed
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	return e.run(true, func(s *session) error {
		if !e.DryRun {
			if err := WriteAtomic(s.r, registrationFile(k.Package), append(b, '\n')); err != nil {
				return err
			}
		}
		all := slices.DeleteFunc(s.kmps(), func(o KMP) bool { return o.Package == k.Package })
		return s.sync(kernel.FlavorFromRelease(k.Kernel), append(all, k))
	})
}

// InstalledModules lists the modules a package installed in the debian profile's layout,
// /lib/modules/<kernel>/updates/<name>/ under the root, read through the root (a link there
// cannot lead outside it): add-kmp's default when the package names no modules.
func (e *Engine) InstalledModules(k KMP) ([]string, error) {
	if err := ident.PackageName(k.Name); err != nil {
		return nil, kmp.InputErrorf("add-kmp", "%v", err)
	}
	if err := ident.KernelRelease(k.Kernel); err != nil {
		return nil, kmp.InputErrorf("add-kmp", "%v", err)
	}
	dir := path.Join("lib/modules", k.Kernel, "updates", k.Name)
	var mods []string
	if r, err := os.OpenRoot(e.root()); err == nil {
		if d, err := r.Open(dir); err == nil {
			names, _ := d.Readdirnames(-1)
			d.Close()
			for _, n := range names {
				if module.IsModuleFileName(n) {
					mods = append(mods, "/"+path.Join(dir, n))
				}
			}
		}
		r.Close()
	}
	if len(mods) == 0 {
		return nil, kmp.InputErrorf("add-kmp "+k.Package, "no modules given and none in /%s", dir)
	}
	sort.Strings(mods)
	return mods, nil
}

// RemoveKMP forgets a package and relinks what it provided to the next best build.
func (e *Engine) RemoveKMP(pkg string) error {
	if err := ident.PackageName(pkg); err != nil {
		return fmt.Errorf("remove-kmp: %v", err)
	}
	return e.run(true, func(s *session) error {
		name := registrationFile(pkg)
		flavor := ""
		b, _, err := kmp.ReadRootFile(s.r, name, MaxRegistrationSize)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			s.e.warnf("%s: %s; removing it", s.display(name), oneLine(err.Error()))
		default:
			if k, err := ParseRegistration(s.display(name), b); err != nil {
				s.e.warnf("%s; removing it", oneLine(err.Error()))
			} else {
				flavor = kernel.FlavorFromRelease(k.Kernel)
			}
		}
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			e.logf("unregister %s", pkg)
			if !e.DryRun {
				if err := RemoveDurably(s.r, name); err != nil {
					return err
				}
			}
		}
		all := slices.DeleteFunc(s.kmps(), func(o KMP) bool { return o.Package == pkg })
		return s.sync(flavor, all)
	})
}

// Registrations are the valid registrations (an invalid one is skipped with a warning).
func (e *Engine) Registrations() ([]KMP, error) {
	var out []KMP
	err := e.run(false, func(s *session) error {
		out = s.kmps()
		return nil
	})
	return out, err
}

// Reindex runs depmod for one kernel under the engine's lock, as the engine does (with the
// root's own depmod.d): for modules installed beside the engine's links (kmpack autoinstall).
func (e *Engine) Reindex(release string) error {
	if err := ident.KernelRelease(release); err != nil {
		return fmt.Errorf("reindex: %v", err)
	}
	return e.run(true, func(s *session) error { return s.depmod(release) })
}

// Sync recomputes every installed kernel's links: what an upgraded engine, or a repair by
// hand, runs.
func (e *Engine) Sync() error {
	return e.run(true, func(s *session) error { return s.sync("", s.kmps()) })
}

// AddKernel links every compatible KMP into a newly installed kernel.
func (e *Engine) AddKernel(release string) error {
	if err := ident.KernelRelease(release); err != nil {
		return fmt.Errorf("add-kernel: %v", err)
	}
	return e.run(true, func(s *session) error { return s.sync(kernel.FlavorFromRelease(release), s.kmps()) })
}

// RemoveKernel drops a removed kernel's weak-updates directory and relinks the others (a
// kernel that goes away may have been some link's source).
func (e *Engine) RemoveKernel(release string) error {
	if err := ident.KernelRelease(release); err != nil {
		return fmt.Errorf("remove-kernel: %v", err)
	}
	return e.run(true, func(s *session) error {
		dir := "lib/modules/" + release
		if err := s.checkKernelDir(release); err != nil {
			var r *refusedError
			if !errors.As(err, &r) {
				return err
			}
			// Only the last component of a path is not followed: through a symlinked
			// kernel directory, RemoveAll would empty another directory's weak-updates.
			s.e.warnf("%s", r.msg)
			if err := s.sync(kernel.FlavorFromRelease(release), s.kmps()); err != nil {
				return err
			}
			return fmt.Errorf("left %s alone (see the warnings above)", s.display(dir))
		}
		if _, err := s.r.Lstat(dir + "/kernel"); errors.Is(err, fs.ErrNotExist) {
			wu := dir + "/weak-updates"
			if fi, err := s.r.Lstat(wu); err == nil {
				e.logf("remove %s", s.display(wu))
				if !e.DryRun {
					if fi.Mode()&fs.ModeSymlink != 0 {
						err = s.r.Remove(wu) // the link, never what it points to
					} else {
						err = s.r.RemoveAll(wu)
					}
					if err != nil {
						return err
					}
					s.r.Remove(dir) // only if nothing else is left
				}
			}
			if !e.DryRun {
				if err := RemoveDurably(s.r, depmodPending(release)); err != nil {
					return err
				}
			}
		}
		return s.sync(kernel.FlavorFromRelease(release), s.kmps())
	})
}

// installedKernels are the releases under <root>/lib/modules with the kernel's own modules.
func (s *session) installedKernels() []string { return InstalledKernels(s.r) }

// InstalledKernels are the releases under r's lib/modules with the kernel's own modules (a
// kernel/ directory), sorted.
func InstalledKernels(r *os.Root) []string {
	d, err := r.Open("lib/modules")
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	var out []string
	for _, n := range names {
		if ident.KernelRelease(n) != nil {
			continue // not a kernel's directory
		}
		if _, err := r.Stat("lib/modules/" + n + "/kernel"); err == nil {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Plan is what one kernel's weak-updates should hold.
type Plan struct {
	Kernel string `json:"kernel"`
	// Links maps link paths (from the root) to their targets (absolute, as on the system).
	Links map[string]string `json:"links"`
	// Chosen and Rejected say, per KMP name, which build is linked and why others are not.
	Chosen   map[string]string   `json:"chosen"`
	Rejected map[string][]string `json:"rejected,omitempty"`
	// From says, per chosen KMP name, which kernel the linked build was built for.
	From map[string]string `json:"from,omitempty"`
	// Unlinked says, per chosen KMP name (filled by Status), why its links are not all in
	// place on disk: a real file in the way, a directory that is a symbolic link, a link
	// missing or pointing elsewhere until the next sync.
	Unlinked map[string][]string `json:"unlinked,omitempty"`
	Notes    []string            `json:"notes,omitempty"`

	owner map[string]string // link -> KMP name
}

// plan decides kernel K's links: per KMP name without a build for K, the newest build whose
// modules all load in K, with symbols of other KMPs present in K (own builds and links chosen
// so far) available, repeated until nothing changes.
func (s *session) plan(release string, all []KMP, infos map[string]*module.ModuleInfo) *Plan {
	p := &Plan{Kernel: release, Links: map[string]string{}, Chosen: map[string]string{}, Rejected: map[string][]string{},
		From: map[string]string{}, owner: map[string]string{}}
	modDir := "lib/modules/" + release
	kernelRoot, err := s.r.OpenRoot(modDir + "/kernel")
	if err == nil {
		defer kernelRoot.Close()
	}
	t, err := installedTarget(s.r, s.e.root(), modDir, kernelRoot)
	if err != nil {
		p.Notes = append(p.Notes, oneLine(err.Error()))
		return p
	}
	// Exports available in K beyond its symvers: own builds, then chosen links.
	t.Extra = map[string]module.Symbol{}
	addExports := func(k KMP) {
		for _, m := range k.Modules {
			for _, ex := range infos[m].Exports {
				t.Extra[ex.Name] = module.Symbol{Name: ex.Name, CRC: ex.CRC, Module: k.Name, Namespace: ex.Namespace}
			}
		}
	}
	flavor := kernel.FlavorFromRelease(release)
	byName := map[string][]KMP{}
	own := map[string]bool{}
	for _, k := range all {
		if kernel.FlavorFromRelease(k.Kernel) != flavor {
			continue
		}
		if k.Kernel == release {
			own[k.Name] = true
			addExports(k)
		}
		byName[k.Name] = append(byName[k.Name], k)
	}
	var names []string
	for n := range byName {
		if !own[n] {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, cands := range byName {
		sort.Slice(cands, func(i, j int) bool { return newer(cands[i], cands[j]) })
	}
	for changed := true; changed; {
		changed = false
		for _, name := range names {
			if _, done := p.Chosen[name]; done {
				continue
			}
			var rejected []string
			for _, k := range byName[name] {
				var mods []*module.ModuleInfo
				for _, m := range k.Modules {
					mods = append(mods, infos[m])
				}
				ok := true
				for _, v := range Check(mods, t) {
					if !v.Compatible {
						ok = false
						rejected = append(rejected, fmt.Sprintf("%s %s (built for %s): %s: %s", k.Package, k.Version, k.Kernel, v.Module, v.Reasons[0].Detail))
						break
					}
				}
				if !ok {
					continue
				}
				p.Chosen[name] = fmt.Sprintf("%s %s (built for %s)", k.Package, k.Version, k.Kernel)
				p.From[name] = k.Kernel
				for _, m := range k.Modules {
					link := path.Join("/lib/modules", release, "weak-updates", linkPath(&k, m))
					p.Links[link] = m
					p.owner[link] = name
				}
				addExports(k)
				changed = true
				break
			}
			if _, done := p.Chosen[name]; !done {
				p.Rejected[name] = rejected
			} else {
				delete(p.Rejected, name)
			}
		}
	}
	return p
}

// readModule reads a registered module through the root (a FIFO, device or oversized file
// is an error, not a hang).
func (s *session) readModule(m string) (*module.ModuleInfo, error) {
	b, _, err := kmp.ReadRootFile(s.r, rel(m), MaxModuleSize)
	if err != nil {
		return nil, err
	}
	data, c, err := module.Decompress(s.display(m), b)
	if err != nil {
		return nil, err
	}
	mi, err := module.ParseModule(s.display(m), data)
	if err != nil {
		return nil, err
	}
	mi.Compression = c
	return mi, nil
}

// liveKMPs are the KMPs whose modules are all readable, with those modules read. A
// registration whose files are gone (a package removed without remove-kmp) just stops counting.
func (s *session) liveKMPs(all []KMP) ([]KMP, map[string]*module.ModuleInfo) {
	infos := map[string]*module.ModuleInfo{}
	var live []KMP
	for _, k := range all {
		ok := true
		for _, m := range k.Modules {
			mi, err := s.readModule(m)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					s.e.logf("skip %s: %s is gone", k.Package, m)
				} else {
					s.e.warnf("skipping %s: %s: %s", k.Package, s.display(m), oneLine(err.Error()))
				}
				ok = false
				break
			}
			infos[m] = mi
		}
		if ok {
			live = append(live, k)
		}
	}
	return live, infos
}

// refusedError is a kernel the engine will not touch (its weak-updates is not a real
// directory); the run goes on with the other kernels and fails at the end.
type refusedError struct{ msg string }

func (e *refusedError) Error() string { return e.msg }

// sync recomputes and applies the links of every installed kernel of flavor ("" for all).
func (s *session) sync(flavor string, all []KMP) error {
	live, infos := s.liveKMPs(all)
	var refused []string
	for _, rel := range s.installedKernels() {
		if flavor != "" && kernel.FlavorFromRelease(rel) != flavor {
			continue
		}
		p := s.plan(rel, live, infos)
		_, err := s.r.Lstat(depmodPending(rel))
		pending := err == nil
		changed, err := s.apply(p)
		var r *refusedError
		if errors.As(err, &r) {
			s.e.warnf("%s", r.msg)
			refused = append(refused, rel)
			continue
		}
		if err != nil {
			return err
		}
		if (changed || pending) && !s.e.DryRun {
			killPoint("before-depmod")
			if err := s.depmod(rel); err != nil {
				return err
			}
			killPoint("after-depmod")
			if err := RemoveDurably(s.r, depmodPending(rel)); err != nil {
				return err
			}
		}
	}
	if len(refused) > 0 {
		return fmt.Errorf("left the weak-updates of %s alone (see the warnings above)", strings.Join(refused, ", "))
	}
	return nil
}

// depmodPending marks a kernel whose links changed and whose depmod has not yet finished: a
// run killed in between leaves the links right and the indexes stale, and the next run, finding
// nothing to link, still has to re-index.
func depmodPending(release string) string {
	return stateDir + "/depmod-pending/" + release
}

// managedTarget tells a link target kmpack makes: a module under another kernel's
// /lib/modules/<release>/, outside its kernel/ and weak-updates/ (what Validate allows a
// registration to list), wherever the package put it (updates/, extra/, ...).
func managedTarget(t string) bool {
	if !strings.HasPrefix(t, "/lib/modules/") || path.Clean(t) != t {
		return false
	}
	parts := strings.Split(strings.TrimPrefix(t, "/lib/modules/"), "/")
	return len(parts) >= 3 && ident.KernelRelease(parts[0]) == nil && parts[1] != "kernel" && parts[1] != "weak-updates" &&
		module.IsModuleFileName(parts[len(parts)-1])
}

// checkKernelDir refuses a kernel's directory, lib/modules/<release>, that is a symbolic link
// or not a directory: paths through it would reach (and links and removals would change)
// whatever it points to. A directory that does not exist is fine (nil).
func (s *session) checkKernelDir(release string) error {
	dir := "lib/modules/" + release
	fi, err := s.r.Lstat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSymlink != 0:
		return &refusedError{fmt.Sprintf("%s is a symbolic link: refusing to touch its weak-updates (replace it with a directory)", s.display(dir))}
	case !fi.IsDir():
		return &refusedError{fmt.Sprintf("%s is not a directory: refusing to touch it", s.display(dir))}
	}
	return nil
}

// weakUpdates opens a kernel's weak-updates directory as a root of its own, refusing it when
// it is a symbolic link or not a directory. It returns nil, nil when it does not exist.
func (s *session) weakUpdates(release string) (*os.Root, error) {
	if err := s.checkKernelDir(release); err != nil {
		return nil, err
	}
	dir := "lib/modules/" + release + "/weak-updates"
	fi, err := s.r.Lstat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, err
	case fi.Mode()&fs.ModeSymlink != 0:
		return nil, &refusedError{fmt.Sprintf("%s is a symbolic link: refusing to make links through it (replace it with a directory)", s.display(dir))}
	case !fi.IsDir():
		return nil, &refusedError{fmt.Sprintf("%s is not a directory: refusing to touch it", s.display(dir))}
	}
	return s.r.OpenRoot(dir)
}

// blockedParent returns the first directory on the way to link (a path inside weak-updates)
// that exists and is not a real directory: a stray file or a symbolic link the engine will
// not write through.
func blockedParent(wu *os.Root, link string) string {
	parts := strings.Split(link, "/")
	for i := 1; i < len(parts); i++ {
		d := strings.Join(parts[:i], "/")
		fi, err := wu.Lstat(d)
		if errors.Is(err, fs.ErrNotExist) {
			return ""
		}
		if err != nil || !fi.IsDir() {
			return d
		}
	}
	return ""
}

// apply makes the kernel's weak-updates match the plan: stale links (kmpack's: managedTarget)
// removed, missing or wrong ones made atomically, real files never touched.
func (s *session) apply(p *Plan) (bool, error) {
	e := s.e
	wuDir := "lib/modules/" + p.Kernel + "/weak-updates"
	wu, err := s.weakUpdates(p.Kernel)
	if err != nil {
		return false, err
	}
	if wu != nil {
		defer wu.Close()
	}
	changed := false
	// change records, before the first change, that this kernel needs depmod.
	change := func() error {
		if !changed && !e.DryRun {
			if err := WriteAtomic(s.r, depmodPending(p.Kernel), nil); err != nil {
				return err
			}
			killPoint("after-pending")
		}
		changed = true
		return nil
	}
	abs := func(l string) string { return "/" + wuDir + "/" + l }
	// Links are relative, so they resolve the same in the system and in an image or test root
	// (depmod -b, dpkg --root); existing maps each kmpack link (inside weak-updates) to its
	// absolute target.
	existing := map[string]string{}
	if wu != nil {
		fs.WalkDir(wu.FS(), ".", func(l string, d fs.DirEntry, err error) error {
			if err != nil || d.Type()&fs.ModeSymlink == 0 {
				return nil // directories are walked, never followed; real files are never touched
			}
			if strings.HasSuffix(l, ".kmpack-tmp") {
				e.logf("remove %s (left by an interrupted run)", abs(l))
				if !e.DryRun {
					wu.Remove(l)
				}
				return nil
			}
			if t, err := wu.Readlink(l); err == nil {
				if !path.IsAbs(t) {
					t = path.Join(path.Dir(abs(l)), t)
				}
				if managedTarget(t) {
					existing[l] = t
				}
			}
			return nil
		})
	}
	for _, l := range slices.Sorted(maps.Keys(existing)) {
		if _, keep := p.Links[abs(l)]; keep {
			continue // kept, or replaced below
		}
		e.logf("unlink %s -> %s", abs(l), existing[l])
		if err := change(); err != nil {
			return changed, err
		}
		if !e.DryRun {
			if err := wu.Remove(l); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return changed, err
			}
			for d := path.Dir(l); d != "."; d = path.Dir(d) {
				if wu.Remove(d) != nil { // empty package directories only
					break
				}
			}
		}
	}
	for _, link := range slices.Sorted(maps.Keys(p.Links)) {
		target := p.Links[link]
		l := strings.TrimPrefix(link, "/"+wuDir+"/")
		if existing[l] == target {
			continue
		}
		replace := false
		if wu != nil {
			if d := blockedParent(wu, l); d != "" {
				e.warnf("%s is not a directory (a stray file or a symbolic link): %s not linked", s.display(abs(d)), link)
				continue
			}
			if fi, err := wu.Lstat(l); err == nil {
				if fi.Mode()&fs.ModeSymlink == 0 {
					e.warnf("%s is a real file, not kmpack's: kept, %s not linked there", s.display(link), target)
					continue
				}
				replace = true // a link, kmpack's or stale: replaced atomically
			}
		}
		e.logf("link %s -> %s", link, target)
		if err := change(); err != nil {
			return changed, err
		}
		if e.DryRun {
			continue
		}
		if wu == nil {
			if err := s.r.Mkdir(wuDir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return changed, err
			}
			if wu, err = s.weakUpdates(p.Kernel); err != nil {
				return changed, err
			}
			defer wu.Close()
		}
		for i, parts := 1, strings.Split(l, "/"); i < len(parts); i++ {
			if err := wu.Mkdir(strings.Join(parts[:i], "/"), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return changed, err
			}
		}
		if d := blockedParent(wu, l); d != "" {
			e.warnf("%s is not a directory: %s not linked", s.display(abs(d)), link)
			continue
		}
		relTarget, err := filepath.Rel(path.Dir(link), target)
		if err != nil {
			return changed, err
		}
		if replace {
			tmp := l + ".kmpack-tmp"
			wu.Remove(tmp)
			if err := wu.Symlink(relTarget, tmp); err != nil {
				return changed, err
			}
			if err := wu.Rename(tmp, l); err != nil {
				return changed, err
			}
		} else if err := wu.Symlink(relTarget, l); err != nil {
			// Something appeared there since the check: never replace it.
			e.warnf("%s: %v: not linked", s.display(link), err)
			continue
		}
		killPoint("after-link")
	}
	return changed, nil
}

func (s *session) depmod(release string) error {
	e := s.e
	if e.Depmod != nil {
		return e.Depmod(release)
	}
	args := []string{"-a", release}
	if e.root() != "/" {
		args = append(append([]string{"-b", e.root()}, s.depmodConfigs()...), args...)
	}
	timeout := e.DepmodTimeout
	if timeout == 0 {
		timeout = DefaultDepmodTimeout
	}
	return runBounded(timeout, "depmod", args...)
}

// runBounded runs a command in its own process group, killed (the whole group) after
// timeout; WaitDelay bounds the wait for output pipes a leftover child may hold open.
func runBounded(timeout time.Duration, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return fmt.Errorf("%s %s: killed after %v", name, strings.Join(args, " "), timeout)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, oneLine(string(out)))
	}
	return nil
}

// depmodConfigs are -C options for the root's own depmod.d directories: depmod -b reads the
// running system's configuration otherwise, and the search order there (updates before
// weak-updates before built-in) is what decides which copy of a module wins. Only directories
// inside the root count (one that links out of it, say to the host's /etc/depmod.d, is
// skipped).
func (s *session) depmodConfigs() []string {
	var out []string
	var seen []os.FileInfo
	for _, d := range []string{"etc/depmod.d", "run/depmod.d", "usr/local/lib/depmod.d", "lib/depmod.d", "usr/lib/depmod.d"} {
		fi, err := s.r.Stat(d)
		if err != nil || !fi.IsDir() || slices.ContainsFunc(seen, func(o os.FileInfo) bool { return os.SameFile(o, fi) }) {
			continue
		}
		seen = append(seen, fi)
		out = append(out, "-C", s.display(d))
	}
	return out
}

// Status describes every installed kernel's plan (what is linked, and why the rest is not)
// and, in Unlinked, where the disk does not match it.
func (e *Engine) Status() ([]*Plan, error) {
	var out []*Plan
	err := e.run(false, func(s *session) error {
		live, infos := s.liveKMPs(s.kmps())
		for _, rel := range s.installedKernels() {
			p := s.plan(rel, live, infos)
			s.checkLinks(p)
			out = append(out, p)
		}
		return nil
	})
	return out, err
}

// checkLinks fills p.Unlinked from what is on disk.
func (s *session) checkLinks(p *Plan) {
	p.Unlinked = map[string][]string{}
	wuDir := "lib/modules/" + p.Kernel + "/weak-updates"
	wu, err := s.weakUpdates(p.Kernel)
	if err != nil {
		for _, n := range sortedValues(p.owner) {
			p.Unlinked[n] = append(p.Unlinked[n], oneLine(err.Error()))
		}
		return
	}
	if wu != nil {
		defer wu.Close()
	}
	for _, link := range slices.Sorted(maps.Keys(p.Links)) {
		n, target := p.owner[link], p.Links[link]
		l := strings.TrimPrefix(link, "/"+wuDir+"/")
		why := link + " is missing (run kmpack weak-updates sync)"
		if wu != nil {
			if d := blockedParent(wu, l); d != "" {
				why = "/" + wuDir + "/" + d + " is not a directory (a stray file or a symbolic link)"
			} else if fi, err := wu.Lstat(l); err == nil {
				if fi.Mode()&fs.ModeSymlink == 0 {
					why = link + " is a real file, not kmpack's: the kernel loads it instead"
				} else if t, err := wu.Readlink(l); err == nil {
					if !path.IsAbs(t) {
						t = path.Join(path.Dir(link), t)
					}
					if t == target {
						continue
					}
					why = link + " points to " + t + " (run kmpack weak-updates sync)"
				}
			}
		}
		p.Unlinked[n] = append(p.Unlinked[n], why)
	}
}

func sortedValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out
}
