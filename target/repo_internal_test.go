package target

import (
	"strings"
	"testing"

	"github.com/kmpack/kmpack/weakupdates"
)

// apt-cache policy's answer is read for exactly the name asked: another package's block (a name
// that is a pattern matches others), a purely virtual name, a version that is not a plain word.
func TestAptCandidate(t *testing.T) {
	const pkg = "hello-modules-6.1.0-54-amd64"
	for _, c := range []struct {
		name, out, want string
		err             bool
	}{
		{"found", pkg + ":\n  Installed: (none)\n  Candidate: 1:1.0-1\n  Version table:\n     1:1.0-1 500\n", "1:1.0-1", false},
		{"none", pkg + ":\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n", "", false},
		{"virtual", "", "", false},
		{"another block", "hello-modules-6.1.0-54-amd64x:\n  Candidate: 9.9\n" + pkg + ":\n  Candidate: (none)\n", "", false},
		{"another block after", pkg + ":\n  Installed: (none)\n  Candidate: 2.0\nevil:\n  Candidate: 6.6\n", "2.0", false},
		{"hostile version", pkg + ":\n  Candidate: 1.0;rm -rf /\n", "", true},
		{"hostile epoch", pkg + ":\n  Candidate: x:1.0\n", "", true},
	} {
		got, err := aptCandidate(c.out, pkg)
		if got != c.want || (err != nil) != c.err {
			t.Errorf("%s: %q %v, want %q (error %v)", c.name, got, err, c.want, c.err)
		}
	}
}

// The package looked for is derived from debian registrations named <prefix>-<their kernel>
// only; rpm registrations (one name for every kernel) and other names give none.
func TestRepoPackageFor(t *testing.T) {
	k := "6.1.0-54-amd64"
	reg := func(name, pkg, format, kernel string) weakupdates.KMP {
		return weakupdates.KMP{Name: name, Package: pkg, Format: format, Kernel: kernel, Version: "1.0-1"}
	}
	for _, c := range []struct {
		name string
		kmps []weakupdates.KMP
		want string
	}{
		{"debian", []weakupdates.KMP{reg("hello", "hello-modules-6.1.0-53-amd64", "", "6.1.0-53-amd64")}, "hello-modules-" + k},
		{"deb format", []weakupdates.KMP{reg("hello", "hello-modules-6.1.0-53-amd64", weakupdates.FormatDeb, "6.1.0-53-amd64")}, "hello-modules-" + k},
		{"rpm", []weakupdates.KMP{reg("hello", "kmod-hello", weakupdates.FormatRPM, "6.1.0-53-amd64")}, ""},
		{"not named by its kernel", []weakupdates.KMP{reg("hello", "hello-modules", "", "6.1.0-53-amd64")}, ""},
		{"kernel glued to the name", []weakupdates.KMP{reg("hello", "hello6.1.0-53-amd64", "", "6.1.0-53-amd64")}, ""},
		{"another module", []weakupdates.KMP{reg("other", "other-modules-6.1.0-53-amd64", "", "6.1.0-53-amd64")}, ""},
		{"its own kernel", []weakupdates.KMP{reg("hello", "hello-modules-"+k, "", k)}, ""},
	} {
		if got := repoPackageFor(c.kmps, "hello", k); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

// Inside a maintainer script (dpkg sets DPKG_MAINTSCRIPT_NAME), the package manager is not run.
func TestInPackageTransaction(t *testing.T) {
	t.Setenv("DPKG_MAINTSCRIPT_NAME", "")
	if InPackageTransaction() {
		t.Error("outside dpkg: in a transaction")
	}
	t.Setenv("DPKG_MAINTSCRIPT_NAME", "postinst")
	if !InPackageTransaction() {
		t.Error("inside dpkg: not in a transaction")
	}
}

// With --root, apt's final configuration must point apt and dpkg at the root only: the root's
// own apt.conf.d, read after kmpack's file, must not send dpkg to this machine.
func TestCheckAptDump(t *testing.T) {
	const root = "/srv/root"
	good := "Dir \"/srv/root/\";\nDPkg::Options \"\";\nDPkg::Options:: \"--root=/srv/root\";\nDPkg::Options:: \"--force-script-chrootless\";\n"
	if err := checkAptDump(good, root); err != nil {
		t.Fatalf("good: %v", err)
	}
	for name, out := range map[string]string{
		"second root": good + "DPkg::Options:: \"--root=/\";\n",
		"instdir":     good + "DPkg::Options:: \"--instdir=/\";\n",
		"admindir":    good + "DPkg::Options:: \"--admindir=/var/lib/dpkg\";\n",
		"chroot":      good + "DPkg::Chroot-Directory \"/\";\nDPkg::Chroot-Directory \"/elsewhere\";\n",
		"another Dir": strings.Replace(good, "Dir \"/srv/root/\"", "Dir \"/\"", 1),
		"no root":     "Dir \"/srv/root/\";\n",
		"nothing":     "",
	} {
		if err := checkAptDump(out, root); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
