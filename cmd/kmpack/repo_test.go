package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
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
	for _, want := range []string{testenv.ReleaseDebOnly + "  (debian layout, flavor amd64, amd64, ", "linux-headers-6.1.0-55-common 6.1.192-1", "linux-kbuild-6.1 6.1.192-3", "signature not verified"} {
		if !strings.Contains(out, want) {
			t.Fatalf("no %q in\n%s", want, out)
		}
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
	if len(res.Repositories) != 1 || len(res.Repositories[0].Kernels) != 1 || len(res.Repositories[0].Kernels[0].Packages) != 3 || res.Repositories[0].Verified {
		t.Fatalf("%s", out)
	}
	if r.PoolHits() != 0 {
		t.Fatal("listing downloaded packages")
	}
	home, public := testenv.GPGKey(t, "archive")
	r.Sign(t, home)
	out, stderr, code = kmpackIn(t, cache, "kernels", "--json", "--keyring", public, "--repo", r.Source())
	if code != 0 || !strings.Contains(out, `"verified": true`) {
		t.Fatalf("exit %d: %s %s", code, out, stderr)
	}
	_, stderr, code = kmpackIn(t, cache, "kernels", "--keyring", testenv.Debs(t, "linux-kbuild-6.1")[0], "--repo", r.Source())
	if code != exitInput || !strings.Contains(stderr, "not an OpenPGP keyring") {
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
		stdout, stderr, code := kmpackIn(t, cache, "build", "--json", "--kernel-repo", r.Source(), "--latest", "1", "-o", outDir, testenv.ExampleSource(t, true))
		var m manifest.Manifest
		if err := json.Unmarshal([]byte(stdout), &m); err != nil || code != 0 {
			t.Fatalf("run %d: exit %d %v: %s", run, code, err, stderr)
		}
		if len(m.Kernels) != 1 || m.Kernels[0].Release != testenv.ReleaseDebOnly || len(m.Kernels[0].Modules) != 1 {
			t.Fatalf("run %d: %s", run, testenv.Truncate(stdout, 3000))
		}
		if r.PoolHits() != 3 {
			t.Fatalf("run %d: %d package downloads, want 3 in all", run, r.PoolHits())
		}
		if !strings.Contains(stderr, "signature not verified") {
			t.Fatalf("no note that the metadata was not verified: %s", stderr)
		}
	}
}
