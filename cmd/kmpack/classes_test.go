package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/manifest"
)

func readManifest(t *testing.T, out string) *manifest.Manifest {
	t.Helper()
	m, err := manifest.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func packageFiles(t *testing.T, out string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(out, formats.PackagesDir, "packages.json"))
	if err != nil {
		t.Fatal(err)
	}
	var written []formats.Written
	if err := json.Unmarshal(b, &written); err != nil {
		t.Fatal(err)
	}
	files := map[string]bool{}
	for _, w := range written {
		files[w.Profile+" "+w.Kernel] = true
	}
	return files
}

// build --classes on the installed trees: in each flavor and series the oldest kernel is built
// and the kernels its modules load in are served by it, with the verdicts; a source whose
// imports changed CRC between two ABIs gets a build for each.
func TestBuildClasses(t *testing.T) {
	r53, r54, cloud, r612 := testenv.Release53, testenv.Release54, testenv.Release53Cloud, testenv.Release612
	cache := t.TempDir()
	args := func(out string, extra ...string) []string {
		a := []string{"build", "-q", "--classes", "-o", out, "--no-source-package"}
		for _, k := range []string{r612, r54, cloud, r53} { // not in release order: kmpack orders them
			a = append(a, "-k", testenv.HeadersDir(t, k))
		}
		return append(a, extra...)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	out := filepath.Join(t.TempDir(), "out")
	stdout, stderr, code := kmpackIn(t, cache, append(args(out, "--profile", "debian,suse"), testenv.TestModuleSource(t, "hello"))...)
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	m := readManifest(t, out)
	status := map[string]string{}
	for _, k := range m.Kernels {
		status[k.Release] = string(k.Status) + " " + k.ServedBy
	}
	want := map[string]string{r53: "built ", r54: "served " + r53, cloud: "built ", r612: "built "}
	for k, v := range want {
		if status[k] != v {
			t.Errorf("%s: %q, want %q", k, status[k], v)
		}
	}
	if k := m.Kernel(r54); len(k.Serving) != 1 || !k.Serving[0].Compatible || k.Serving[0].Module != "kmpack_hello" || len(k.Modules) != 0 {
		t.Errorf("served kernel's record: %+v", k)
	}
	if m.Summary.Built != 3 || m.Summary.Served != 1 || !strings.Contains(stdout, "3 built (") || !strings.Contains(stdout, "1 served by another kernel's build") ||
		!strings.Contains(stdout, "served   by the build for "+r53+" (its modules load here)") {
		t.Errorf("summary %+v:\n%s", m.Summary, stdout)
	}
	// debian: a package per kernel, the served one too; suse: weak-updates serves 54.
	files := packageFiles(t, out)
	if !files["debian "+r54] || !files["debian "+r53] || files["suse "+r54] || !files["suse "+r53] {
		t.Errorf("packages %v", files)
	}
	// kmpack package with --served package: a KMP for 54 as well; the same packages again
	// byte for byte otherwise.
	before, _ := os.ReadFile(filepath.Join(out, formats.PackagesDir, "packages.json"))
	if _, stderr, code := kmpackIn(t, cache, "package", "--profile", "debian,suse", "--no-source-package", out); code != 0 {
		t.Fatalf("package: exit %d: %s", code, stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(out, formats.PackagesDir, "packages.json")); string(after) != string(before) {
		t.Errorf("kmpack package made other packages than build --profile")
	}
	if _, stderr, code := kmpackIn(t, cache, "package", "--profile", "suse", "--served", "package", out); code != 0 || !packageFiles(t, out)["suse "+r54] {
		t.Fatalf("package --served package: exit %d: %s", code, stderr)
	}
	if _, stderr, code := kmpackIn(t, cache, "package", "--profile", "suse", "--served", "some", out); code != exitUsage || !strings.Contains(stderr, "--served") {
		t.Fatalf("--served some: exit %d: %s", code, stderr)
	}

	// kmpack_abi imports _dev_info, whose CRC differs between 53 and 54: both built.
	out2 := filepath.Join(t.TempDir(), "out")
	if stdout, stderr, code := kmpackIn(t, cache, append(args(out2), testenv.TestModuleSource(t, "abi"))...); code != 0 {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	if m := readManifest(t, out2); m.Kernel(r54).Status != manifest.StatusBuilt || m.Summary.Served != 0 {
		t.Errorf("abi: %s is %s", r54, m.Kernel(r54).Status)
	}

	// A manifest whose served kernel names no build of the output is refused.
	b, _ := os.ReadFile(filepath.Join(out, "manifest.json"))
	os.WriteFile(filepath.Join(out, "manifest.json"), []byte(strings.Replace(string(b), `"served_by": "`+r53+`"`, `"served_by": "`+cloud+`"`, 1)), 0o644)
	if _, stderr, code := kmpackIn(t, cache, "package", "--profile", "debian", out); code != exitInput || !strings.Contains(stderr, "served by \""+cloud+"\"") {
		t.Fatalf("package of a manifest with a bad served_by: exit %d: %s", code, stderr)
	}
}
