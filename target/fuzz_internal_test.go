package target

import (
	"path"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp/ident"
)

// FuzzLiteralAssignment: whatever a dkms.conf holds, the name read from it at add time is
// either unknown ("") or a plain word nothing would expand, and a valid one passes ident.
func FuzzLiteralAssignment(f *testing.F) {
	f.Add([]byte("PACKAGE_NAME=\"acpi-call\"\nPACKAGE_VERSION=\"1.2.2\"\nBUILT_MODULE_NAME[0]=\"$PACKAGE_NAME\"\n"))
	f.Add([]byte("PACKAGE_NAME=$(uname -r)\n"))
	f.Add([]byte("read PACKAGE_NAME < x\nPACKAGE_NAME=a\n"))
	f.Add([]byte("PACKAGE_NAME='a b'\r\n"))
	f.Fuzz(func(t *testing.T, conf []byte) {
		v := literalAssignment(conf, "PACKAGE_NAME")
		if v == "" {
			return
		}
		if strings.ContainsAny(v, "$`\\\"'(){}; \t\n\r*?[]&|<>!#") {
			t.Fatalf("read %q, which a shell would expand or split", v)
		}
		if !strings.Contains(string(conf), v) {
			t.Fatalf("read %q, which the file does not hold", v)
		}
		_ = ident.PackageName(v) // validated by identify; must not panic here
	})
}

// FuzzRPMToolAnswers: whatever a repository's metadata makes dnf or zypper print (and whatever
// the rpm database holds), every package read is the one asked for and every field is a plain
// word (it goes back into a command line); module paths are clean paths under /lib/modules/K/.
func FuzzRPMToolAnswers(f *testing.F) {
	f.Add("x 0 1.0 1.6.1.0_54_amd64 x86_64\n")
	f.Add(`<stream><solvable name="x" kind="package" edition="1:1.0_k6.1.0_54-1" arch="x86_64"/><install-summary><to-upgrade><solvable name="x" edition="2-1" edition-old="1-1"/></to-upgrade></install-summary></stream>`)
	f.Add(rpmQueryMark + "x 0 1.0 1 x86_64\n/lib/modules/6.1.0-54-amd64/extra/x/a.ko\n/usr/lib/modules/6.1.0-54-amd64/updates/b.ko.zst\n")
	f.Fuzz(func(t *testing.T, out string) {
		check := func(ps []rpmPackage) {
			for _, p := range ps {
				if p.name != "x" {
					t.Fatalf("read %q, asked for x", p.name)
				}
				if _, err := newRPMPackage(p.name, p.epoch, p.version, p.release, p.arch); err != nil {
					t.Fatalf("read %q: %v", p.nevra(), err)
				}
				if strings.ContainsAny(p.nevra(), " \t\n;$`'\"\\") {
					t.Fatalf("read %q", p.nevra())
				}
			}
		}
		check(dnfOffered(out, "x"))
		check(zypperSolvables(out, "x"))
		for _, p := range zypperInstalls(out) {
			if _, err := newRPMPackage(p.name, p.epoch, p.version, p.release, p.arch); err != nil {
				t.Fatalf("plan installs %q: %v", p.nevra(), err)
			}
		}
		zypperChanges(out)
		zypperMessages(out)
		dnfChanges(out)
		dnfPlanInstalls(out, "x")
		for _, p := range parseRPMQuery(out) {
			for k, mods := range rpmModules(p.files) {
				if err := ident.KernelRelease(k); err != nil {
					t.Fatalf("kernel %q: %v", k, err)
				}
				for _, m := range mods {
					if !strings.HasPrefix(m, "/lib/modules/"+k+"/") || path.Clean(m) != m || strings.Contains(m, "/../") {
						t.Fatalf("module path %q", m)
					}
				}
			}
		}
	})
}
