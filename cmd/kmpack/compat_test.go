package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/weakupdates"
)

func TestCompatCommand(t *testing.T) {
	cache := t.TempDir()
	h53, h54, hCloud := testenv.HeadersDir(t, testenv.Release53), testenv.HeadersDir(t, testenv.Release54), testenv.HeadersDir(t, testenv.Release53Cloud)
	hello := "../../testdata/ko/kmpack_hello-6.1.0-53.ko"
	out, stderr, code := kmpackIn(t, cache, "compat", "-k", h54, "-k", hCloud, hello)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(lines[1], "kmpack_hello") || !strings.Contains(lines[1], "yes") || !strings.Contains(lines[1], "no (3)") ||
		!strings.Contains(out, "flavor") || !strings.Contains(out, "param_ops_int: built against CRC 0x7d675181") {
		t.Errorf("table:\n%s", out)
	}
	out, _, _ = kmpackIn(t, cache, "compat", "--json", "-k", h53, hello)
	var mx weakupdates.Matrix
	if err := json.Unmarshal([]byte(out), &mx); err != nil || !mx.Cells[0][0].Compatible || mx.Kernels[0].ThisModuleSize == 0 {
		t.Errorf("json: %v %s", err, out)
	}
	out, _, _ = kmpackIn(t, cache, "compat", "--html", "-k", h54, "-k", hCloud, hello)
	if !strings.HasPrefix(out, "<!DOCTYPE html>") || !strings.Contains(out, `<td class="yes">`) || !strings.Contains(out, "<details>") {
		t.Errorf("html:\n%.400s", out)
	}
	bad := filepath.Join(t.TempDir(), "symvers-x")
	os.WriteFile(bad, []byte("not a symvers line\n"), 0o644)
	if _, stderr, code := kmpackIn(t, cache, "compat", "-k", bad, hello); code != exitInput || !strings.Contains(stderr, bad) {
		t.Errorf("bad symvers: exit %d: %s", code, stderr)
	}
	if _, _, code := kmpackIn(t, cache, "compat", "-k", h54); code != exitUsage {
		t.Errorf("no module: exit %d", code)
	}
}

func TestBuildSiblingsInManifest(t *testing.T) {
	cache := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	h53, h54, hRT := testenv.HeadersDir(t, testenv.Release53), testenv.HeadersDir(t, testenv.Release54), testenv.HeadersDir(t, testenv.Release53RT)
	stdout, stderr, code := kmpackIn(t, cache, "build", "-q", "-k", h53, "--siblings", h54, "--siblings", hRT, "-o", out, testenv.ExampleSource(t, true))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "kmpack_hello loads in "+testenv.Release54) || !strings.Contains(stdout, "kmpack_hello cannot load in "+testenv.Release53RT) {
		t.Errorf("summary:\n%s", stdout)
	}
	b, _ := os.ReadFile(filepath.Join(out, "manifest.json"))
	var m manifest.Manifest
	if err := json.Unmarshal(b, &m); err != nil || len(m.Kernels[0].Siblings) != 2 {
		t.Fatalf("manifest siblings: %v %+v", err, m.Kernels)
	}
	if rt := m.Kernels[0].Siblings[1]; rt.Compatible || !strings.Contains(strings.Join(rt.Reasons, "\n"), "vermagic") {
		t.Errorf("rt sibling: %+v", rt)
	}
}
