package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
)

func TestKsymsPrintsKernelProvides(t *testing.T) {
	h53 := testenv.HeadersDir(t, testenv.Release53)
	out, stderr, code := kmpack(t, "ksyms", "-k", h53, "-p", "suse")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"kernel-uname-r = 6.1.0-53-amd64\n", "ksym(amd64:_dev_info) = 591d140a\n", "ksym(amd64:module_layout) = bce1a965\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("suse provides lack %q", want)
		}
	}
	out, _, _ = kmpack(t, "ksyms", "-k", filepath.Join(h53, "Module.symvers"), "--release", testenv.Release53, "-p", "rhel")
	if !strings.Contains(out, "kernel(_dev_info) = 0x591d140a\n") {
		t.Errorf("rhel provides from a symvers file lack kernel(_dev_info):\n%.300s", out)
	}
	dir := t.TempDir()
	if _, stderr, code := kmpack(t, "ksyms", "-k", h53, "-p", "suse", "--package", dir); code != 0 {
		t.Fatalf("--package: exit %d: %s", code, stderr)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "kernel-amd64-ksyms-6.1.0-53.x86_64.rpm")); len(m) != 1 {
		t.Errorf("no kernel-amd64-ksyms rpm in %s", dir)
	}
	if _, _, code := kmpack(t, "ksyms", "-k", h53, "-p", "debian"); code != exitUsage {
		t.Errorf("--profile debian: exit %d, want %d", code, exitUsage)
	}
}

// build --profile packages after building; kmpack package repackages an existing output; a
// profile or format that does not exist is a usage error before anything is built, and
// metadata the format forbids is bad input with no packages written.
func TestBuildAndPackageCommands(t *testing.T) {
	h53 := testenv.HeadersDir(t, testenv.Release53)
	cache := t.TempDir()
	src := testenv.ExampleSource(t, true)
	out := filepath.Join(t.TempDir(), "out")
	stdout, stderr, code := kmpackIn(t, cache, "build", "-q", "-k", h53, "-o", out, "--profile", "debian,suse", src)
	if code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "kmpack-hello-modules-6.1.0-53-amd64_1.0-1_amd64.deb") ||
		!strings.Contains(stdout, "kmpack-hello-kmp-amd64-1.0_k6.1.0_53-1.x86_64.rpm") {
		t.Errorf("build output does not list the packages:\n%s", stdout)
	}
	stdout, stderr, code = kmpackIn(t, cache, "package", "--format", "rpm", "--profile", "rhel", "--no-source-package", "--json", out)
	if code != 0 {
		t.Fatalf("package: exit %d: %s", code, stderr)
	}
	var written []formats.Written
	if err := json.Unmarshal([]byte(stdout), &written); err != nil || len(written) != 2 || written[0].Name != "kmod-kmpack-hello" || written[1].Name != formats.RuntimePackageName {
		t.Fatalf("package --json: %v %+v", err, written)
	}
	entries, _ := os.ReadDir(filepath.Join(out, formats.PackagesDir))
	if len(entries) != 3 { // the kmod, the runtime rpm and packages.json: the packages directory was replaced
		t.Errorf("packages dir holds %d entries", len(entries))
	}

	for _, args := range [][]string{{"--profile", "gentoo"}, {"--format", "rpm"}, {"--format", "deb", "--profile", "suse"}} {
		_, stderr, code := kmpackIn(t, cache, append(append([]string{"build", "-q", "-k", h53, "-o", filepath.Join(t.TempDir(), "o")}, args...), src)...)
		if code != exitUsage {
			t.Errorf("%v: exit %d, want %d: %s", args, code, exitUsage, stderr)
		}
	}

	spec := filepath.Join(src, "kmpack.yaml")
	b, _ := os.ReadFile(spec)
	os.WriteFile(spec, []byte(strings.Replace(string(b), `version: "1.0"`, `version: "1.0x_y"`, 1)), 0o644)
	out2 := filepath.Join(t.TempDir(), "out")
	_, stderr, code = kmpackIn(t, cache, "build", "-q", "-k", h53, "-o", out2, "--profile", "alpine", src)
	if code != exitInput || !strings.Contains(stderr, `version "1.0x_y" is not valid`) {
		t.Errorf("apk-invalid version: exit %d, stderr %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(out2, formats.PackagesDir)); err == nil {
		t.Errorf("packages written despite invalid metadata")
	}
}

// kmpack package works for a dkms.conf build (its name comes from the manifest) and refuses a
// directory that is not a kmpack build output.
func TestPackageDKMSBuildAndForeignOutput(t *testing.T) {
	h53 := testenv.HeadersDir(t, testenv.Release53)
	src := testenv.ExampleSource(t, false)
	os.WriteFile(filepath.Join(src, "dkms.conf"), []byte("PACKAGE_NAME=hello\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME=kmpack_hello\nDEST_MODULE_LOCATION=/updates\n"), 0o644)
	cache := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	if _, stderr, code := kmpackIn(t, cache, "build", "-q", "-k", h53, "-o", out, src); code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	stdout, stderr, code := kmpackIn(t, cache, "package", "--profile", "debian", "--no-runtime-package", "--no-source-package", out)
	if code != 0 || !strings.Contains(stdout, "hello-modules-"+testenv.Release53) {
		t.Errorf("package of a dkms.conf build: exit %d\n%s\n%s", code, stdout, stderr)
	}

	// A manifest whose module path leaves the output is refused before anything is read.
	mpath := filepath.Join(out, "manifest.json")
	orig, _ := os.ReadFile(mpath)
	os.WriteFile(mpath, []byte(strings.Replace(string(orig), `"file": "modules/`+testenv.Release53+`/kmpack_hello.ko`, `"file": "../../../etc/kmpack_hello.ko`, 1)), 0o644)
	_, stderr, code = kmpackIn(t, cache, "package", "--profile", "debian", out)
	if code != exitInput || !strings.Contains(stderr, "is not one kmpack writes") {
		t.Errorf("escaping module path in the manifest: exit %d: %s", code, stderr)
	}
	os.WriteFile(mpath, orig, 0o644)

	foreign := t.TempDir()
	os.WriteFile(filepath.Join(foreign, "manifest.json"), []byte(`{"source":{"dir":"/"}}`), 0o644)
	_, stderr, code = kmpackIn(t, cache, "package", "--profile", "debian", foreign)
	if code != exitInput || !strings.Contains(stderr, "not a kmpack build manifest") {
		t.Errorf("foreign output: exit %d: %s", code, stderr)
	}
}

// The runtime package's stripped binary and package file are kept in the cache directory: a
// packaging run that takes them from there writes the same bytes as one with an empty cache,
// and corrupted entries are reported, not used, and made anew.
func TestRuntimePackageCache(t *testing.T) {
	h53 := testenv.HeadersDir(t, testenv.Release53)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	cache := t.TempDir()
	src := testenv.ExampleSource(t, true)
	out := filepath.Join(t.TempDir(), "out")
	if _, stderr, code := kmpackIn(t, cache, "build", "-q", "-k", h53, "-o", out, src); code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	pkg := func(cache string) (runtimeDeb []byte, stderr string) {
		t.Helper()
		_, stderr, code := kmpackIn(t, cache, "package", "--profile", "debian", "--no-source-package", out)
		if code != 0 {
			t.Fatalf("package: exit %d: %s", code, stderr)
		}
		debs, _ := filepath.Glob(filepath.Join(out, formats.PackagesDir, formats.RuntimePackageName+"_*.deb"))
		if len(debs) != 1 {
			t.Fatalf("runtime packages: %v", debs)
		}
		b, err := os.ReadFile(debs[0])
		if err != nil {
			t.Fatal(err)
		}
		return b, stderr
	}
	uncached, _ := pkg(t.TempDir())
	cold, stderr := pkg(cache)
	entries, _ := filepath.Glob(filepath.Join(cache, "packages", "*"))
	if !bytes.Equal(cold, uncached) || len(entries) != 2 || stderr != "" {
		t.Fatalf("first run: same bytes %v, %d cache entries (want 2: the stripped binary and the package), stderr %q",
			bytes.Equal(cold, uncached), len(entries), stderr)
	}
	if warm, stderr := pkg(cache); !bytes.Equal(warm, uncached) || stderr != "" {
		t.Errorf("run from the cache: same bytes %v, stderr %q", bytes.Equal(warm, uncached), stderr)
	}
	for _, e := range entries {
		b, _ := os.ReadFile(e)
		b[len(b)-1] ^= 0xff
		os.WriteFile(e, b, 0o644)
	}
	again, stderr := pkg(cache)
	if !bytes.Equal(again, uncached) || strings.Count(stderr, "is unusable") != 2 {
		t.Errorf("corrupted entries: same bytes %v, stderr %q (want both entries reported)", bytes.Equal(again, uncached), stderr)
	}
	if warm, stderr := pkg(cache); !bytes.Equal(warm, uncached) || stderr != "" {
		t.Errorf("run from the remade entries: same bytes %v, stderr %q", bytes.Equal(warm, uncached), stderr)
	}
}
