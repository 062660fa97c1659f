package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
)

// A kmpack.yaml the packaging step could not use is bad input, found when the spec is read:
// exit 3, one line naming the file, nothing written.
func TestSpecFormatErrorsAreInputErrors(t *testing.T) {
	h53 := testenv.HeadersDir(t, testenv.Release53)
	for _, c := range []struct{ yaml, want string }{
		{"formats: [exe]\n", `kmpack.yaml: formats[0]: unknown package format "exe" (known: apk, archlinux, deb, oci, rpm)`},
		{"profile: windows\n", `kmpack.yaml: profile: unknown packaging profile "windows"`},
		{"maintainer: \"X <x@y>\\nPre-Depends: evil\"\n", `kmpack.yaml: maintainer "X <x@y>\nPre-Depends: evil": line break '\n' not allowed`},
	} {
		dir := filepath.Join(t.TempDir(), "src")
		testenv.CopyTree(t, testenv.TestModuleSource(t, "hello"), dir)
		os.WriteFile(filepath.Join(dir, "kmpack.yaml"), []byte("name: kmpack-hello\nversion: '1.0'\nmodules:\n  - name: kmpack_hello\n"+c.yaml), 0o644)
		out := filepath.Join(t.TempDir(), "out")
		for _, args := range [][]string{{"build", "-k", h53, "-o", out, dir}, {"build", "-k", h53, "-o", out, "--format", "deb", dir}} {
			_, stderr, code := kmpack(t, args...)
			want := "kmpack: " + filepath.Join(dir, "kmpack.yaml") + ": " + strings.TrimPrefix(c.want, "kmpack.yaml: ")
			if code != exitInput || !strings.HasPrefix(stderr, want) || strings.Count(stderr, "\n") != 1 {
				t.Errorf("%s: exit %d, stderr %q; want exit 3 and one line starting %q", args, code, stderr, want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s: %s was written", args, out)
			}
		}
	}
}

// kmpack init converts a dkms.conf whose version has a "-" (dkms accepts it): the spec keeps it.
func TestInitVersionWithDash(t *testing.T) {
	h53 := testenv.HeadersDir(t, testenv.Release53)
	dir := filepath.Join(t.TempDir(), "src")
	testenv.CopyTree(t, testenv.TestModuleSource(t, "hello"), dir)
	os.Remove(filepath.Join(dir, "kmpack.yaml"))
	os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte("PACKAGE_NAME=tp_smapi\nPACKAGE_VERSION=0.3.0-1\nBUILT_MODULE_NAME[0]=kmpack_hello\nDEST_MODULE_LOCATION[0]=/updates\nAUTOINSTALL=yes\n"+
		"PRE_BUILD=\"pre.sh $kernelver\"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "pre.sh"), []byte("#!/bin/sh\n"), 0o755)
	stdout, stderr, code := kmpack(t, "init", "--stdout", "-k", h53, dir)
	// The hook's kernel argument is written back as ${kernelver}, which kmpack expands per kernel.
	if code != 0 || !strings.Contains(stdout, "\nname: tp_smapi\nversion: 0.3.0-1\n") || !strings.Contains(stdout, "pre-build: ./pre.sh ${kernelver}\n") {
		t.Fatalf("init: exit %d\n%s\n%s", code, stdout, stderr)
	}
}

// kmpack init (run as root) writes kmpack.yaml without following links planted in the source
// directory: a kmpack.yaml.tmp symlink to a host file leaves that file alone, kmpack.yaml is
// a regular file holding the spec, and no temporary file is left behind.
func TestInitDoesNotFollowPlantedTempLink(t *testing.T) {
	h53 := testenv.HeadersDir(t, testenv.Release53)
	dir := filepath.Join(t.TempDir(), "src")
	testenv.CopyTree(t, testenv.TestModuleSource(t, "hello"), dir)
	os.Remove(filepath.Join(dir, "kmpack.yaml"))
	os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte("PACKAGE_NAME=kmpack-hello\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=kmpack_hello\nDEST_MODULE_LOCATION[0]=/updates\n"), 0o644)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("host file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, "kmpack.yaml.tmp")); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := kmpack(t, "init", "-k", h53, dir)
	if code != 0 {
		t.Fatalf("init: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if b, _ := os.ReadFile(victim); string(b) != "host file\n" {
		t.Errorf("init wrote through the planted link: victim = %q", b)
	}
	fi, err := os.Lstat(filepath.Join(dir, "kmpack.yaml"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("kmpack.yaml: %v, %v; want a regular file", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "kmpack.yaml")); !strings.Contains(string(b), "\nname: kmpack-hello\n") {
		t.Errorf("kmpack.yaml = %q", b)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") && e.Name() != "kmpack.yaml.tmp" {
			t.Errorf("init left %s behind", e.Name())
		}
	}
}
