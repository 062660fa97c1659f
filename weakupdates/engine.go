package weakupdates

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/module"
)

// KMP is a module package as the engine knows it: registered by its maintainer scripts
// (add-kmp) so the engine never parses a package manager's database.
type KMP struct {
	// Name is the software's name (kmpack.yaml name), shared by its packages for every kernel.
	Name string `json:"name"`
	// Package is the distro package that installed the modules; Version its version.
	Package string `json:"package"`
	Version string `json:"version"`
	// Kernel is the release the modules were built for; Modules their paths from the root.
	Kernel  string   `json:"kernel"`
	Modules []string `json:"modules"`
}

// Engine keeps <root>/lib/modules/<release>/weak-updates/ in line with the registered KMPs:
// every kernel of a KMP's flavor that has no build of it gets links to the newest build whose
// modules all load there (weakupdates.Check), KMPs that need each other resolved to a fixpoint.
// Every run recomputes the whole state from the registrations and the kernels, so a run
// interrupted at any point is repaired by the next one.
type Engine struct {
	Root   string
	DryRun bool
	// Log receives one line per change (and, for Status, the state).
	Log io.Writer
	// Depmod re-indexes one kernel; default runs depmod -b <root> -a <release>.
	Depmod func(release string) error
}

// DepmodConf is the depmod.d file the runtime package installs: a package's own modules
// first, then weak-updates links, then the kernel's.
const DepmodConf = "# Installed by kmpack: modules of a package built for this kernel (updates) win over\n" +
	"# compatible builds for sibling kernels (weak-updates), which win over the kernel's own.\n" +
	"search updates weak-updates built-in\n"

func (e *Engine) root() string {
	if e.Root == "" {
		return "/"
	}
	return e.Root
}

func (e *Engine) stateDir() string   { return filepath.Join(e.root(), "var/lib/kmpack/weak-updates") }
func (e *Engine) modulesDir() string { return filepath.Join(e.root(), "lib/modules") }

func (e *Engine) logf(format string, args ...any) {
	if e.Log != nil {
		fmt.Fprintf(e.Log, format+"\n", args...)
	}
}

// lock takes an exclusive lock against concurrent runs (maintainer scripts of several
// packages, kernel hooks); it is released when the process exits, however it exits.
func (e *Engine) lock() (func(), error) {
	if err := os.MkdirAll(e.stateDir(), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(e.stateDir(), "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

func (e *Engine) kmps() ([]KMP, error) {
	files, _ := filepath.Glob(filepath.Join(e.stateDir(), "kmps", "*.json"))
	var out []KMP
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var k KMP
		if err := json.Unmarshal(b, &k); err != nil {
			return nil, fmt.Errorf("%s: %v", f, err)
		}
		out = append(out, k)
	}
	return out, nil
}

// writeAtomic writes a file whole or not at all.
func writeAtomic(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// AddKMP registers a package's modules and links them into every kernel they load in.
// Registering a package again (upgrade, reinstall) replaces its registration: links are never
// lost on reinstall (SUSE's bsc#1257055).
func (e *Engine) AddKMP(k KMP) error {
	if k.Name == "" || k.Package == "" || k.Kernel == "" || len(k.Modules) == 0 || strings.ContainsAny(k.Package, "/\x00") {
		return fmt.Errorf("add-kmp needs a name, a package, its kernel and its modules")
	}
	unlock, err := e.lock()
	if err != nil {
		return err
	}
	defer unlock()
	b, _ := json.MarshalIndent(k, "", "  ")
	if !e.DryRun {
		if err := writeAtomic(filepath.Join(e.stateDir(), "kmps", k.Package+".json"), b); err != nil {
			return err
		}
	}
	return e.sync(kernel.FlavorFromRelease(k.Kernel))
}

// RemoveKMP forgets a package and relinks what it provided to the next best build.
func (e *Engine) RemoveKMP(pkg string) error {
	unlock, err := e.lock()
	if err != nil {
		return err
	}
	defer unlock()
	f := filepath.Join(e.stateDir(), "kmps", pkg+".json")
	b, err := os.ReadFile(f)
	if errors.Is(err, os.ErrNotExist) {
		return e.sync("")
	}
	if err != nil {
		return err
	}
	var k KMP
	if err := json.Unmarshal(b, &k); err != nil {
		return fmt.Errorf("%s: %v", f, err)
	}
	if !e.DryRun {
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	return e.sync(kernel.FlavorFromRelease(k.Kernel))
}

// Sync recomputes every installed kernel's links: what an upgraded engine, or a repair by
// hand, runs.
func (e *Engine) Sync() error {
	unlock, err := e.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return e.sync("")
}

// AddKernel links every compatible KMP into a newly installed kernel.
func (e *Engine) AddKernel(release string) error {
	unlock, err := e.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return e.sync(kernel.FlavorFromRelease(release))
}

// RemoveKernel drops a removed kernel's weak-updates directory and relinks the others (a
// kernel that goes away may have been some link's source).
func (e *Engine) RemoveKernel(release string) error {
	unlock, err := e.lock()
	if err != nil {
		return err
	}
	defer unlock()
	dir := filepath.Join(e.modulesDir(), release)
	if _, err := os.Stat(filepath.Join(dir, "kernel")); errors.Is(err, os.ErrNotExist) {
		e.logf("remove %s", filepath.Join(dir, "weak-updates"))
		if !e.DryRun {
			if err := os.RemoveAll(filepath.Join(dir, "weak-updates")); err != nil {
				return err
			}
			os.Remove(dir) // only if nothing else is left
			os.Remove(e.depmodPending(release))
		}
	}
	return e.sync(kernel.FlavorFromRelease(release))
}

// installedKernels are the releases under <root>/lib/modules with the kernel's own modules.
func (e *Engine) installedKernels() []string {
	dirs, _ := os.ReadDir(e.modulesDir())
	var out []string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(e.modulesDir(), d.Name(), "kernel")); err == nil {
			out = append(out, d.Name())
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
	Notes    []string            `json:"notes,omitempty"`
}

// plan decides kernel K's links: per KMP name without a build for K, the newest build whose
// modules all load in K, with symbols of other KMPs present in K (own builds and links chosen
// so far) available, repeated until nothing changes.
func (e *Engine) plan(release string, all []KMP, infos map[string]*module.ModuleInfo) *Plan {
	p := &Plan{Kernel: release, Links: map[string]string{}, Chosen: map[string]string{}, Rejected: map[string][]string{}}
	t, err := OpenTarget(context.Background(), filepath.Join(e.modulesDir(), release), TargetOptions{})
	if err != nil {
		p.Notes = append(p.Notes, err.Error())
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
				for _, m := range k.Modules {
					rel := strings.TrimPrefix(m, "/lib/modules/"+k.Kernel+"/")
					p.Links[path.Join("/lib/modules", release, "weak-updates", strings.TrimPrefix(rel, "updates/"))] = m
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

// newer orders a KMP's builds: higher version first, then the newer kernel it was built for.
func newer(a, b KMP) bool {
	if c := kernel.CompareReleases(a.Version, b.Version); c != 0 {
		return c > 0
	}
	return kernel.CompareReleases(a.Kernel, b.Kernel) > 0
}

// liveKMPs are the registered KMPs whose modules are all readable, with those modules read. A
// registration whose files are gone (a package removed without remove-kmp) just stops counting.
func (e *Engine) liveKMPs() ([]KMP, map[string]*module.ModuleInfo, error) {
	all, err := e.kmps()
	if err != nil {
		return nil, nil, err
	}
	infos := map[string]*module.ModuleInfo{}
	var live []KMP
	for _, k := range all {
		ok := true
		for _, m := range k.Modules {
			mi, err := module.ReadModule(filepath.Join(e.root(), m))
			if err != nil {
				e.logf("skip %s: %v", k.Package, err)
				ok = false
				break
			}
			infos[m] = mi
		}
		if ok {
			live = append(live, k)
		}
	}
	return live, infos, nil
}

// sync recomputes and applies the links of every installed kernel of flavor ("" for all).
func (e *Engine) sync(flavor string) error {
	live, infos, err := e.liveKMPs()
	if err != nil {
		return err
	}
	for _, rel := range e.installedKernels() {
		if flavor != "" && kernel.FlavorFromRelease(rel) != flavor {
			continue
		}
		p := e.plan(rel, live, infos)
		_, err := os.Stat(e.depmodPending(rel))
		pending := err == nil
		changed, err := e.apply(p)
		if err != nil {
			return err
		}
		if (changed || pending) && !e.DryRun {
			if err := e.depmod(rel); err != nil {
				return err
			}
			if err := os.Remove(e.depmodPending(rel)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// depmodPending marks a kernel whose links changed and whose depmod has not yet finished: a
// run killed in between leaves the links right and the indexes stale, and the next run, finding
// nothing to link, still has to re-index.
func (e *Engine) depmodPending(release string) string {
	return filepath.Join(e.stateDir(), "depmod-pending", release)
}

// apply makes the kernel's weak-updates match the plan: stale links (kmpack's: pointing into
// /lib/modules/*/updates/) removed, missing or wrong ones made atomically, real files never
// touched.
func (e *Engine) apply(p *Plan) (bool, error) {
	dir := filepath.Join(e.modulesDir(), p.Kernel, "weak-updates")
	changed := false
	// change records, before the first change, that this kernel needs depmod.
	change := func() error {
		if !changed && !e.DryRun {
			if err := writeAtomic(e.depmodPending(p.Kernel), nil); err != nil {
				return err
			}
		}
		changed = true
		return nil
	}
	// Links are relative, so they resolve the same in the system and in an image or test root
	// (depmod -b, dpkg --root); existing maps each kmpack link to its absolute target.
	existing := map[string]string{}
	filepath.WalkDir(dir, func(fp string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if !d.IsDir() && strings.HasSuffix(fp, ".kmpack-tmp") {
			e.logf("remove %s (left by an interrupted run)", fp)
			if !e.DryRun {
				os.Remove(fp)
			}
			return nil
		}
		if d.Type()&os.ModeSymlink != 0 {
			link := "/" + strings.TrimPrefix(filepath.ToSlash(fp), strings.TrimSuffix(filepath.ToSlash(e.root()), "/")+"/")
			if t, err := os.Readlink(fp); err == nil {
				if !path.IsAbs(t) {
					t = path.Join(path.Dir(link), t)
				}
				if strings.HasPrefix(t, "/lib/modules/") && strings.Contains(t, "/updates/") {
					existing[link] = t
				}
			}
		}
		return nil
	})
	for link, target := range existing {
		if _, keep := p.Links[link]; keep {
			continue // kept, or replaced below
		}
		e.logf("unlink %s -> %s", link, target)
		if err := change(); err != nil {
			return changed, err
		}
		if !e.DryRun {
			if err := os.Remove(filepath.Join(e.root(), link)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return changed, err
			}
			os.Remove(filepath.Dir(filepath.Join(e.root(), link))) // empty package directory
		}
	}
	var links []string
	for l := range p.Links {
		links = append(links, l)
	}
	sort.Strings(links)
	for _, link := range links {
		target := p.Links[link]
		if existing[link] == target {
			continue
		}
		full := filepath.Join(e.root(), link)
		if fi, err := os.Lstat(full); err == nil && fi.Mode()&os.ModeSymlink == 0 {
			e.logf("keep %s: a real file, never replaced", link)
			continue
		}
		e.logf("link %s -> %s", link, target)
		if err := change(); err != nil {
			return changed, err
		}
		if e.DryRun {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return changed, err
		}
		rel, err := filepath.Rel(path.Dir(link), target)
		if err != nil {
			return changed, err
		}
		tmp := full + ".kmpack-tmp"
		os.Remove(tmp)
		if err := os.Symlink(rel, tmp); err != nil {
			return changed, err
		}
		if err := os.Rename(tmp, full); err != nil {
			return changed, err
		}
	}
	return changed, nil
}

func (e *Engine) depmod(release string) error {
	if e.Depmod != nil {
		return e.Depmod(release)
	}
	args := []string{"-a", release}
	if e.root() != "/" {
		args = append(append([]string{"-b", e.root()}, e.depmodConfigs()...), args...)
	}
	if out, err := exec.Command("depmod", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod %s: %v: %s", release, err, out)
	}
	return nil
}

// depmodConfigs are -C options for the root's own depmod.d directories: depmod -b reads the
// running system's configuration otherwise, and the search order there (updates before
// weak-updates before built-in) is what decides which copy of a module wins.
func (e *Engine) depmodConfigs() []string {
	var out []string
	var seen []os.FileInfo
	for _, d := range []string{"etc/depmod.d", "run/depmod.d", "usr/local/lib/depmod.d", "lib/depmod.d", "usr/lib/depmod.d"} {
		p := filepath.Join(e.root(), d)
		fi, err := os.Stat(p)
		if err != nil || !fi.IsDir() || slices.ContainsFunc(seen, func(o os.FileInfo) bool { return os.SameFile(o, fi) }) {
			continue
		}
		seen = append(seen, fi)
		out = append(out, "-C", p)
	}
	return out
}

// Status describes every installed kernel's plan (what is linked, and why the rest is not).
func (e *Engine) Status() ([]*Plan, error) {
	all, infos, err := e.liveKMPs()
	if err != nil {
		return nil, err
	}
	var out []*Plan
	for _, rel := range e.installedKernels() {
		out = append(out, e.plan(rel, all, infos))
	}
	return out, nil
}
