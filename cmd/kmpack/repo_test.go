package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/manifest"
)

func TestKernelsRepo(t *testing.T) {
	r := testenv.NewAptRepo(t)
	cache := t.TempDir()
	out, stderr, code := kmpackIn(t, cache, "kernels", "--repo", r.Source(), "--flavor", "amd64", "--latest", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"6.1.0-57-amd64  (debian layout, flavor amd64, amd64, ", "6.1.0-56-amd64  (debian layout", "linux-headers-6.1.0-56-common 6.1.192-2", "linux-kbuild-6.1 6.1.192-3", "signature not verified"} {
		if !strings.Contains(out, want) {
			t.Fatalf("no %q in\n%s", want, out)
		}
	}
	if strings.Contains(out, testenv.ReleaseDebOnly) || strings.Index(out, "6.1.0-57-amd64") > strings.Index(out, "6.1.0-56-amd64") {
		t.Fatalf("--latest 2 is not the two newest, newest first:\n%s", out)
	}
	out, stderr, code = kmpackIn(t, cache, "kernels", "--json", "--repo", r.Source())
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var res struct {
		Repositories []struct {
			Repo     string
			Verified bool
			Kernels  []struct {
				Release, Flavor string
				Size            int64
				Packages        []struct {
					Name, URL string
					Size      int64
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Repositories) != 1 || len(res.Repositories[0].Kernels) != 3 || len(res.Repositories[0].Kernels[0].Packages) != 3 || res.Repositories[0].Verified {
		t.Fatalf("%s", out)
	}
	if r.PoolHits() != 0 {
		t.Fatal("listing downloaded packages")
	}
	home, public := testenv.GPGHome(t, "archive")
	r.Sign(t, home)
	out, stderr, code = kmpackIn(t, cache, "kernels", "--json", "--keyring", public, "--repo", r.Source())
	if code != 0 || !strings.Contains(out, `"verified": true`) {
		t.Fatalf("exit %d: %s %s", code, out, stderr)
	}
	_, stderr, code = kmpackIn(t, cache, "kernels", "--keyring", testenv.Debs(t, "linux-kbuild-6.1")[0], "--repo", r.Source())
	if code != exitInput || !strings.Contains(stderr, "not an OpenPGP keyring") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	out, _, code = kmpackIn(t, cache, "kernels", "--repo", r.Source(), "--flavor", "amd64", "--versions", ">=6.1.192-2, <6.1.192-3")
	if code != 0 || !strings.Contains(out, "6.1.0-56-amd64  (") || strings.Contains(out, "6.1.0-57-amd64  (") || strings.Contains(out, "6.1.0-55-amd64  (") {
		t.Fatalf("--versions: exit %d: %s", code, out)
	}
	_, stderr, code = kmpackIn(t, cache, "kernels", "--repo", r.Source(), "--versions", "6.1")
	if code != exitUsage || !strings.Contains(stderr, "--versions: version range") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	out, _, code = kmpackIn(t, cache, "kernels", "--repo", r.Source(), "--release", "^nomatch$")
	if code != 0 || !strings.Contains(out, "no kernel matches") {
		t.Fatalf("exit %d: %s", code, out)
	}
	_, stderr, code = kmpackIn(t, cache, "kernels", "--repo", "deb "+r.Srv.URL+"/nothere bookworm main")
	if code == 0 || !strings.Contains(stderr, r.Srv.URL+"/nothere/dists/bookworm/Release: HTTP 404") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Fatalf("exit %d: %q", code, stderr)
	}
}

func TestBuildKernelRepo(t *testing.T) {
	r := testenv.NewAptRepo(t)
	cache := t.TempDir()
	for run := 0; run < 2; run++ {
		outDir := filepath.Join(t.TempDir(), "out")
		stdout, stderr, code := kmpackIn(t, cache, "build", "--json", "--kernel-repo", r.Source(), "--flavor", "amd64", "--latest", "2", "-o", outDir, testenv.ExampleSource(t, true))
		var m manifest.Manifest
		if err := json.Unmarshal([]byte(stdout), &m); err != nil || code != 0 {
			t.Fatalf("run %d: exit %d %v: %s", run, code, err, stderr)
		}
		var built []string
		for _, k := range m.Kernels {
			if len(k.Modules) == 1 {
				built = append(built, k.Release)
			}
		}
		sort.Strings(built)
		if strings.Join(built, " ") != "6.1.0-56-amd64 6.1.0-57-amd64" || len(m.Kernels) != 2 {
			t.Fatalf("run %d: built %v: %s", run, built, testenv.Truncate(stdout, 3000))
		}
		// Two kernels of three packages, sharing linux-kbuild-6.1: five downloads, in the first run only.
		if r.PoolHits() != 5 {
			t.Fatalf("run %d: %d package downloads, want 5 in all", run, r.PoolHits())
		}
		if !strings.Contains(stderr, "signature not verified") {
			t.Fatalf("no note that the metadata was not verified: %s", stderr)
		}
	}
}

// kmpack.yaml names a repository (http, its keyring a file of the source) and selects from it:
// `kmpack build` with no kernel arguments builds exactly that selection.
func TestBuildSpecKernelRepo(t *testing.T) {
	r := testenv.NewAptRepo(t)
	home, public := testenv.GPGHome(t, "archive")
	r.Sign(t, home)
	src := testenv.ExampleSource(t, true)
	keyring, err := os.ReadFile(public)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(src, "keys"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "keys", "archive.gpg"), keyring, 0o644); err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join(src, "kmpack.yaml")
	orig, err := os.ReadFile(spec)
	if err != nil {
		t.Fatal(err)
	}
	entry := fmt.Sprintf("kernels:\n  - repo: %s\n    flavor: amd64\n    versions: '<6.1.192-3'\n    latest: 1\n    keyring: keys/archive.gpg\n", r.Source())
	if err := os.WriteFile(spec, append(orig, entry...), 0o644); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	stdout, stderr, code := kmpackIn(t, cache, "build", "--json", "-o", filepath.Join(t.TempDir(), "out"), src)
	var m manifest.Manifest
	if err := json.Unmarshal([]byte(stdout), &m); err != nil || code != 0 {
		t.Fatalf("exit %d %v: %s", code, err, stderr)
	}
	// 57 is 6.1.192-3: the range leaves 56 as the newest.
	if len(m.Kernels) != 1 || m.Kernels[0].Release != "6.1.0-56-amd64" || len(m.Kernels[0].Modules) != 1 {
		t.Fatalf("%s", testenv.Truncate(stdout, 3000))
	}
	if strings.Contains(stderr, "signature not verified") || r.PoolHits() != 3 {
		t.Fatalf("%d package downloads; %s", r.PoolHits(), stderr)
	}
	// The keyring is read from the source, beneath it: a link out of the source is refused.
	if err := os.Remove(filepath.Join(src, "keys", "archive.gpg")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(public, filepath.Join(src, "keys", "archive.gpg")); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = kmpackIn(t, cache, "build", "-o", filepath.Join(t.TempDir(), "out"), src)
	if code != exitInput || !strings.Contains(stderr, "keys/archive.gpg") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

// kernels --builds: which of a repository's kernels existing builds serve, by the compat check.
func TestKernelsBuildsCoverage(t *testing.T) {
	r := testenv.NewAptRepo(t)
	cache := t.TempDir()
	src := testenv.ExampleSource(t, true)
	out57, out612 := filepath.Join(t.TempDir(), "out57"), filepath.Join(t.TempDir(), "out612")
	if _, stderr, code := kmpackIn(t, cache, "build", "-q", "--kernel-repo", r.Source(), "--flavor", "amd64", "--latest", "1", "-o", out57, src); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, stderr, code := kmpackIn(t, cache, "build", "-q", "-k", testenv.HeadersDir(t, testenv.Release612), "-o", out612, src); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	stdout, stderr, code := kmpackIn(t, cache, "kernels", "--json", "--repo", r.Source(), "--flavor", "amd64", "--builds", out57)
	var res struct {
		Coverage []struct{ Release, Status, Output, Build string }
	}
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || code != 0 {
		t.Fatalf("exit %d %v: %s", code, err, stderr)
	}
	var got []string
	for _, c := range res.Coverage {
		if c.Output != out57 {
			t.Errorf("%+v", c)
		}
		got = append(got, c.Release+" "+c.Status+" "+c.Build)
	}
	if strings.Join(got, "; ") != "6.1.0-55-amd64 loads 6.1.0-57-amd64; 6.1.0-56-amd64 loads 6.1.0-57-amd64; 6.1.0-57-amd64 built 6.1.0-57-amd64" {
		t.Fatalf("%v", got)
	}
	// A 6.12 build serves none of them, and says why (struct module, module_layout).
	stdout, stderr, code = kmpackIn(t, cache, "kernels", "--repo", r.Source(), "--flavor", "amd64", "--builds", out612)
	if code != 0 || !strings.Contains(stdout, "3 of 3 kernels need a build of their own") || !strings.Contains(stdout, "no build loads; closest "+testenv.Release612+": kmpack_hello ") {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	// Trees work too. Of three builds the one that loads is named: the newer 6.12 and 57 ones do
	// not load in 54 (57's imports param_ops_int with another CRC), 53's does.
	out53 := filepath.Join(t.TempDir(), "out53")
	if _, stderr, code := kmpackIn(t, cache, "build", "-q", "-k", testenv.HeadersDir(t, testenv.Release53), "-o", out53, src); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	stdout, stderr, code = kmpackIn(t, cache, "kernels", "--builds", out57, "--builds", out612, "--builds", out53, testenv.HeadersDir(t, testenv.Release54))
	if code != 0 || !strings.Contains(stdout, testenv.Release54+"  loads  loads the build for "+testenv.Release53+" ("+out53+")") || !strings.Contains(stdout, "0 of 1 kernels need a build") {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	stdout, _, _ = kmpackIn(t, cache, "kernels", "--builds", out57, testenv.HeadersDir(t, testenv.Release53))
	if !strings.Contains(stdout, "closest 6.1.0-57-amd64: kmpack_hello crc: param_ops_int: built against CRC") {
		t.Fatalf("%s", stdout)
	}
	// Outputs of different sources are not one package's builds.
	other := filepath.Join(t.TempDir(), "other")
	if _, stderr, code := kmpackIn(t, cache, "build", "-q", "-k", testenv.HeadersDir(t, testenv.Release53), "-o", other, testenv.TestModuleSource(t, "pair")); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	_, stderr, code = kmpackIn(t, cache, "kernels", "--builds", out53, "--builds", other, testenv.HeadersDir(t, testenv.Release53))
	if code != exitInput || !strings.Contains(stderr, other+": a build of ") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

// rpm-md repositories (createrepo_c) of devel RPMs made from a real headers tree, in SUSE's
// layout (kernel-default-devel + kernel-devel) and RHEL's (kernel-devel with its uname -r
// provide), served over HTTP with a signed repomd.xml: kmpack build --kernel-repo builds against each.
func TestBuildKernelRepoRPM(t *testing.T) {
	testenv.Need(t, "createrepo_c", "rpmbuild", "gpg")
	base := t.TempDir()
	suse, rhel := filepath.Join(base, "suse"), filepath.Join(base, "rhel")
	common, flavor := testenv.StageSUSEDevel(t)
	testenv.BuildRPM(t, testenv.RPMSpec{Name: "kernel-devel", Version: "6.1.0", Release: "53.1", Arch: "noarch", Stage: common}, filepath.Join(suse, "noarch"))
	testenv.BuildRPM(t, testenv.RPMSpec{Name: "kernel-default-devel", Version: "6.1.0", Release: "53.1", Arch: "x86_64", Stage: flavor}, filepath.Join(suse, "x86_64"))
	const rhelRelease = "6.1.0-53.el9.x86_64"
	testenv.BuildRPM(t, testenv.RPMSpec{Name: "kernel-devel", Version: "6.1.0", Release: "53.el9", Arch: "x86_64", Stage: testenv.StageRHELDevelAs(t, rhelRelease),
		Provides: []string{"kernel-devel-uname-r = " + rhelRelease}}, filepath.Join(rhel, "x86_64"))
	home, public := testenv.GPGHome(t, "archive")
	for _, dir := range []string{suse, rhel} {
		if out, err := exec.Command("createrepo_c", "--quiet", dir).CombinedOutput(); err != nil {
			t.Fatalf("createrepo_c: %v %s", err, out)
		}
		md := filepath.Join(dir, "repodata/repomd.xml")
		cmd := exec.Command("gpg", "--batch", "--yes", "--homedir", home, "--armor", "--detach-sign", "-o", md+".asc", md)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("gpg: %v %s", err, out)
		}
	}
	var rpms atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".rpm") {
			rpms.Add(1)
		}
		http.FileServer(http.Dir(base)).ServeHTTP(w, r)
	}))
	defer srv.Close()
	cache := t.TempDir()
	for _, c := range []struct {
		repo, layout, listed, release, tree string
		packages                            int32
	}{
		// The SUSE packages hold Debian's tree: the listing names the release SUSE's scheme
		// gives, the build the tree's own.
		{srv.URL + "/suse", "suse", "6.1.0-53.1-default  (suse layout", testenv.Release53, "/usr/src/linux-6.1.0-53-obj/x86_64/default", 2},
		{srv.URL + "/rhel", "rhel", rhelRelease + "  (rhel layout", rhelRelease, "/usr/src/kernels/" + rhelRelease, 1},
	} {
		out, stderr, code := kmpackIn(t, cache, "kernels", "--keyring", public, "--repo", c.repo)
		if code != 0 || !strings.Contains(out, c.listed) {
			t.Fatalf("%s: exit %d: %s %s", c.layout, code, out, stderr)
		}
		before := rpms.Load()
		outDir := filepath.Join(t.TempDir(), "out")
		stdout, stderr, code := kmpackIn(t, cache, "build", "--json", "--keyring", public, "--kernel-repo", c.repo, "-o", outDir, testenv.ExampleSource(t, true))
		var m manifest.Manifest
		if err := json.Unmarshal([]byte(stdout), &m); err != nil || code != 0 {
			t.Fatalf("%s: exit %d %v: %s", c.layout, code, err, stderr)
		}
		if len(m.Kernels) != 1 || m.Kernels[0].Release != c.release || len(m.Kernels[0].Modules) != 1 || strings.Contains(stderr, "not verified") {
			t.Fatalf("%s: %s\n%s", c.layout, testenv.Truncate(stdout, 2000), stderr)
		}
		if !strings.HasSuffix(m.Kernels[0].Tree, c.tree) {
			t.Errorf("%s: built against %s", c.layout, m.Kernels[0].Tree)
		}
		if got := rpms.Load() - before; got != c.packages {
			t.Errorf("%s: %d RPM downloads, want %d", c.layout, got, c.packages)
		}
	}
}

// Sharded builds of a repository's kernels split the listing, not the downloaded trees: the
// plan for CI downloads no package, and each shard's runner downloads only its own kernels.
func TestShardKernelRepo(t *testing.T) {
	r := testenv.NewAptRepo(t)
	src := testenv.ExampleSource(t, true)
	sel := []string{"--kernel-repo", r.Source(), "--flavor", "amd64"}
	for _, ci := range []string{"github", "gitlab"} {
		stdout, stderr, code := kmpackIn(t, t.TempDir(), append(append([]string{"plan", "--shards", "2", "--ci", ci}, sel...), src)...)
		if code != 0 || !strings.Contains(stdout, "2/2") {
			t.Fatalf("plan --ci %s: exit %d: %s\n%s", ci, code, stdout, stderr)
		}
	}
	if r.PoolHits() != 0 {
		t.Fatalf("plan --ci downloaded %d packages", r.PoolHits())
	}
	// The same repository twice (as bookworm and bookworm-security list one kernel): still 3.
	twice := append(append([]string{"plan", "--shards", "4", "--ci", "github", "--kernel-repo", r.Source()}, sel...), src)
	if _, stderr, code := kmpackIn(t, t.TempDir(), twice...); code != exitUsage || !strings.Contains(stderr, "for 3 kernels") {
		t.Errorf("4 shards of 3 kernels listed twice: exit %d: %s", code, stderr)
	}
	// A repository that lists no kernel of the selection is named before any runner starts.
	if _, stderr, code := kmpackIn(t, t.TempDir(), append(append([]string{"plan", "--shards", "2", "--ci", "github", "--release", "^9[.]"}, sel...), src)...); code != exitInput || !strings.Contains(stderr, "no kernel matches") {
		t.Errorf("no kernel of the flavor: exit %d: %s", code, stderr)
	}
	var dirs []string
	hits := 0
	// Equal costs: 55 and 57 in shard 1, 56 in shard 2; linux-kbuild-6.1 on both runners.
	for i, want := range [][]string{{testenv.ReleaseDebOnly, "6.1.0-57-amd64"}, {"6.1.0-56-amd64"}} {
		dir := filepath.Join(t.TempDir(), "shard")
		_, stderr, code := kmpackIn(t, t.TempDir(), append(append([]string{"build", "-q", "--shard", fmt.Sprintf("%d/2", i+1), "-o", dir}, sel...), src)...)
		if code != 0 {
			t.Fatalf("shard %d: exit %d: %s", i+1, code, stderr)
		}
		m, err := manifest.Read(dir)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, k := range m.Kernels {
			got = append(got, k.Release)
		}
		if !slices.Equal(got, want) || m.Shard == nil || len(m.Shard.Kernels) != 3 {
			t.Errorf("shard %d built %v (shard record %+v), want %v", i+1, got, m.Shard, want)
		}
		if n := r.PoolHits() - hits; n != 2*len(want)+1 {
			t.Errorf("shard %d: %d package downloads, want %d (its own kernels and linux-kbuild only)", i+1, n, 2*len(want)+1)
		}
		hits = r.PoolHits()
		dirs = append(dirs, dir)
	}
	out := filepath.Join(t.TempDir(), "merged")
	if stdout, stderr, code := kmpackIn(t, t.TempDir(), append([]string{"merge", "-o", out}, dirs...)...); code != 0 || !strings.Contains(stdout, "3 built") {
		t.Errorf("merge: exit %d: %s\n%s", code, stdout, stderr)
	}
}
