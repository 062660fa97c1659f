package testenv

import (
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
)

// RepoReleases are the kernels whose real header packages the test apt repository holds, oldest
// first: ReleaseDebOnly and the next two ABIs (scripts/testdata.sh downloads them).
var RepoReleases = []string{ReleaseDebOnly, "6.1.0-56-amd64", "6.1.0-57-amd64"}

// AptRepo is a Debian archive made in the test with dpkg-scanpackages from the real header
// packages of RepoReleases (headers and -common of each, one linux-kbuild-6.1 for all), served
// over HTTP on 127.0.0.1, counting requests per path.
type AptRepo struct {
	Dir  string
	Srv  *httptest.Server
	mu   sync.Mutex
	hits map[string]int
}

// NewAptRepo makes and serves the archive (suite bookworm, component main, amd64).
func NewAptRepo(t testing.TB) *AptRepo {
	t.Helper()
	Need(t, "dpkg-scanpackages", "gzip")
	r := &AptRepo{Dir: t.TempDir(), hits: map[string]int{}}
	pool := filepath.Join(r.Dir, "pool/main/l/linux")
	if err := os.MkdirAll(pool, 0o755); err != nil {
		t.Fatal(err)
	}
	debs := []string{"linux-kbuild-6.1"}
	for _, rel := range RepoReleases {
		debs = append(debs, "linux-headers-"+rel, "linux-headers-"+strings.TrimSuffix(rel, "-amd64")+"-common")
	}
	for _, deb := range Debs(t, debs...) {
		if err := os.WriteFile(filepath.Join(pool, filepath.Base(deb)), MustRead(t, deb), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("dpkg-scanpackages", "--multiversion", "pool")
	cmd.Dir = r.Dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dpkg-scanpackages: %v", err)
	}
	r.WriteIndex(t, string(out))
	r.Srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.hits[req.URL.Path]++
		r.mu.Unlock()
		http.FileServer(http.Dir(r.Dir)).ServeHTTP(w, req)
	}))
	t.Cleanup(r.Srv.Close)
	return r
}

// Source is the archive in sources.list one-line form.
func (r *AptRepo) Source() string { return "deb [arch=amd64] " + r.Srv.URL + " bookworm main" }

// WriteIndex writes dists/bookworm/main/binary-amd64/Packages(.gz) and a Release listing them.
func (r *AptRepo) WriteIndex(t testing.TB, packages string) {
	t.Helper()
	r.writeIndex(t, "amd64", packages)
}

// AddArm64 adds the arm64 index: the pool gets ReleaseArm64's arm64 headers and their -common,
// and binary-arm64/Packages lists the pool's arm64 and arch:all packages, as Debian's archive
// does (linux-kbuild-6.1 stays in the amd64 index only: a cross build takes the host's).
func (r *AptRepo) AddArm64(t testing.TB) {
	t.Helper()
	pool := filepath.Join(r.Dir, "pool/main/l/linux")
	for _, deb := range Arm64Debs(t)[:2] {
		if err := os.WriteFile(filepath.Join(pool, filepath.Base(deb)), MustRead(t, deb), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("dpkg-scanpackages", "--multiversion", "--arch", "arm64", "pool")
	cmd.Dir = r.Dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dpkg-scanpackages: %v", err)
	}
	r.writeIndex(t, "arm64", string(out))
}

// writeIndex writes one architecture's Packages(.gz) and a Release listing every index there.
func (r *AptRepo) writeIndex(t testing.TB, arch, packages string) {
	t.Helper()
	dir := filepath.Join(r.Dir, "dists/bookworm/main/binary-"+arch)
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
	var arches []string
	var sums strings.Builder
	for _, a := range []string{"amd64", "arm64"} {
		if _, err := os.Stat(filepath.Join(r.Dir, "dists/bookworm/main/binary-"+a)); err != nil {
			continue
		}
		arches = append(arches, a)
		for _, name := range []string{"Packages", "Packages.gz"} {
			b := MustRead(t, filepath.Join(r.Dir, "dists/bookworm/main/binary-"+a, name))
			s := sha256.Sum256(b)
			fmt.Fprintf(&sums, " %s %d main/binary-%s/%s\n", hex.EncodeToString(s[:]), len(b), a, name)
		}
	}
	rel := "Origin: kmpack-test\nSuite: bookworm\nCodename: bookworm\nArchitectures: " + strings.Join(arches, " ") +
		"\nComponents: main\nSHA256:\n" + sums.String()
	if err := os.WriteFile(filepath.Join(r.Dir, "dists/bookworm/Release"), []byte(rel), 0o644); err != nil {
		t.Fatal(err)
	}
}

// PoolHits counts the requests for package files so far.
func (r *AptRepo) PoolHits() int {
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

// GPGHome makes a throwaway OpenPGP signing key with gpg --batch (no network) in its own home
// and returns that home and the armored public key file.
func GPGHome(t testing.TB, name string) (home, public string) {
	t.Helper()
	Need(t, "gpg")
	home = t.TempDir()
	t.Cleanup(func() { exec.Command("gpgconf", "--homedir", home, "--kill", "gpg-agent").Run() })
	gpgIn(t, home, "--quick-gen-key", name+" <"+name+"@example.invalid>", "ed25519", "sign", "never")
	public = filepath.Join(t.TempDir(), name+".asc")
	if err := os.WriteFile(public, gpgIn(t, home, "--armor", "--export"), 0o644); err != nil {
		t.Fatal(err)
	}
	return home, public
}

func gpgIn(t testing.TB, home string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("gpg", append([]string{"--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("gpg %v: %v %s", args, err, msg)
	}
	return out
}

// Sign writes dists/bookworm/InRelease (clearsigned) and Release.gpg (detached, armored) with
// the key in gpg home.
func (r *AptRepo) Sign(t testing.TB, home string) {
	t.Helper()
	rel := filepath.Join(r.Dir, "dists/bookworm/Release")
	for _, f := range []string{rel + ".gpg", filepath.Join(r.Dir, "dists/bookworm/InRelease")} {
		os.Remove(f)
	}
	gpgIn(t, home, "--clearsign", "--output", filepath.Join(r.Dir, "dists/bookworm/InRelease"), rel)
	gpgIn(t, home, "--armor", "--detach-sign", "--output", rel+".gpg", rel)
}
