package target

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/weakupdates"
)

// The build for a kernel is told by the profile's tag in the release (rhel) or version (suse),
// of this machine's architecture; the highest such version wins, in rpm's order.
func TestRPMCandidateChoice(t *testing.T) {
	arch := kernel.HostMachine()
	k := "6.1.0-54-amd64"
	dnf := &rpmManager{arch: map[string]string{}}
	zyp := &rpmManager{zypper: true, arch: map[string]string{}}
	pkg := func(v, r, a string) *rpmPackage { return &rpmPackage{name: "x", version: v, release: r, arch: a} }
	for _, c := range []struct {
		m    *rpmManager
		p    *rpmPackage
		want bool
	}{
		{dnf, pkg("1.0", "1.6.1.0_54_amd64", arch), true},
		{dnf, pkg("1.0", "1.2.6.1.0_54_amd64", arch), true},
		{dnf, pkg("1.0", "1.6.1.0_53_amd64", arch), false},
		{dnf, pkg("1.0", "1.16.1.0_54_amd64", arch), false},
		{dnf, pkg("1.0", "1.6.1.0_54_amd64", "noarch"), false},
		{dnf, pkg("1.0", "1.6.1.0_54_amd64", "s390x"), arch == "s390x"},
		{zyp, pkg("1.0_k6.1.0_54", "1", arch), true},
		{zyp, pkg("1.0_k6.1.0_53", "1", arch), false},
		{zyp, pkg("1.0_k16.1.0_54", "1", arch), false},
		{zyp, pkg("1.0", "1.6.1.0_54_amd64", arch), false},
	} {
		if got := c.m.forKernel(c.p, k); got != c.want {
			t.Errorf("%s %s-%s.%s for %s: %v, want %v", c.m.name(), c.p.name, c.p.version, c.p.release, k, got, c.want)
		}
	}
	a, b := &rpmPackage{version: "1.10", release: "1"}, &rpmPackage{version: "1.9", release: "2"}
	if compareEVR(a, b) <= 0 || compareEVR(b, a) >= 0 {
		t.Errorf("1.10-1 must be above 1.9-2")
	}
	if e := (&rpmPackage{epoch: "1", version: "0.1", release: "1"}); compareEVR(e, a) <= 0 {
		t.Errorf("an epoch must win")
	}
}

// What dnf, zypper and rpm print is read strictly: another name, a field that is not a plain
// word (it would reach a command line), a malformed edition are skipped.
func TestRPMToolAnswers(t *testing.T) {
	dnf := "x 0 1.0 1.6.1.0_54_amd64 x86_64\nx 0 1.0 1;rm x86_64\ny 0 1.0 1 x86_64\nx 2 1.1 1.6.1.0_54_amd64 x86_64\nx (none) 1.2 1 noarch\nx 0 1.0\n"
	var got []string
	for _, p := range dnfOffered(dnf, "x") {
		got = append(got, p.nevra())
	}
	if want := []string{"x-1.0-1.6.1.0_54_amd64.x86_64", "x-2:1.1-1.6.1.0_54_amd64.x86_64", "x-1.2-1.noarch"}; !slices.Equal(got, want) {
		t.Errorf("dnf: %v, want %v", got, want)
	}
	zyp := `<?xml version='1.0'?><stream><search-result version="0.0"><solvable-list>
<solvable status="not-installed" name="x" kind="package" edition="1.0_k6.1.0_54-1" arch="x86_64" repository="r"/>
<solvable status="not-installed" name="x" kind="srcpackage" edition="1.0-1" arch="src" repository="r"/>
<solvable status="not-installed" name="x" kind="package" edition="3:2.0-1.1" arch="x86_64" repository="r"/>
<solvable status="not-installed" name="x" kind="package" edition="1.0" arch="x86_64" repository="r"/>
<solvable status="not-installed" name="x" kind="package" edition="1.0-$(id)" arch="x86_64" repository="r"/>
<solvable status="not-installed" name="xy" kind="package" edition="1.0-1" arch="x86_64" repository="r"/>
</solvable-list></search-result></stream>`
	got = nil
	for _, p := range zypperSolvables(zyp, "x") {
		got = append(got, p.nevra())
	}
	if want := []string{"x-1.0_k6.1.0_54-1.x86_64", "x-3:2.0-1.1.x86_64"}; !slices.Equal(got, want) {
		t.Errorf("zypper search: %v, want %v", got, want)
	}
	plan := `<stream><install-summary><to-install><solvable type="package" name="x" edition="1.0_k6.1.0_54-1" arch="x86_64"/></to-install>
<to-upgrade><solvable type="package" name="x" edition="1.0_k6.1.0_54-1" arch="x86_64" edition-old="1.0_k6.1.0_53-1"/></to-upgrade>
<to-remove><solvable type="package" name="y" edition="1-1" arch="noarch"/></to-remove></install-summary></stream>`
	if ch := zypperChanges(plan); len(ch) != 2 || !strings.HasPrefix(ch[0], "upgrade x 1.0_k6.1.0_53-1") || !strings.HasPrefix(ch[1], "remove y") {
		t.Errorf("zypper plan: %q", ch)
	}
	if in := zypperInstalls(plan); len(in) != 1 || in[0].nevra() != "x-1.0_k6.1.0_54-1.x86_64" {
		t.Errorf("zypper plan's installs: %+v", in)
	}
	if ch := zypperChanges(`<stream><install-summary><to-install><solvable name="x" edition="1-1"/></to-install></install-summary></stream>`); len(ch) != 0 {
		t.Errorf("a plan that only installs: %q", ch)
	}
	q := rpmQueryMark + "x 0 1.0 1.6.1.0_54_amd64 x86_64\n/lib/modules/6.1.0-54-amd64\n/lib/modules/6.1.0-54-amd64/extra/x/a.ko\n" +
		"/lib/modules/6.1.0-54-amd64/extra/x/b.ko.xz\n/usr/lib/modules/6.1.0-53-amd64/updates/c.ko\n/lib/modules/6.1.0-54-amd64/kernel/d.ko\n" +
		"/lib/modules/6.1.0-54-amd64/weak-updates/e.ko\n/lib/modules/../../etc/f.ko\n/lib/modules/6.1.0-54-amd64/extra/../../g.ko\n" +
		"package y is not installed\n" + rpmQueryMark + "x 0 1.0 1;x x86_64\n/lib/modules/6.1.0-54-amd64/extra/h.ko\n"
	ps := parseRPMQuery(q)
	if len(ps) != 1 {
		t.Fatalf("rpm -q: %+v", ps)
	}
	mods := rpmModules(ps[0].files)
	if !slices.Equal(mods["6.1.0-54-amd64"], []string{"/lib/modules/6.1.0-54-amd64/extra/x/a.ko", "/lib/modules/6.1.0-54-amd64/extra/x/b.ko.xz"}) ||
		!slices.Equal(mods["6.1.0-53-amd64"], []string{"/lib/modules/6.1.0-53-amd64/updates/c.ko"}) || len(mods) != 2 {
		t.Errorf("modules by kernel: %v", mods)
	}
}

// A build of the rpm profiles for 53 that the distribution's weak-modules linked into 54's
// weak-updates/ (relative or absolute links, /usr/lib/modules too) is step 2 for 54; one
// module of two linked, or a link to something else, is not.
func TestDistroWeakLinks(t *testing.T) {
	dir := t.TempDir()
	k53, k54 := "6.1.0-53-amd64", "6.1.0-54-amd64"
	for _, d := range []string{"lib/modules/" + k53 + "/extra/x", "lib/modules/" + k54 + "/weak-updates/x", "lib/modules/" + k54 + "/weak-updates/updates", "lib/modules/" + k54 + "/kernel"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	for _, f := range []string{"a.ko", "b.ko", "c.ko"} {
		os.WriteFile(filepath.Join(dir, "lib/modules", k53, "extra/x", f), []byte("m"), 0o644)
	}
	wu := filepath.Join(dir, "lib/modules", k54, "weak-updates")
	os.Symlink("../../../"+k53+"/extra/x/a.ko", filepath.Join(wu, "x/a.ko"))
	os.Symlink("/usr/lib/modules/"+k53+"/extra/x/b.ko", filepath.Join(wu, "x/b.ko"))
	os.Symlink("/lib/modules/"+k53+"/extra/x/c.ko", filepath.Join(wu, "updates/c.ko"))
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	reg := func(name string, mods ...string) weakupdates.KMP {
		kp := weakupdates.KMP{Name: name, Package: "kmod-" + name, Version: "1.0-1", Format: weakupdates.FormatRPM, Kernel: k53}
		for _, m := range mods {
			kp.Modules = append(kp.Modules, "/lib/modules/"+k53+"/extra/x/"+m)
		}
		return kp
	}
	kmps := []weakupdates.KMP{reg("x", "a.ko", "b.ko"), reg("y", "c.ko", "d.ko"), reg("z", "e.ko")}
	got := distroWeakLinks(r, k54, kmps)
	if len(got) != 1 || got["x"] == nil || got["x"].Kernel != k53 {
		t.Fatalf("linked builds: %v", got)
	}
	rows := decide(r, k54, kmps, nil, nil)
	if len(rows) != 3 || rows[0].linkFrom != k53 || rows[0].linkPkg != "kmod-x" || rows[1].linkFrom != "" || rows[2].linkFrom != "" {
		t.Fatalf("decide: %+v", rows)
	}
	// A deb registration is the engine's: never taken from links here.
	kmps[0].Format = weakupdates.FormatDeb
	if got := distroWeakLinks(r, k54, kmps); len(got) != 0 {
		t.Fatalf("deb registration: %v", got)
	}
}

// A Debian system that carries rpm (and an rpm database) is dpkg's: rpm is never asked there.
func TestRPMDatabaseOnlyWhereRPMManages(t *testing.T) {
	if _, err := os.Stat(rpmPath); err != nil {
		t.Skip("no rpm")
	}
	dir := t.TempDir()
	db, err := exec.Command(rpmPath, "--eval", "%_dbpath").Output()
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, strings.TrimSpace(string(db))), 0o755)
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	o := &Options{Root: dir}
	if openRPMDB(context.Background(), o, r) == nil {
		t.Fatal("a root with rpm's database and no dpkg database is not rpm's")
	}
	os.MkdirAll(filepath.Join(dir, "var/lib/dpkg"), 0o755)
	os.WriteFile(filepath.Join(dir, "var/lib/dpkg/status"), []byte("Package: base-files\nStatus: install ok installed\n\n"), 0o644)
	if openRPMDB(context.Background(), o, r) != nil {
		t.Fatal("a root dpkg manages is taken for rpm's")
	}
}

// dnf's plan (dnf 4's table, as --assumeno prints it) is read for what it would change.
func TestDNFPlan(t *testing.T) {
	upgrade := `Last metadata expiration check: 0:35:45 ago on Mon Nov 30 23:10:41 2026.
Dependencies resolved.
================================================================================
 Package                   Arch       Version                  Repository  Size
================================================================================
Upgrading:
 kmod-kmpack-abichange     x86_64     1.0-1.6.1.0_54_amd64     kmpack     6.6 k

Transaction Summary
================================================================================
Upgrade  1 Package

Total size: 6.6 k
Operation aborted.
`
	if ch := dnfChanges(upgrade); len(ch) != 1 || ch[0] != "upgrading kmod-kmpack-abichange" || dnfPlanInstalls(upgrade, "kmod-kmpack-abichange") {
		t.Errorf("upgrade plan: %q", ch)
	}
	install := strings.Replace(upgrade, "Upgrading:", "Installing:", 1) + "Installing dependencies:\n dep x86_64 1-1 r 1 k\n\nRemoving dependent packages:\n"
	if ch := dnfChanges(install); len(ch) != 0 || !dnfPlanInstalls(install, "kmod-kmpack-abichange") || dnfPlanInstalls(install, "dep") {
		t.Errorf("install plan: %q", ch)
	}
	obsoletes := strings.Replace(install, " dep x86_64 1-1 r 1 k\n", " dep x86_64 1-1 r 1 k\n     replacing  old.x86_64 1.0-1\n", 1)
	if ch := dnfChanges(obsoletes); len(ch) != 1 || ch[0] != "replacing old.x86_64" {
		t.Errorf("plan replacing a package (Obsoletes): %q", ch)
	}
	remove := install + " other x86_64 1-1 @System 1 k\n"
	if ch := dnfChanges(remove); len(ch) != 1 || ch[0] != "removing dependent packages other" {
		t.Errorf("plan removing a package: %q", ch)
	}
}
