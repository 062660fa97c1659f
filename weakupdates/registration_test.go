package weakupdates

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
)

const goodRegistration = `{"name":"kmpack-hello","package":"kmpack-hello-modules-6.1.0-53-amd64","version":"1.0-1",
"kernel":"6.1.0-53-amd64","modules":["/lib/modules/6.1.0-53-amd64/updates/kmpack-hello/kmpack_hello.ko"]}`

// Registrations are checked where they enter: every identifier by ident, module paths clean
// and under the package's kernel, versions by the package format's own syntax; the error is
// one line naming the file.
func TestParseRegistration(t *testing.T) {
	const file = "/r/var/lib/kmpack/weak-updates/kmps/kmpack-hello-modules-6.1.0-53-amd64.json"
	if k, err := ParseRegistration(file, []byte(goodRegistration)); err != nil || k.format() != FormatDeb {
		t.Fatalf("valid registration refused: %v (%+v)", err, k)
	}
	with := func(field string, v any) string {
		var m map[string]any
		json.Unmarshal([]byte(goodRegistration), &m)
		m[field] = v
		b, _ := json.Marshal(m)
		return string(b)
	}
	if k, err := ParseRegistration(file, []byte(with("from-a-newer-kmpack", 1))); err != nil || k.Package == "" {
		t.Errorf("a registration with a field this version does not know: %v", err)
	}
	mod := func(p string) string { return with("modules", []string{p}) }
	for _, c := range []struct{ name, data, want string }{
		{"syntax", `{"name":`, "not a registration"},
		{"trailing data", goodRegistration + `{}`, "data after"},
		{"dotdot module", mod("/lib/modules/6.1.0-53-amd64/updates/../../../../etc/shadow.ko"), "not a clean path"},
		{"module of another kernel", mod("/lib/modules/6.1.0-54-amd64/updates/x.ko"), "not a clean path under /lib/modules/6.1.0-53-amd64/"},
		{"relative module", mod("lib/modules/6.1.0-53-amd64/updates/x.ko"), "not a clean path"},
		{"module in weak-updates", mod("/lib/modules/6.1.0-53-amd64/weak-updates/x.ko"), "does not manage"},
		{"module not a .ko", mod("/lib/modules/6.1.0-53-amd64/updates/x.txt"), "not a kernel module file name"},
		{"hidden component", mod("/lib/modules/6.1.0-53-amd64/updates/.x/a.ko"), "must not start with"},
		{"no modules", with("modules", []string{}), "modules: none"},
		{"kernel", with("kernel", "../../x"), "invalid kernel release"},
		{"package", with("package", "../../../../etc/x"), "invalid package name"},
		{"file name", with("package", "other"), "registers package other"},
		{"deb version", with("version", "a1.0"), "deb version"},
		{"version newline", with("version", "1.0\nx"), "invalid version"},
		{"format", with("format", "apk"), "unknown package format"},
		{"too big", goodRegistration + strings.Repeat(" ", MaxRegistrationSize), "larger than"},
	} {
		_, err := ParseRegistration(file, []byte(c.data))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), file+": ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: got %v, want a one-line error naming the file and saying %q", c.name, err, c.want)
		}
	}
}

// The newest build follows the package format's own order: dpkg's for debs (tildes sort
// before the release, epochs win, a letter sorts after a digit's absence), rpm's for rpms (a
// number beats a letter).
func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		format, a, b string
		want         int
	}{
		{FormatDeb, "1.0~rc1-1", "1.0-1", -1},
		{FormatDeb, "1:0.9-1", "2.0-1", 1},
		{FormatDeb, "1.0-1", "1.0-1", 0},
		{FormatDeb, "1.0-10", "1.0-9", 1},
		{FormatDeb, "1.a-1", "1.1-1", 1},
		{FormatRPM, "1.a-1", "1.1-1", -1},
		{FormatRPM, "1.0~rc1-1", "1.0-1", -1},
		{FormatRPM, "1:0.9-1", "2.0-1", 1},
	} {
		if got := compareVersions(c.format, c.a, c.b); got != c.want {
			t.Errorf("%s: %s vs %s = %d, want %d", c.format, c.a, c.b, got, c.want)
		}
		if got := compareVersions(c.format, c.b, c.a); got != -c.want {
			t.Errorf("%s: %s vs %s = %d, want %d", c.format, c.b, c.a, got, -c.want)
		}
	}
}

// A FIFO (or device) where a module or registration should be is an error at once, not a
// read that blocks forever.
func TestReadRegularRefusesFIFO(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "m.ko"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan error, 1)
	go func() { _, _, err := kmp.ReadRootFile(r, "m.ko", MaxModuleSize); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("reading a FIFO: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reading a FIFO blocked")
	}
	os.WriteFile(filepath.Join(dir, "big.ko"), make([]byte, 100), 0o644)
	if _, _, err := kmp.ReadRootFile(r, "big.ko", 99); err == nil || !strings.Contains(err.Error(), "larger than 99 bytes") {
		t.Errorf("oversized file: %v", err)
	}
}

// A hung depmod (here a shell whose background child keeps the output pipe open) is killed
// with its whole process group after the timeout.
func TestRunBoundedKillsHungCommand(t *testing.T) {
	start := time.Now()
	err := runBounded(300*time.Millisecond, "sh", "-c", "sleep 60 & sleep 60")
	if err == nil || !strings.Contains(err.Error(), "killed after") {
		t.Errorf("hung command: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("hung command took %v to give up", d)
	}
	if err := runBounded(10*time.Second, "sh", "-c", "echo oops >&2; exit 3"); err == nil || !strings.Contains(err.Error(), "oops") {
		t.Errorf("failing command: %v", err)
	}
}

// FuzzParseRegistration: parsing never panics, and whatever it accepts passes ident's checks
// and keeps every module under its kernel's directory.
func FuzzParseRegistration(f *testing.F) {
	f.Add([]byte(goodRegistration))
	f.Add([]byte(`{"name":"a","package":"b","version":"1:1.0~rc1-1","format":"rpm","kernel":"6.1","modules":["/lib/modules/6.1/extra/a.ko.xz"]}`))
	f.Add([]byte(`{"name":"a","package":"b","version":"1","kernel":"k","modules":["/lib/modules/k/updates/../../../x.ko"]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var pkg struct{ Package string }
		json.Unmarshal(data, &pkg)
		file := "/r/kmps/" + pkg.Package + ".json"
		k, err := ParseRegistration(file, data)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		for _, e := range []error{ident.PackageName(k.Name), ident.PackageName(k.Package), ident.KernelRelease(k.Kernel)} {
			if e != nil {
				t.Fatalf("accepted %q: %v", data, e)
			}
		}
		for _, m := range k.Modules {
			if filepath.Clean(m) != m || !strings.HasPrefix(m, "/lib/modules/"+k.Kernel+"/") || strings.Contains(m, "..") {
				t.Fatalf("accepted module path %q", m)
			}
			if l := linkPath(&k, m); filepath.IsAbs(l) || strings.HasPrefix(filepath.Clean(l), "..") {
				t.Fatalf("link path %q escapes weak-updates", l)
			}
		}
	})
}

// depmod -b is given only the root's own depmod.d directories: one linking out of the root
// (to the host's configuration) is left out.
func TestDepmodConfigsStayInRoot(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(root, "lib/depmod.d"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	if err := os.Symlink(outside, filepath.Join(root, "etc/depmod.d")); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s := &session{e: &Engine{Root: root}, r: r}
	if got := strings.Join(s.depmodConfigs(), " "); got != "-C "+filepath.Join(root, "lib/depmod.d") {
		t.Errorf("depmod configuration directories: %s", got)
	}
}
