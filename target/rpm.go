package target

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	rpmversion "github.com/knqyf263/go-rpm-version"

	"github.com/kmpack/kmpack/formats/names"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/weakupdates"
)

// Autoinstall on rpm systems: step 3 with dnf or zypper, and step 1 for the rpm profiles'
// packages.
//
// Which package: the rpm profiles give a module's package one name for every kernel (rhel
// kmod-<name>, suse <name>-kmp-<flavor>: formats/names) and put the kernel into its release
// (rhel: "." + RHELKernelTag) or version (suse: "_" + SUSEKernelTag). The build for kernel K
// is the highest version of exactly that name, of this machine's architecture,
// whose release or version ends with K's tag. dnf looks for the rhel profile's name, zypper
// for the suse profile's; the one used is the one whose repositories the root configures
// (zypper first: it is SUSE's, and a SUSE system may carry dnf too).
//
// Install-only: to dnf and zypper a second kmod-<name> is an upgrade of the first unless the
// name is install-only (dnf's installonlypkgs, zypper's multiversion), and that upgrade would
// take the running kernel's build away. dnf is told so for this one transaction
// (installonlypkgs=NAME, and installonly_limit=0: never remove an older one to make room).
// zypper cannot be told on its command line, so its plan is asked first (--dry-run --xmlout)
// and refused when it would upgrade, downgrade or remove anything: SUSE's default zypp.conf
// makes KMPs multiversion (provides:multiversion(kernel), which the suse profile's KMPs
// provide). After either, every instance of the name installed before must still be there.
//
// Step 1: these packages do not register with kmpack's engine (their scriptlets call the
// distribution's weak-modules), so the rpm database says what is installed: the modules an
// installed instance of the profile's name has under /lib/modules/K/ are K's build.

// Fixed paths of the rpm tools.
const (
	rpmPath    = "/usr/bin/rpm"
	dnfPath    = "/usr/bin/dnf"
	zypperPath = "/usr/bin/zypper"
)

// maxToolOutput bounds what is kept of a package tool's output (an rpm query of every file
// of a few packages is far less).
const maxToolOutput = 16 << 20

// rpmDB is the root's rpm database, as /usr/bin/rpm reads it.
type rpmDB struct {
	root   string // absolute; "/" for this machine
	dbpath string // rpm's %_dbpath, as seen from inside the root
}

// dpkgManaged tells whether dpkg manages the root's packages (a Debian system may carry rpm as
// a tool, and its own rpm database).
func dpkgManaged(r *os.Root) bool {
	fi, err := r.Stat("var/lib/dpkg/status")
	return err == nil && fi.Size() > 0
}

// openRPMDB is the root's rpm database when rpm manages the root, nil otherwise.
func openRPMDB(ctx context.Context, o *Options, r *os.Root) *rpmDB {
	if dpkgManaged(r) {
		return nil
	}
	if _, err := os.Stat(rpmPath); err != nil {
		return nil
	}
	out, _, err := runTool(ctx, toolEnv(), rpmPath, "--eval", "%_dbpath")
	db := strings.TrimSpace(out)
	if err != nil || !path.IsAbs(db) || path.Clean(db) != db || db == "/" {
		return nil
	}
	if fi, err := r.Stat(strings.TrimPrefix(db, "/")); err != nil || !fi.IsDir() {
		return nil
	}
	root, err := filepath.Abs(o.root())
	if err != nil {
		return nil
	}
	return &rpmDB{root: root, dbpath: db}
}

// args are rpm's arguments for the root.
func (d *rpmDB) args(a ...string) []string {
	if d.root != "/" {
		return append([]string{"--root", d.root}, a...)
	}
	return a
}

// lock is rpm's transaction lock (fcntl), from the root: held for a whole transaction,
// scriptlets included.
func (d *rpmDB) lock() string { return strings.TrimPrefix(d.dbpath, "/") + "/.rpm.lock" }

// rpmPackage is one package: its NEVRA and, when installed, its files.
type rpmPackage struct {
	name, epoch, version, release, arch string
	files                               []string
}

// evr is the package's [epoch:]version-release.
func (p *rpmPackage) evr() string {
	v := p.version + "-" + p.release
	if p.epoch != "" && p.epoch != "0" {
		v = p.epoch + ":" + v
	}
	return v
}

func (p *rpmPackage) nevra() string { return p.name + "-" + p.evr() + "." + p.arch }

// newRPMPackage checks what a tool printed of a package before it goes into a command line or
// a state file.
func newRPMPackage(name, epoch, version, release, arch string) (*rpmPackage, error) {
	if epoch == "(none)" {
		epoch = ""
	}
	if err := ident.PackageName(name); err != nil {
		return nil, err
	}
	if epoch != "" && (len(epoch) > 9 || strings.Trim(epoch, "0123456789") != "") {
		return nil, &ident.Error{Kind: "epoch", Value: epoch, Why: "not a number"}
	}
	for _, v := range []string{version, release, arch} {
		if err := ident.Version(v); err != nil {
			return nil, err
		}
		if strings.Contains(v, "-") {
			return nil, &ident.Error{Kind: "version", Value: v, Why: "rpm forbids '-' here"}
		}
	}
	return &rpmPackage{name: name, epoch: epoch, version: version, release: release, arch: arch}, nil
}

// rpmQueryMark starts each package's record in installed's query output.
const rpmQueryMark = "@@kmpack-rpm@@ "

// installed is every installed instance of the named packages, with its files.
func (d *rpmDB) installed(ctx context.Context, pkgs []string) ([]rpmPackage, error) {
	if len(pkgs) == 0 {
		return nil, nil
	}
	args := d.args(append([]string{"-q", "--qf", rpmQueryMark + "%{NAME} %{EPOCHNUM} %{VERSION} %{RELEASE} %{ARCH}\\n[%{FILENAMES}\\n]"}, pkgs...)...)
	out, errOut, err := runTool(ctx, toolEnv(), rpmPath, args...)
	// rpm -q exits non-zero for each name not installed, saying so on stdout; anything on
	// stderr is a real failure (a database it cannot open).
	if err != nil && exitCode(err) < 0 {
		return nil, fmt.Errorf("rpm -q: %v", err)
	}
	for _, l := range strings.Split(errOut, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "warning:") && err != nil {
			return nil, fmt.Errorf("rpm -q: %v: %s", err, lastLines(errOut))
		}
	}
	return parseRPMQuery(out), nil
}

// parseRPMQuery reads installed's query output; a record whose fields are not valid is
// skipped.
func parseRPMQuery(out string) []rpmPackage {
	var pkgs []rpmPackage
	var cur *rpmPackage
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, rpmQueryMark); ok {
			cur = nil
			f := strings.Fields(rest)
			if len(f) != 5 {
				continue
			}
			p, err := newRPMPackage(f[0], f[1], f[2], f[3], f[4])
			if err != nil {
				continue
			}
			pkgs = append(pkgs, *p)
			cur = &pkgs[len(pkgs)-1]
			continue
		}
		if cur != nil && strings.HasPrefix(l, "/") && len(cur.files) < 100000 {
			cur.files = append(cur.files, l)
		}
	}
	return pkgs
}

// rpmModules are a package's module files by kernel release: "/lib/modules/K/..." (a
// usr-merged package's /usr/lib/modules too), outside the kernel's own kernel/ and the
// weak-updates/ links, clean paths of a valid release.
func rpmModules(files []string) map[string][]string {
	m := map[string][]string{}
	for _, f := range files {
		rest, ok := strings.CutPrefix(f, "/usr/lib/modules/")
		if !ok {
			rest, ok = strings.CutPrefix(f, "/lib/modules/")
		}
		k, sub, ok2 := strings.Cut(rest, "/")
		if !ok || !ok2 || ident.KernelRelease(k) != nil || !module.IsModuleFileName(path.Base(sub)) {
			continue
		}
		top, _, _ := strings.Cut(sub, "/")
		p := "/lib/modules/" + k + "/" + sub
		if top == "kernel" || top == "weak-updates" || path.Clean(p) != p || slices.Contains(m[k], p) {
			continue
		}
		m[k] = append(m[k], p)
	}
	return m
}

// rpmPackageNames are the rpm profiles' package names of module name for the kernels' flavors,
// each mapped to name.
func rpmPackageNames(name string, kernels []string) map[string]string {
	out := map[string]string{}
	if p := names.RHEL(name); ident.PackageName(p) == nil {
		out[p] = name
	}
	for _, k := range kernels {
		if p, err := names.SUSE(name, k); err == nil && ident.PackageName(p) == nil {
			out[p] = name
		}
	}
	return out
}

// registrations are, for step 1, the builds the rpm profiles' packages of the modules
// installed: one per package instance and kernel, as the weak-updates engine's registrations
// describe the debian profile's.
func (d *rpmDB) registrations(ctx context.Context, modules, kernels []string) ([]weakupdates.KMP, error) {
	byPkg := map[string]string{}
	for _, m := range modules {
		for p, n := range rpmPackageNames(m, kernels) {
			byPkg[p] = n
		}
	}
	pkgs, err := d.installed(ctx, slices.Sorted(func(yield func(string) bool) {
		for p := range byPkg {
			if !yield(p) {
				return
			}
		}
	}))
	if err != nil {
		return nil, err
	}
	var kmps []weakupdates.KMP
	for _, p := range pkgs {
		name, ok := byPkg[p.name]
		if !ok {
			continue
		}
		mods := rpmModules(p.files)
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range mods {
				if !yield(k) {
					return
				}
			}
		}) {
			kp := weakupdates.KMP{Name: name, Package: p.name, Version: p.evr(), Format: weakupdates.FormatRPM, Kernel: k, Modules: mods[k]}
			if kp.Validate() == nil {
				kmps = append(kmps, kp)
			}
		}
	}
	return kmps, nil
}

// distroWeakLinks are, for kernel k, the rpm profiles' builds for other kernels that the
// distribution's weak-modules (RHEL's weak-modules, SUSE's weak-modules2) linked into k's
// weak-updates/: step 2, made by the distribution's tool rather than kmpack's engine. A build
// counts when every one of its modules is the target of a symbolic link there; by module name.
func distroWeakLinks(r *os.Root, k string, kmps []weakupdates.KMP) map[string]*weakupdates.KMP {
	targets := map[string]*weakupdates.KMP{}
	flavor := kernel.FlavorFromRelease(k)
	for i := range kmps {
		if kp := &kmps[i]; kp.Format == weakupdates.FormatRPM && kp.Kernel != k && kernel.FlavorFromRelease(kp.Kernel) == flavor {
			for _, m := range kp.Modules {
				targets[m] = kp
			}
		}
	}
	if len(targets) == 0 {
		return nil
	}
	linked := map[*weakupdates.KMP]int{}
	seen := 0
	fs.WalkDir(r.FS(), "lib/modules/"+k+"/weak-updates", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if seen++; seen > maxWeakLinks {
			return fs.SkipAll
		}
		if d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		t, err := r.Readlink(p)
		if err != nil {
			return nil
		}
		if !path.IsAbs(t) {
			t = path.Join("/", path.Dir(p), t)
		}
		t = path.Clean(t)
		if rest, ok := strings.CutPrefix(t, "/usr/lib/modules/"); ok {
			t = "/lib/modules/" + rest
		}
		if kp := targets[t]; kp != nil {
			linked[kp]++
			delete(targets, t) // two links to one module count once
		}
		return nil
	})
	out := map[string]*weakupdates.KMP{}
	for kp, n := range linked {
		if n == len(kp.Modules) && (out[kp.Name] == nil || kp.Kernel > out[kp.Name].Kernel) {
			out[kp.Name] = kp
		}
	}
	return out
}

// maxWeakLinks bounds the entries of one kernel's weak-updates/ looked at.
const maxWeakLinks = 100000

// rpmRegistrations adds, on an rpm system, step 1's builds of the rpm profiles' packages to
// the engine's registrations. A database rpm cannot read is a warning: steps 2 to 5 go on.
func (o *Options) rpmRegistrations(ctx context.Context, r *os.Root, kmps []weakupdates.KMP, sources []SourceRecord) []weakupdates.KMP {
	if len(sources) == 0 {
		return kmps
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	db := openRPMDB(ctx, o, r)
	if db == nil {
		return kmps
	}
	var mods []string
	for _, s := range sources {
		mods = append(mods, s.Name)
	}
	more, err := db.registrations(ctx, mods, weakupdates.InstalledKernels(r))
	if err != nil {
		o.warnf("the rpm database: %v", err)
	}
	return append(kmps, more...)
}

// rpmManagerFor is the root's rpm package manager for step 3: zypper when it has zypper's
// repositories, else dnf when it has dnf's; nil when none is (or rpm does not manage it).
func (o *Options) rpmManagerFor(r *os.Root) repoManager {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultRepoTimeout)
	defer cancel()
	db := openRPMDB(ctx, o, r)
	if db == nil {
		return nil
	}
	has := func(tool, dir string) bool {
		if _, err := os.Stat(tool); err != nil {
			return false
		}
		d, err := r.Open(dir)
		if err != nil {
			return false
		}
		defer d.Close()
		ns, _ := d.Readdirnames(1000)
		return slices.ContainsFunc(ns, func(n string) bool { return strings.HasSuffix(n, ".repo") })
	}
	switch {
	case has(zypperPath, "etc/zypp/repos.d"):
		return &rpmManager{o: o, db: db, zypper: true, arch: map[string]string{}}
	case has(dnfPath, "etc/yum.repos.d"):
		return &rpmManager{o: o, db: db, arch: map[string]string{}}
	}
	return nil
}

// rpmManager drives dnf (the rhel profile's names) or zypper (the suse profile's).
type rpmManager struct {
	o      *Options
	db     *rpmDB
	zypper bool
	// arch is the architecture candidate chose, by "package version".
	arch map[string]string
}

func (m *rpmManager) name() string {
	if m.zypper {
		return "zypper"
	}
	return "dnf"
}

func (m *rpmManager) close() {}

// locks: zypper's own (a pid file; zypper runs rpm once per package, so rpm's lock comes and
// goes during its transaction), then rpm's (dnf holds it for its whole transaction).
func (m *rpmManager) locks() []txLock {
	l := []txLock{{path: m.db.lock()}}
	if m.zypper {
		// libzypp's lock is this machine's, whatever --root says (ZYPP_LOCKFILE_ROOT moves it).
		base := os.Getenv("ZYPP_LOCKFILE_ROOT")
		if base == "" {
			base = "/"
		}
		l = append([]txLock{{path: filepath.Join(base, "run/zypp.pid"), pidFile: true, host: true}}, l...)
	}
	return l
}

func (m *rpmManager) queryInTransaction() bool { return !m.zypper }

// deferSelf: no package manager hook runs kmpack after an rpm transaction, so a deferred
// run is started by autoinstall itself.
func (m *rpmManager) deferSelf() bool { return true }

func (m *rpmManager) packageFor(_ []weakupdates.KMP, module, k string) string {
	p := names.RHEL(module)
	if m.zypper {
		var err error
		if p, err = names.SUSE(module, k); err != nil {
			return ""
		}
	}
	if ident.PackageName(p) != nil {
		return ""
	}
	return p
}

// forKernel tells whether p is the rpm profile's build for kernel k.
func (m *rpmManager) forKernel(p *rpmPackage, k string) bool {
	if p.arch != kernel.HostMachine() {
		return false // the profiles' module packages are of the kernel's architecture
	}
	if m.zypper {
		tag, err := names.SUSEKernelTag(k)
		return err == nil && strings.HasSuffix(p.version, "_"+tag)
	}
	return strings.HasSuffix(p.release, "."+names.RHELKernelTag(k, kernel.HostMachine()))
}

func (m *rpmManager) env() []string {
	env := toolEnv()
	if m.zypper {
		// libzypp waits this long (seconds) for another zypper's lock.
		env = append(env, "ZYPP_LOCK_TIMEOUT=60")
	}
	return env
}

func (m *rpmManager) args(a ...string) []string {
	if m.db.root == "/" {
		return a
	}
	if m.zypper {
		return append([]string{"--root", m.db.root}, a...)
	}
	return append([]string{"--installroot=" + m.db.root}, a...)
}

func (m *rpmManager) tool() string {
	if m.zypper {
		return zypperPath
	}
	return dnfPath
}

func (m *rpmManager) candidate(ctx context.Context, pkg, k string) (string, error) {
	var offered []rpmPackage
	if m.zypper {
		out, _, err := runTool(ctx, m.env(), zypperPath, m.args("-n", "-q", "--xmlout", "search", "-s", "--match-exact", "-t", "package", pkg)...)
		// 104: nothing found; 100 and up: answered, with a remark (106: a repository could
		// not be refreshed, the others were read).
		if err != nil && exitCode(err) < 100 {
			return "", fmt.Errorf("zypper search %s: %v: %s", pkg, err, zypperMessages(out))
		}
		offered = zypperSolvables(out, pkg)
	} else {
		out, errOut, err := runTool(ctx, m.env(), dnfPath, m.args("-q", "repoquery", "--available", "--qf", "%{name} %{epoch} %{version} %{release} %{arch}\\n", pkg)...)
		if err != nil {
			return "", fmt.Errorf("dnf repoquery %s: %v: %s", pkg, err, lastLines(errOut+"\n"+out))
		}
		offered = dnfOffered(out, pkg)
	}
	var best *rpmPackage
	for i := range offered {
		p := &offered[i]
		if p.name == pkg && m.forKernel(p, k) && (best == nil || compareEVR(p, best) > 0) {
			best = p
		}
	}
	if best == nil {
		return "", nil
	}
	m.arch[pkg+" "+best.evr()] = best.arch
	return best.evr(), nil
}

// dnfOffered are the packages named pkg in dnf repoquery's answer (one "name epoch version
// release arch" per line); a line whose fields are not valid is skipped.
func dnfOffered(out, pkg string) []rpmPackage {
	var ps []rpmPackage
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 5 && f[0] == pkg {
			if p, err := newRPMPackage(f[0], f[1], f[2], f[3], f[4]); err == nil {
				ps = append(ps, *p)
			}
		}
	}
	return ps
}

// dnfPlanSections reads the transaction table dnf prints: package lines (indented) under
// section headers ("Installing:", "Upgrading:", ...), by header.
func dnfPlanSections(out string) map[string][]string {
	secs := map[string][]string{}
	cur := ""
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, " ") && cur != "":
			f := strings.Fields(l)
			switch {
			case len(f) >= 2 && f[0] == "replacing":
				// An obsoleting package replaces an installed one, under whichever section.
				secs["Replacing"] = append(secs["Replacing"], f[1])
			case len(f) > 0:
				secs[cur] = append(secs[cur], f[0])
			}
		case strings.HasSuffix(l, ":") && !strings.HasPrefix(l, " ") && !strings.Contains(l, " on "):
			cur = strings.TrimSuffix(l, ":")
			secs[cur] = secs[cur]
		default:
			cur = ""
		}
	}
	return secs
}

// dnfChanges are the sections of dnf's plan that would change installed packages (anything
// but installing), with their packages.
func dnfChanges(out string) []string {
	var ch []string
	secs := dnfPlanSections(out)
	for _, h := range slices.Sorted(func(yield func(string) bool) {
		for h := range secs {
			if !yield(h) {
				return
			}
		}
	}) {
		if !strings.HasPrefix(h, "Installing") && len(secs[h]) > 0 {
			ch = append(ch, strings.ToLower(h)+" "+strings.Join(secs[h], " "))
		}
	}
	return ch
}

// dnfPlanInstalls tells whether dnf's plan installs pkg.
func dnfPlanInstalls(out, pkg string) bool {
	return slices.Contains(dnfPlanSections(out)["Installing"], pkg)
}

// compareEVR is rpm's order of two packages' epoch, version and release (go-rpm-version, as
// the weak-updates engine and kmp/repo order rpm versions).
func compareEVR(a, b *rpmPackage) int {
	return rpmversion.NewVersion(a.evr()).Compare(rpmversion.NewVersion(b.evr()))
}

// zypperSolvables are the packages named pkg in zypper's search --xmlout answer.
func zypperSolvables(out, pkg string) []rpmPackage {
	var ps []rpmPackage
	dec := xml.NewDecoder(strings.NewReader(out))
	for {
		tok, err := dec.Token()
		if err != nil {
			return ps
		}
		se, ok := tok.(xml.StartElement)
		if !ok || se.Name.Local != "solvable" {
			continue
		}
		a := map[string]string{}
		for _, at := range se.Attr {
			a[at.Name.Local] = at.Value
		}
		if a["name"] != pkg || (a["kind"] != "" && a["kind"] != "package") {
			continue
		}
		if p := parseEdition(pkg, a["edition"], a["arch"]); p != nil {
			ps = append(ps, *p)
		}
	}
}

// zypperMessages are zypper's error messages in an --xmlout answer (else its last lines).
func zypperMessages(out string) string {
	var msgs []string
	dec := xml.NewDecoder(strings.NewReader(out))
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "message" {
			typ := ""
			for _, at := range se.Attr {
				if at.Name.Local == "type" {
					typ = at.Value
				}
			}
			var text string
			if dec.DecodeElement(&text, &se) == nil && typ == "error" {
				msgs = append(msgs, text)
			}
		}
	}
	if len(msgs) == 0 {
		return lastLines(out)
	}
	return lastLines(strings.Join(msgs, "\n"))
}

// zypperInstalls are the packages zypper's --dry-run --xmlout plan would install.
func zypperInstalls(out string) []rpmPackage {
	var ps []rpmPackage
	dec := xml.NewDecoder(strings.NewReader(out))
	in := false
	for {
		tok, err := dec.Token()
		if err != nil {
			return ps
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if t.Name.Local == "to-install" {
				in = true
			} else if t.Name.Local == "solvable" && in {
				a := map[string]string{}
				for _, at := range t.Attr {
					a[at.Name.Local] = at.Value
				}
				if p := parseEdition(a["name"], a["edition"], a["arch"]); p != nil {
					ps = append(ps, *p)
				}
			}
		case xml.EndElement:
			if t.Name.Local == "to-install" {
				in = false
			}
		}
	}
}

// parseEdition is a package from zypper's name, edition ([epoch:]version-release) and arch,
// nil when they are not valid.
func parseEdition(name, edition, arch string) *rpmPackage {
	epoch, vr := "", edition
	if e, rest, ok := strings.Cut(vr, ":"); ok {
		epoch, vr = e, rest
	}
	i := strings.LastIndexByte(vr, '-')
	if i <= 0 {
		return nil
	}
	p, err := newRPMPackage(name, epoch, vr[:i], vr[i+1:], arch)
	if err != nil {
		return nil
	}
	return p
}

// zypperChanges are the installed packages zypper's --dry-run --xmlout plan would upgrade,
// downgrade, remove or otherwise replace ("to-upgrade: NAME EDITION-OLD -> EDITION").
func zypperChanges(out string) []string {
	var changes []string
	dec := xml.NewDecoder(strings.NewReader(out))
	section := ""
	for {
		tok, err := dec.Token()
		if err != nil {
			return changes
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch t.Name.Local {
			case "to-upgrade", "to-downgrade", "to-remove", "to-reinstall", "to-change-arch", "to-change-vendor":
				section = t.Name.Local
			case "solvable":
				if section == "" {
					continue
				}
				a := map[string]string{}
				for _, at := range t.Attr {
					a[at.Name.Local] = at.Value
				}
				changes = append(changes, strings.TrimPrefix(section, "to-")+" "+a["name"]+" "+a["edition-old"]+" -> "+a["edition"])
			}
		case xml.EndElement:
			if strings.HasPrefix(t.Name.Local, "to-") {
				section = ""
			}
		}
	}
}

func (m *rpmManager) install(ctx context.Context, pkg, version string) error {
	arch := m.arch[pkg+" "+version]
	if arch == "" {
		return fmt.Errorf("%s %s: not a version the repositories offered", pkg, version)
	}
	want := pkg + "-" + version + "." + arch
	before, err := m.db.installed(ctx, []string{pkg})
	if err != nil {
		return err
	}
	var out, errOut string
	if m.zypper {
		// --name: exactly a package of that name, never one that merely provides it;
		// --no-refresh: the metadata candidate read, not a newer one.
		spec := pkg + "." + arch + "=" + version
		plan, _, err := runTool(ctx, m.env(), zypperPath, m.args("-n", "--xmlout", "--no-refresh", "install", "--name", "--dry-run", "--no-recommends", spec)...)
		if err != nil && (exitCode(err) < 100 || exitCode(err) == 104) {
			return fmt.Errorf("zypper install --dry-run %s: %v: %s", spec, err, zypperMessages(plan))
		}
		if ch := zypperChanges(plan); len(ch) > 0 {
			return fmt.Errorf("zypper install %s would change installed packages (%s): not installing; make %s multiversion in /etc/zypp/zypp.conf "+
				"(SUSE's default: multiversion = provides:multiversion(kernel), which kmpack's KMPs provide)", spec, strings.Join(ch, "; "), pkg)
		}
		if !slices.ContainsFunc(zypperInstalls(plan), func(p rpmPackage) bool { return p.name == pkg && p.evr() == version && p.arch == arch }) {
			return fmt.Errorf("zypper install --dry-run %s does not plan to install it: %s", spec, zypperMessages(plan))
		}
		out, errOut, err = runTool(ctx, m.env(), zypperPath, m.args("-n", "--no-refresh", "install", "--name", "--no-recommends", spec)...)
		// 100 and up are zypper's "done, but" codes (107: a scriptlet failed): the rpm
		// database, checked below, says what was installed.
		if err != nil && exitCode(err) < 100 {
			return fmt.Errorf("zypper install %s: %v: %s", spec, err, lastLines(errOut+"\n"+out))
		}
	} else {
		// The plan first (--assumeno prints it and stops): nothing installed may be upgraded,
		// downgraded, removed or replaced, and it must install exactly want.
		opts := []string{"--setopt=installonlypkgs=" + pkg, "--setopt=installonly_limit=0"}
		plan, planErr, _ := runTool(ctx, m.env(), dnfPath, m.args(append(opts, "--assumeno", "install", want)...)...)
		if ch := dnfChanges(plan); len(ch) > 0 {
			return fmt.Errorf("dnf install %s would change installed packages (%s): not installing", want, strings.Join(ch, "; "))
		}
		if !dnfPlanInstalls(plan, pkg) {
			return fmt.Errorf("dnf install --assumeno %s does not plan to install it: %s", want, lastLines(planErr+"\n"+plan))
		}
		out, errOut, err = runTool(ctx, m.env(), dnfPath, m.args(append([]string{"-y"}, append(opts, "install", want)...)...)...)
		if err != nil {
			return fmt.Errorf("dnf install %s: %v: %s", want, err, lastLines(errOut+"\n"+out))
		}
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		m.o.logf("  %s: %s", m.name(), l)
	}
	after, err := m.db.installed(ctx, []string{pkg})
	if err != nil {
		return err
	}
	has := func(ps []rpmPackage, nevra string) bool {
		return slices.ContainsFunc(ps, func(p rpmPackage) bool { return p.nevra() == nevra })
	}
	if !has(after, want) {
		return fmt.Errorf("%s install %s succeeded but rpm does not list it installed", m.name(), want)
	}
	for _, p := range before {
		if !has(after, p.nevra()) {
			return fmt.Errorf("%s install %s removed %s (the build of another kernel)", m.name(), want, p.nevra())
		}
	}
	return nil
}

// toolEnv is this process's environment in the C locale (package tools' output is parsed),
// without what would make a tool act as part of a transaction that is not its own.
func toolEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		k, _, _ := strings.Cut(e, "=")
		if strings.HasPrefix(k, "DPKG_") || k == "LC_ALL" || k == "LANGUAGE" || k == "ZYPP_LOCK_TIMEOUT" {
			continue
		}
		env = append(env, e)
	}
	return append(env, "LC_ALL=C")
}

// exitCode is a finished tool's exit status, -1 when it did not exit by itself.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// runTool runs a package tool with a bounded time and output (stdout and stderr apart); the
// whole process group (the package manager's rpm and scriptlets) is killed when the time is up.
func runTool(ctx context.Context, env []string, tool string, args ...string) (string, string, error) {
	out, errOut := &boundedBuffer{max: maxToolOutput}, &boundedBuffer{max: maxToolOutput}
	err := runToolTo(ctx, env, out, errOut, tool, args...)
	return string(out.b), string(errOut.b), err
}

func runToolTo(ctx context.Context, env []string, stdout, stderr io.Writer, tool string, args ...string) error {
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Env = env
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Time is up: SIGTERM first, which rpm defers until its transaction is at a safe point
	// (a SIGKILL there leaves a half-installed package); the whole group is killed if it has
	// not ended after toolGrace.
	var kill *time.Timer
	cmd.Cancel = func() error {
		pgid := cmd.Process.Pid
		kill = time.AfterFunc(toolGrace, func() { syscall.Kill(-pgid, syscall.SIGKILL) })
		return syscall.Kill(-pgid, syscall.SIGTERM)
	}
	cmd.WaitDelay = toolGrace + 10*time.Second
	err := cmd.Run()
	if kill != nil {
		kill.Stop()
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		err = nil // it exited successfully; a daemonized child kept its output open
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out (%v)", filepath.Base(tool), ctx.Err())
	}
	return err
}

// toolGrace is how long a package tool whose time is up has to end after SIGTERM.
const toolGrace = 30 * time.Second

// boundedBuffer keeps the first max bytes written to it and drops the rest.
type boundedBuffer struct {
	b   []byte
	max int
}

func (w *boundedBuffer) Write(p []byte) (int, error) {
	if room := w.max - len(w.b); room > 0 {
		w.b = append(w.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}
