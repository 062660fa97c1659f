package repo_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp/repo"
)

func sha(c byte) string { return strings.Repeat(string(c), 64) }

// debIndex is the shape of bookworm(-security): three ABIs x two flavors, -common per ABI, one
// linux-kbuild-6.1 (older ABIs depend on it with >=), a meta package, the 6.12 scheme.
func debIndex() []repo.DebPackage {
	var pkgs []repo.DebPackage
	add := func(name, ver, arch string, deps ...repo.Dependency) {
		pkgs = append(pkgs, repo.DebPackage{Package: name, Version: ver, Architecture: arch, Filename: "pool/" + name + "_" + ver + ".deb", Size: 100, SHA256: sha('a'), Depends: deps})
	}
	for i, abi := range []string{"55", "56", "57"} {
		ver := fmt.Sprintf("6.1.192-%d", i+1)
		add("linux-headers-6.1.0-"+abi+"-common", ver, "all")
		for _, fl := range []string{"amd64", "cloud-amd64"} {
			add("linux-headers-6.1.0-"+abi+"-"+fl, ver, "amd64",
				repo.Dependency{Name: "linux-headers-6.1.0-" + abi + "-common", Op: "=", Version: ver},
				repo.Dependency{Name: "linux-kbuild-6.1", Op: ">=", Version: ver},
				repo.Dependency{Name: "linux-compiler-gcc-12-x86"})
		}
	}
	add("linux-kbuild-6.1", "6.1.192-3", "amd64")
	add("linux-headers-amd64", "6.1.192-3", "amd64", repo.Dependency{Name: "linux-headers-6.1.0-57-amd64", Op: "=", Version: "6.1.192-3"})
	add("linux-headers-6.12.117+deb12-common", "6.12.117-1~deb12u1", "all")
	add("linux-kbuild-6.12.117+deb12", "6.12.117-1~deb12u1", "amd64")
	add("linux-headers-6.12.117+deb12-amd64", "6.12.117-1~deb12u1", "amd64",
		repo.Dependency{Name: "linux-image-6.12.117+deb12-amd64", Op: "=", Version: "6.12.117-1~deb12u1"},
		repo.Dependency{Name: "linux-headers-6.12.117+deb12-common", Op: "=", Version: "6.12.117-1~deb12u1"},
		repo.Dependency{Name: "linux-kbuild-6.12.117+deb12", Op: "=", Version: "6.12.117-1~deb12u1"})
	// -58 pins a -common the repository does not have.
	add("linux-headers-6.1.0-58-amd64", "6.1.193-1", "amd64", repo.Dependency{Name: "linux-headers-6.1.0-58-common", Op: "=", Version: "6.1.193-1"})
	return pkgs
}

func releases(ks []repo.Kernel) string {
	var s []string
	for _, k := range ks {
		s = append(s, k.Release)
	}
	return strings.Join(s, " ")
}

func TestDebianKernels(t *testing.T) {
	ks, skipped := repo.DebianKernels(debIndex(), "amd64")
	if len(skipped) != 1 || !strings.Contains(skipped[0].Reason, "linux-headers-6.1.0-58-common (= 6.1.193-1)") {
		t.Fatalf("skipped %+v", skipped)
	}
	all := repo.Select(ks, repo.Selector{})
	if got := releases(all); got != "6.12.117+deb12-amd64 6.1.0-57-amd64 6.1.0-56-amd64 6.1.0-55-amd64 6.1.0-57-cloud-amd64 6.1.0-56-cloud-amd64 6.1.0-55-cloud-amd64" {
		t.Fatal(got)
	}
	k := all[3]
	if k.Flavor != "amd64" || len(k.Packages) != 3 || k.Packages[1].Name != "linux-headers-6.1.0-55-common" || k.Packages[2].Name != "linux-kbuild-6.1" || k.Packages[2].Version != "6.1.192-3" || k.Size != 300 {
		t.Fatalf("%+v", k)
	}
	got := releases(repo.Select(ks, repo.Selector{Flavors: []string{"amd64"}, Release: regexp.MustCompile(`^6\.1\.`), Latest: 2}))
	if got != "6.1.0-57-amd64 6.1.0-56-amd64" {
		t.Fatal(got)
	}
	if got := releases(repo.Select(ks, repo.Selector{Latest: 1})); got != "6.12.117+deb12-amd64 6.1.0-57-cloud-amd64" {
		t.Fatal(got)
	}
}

func TestRPMKernels(t *testing.T) {
	suse, err := repo.ParsePrimary("primary.xml", strings.NewReader(primary))
	if err != nil {
		t.Fatal(err)
	}
	rhel := repo.RPMPackage{Name: "kernel-devel", Arch: "x86_64", Version: "5.14.0", Release: "427.13.1.el9_4", Href: "Packages/k.rpm", SHA256: sha('c'), Size: 5,
		Provides: []repo.RPMEntry{{Name: "kernel-devel-uname-r", Flags: "EQ", Ver: "5.14.0", Rel: "427.13.1.el9_4.x86_64"}}}
	rt := rhel
	rt.Name, rt.Provides = "kernel-rt-devel", []repo.RPMEntry{{Name: "kernel-devel-uname-r", Ver: "5.14.0", Rel: "427.13.1.el9_4.x86_64+rt"}}
	ks, skipped := repo.RPMKernels(append(suse, rhel, rt), "")
	if len(skipped) != 0 {
		t.Fatal(skipped)
	}
	got := ""
	for _, k := range repo.Select(ks, repo.Selector{}) {
		got += fmt.Sprintf("%s/%s/%s/%d;", k.Layout, k.Flavor, k.Release, len(k.Packages))
	}
	if got != "suse/default/6.4.0-150600.23.25-default/2;rhel/default/5.14.0-427.13.1.el9_4.x86_64/1;rhel/rt/5.14.0-427.13.1.el9_4.x86_64+rt/1;" {
		t.Fatal(got)
	}
}

// Ubuntu's shape (askubuntu.com/questions/1121638; exact Depends unverified here): the arch-all
// part is linux-headers-<abi> without -common, no kbuild package, metas -generic.
func TestUbuntuKernels(t *testing.T) {
	var pkgs []repo.DebPackage
	add := func(name, arch string, deps ...repo.Dependency) {
		pkgs = append(pkgs, repo.DebPackage{Package: name, Version: "5.15.0-91.101", Architecture: arch, Filename: "pool/" + name + ".deb", Size: 1, SHA256: sha('b'), Depends: deps})
	}
	add("linux-headers-5.15.0-91", "all")
	add("linux-headers-5.15.0-91-generic", "amd64", repo.Dependency{Name: "linux-headers-5.15.0-91"}, repo.Dependency{Name: "libc6", Op: ">=", Version: "2.34"})
	add("linux-headers-5.15.0-91-lowlatency", "amd64", repo.Dependency{Name: "linux-headers-5.15.0-91"})
	add("linux-headers-generic", "amd64", repo.Dependency{Name: "linux-headers-5.15.0-91-generic", Op: "=", Version: "5.15.0-91.101"})
	ks, skipped := repo.DebianKernels(pkgs, "amd64")
	got := ""
	for _, k := range repo.Select(ks, repo.Selector{}) {
		got += fmt.Sprintf("%s/%s/%d;", k.Flavor, k.Release, len(k.Packages))
	}
	if got != "generic/5.15.0-91-generic/2;lowlatency/5.15.0-91-lowlatency/2;" || len(skipped) != 0 {
		t.Fatal(got, skipped)
	}
}

func TestVersionRange(t *testing.T) {
	ks, _ := repo.DebianKernels(debIndex(), "amd64")
	sel := func(s string) string {
		vr, err := repo.ParseVersionRange(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		return releases(repo.Select(ks, repo.Selector{Flavors: []string{"amd64"}, Versions: &vr}))
	}
	// dpkg's order: 6.1.192-2 < 6.1.192-3 < 6.12.117-1~deb12u1.
	for in, want := range map[string]string{
		">=6.1.192-2, <6.12":     "6.1.0-57-amd64 6.1.0-56-amd64",
		">6.1.192-1,<=6.1.192-2": "6.1.0-56-amd64",
		"=6.1.192-1":             "6.1.0-55-amd64",
		"== 6.1.192-3":           "6.1.0-57-amd64",
		">=6.12~":                "6.12.117+deb12-amd64",
		"<6.1.192-1":             "",
	} {
		if got := sel(in); got != want {
			t.Errorf("%s: %q, want %q", in, got, want)
		}
	}
	// rpm's order for rpm kernels: 427.13.1 > 427.9.1.
	mk := func(rel string) repo.RPMPackage {
		return repo.RPMPackage{Name: "kernel-devel", Arch: "x86_64", Version: "5.14.0", Release: rel, Href: "k.rpm", SHA256: sha('c'), Size: 1,
			Provides: []repo.RPMEntry{{Name: "kernel-devel-uname-r", Ver: "5.14.0", Rel: rel + ".x86_64"}}}
	}
	rks, _ := repo.RPMKernels([]repo.RPMPackage{mk("427.9.1.el9_4"), mk("427.13.1.el9_4")}, "")
	vr, _ := repo.ParseVersionRange(">5.14.0-427.10")
	if got := releases(repo.Select(rks, repo.Selector{Versions: &vr})); got != "5.14.0-427.13.1.el9_4.x86_64" {
		t.Fatal(got)
	}
	for _, bad := range []string{"", "6.1", ">=", ">= 6.1 6.2", ">=6.1,", "~>6.1"} {
		if _, err := repo.ParseVersionRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
