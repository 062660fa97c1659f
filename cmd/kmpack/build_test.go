package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/source"
)

func TestBuildCommand(t *testing.T) {
	h53, h612 := testenv.HeadersDir(t, testenv.Release53), testenv.HeadersDir(t, testenv.Release612)
	src := testenv.ExampleSource(t, true)
	cache := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	stdout, stderr, code := kmpackIn(t, cache, "build", "-k", h53, "-k", h612, "-o", out, src)
	if code != 0 || !strings.Contains(stdout, "2 built (0 from cache), 0 skipped, 0 failed") {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stderr, testenv.Release53+": built in") {
		t.Errorf("no progress lines on a non-terminal: %s", stderr)
	}
	stdout, _, code = kmpackIn(t, cache, "build", "--json", "-k", h53, "-k", h612, "-o", out, src)
	var m manifest.Manifest
	if err := json.Unmarshal([]byte(stdout), &m); err != nil || code != 0 {
		t.Fatalf("--json: %v %d %s", err, code, stdout)
	}
	if m.Summary.Cached != 2 || len(m.Kernels[1].Modules) != 1 || !strings.HasSuffix(m.Kernels[1].Modules[0].File, ".ko.xz") {
		t.Errorf("manifest %+v", m)
	}
	if _, err := os.Stat(filepath.Join(out, "manifest.json")); err != nil {
		t.Error(err)
	}
}

func TestBuildExitCodes(t *testing.T) {
	h53, h612 := testenv.HeadersDir(t, testenv.Release53), testenv.HeadersDir(t, testenv.Release612)
	write := func(conf string) string {
		dir := testenv.ExampleSource(t, false)
		os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte(conf), 0o644)
		return dir
	}
	base := "PACKAGE_NAME=hello\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=kmpack_hello\nDEST_MODULE_LOCATION=/updates\n"
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"one kernel fails", []string{"-k", h53, "-k", h612, write(base + "MAKE[1]=false\nMAKE_MATCH[1]=^6.12\n")}, exitBuildFailed, "build failed for 1 of 2 kernels"},
		{"all skipped", []string{"-k", h53, write(base + "BUILD_EXCLUSIVE_ARCH=s390x\n")}, exitAllSkipped, "every kernel was skipped"},
		{"invalid bash", []string{"-k", h53, write(base + "if then\n")}, exitInput, "dkms.conf: not valid bash"},
		{"not a tree", []string{"-k", t.TempDir(), testenv.ExampleSource(t, true)}, exitInput, "not a kernel devel tree"},
		{"no glob match", []string{"-k", "/nonexistent/linux-*", testenv.ExampleSource(t, true)}, exitInput, "no kernel tree or package matches"},
		{"bad spec", []string{"-k", h53, func() string {
			d := testenv.ExampleSource(t, false)
			os.WriteFile(filepath.Join(d, "kmpack.yaml"), []byte("name: x\nversion: '1'\nmodulez: []\n"), 0o644)
			return d
		}()}, exitInput, "kmpack.yaml: line 3: field modulez not found"},
		{"bad compress", []string{"--compress", "lz4", testenv.ExampleSource(t, true)}, exitUsage, "unknown compression"},
		// Options after SOURCE are parsed as options (the bad value is caught), unknown ones still refused.
		{"options after source", []string{testenv.ExampleSource(t, true), "-k", h53, "--compress", "lz4"}, exitUsage, "unknown compression"},
		{"unknown option after source", []string{testenv.ExampleSource(t, true), "--bogus"}, exitUsage, "flag provided but not defined: -bogus"},
	}
	for _, c := range cases {
		parent := t.TempDir()
		out := filepath.Join(parent, "out")
		args := append([]string{"build", "-o", out}, c.args...)
		_, stderr, code := kmpackIn(t, t.TempDir(), args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: exit %d, want %d with %q:\n%s", c.name, code, c.code, c.want, stderr)
		}
		if code == exitInput || code == exitUsage {
			if entries, _ := os.ReadDir(parent); len(entries) != 0 {
				t.Errorf("%s: left %v behind", c.name, entries)
			}
		}
	}
}

func TestInitFromDKMSConf(t *testing.T) {
	h53, hCloud := testenv.HeadersDir(t, testenv.Release53), testenv.HeadersDir(t, testenv.Release53Cloud)
	dir := testenv.ExampleSource(t, false)
	conf := `PACKAGE_NAME=hello
PACKAGE_VERSION=1.0
BUILT_MODULE_NAME[0]=kmpack_hello
DEST_MODULE_LOCATION[0]=/extra
MAKE[0]="make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build EXTRA=$kernelver"
if grep -q CONFIG_XEN_BALLOON=y $kernel_source_dir/.config; then BUILD_EXCLUSIVE_CONFIG="CONFIG_XEN_BALLOON"; fi
`
	os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte(conf), 0o644)
	cache := t.TempDir()
	stdout, stderr, code := kmpackIn(t, cache, "init", "-k", h53, "-k", hCloud, dir)
	if code != 0 || !strings.Contains(stdout, "wrote ") {
		t.Fatalf("init: %d %s %s", code, stdout, stderr)
	}
	spec, err := source.ReadSpec(filepath.Join(dir, "kmpack.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if spec.Name != "hello" || spec.Modules[0].InstallDir != "extra" ||
		spec.Build.Commands[0].Run != "make -C ${kernel_source_dir} M=${build_dir} EXTRA=${kernelver}" {
		t.Errorf("spec %+v", spec)
	}
	if !strings.Contains(stderr, "shell logic") {
		t.Errorf("no warning about shell logic: %s", stderr)
	}
	if _, _, code := kmpackIn(t, cache, "init", "-k", h53, dir); code != exitInput {
		t.Errorf("init over an existing kmpack.yaml: exit %d", code)
	}
	// The written spec builds (kmpack.yaml wins over dkms.conf).
	out := filepath.Join(t.TempDir(), "out")
	stdout, stderr, code = kmpackIn(t, cache, "build", "-k", h53, "-o", out, dir)
	if code != 0 || !strings.Contains(stdout, "(kmpack.yaml)") {
		t.Errorf("building the converted spec: %d %s %s", code, stdout, stderr)
	}
}

// -j is bounded (the jobserver's tokens live in a pipe: -j 65537 used to hang forever).
func TestBuildJobsRange(t *testing.T) {
	for _, j := range []string{"0", "65537"} {
		_, stderr, code := kmpack(t, "build", "-j", j, "-o", filepath.Join(t.TempDir(), "o"), testenv.ExampleSource(t, true))
		if code != exitUsage || !strings.Contains(stderr, "--jobs must be between 1 and 1024") {
			t.Errorf("-j %s: exit %d: %s", j, code, stderr)
		}
	}
}

// SIGTERM stops a build at once: exit 130, the make's process group killed, no output, no
// staging directory, no workspace left.
func TestBuildSIGTERM(t *testing.T) {
	h53 := testenv.HeadersDir(t, testenv.Release53)
	src := testenv.ExampleSource(t, false)
	marker := "kmpack-sigterm-" + strconv.Itoa(os.Getpid())
	os.WriteFile(filepath.Join(src, "dkms.conf"), []byte("PACKAGE_NAME=hello\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=kmpack_hello\nDEST_MODULE_LOCATION=/updates\nMAKE=\"bash -c 'sleep 300; true' "+marker+"\"\n"), 0o644)
	tmp, parent := t.TempDir(), t.TempDir()
	cmd := exec.Command(bin, "build", "-q", "-k", h53, "-o", filepath.Join(parent, "out"), src)
	cmd.Env = append(os.Environ(), "KMPACK_CACHE_DIR="+t.TempDir(), "TMPDIR="+tmp)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if out, _ := exec.Command("pgrep", "-f", marker).Output(); len(out) > 0 {
			break
		}
		if i > 300 {
			cmd.Process.Kill()
			t.Fatal("the build never started")
		}
		time.Sleep(100 * time.Millisecond)
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitInterrupted || time.Since(start) > 10*time.Second {
		t.Errorf("SIGTERM: %v after %v: %s", err, time.Since(start), stderr.String())
	}
	time.Sleep(200 * time.Millisecond)
	if out, _ := exec.Command("pgrep", "-f", marker).Output(); len(out) > 0 {
		t.Errorf("build processes survived SIGTERM: %s", out)
	}
	for _, d := range []string{tmp, parent} {
		if entries, _ := os.ReadDir(d); len(entries) != 0 {
			t.Errorf("%s: left %v", d, entries)
		}
	}
}

// A missing --output parent is created.
func TestBuildCreatesOutputParents(t *testing.T) {
	h53 := testenv.HeadersDir(t, testenv.Release53)
	out := filepath.Join(t.TempDir(), "a", "b", "out")
	if _, stderr, code := kmpack(t, "build", "-q", "-k", h53, "-o", out, testenv.ExampleSource(t, true)); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "manifest.json")); err != nil {
		t.Error(err)
	}
}
