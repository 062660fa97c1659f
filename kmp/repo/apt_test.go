package repo_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/repo"
	"github.com/kmpack/kmpack/kmp/unpack"
)

// aptRepo is a Debian archive made in the test with dpkg-scanpackages from the real header
// packages of 6.1.0-55 (headers, -common, linux-kbuild-6.1), served over HTTP on 127.0.0.1.
type aptRepo struct {
	dir  string
	srv  *httptest.Server
	mu   sync.Mutex
	hits map[string]int
}

func newAptRepo(t *testing.T) *aptRepo {
	t.Helper()
	testenv.Need(t, "dpkg-scanpackages")
	r := &aptRepo{dir: t.TempDir(), hits: map[string]int{}}
	pool := filepath.Join(r.dir, "pool/main/l/linux")
	if err := os.MkdirAll(pool, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, deb := range testenv.Debs(t, "linux-headers-"+testenv.ReleaseDebOnly, "linux-headers-6.1.0-55-common", "linux-kbuild-6.1") {
		b := testenv.MustRead(t, deb)
		if err := os.WriteFile(filepath.Join(pool, filepath.Base(deb)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("dpkg-scanpackages", "--multiversion", "pool")
	cmd.Dir = r.dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dpkg-scanpackages: %v", err)
	}
	r.writeIndex(t, string(out))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.hits[req.URL.Path]++
		r.mu.Unlock()
		http.FileServer(http.Dir(r.dir)).ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// writeIndex writes dists/bookworm/main/binary-amd64/Packages(.gz) and a Release listing them.
func (r *aptRepo) writeIndex(t *testing.T, packages string) {
	t.Helper()
	dir := filepath.Join(r.dir, "dists/bookworm/main/binary-amd64")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Packages"), []byte(packages), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "Packages.gz"))
	if out, err := exec.Command("gzip", "-k", filepath.Join(dir, "Packages")).CombinedOutput(); err != nil {
		t.Fatalf("gzip: %v %s", err, out)
	}
	var rel strings.Builder
	rel.WriteString("Origin: kmpack-test\nSuite: bookworm\nCodename: bookworm\nArchitectures: amd64\nComponents: main\nSHA256:\n")
	for _, name := range []string{"Packages", "Packages.gz"} {
		b := testenv.MustRead(t, filepath.Join(dir, name))
		s := sha256.Sum256(b)
		fmt.Fprintf(&rel, " %s %d main/binary-amd64/%s\n", hex.EncodeToString(s[:]), len(b), name)
	}
	if err := os.WriteFile(filepath.Join(r.dir, "dists/bookworm/Release"), []byte(rel.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (r *aptRepo) source(t *testing.T) *repo.Source {
	s, err := repo.ParseSource("deb [arch=amd64] " + r.srv.URL + " bookworm main")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (r *aptRepo) poolHits() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for p, c := range r.hits {
		if strings.HasPrefix(p, "/pool/") {
			n += c
		}
	}
	return n
}

func TestAptRepositoryEndToEnd(t *testing.T) {
	r := newAptRepo(t)
	cache := t.TempDir()
	ctx := context.Background()
	load := func() *repo.Index {
		idx, err := repo.Load(ctx, &repo.Fetcher{CacheDir: cache}, r.source(t))
		if err != nil {
			t.Fatal(err)
		}
		return idx
	}
	idx := load()
	if len(idx.Kernels) != 1 || len(idx.Skipped) != 0 {
		t.Fatalf("kernels %+v skipped %+v", idx.Kernels, idx.Skipped)
	}
	k := idx.Kernels[0]
	if k.Release != testenv.ReleaseDebOnly || k.Flavor != "amd64" || len(k.Packages) != 3 || k.Packages[2].Name != "linux-kbuild-6.1" ||
		!strings.HasPrefix(k.Packages[0].URL, r.srv.URL+"/pool/main/l/linux/") || k.Size < 1<<20 {
		t.Fatalf("%+v", k)
	}
	if idx.Verified || len(idx.Notes) != 1 || !strings.Contains(idx.Notes[0], "not verified") {
		t.Fatalf("%+v", idx)
	}
	if r.poolHits() != 0 {
		t.Fatal("listing downloaded packages")
	}
	var files []string
	for run := 0; run < 2; run++ {
		var err error
		files, err = (&repo.Fetcher{CacheDir: cache}).FetchAll(ctx, load().Kernels[0].Packages)
		if err != nil {
			t.Fatal(err)
		}
		if r.poolHits() != 3 {
			t.Fatalf("run %d: %d package downloads, want 3 in all", run, r.poolHits())
		}
	}
	for i, f := range files {
		if filepath.Base(f) != k.Packages[i].SHA256 {
			t.Fatalf("%s is not stored by its checksum", f)
		}
	}
	set, err := unpack.UnpackPackages(cache, files)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(set.Root, "usr/src/linux-headers-"+testenv.ReleaseDebOnly, "Module.symvers")); err != nil {
		t.Fatal(err)
	}
}

func TestAptRepositoryCorruptPackage(t *testing.T) {
	r := newAptRepo(t)
	deb := testenv.Debs(t, "linux-headers-"+testenv.ReleaseDebOnly)[0]
	served := filepath.Join(r.dir, "pool/main/l/linux", filepath.Base(deb))
	b := testenv.MustRead(t, served)
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(served, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	f := &repo.Fetcher{CacheDir: cache}
	idx, err := repo.Load(context.Background(), f, r.source(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.FetchAll(context.Background(), idx.Kernels[0].Packages)
	u := r.srv.URL + "/pool/main/l/linux/" + filepath.Base(deb)
	if err == nil {
		t.Fatal("corrupted package accepted")
	}
	testenv.CheckInputError(t, u, err)
	if !strings.Contains(err.Error(), "SHA-256 mismatch") {
		t.Fatal(err)
	}
	t.Log(err)
	if _, err := os.Stat(filepath.Join(f.ObjectsDir(), idx.Kernels[0].Packages[0].SHA256)); !os.IsNotExist(err) {
		t.Fatalf("corrupted package in the cache: %v", err)
	}
	parts, _ := filepath.Glob(filepath.Join(f.ObjectsDir(), ".part-*"))
	if len(parts) != 0 {
		t.Fatalf("partial downloads left: %v", parts)
	}

	// Truncated: the server sends less than the index says.
	if err := os.WriteFile(served, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = f.Fetch(context.Background(), u, idx.Kernels[0].Packages[0].SHA256, idx.Kernels[0].Packages[0].Size)
	testenv.CheckInputError(t, u, err)
	if err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatal(err)
	}
	if err := os.Remove(served); err != nil {
		t.Fatal(err)
	}
	_, err = f.Fetch(context.Background(), u, idx.Kernels[0].Packages[0].SHA256, idx.Kernels[0].Packages[0].Size)
	if err == nil || err.Error() != u+": HTTP 404 Not Found" {
		t.Fatal(err)
	}
}

func TestAptRepositoryHostileFilename(t *testing.T) {
	r := newAptRepo(t)
	packages := string(testenv.MustRead(t, filepath.Join(r.dir, "dists/bookworm/main/binary-amd64/Packages")))
	r.writeIndex(t, strings.Replace(packages, "Filename: pool/", "Filename: pool/../../../../etc/", 1))
	_, err := repo.Load(context.Background(), &repo.Fetcher{CacheDir: t.TempDir()}, r.source(t))
	name := r.srv.URL + "/dists/bookworm/main/binary-amd64/Packages.gz"
	testenv.CheckInputError(t, name, err)
	if err == nil || !strings.Contains(err.Error(), "leaves the repository") {
		t.Fatal(err)
	}
	t.Log(err)
	// An index whose checksum does not match Release is refused too.
	if err := os.WriteFile(filepath.Join(r.dir, "dists/bookworm/main/binary-amd64/Packages.gz"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = repo.Load(context.Background(), &repo.Fetcher{CacheDir: t.TempDir()}, r.source(t))
	testenv.CheckInputError(t, name, err)
	if err == nil {
		t.Fatal("index not matching Release accepted")
	}
}
