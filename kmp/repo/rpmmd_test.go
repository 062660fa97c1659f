package repo_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/repo"
)

// TestRPMMDRepository makes SUSE- and RHEL-layout devel RPMs with the real rpmbuild, an rpm-md
// repository of them with the real createrepo_c, signs repomd.xml with gpg, and reads it over
// HTTP: the kernels, their package sets, verified downloads.
func TestRPMMDRepository(t *testing.T) {
	testenv.Need(t, "createrepo_c", "rpmbuild")
	dir := t.TempDir()
	stage := t.TempDir()
	if err := os.MkdirAll(filepath.Join(stage, "usr/src"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stage, "usr/src/README"), []byte("kmpack test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"x86_64", "noarch"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o755)
	}
	spec := func(name, ver, rel, arch string, provides ...string) {
		out := filepath.Join(dir, arch)
		testenv.BuildRPM(t, testenv.RPMSpec{Name: name, Version: ver, Release: rel, Arch: arch, Stage: stage, Provides: provides}, out)
	}
	// SUSE: two kernels of flavor default, one rt; the older default lacks kernel-macros.
	for _, rel := range []string{"150600.23.22.1", "150600.23.25.1"} {
		spec("kernel-default-devel", "6.4.0", rel, "x86_64")
		spec("kernel-devel", "6.4.0", rel, "noarch")
	}
	spec("kernel-macros", "6.4.0", "150600.23.25.1", "noarch")
	spec("kernel-rt-devel", "6.4.0", "150600.10.5.1", "x86_64")
	// kernel-rt-devel's kernel-devel 150600.10.5.1 is missing: skipped.
	// RHEL: kernel-devel with its uname -r provide.
	spec("kernel-devel", "5.14.0", "427.13.1.el9_4", "x86_64", "kernel-devel-uname-r = 5.14.0-427.13.1.el9_4.x86_64")
	if out, err := exec.Command("createrepo_c", "--quiet", dir).CombinedOutput(); err != nil {
		t.Fatalf("createrepo_c: %v %s", err, out)
	}
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".rpm") {
			hits.Add(1)
		}
		http.FileServer(http.Dir(dir)).ServeHTTP(w, r)
	}))
	defer srv.Close()

	src, err := repo.ParseSource(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	src.Arch = "x86_64"
	f := &repo.Fetcher{CacheDir: t.TempDir()}
	idx, err := repo.Load(context.Background(), f, src)
	if err != nil {
		t.Fatal(err)
	}
	got := ""
	for _, k := range repo.Select(idx.Kernels, repo.Selector{}) {
		got += k.Layout + " " + k.Flavor + " " + k.Release + ":"
		for _, p := range k.Packages {
			got += " " + p.Name
		}
		got += "\n"
	}
	want := "suse default 6.4.0-150600.23.25-default: kernel-default-devel kernel-devel kernel-macros\n" +
		"suse default 6.4.0-150600.23.22-default: kernel-default-devel kernel-devel\n" +
		"rhel default 5.14.0-427.13.1.el9_4.x86_64: kernel-devel\n"
	if got != want {
		t.Fatalf("got\n%swant\n%s", got, want)
	}
	if len(idx.Skipped) != 1 || !strings.Contains(idx.Skipped[0].Reason, "no kernel-devel 6.4.0-150600.10.5.1") {
		t.Fatalf("skipped %+v", idx.Skipped)
	}
	latest := repo.Select(idx.Kernels, repo.Selector{Flavors: []string{"default"}, Latest: 1})
	if len(latest) != 1 || latest[0].Release != "6.4.0-150600.23.25-default" {
		t.Fatalf("%+v", latest)
	}
	files, err := f.FetchAll(context.Background(), latest[0].Packages)
	if err != nil || len(files) != 3 || hits.Load() != 3 {
		t.Fatalf("%v %v %d", err, files, hits.Load())
	}
	for i, p := range latest[0].Packages {
		if filepath.Base(files[i]) != p.SHA256 || !strings.HasPrefix(p.URL, srv.URL+"/") {
			t.Fatalf("%+v -> %s", p, files[i])
		}
	}

	// repomd.xml signed: verified with the key, refused with another.
	home, public := testenv.GPGHome(t, "repo")
	_, other := testenv.GPGHome(t, "other")
	out, err := exec.Command("gpg", "--homedir", home, "--batch", "--armor", "--detach-sign", "--output", filepath.Join(dir, "repodata/repomd.xml.asc"), filepath.Join(dir, "repodata/repomd.xml")).CombinedOutput()
	if err != nil {
		t.Fatalf("gpg: %v %s", err, out)
	}
	src.Keyring = public
	if idx, err = repo.Load(context.Background(), f, src); err != nil || !idx.Verified {
		t.Fatalf("%v %+v", err, idx)
	}
	src.Keyring = other
	_, err = repo.Load(context.Background(), f, src)
	testenv.CheckInputError(t, srv.URL+"/repodata/repomd.xml.asc", err)
	if err == nil {
		t.Fatal("repomd.xml signed by another key accepted")
	}
}
