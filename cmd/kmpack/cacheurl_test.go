package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
)

// kmpackEnv runs kmpack with extra environment variables.
func kmpackEnv(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// KMPACK_CACHE_URL shares builds of two kernels between two runners' local caches through a
// real registry; an unreachable one is one warning for the run (not one per kernel) and exit
// 0; a malformed URL is a usage error. (Four builds.)
func TestBuildCacheURL(t *testing.T) {
	h53, h612 := testenv.HeadersDir(t, testenv.Release53), testenv.HeadersDir(t, testenv.Release612)
	addr := testenv.Registry(t)
	src := testenv.ExampleSource(t, true)
	run := func(url string, args ...string) (string, string, int) {
		t.Helper()
		return kmpackEnv(t, []string{"KMPACK_CACHE_DIR=" + t.TempDir(), "KMPACK_CACHE_URL=" + url},
			append(append([]string{"build", "-q", "-k", h53, "-k", h612, "-o", filepath.Join(t.TempDir(), "out")}, args...), src)...)
	}
	url := "oci+http://" + addr + "/ci/kmpack-cache"
	if stdout, stderr, code := run(url); code != 0 || !strings.Contains(stdout, "2 built (0 from cache)") || strings.Contains(stderr, "warning") {
		t.Fatalf("runner A: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if stdout, stderr, code := run(url); code != 0 || !strings.Contains(stdout, "2 built (2 from cache)") || strings.Contains(stderr, "warning") {
		t.Fatalf("runner B: exit %d\n%s\n%s", code, stdout, stderr)
	}
	down := fmt.Sprintf("oci+http://127.0.0.1:%d/ci/kmpack-cache", testenv.FreePort(t))
	stdout, stderr, code := run(down)
	if code != 0 || !strings.Contains(stdout, "2 built (0 from cache)") || strings.Count(stderr, "warning: shared cache") != 1 {
		t.Errorf("unreachable registry: exit %d\n%s\n%s", code, stdout, stderr)
	}
	for _, bad := range []string{"https://" + addr + "/x", "oci://" + addr, "oci://" + addr + "/x:tag"} {
		if _, stderr, code := run(bad); code != exitUsage || !strings.Contains(stderr, "--cache-url") {
			t.Errorf("%s: exit %d, %s", bad, code, stderr)
		}
	}
	if _, stderr, code := kmpackEnv(t, nil, "build", "--trust-cache-url", "-k", h53, src); code != exitUsage {
		t.Errorf("--trust-cache-url alone: exit %d, %s", code, stderr)
	}
}
