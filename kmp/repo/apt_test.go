package repo_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/repo"
	"github.com/kmpack/kmpack/kmp/unpack"
)

func aptSource(t *testing.T, r *testenv.AptRepo) *repo.Source {
	s, err := repo.ParseSource(r.Source())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAptRepositoryEndToEnd(t *testing.T) {
	r := testenv.NewAptRepo(t)
	cache := t.TempDir()
	ctx := context.Background()
	load := func() *repo.Index {
		idx, err := repo.Load(ctx, &repo.Fetcher{CacheDir: cache}, aptSource(t, r))
		if err != nil {
			t.Fatal(err)
		}
		return idx
	}
	idx := load()
	if len(idx.Kernels) != 3 || len(idx.Skipped) != 0 {
		t.Fatalf("kernels %+v skipped %+v", idx.Kernels, idx.Skipped)
	}
	latest := repo.Select(idx.Kernels, repo.Selector{Flavors: []string{"amd64"}, Latest: 2})
	if len(latest) != 2 || latest[0].Release != testenv.RepoReleases[2] || latest[1].Release != testenv.RepoReleases[1] {
		t.Fatalf("latest 2: %+v", latest)
	}
	k := repo.Select(idx.Kernels, repo.Selector{Release: regexp.MustCompile("^" + regexp.QuoteMeta(testenv.ReleaseDebOnly) + "$")})[0]
	if k.Release != testenv.ReleaseDebOnly || k.Flavor != "amd64" || len(k.Packages) != 3 || k.Packages[2].Name != "linux-kbuild-6.1" ||
		!strings.HasPrefix(k.Packages[0].URL, r.Srv.URL+"/pool/main/l/linux/") || k.Size < 1<<20 {
		t.Fatalf("%+v", k)
	}
	if idx.Verified || len(idx.Notes) != 1 || !strings.Contains(idx.Notes[0], "not verified") {
		t.Fatalf("%+v", idx)
	}
	if r.PoolHits() != 0 {
		t.Fatal("listing downloaded packages")
	}
	var files []string
	for run := 0; run < 2; run++ {
		var err error
		var pkgs []repo.Package
		for _, k := range repo.Select(load().Kernels, repo.Selector{Latest: 2}) {
			pkgs = append(pkgs, k.Packages...)
		}
		files, err = (&repo.Fetcher{CacheDir: cache}).FetchAll(ctx, pkgs)
		if err != nil {
			t.Fatal(err)
		}
		// Two kernels of three packages each, sharing linux-kbuild-6.1: five files.
		if r.PoolHits() != 5 || len(files) != 6 || files[2] != files[5] {
			t.Fatalf("run %d: %d package downloads, want 5 in all; files %v", run, r.PoolHits(), files)
		}
	}
	uniq := []string{}
	for _, f := range files {
		if !slices.Contains(uniq, f) {
			uniq = append(uniq, f)
		}
	}
	set, err := unpack.UnpackPackages(cache, uniq)
	if err != nil {
		t.Fatal(err)
	}
	for _, rel := range testenv.RepoReleases[1:] {
		if _, err := os.Stat(filepath.Join(set.Root, "usr/src/linux-headers-"+rel, "Module.symvers")); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAptRepositoryCorruptPackage(t *testing.T) {
	r := testenv.NewAptRepo(t)
	deb := testenv.Debs(t, "linux-headers-"+testenv.ReleaseDebOnly)[0]
	served := filepath.Join(r.Dir, "pool/main/l/linux", filepath.Base(deb))
	b := testenv.MustRead(t, served)
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(served, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	f := &repo.Fetcher{CacheDir: cache}
	// A download a killed kmpack left a day ago is removed; one in progress elsewhere is not.
	stale, fresh := filepath.Join(f.ObjectsDir(), ".part-1"), filepath.Join(f.ObjectsDir(), ".part-2")
	os.MkdirAll(f.ObjectsDir(), 0o755)
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-25 * time.Hour)
	os.Chtimes(stale, old, old)
	idx, err := repo.Load(context.Background(), f, aptSource(t, r))
	if err != nil {
		t.Fatal(err)
	}
	k := repo.Select(idx.Kernels, repo.Selector{Release: regexp.MustCompile("^" + regexp.QuoteMeta(testenv.ReleaseDebOnly) + "$")})[0]
	_, err = f.FetchAll(context.Background(), k.Packages)
	u := r.Srv.URL + "/pool/main/l/linux/" + filepath.Base(deb)
	if err == nil {
		t.Fatal("corrupted package accepted")
	}
	testenv.CheckInputError(t, u, err)
	if !strings.Contains(err.Error(), "SHA-256 mismatch") {
		t.Fatal(err)
	}
	t.Log(err)
	if _, err := os.Stat(filepath.Join(f.ObjectsDir(), k.Packages[0].SHA256)); !os.IsNotExist(err) {
		t.Fatalf("corrupted package in the cache: %v", err)
	}
	// The mismatching download's partial file is gone; the other packages' downloads, cancelled
	// by the failure, may keep theirs (.part-<sha256>) to resume from.
	parts, _ := filepath.Glob(filepath.Join(f.ObjectsDir(), ".part-*"))
	var others []string
	for _, p := range k.Packages[1:] {
		others = append(others, filepath.Join(f.ObjectsDir(), ".part-"+p.SHA256), filepath.Join(f.ObjectsDir(), ".part-"+p.SHA256+".validator"))
	}
	if !slices.Contains(parts, fresh) || slices.Contains(parts, stale) ||
		slices.ContainsFunc(parts, func(p string) bool { return p != fresh && !slices.Contains(others, p) }) {
		t.Fatalf("partial downloads left: %v", parts)
	}

	// Truncated: the server sends less than the index says.
	if err := os.WriteFile(served, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = f.Fetch(context.Background(), u, k.Packages[0].SHA256, k.Packages[0].Size)
	testenv.CheckInputError(t, u, err)
	if err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatal(err)
	}
	if err := os.Remove(served); err != nil {
		t.Fatal(err)
	}
	_, err = f.Fetch(context.Background(), u, k.Packages[0].SHA256, k.Packages[0].Size)
	if err == nil || err.Error() != u+": HTTP 404 Not Found" {
		t.Fatal(err)
	}
}

func TestAptRepositoryHostileFilename(t *testing.T) {
	r := testenv.NewAptRepo(t)
	packages := string(testenv.MustRead(t, filepath.Join(r.Dir, "dists/bookworm/main/binary-amd64/Packages")))
	r.WriteIndex(t, strings.Replace(packages, "Filename: pool/", "Filename: pool/../../../../etc/", 1))
	_, err := repo.Load(context.Background(), &repo.Fetcher{CacheDir: t.TempDir()}, aptSource(t, r))
	name := r.Srv.URL + "/dists/bookworm/main/binary-amd64/Packages.gz"
	testenv.CheckInputError(t, name, err)
	if err == nil || !strings.Contains(err.Error(), "leaves the repository") {
		t.Fatal(err)
	}
	t.Log(err)
	// An index whose checksum does not match Release is refused too.
	if err := os.WriteFile(filepath.Join(r.Dir, "dists/bookworm/main/binary-amd64/Packages.gz"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = repo.Load(context.Background(), &repo.Fetcher{CacheDir: t.TempDir()}, aptSource(t, r))
	testenv.CheckInputError(t, name, err)
	if err == nil {
		t.Fatal("index not matching Release accepted")
	}
}

func TestAptRepositorySigned(t *testing.T) {
	r := testenv.NewAptRepo(t)
	home, public := testenv.GPGHome(t, "archive")
	_, other := testenv.GPGHome(t, "other")
	r.Sign(t, home)
	load := func(spec string) (*repo.Index, error) {
		s, err := repo.ParseSource(spec)
		if err != nil {
			t.Fatal(err)
		}
		return repo.Load(context.Background(), &repo.Fetcher{CacheDir: t.TempDir()}, s)
	}
	withKey := func(key string) string {
		return "deb [arch=amd64 signed-by=" + key + "] " + r.Srv.URL + " bookworm main"
	}
	inRelease := r.Srv.URL + "/dists/bookworm/InRelease"

	idx, err := load(withKey(public))
	if err != nil {
		t.Fatal(err)
	}
	if !idx.Verified || len(idx.Notes) != 0 || len(idx.Kernels) != 3 {
		t.Fatalf("%+v", idx)
	}
	idx, err = load(r.Source())
	if err != nil || idx.Verified || !strings.Contains(idx.Notes[0], inRelease+": signature not verified") {
		t.Fatalf("%v %+v", err, idx)
	}
	_, err = load(withKey(other))
	testenv.CheckInputError(t, inRelease, err)
	if err == nil || !strings.Contains(err.Error(), "signature not valid") {
		t.Fatalf("signed by another key: %v", err)
	}
	t.Log(err)

	// Tampered: a Release line changed inside the signed text.
	path := filepath.Join(r.Dir, "dists/bookworm/InRelease")
	b := testenv.MustRead(t, path)
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), "Origin: kmpack-test", "Origin: kmpack-evil", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = load(withKey(public))
	testenv.CheckInputError(t, inRelease, err)
	if err == nil {
		t.Fatal("tampered InRelease accepted")
	}

	// Without InRelease: Release + Release.gpg.
	os.Remove(path)
	if idx, err = load(withKey(public)); err != nil || !idx.Verified {
		t.Fatalf("Release.gpg: %v %+v", err, idx)
	}
	if _, err = load(withKey(other)); err == nil {
		t.Fatal("Release.gpg by another key accepted")
	}
}
