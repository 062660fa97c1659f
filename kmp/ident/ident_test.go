package ident

import (
	"strings"
	"testing"
)

func TestKernelRelease(t *testing.T) {
	for _, ok := range []string{
		"6.1.0-53-amd64", "6.1.0-53-rt-amd64", "5.14.0-427.13.1.el9_4.x86_64",
		"6.4.0-150600.23.7-default", "6.12.117+deb12-amd64", "6.6.1-0-lts", "5.14.0-362.el9.x86_64+debug",
		"6.8.0-45-generic", "6.11.5-arch1-1",
	} {
		if err := KernelRelease(ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", ".", "..", "../../../../tmp/victim", "a/b", "-rf", ".hidden", "6.1 0", "6.1\n0",
		"6.1;rm", "6.1$x", "6.1`x`", strings.Repeat("1", 65), "6.1\x00",
	} {
		if err := KernelRelease(bad); err == nil {
			t.Errorf("%q accepted", bad)
		} else if strings.ContainsAny(err.Error(), "\n\x00") {
			t.Errorf("error for %q is not one line: %q", bad, err)
		}
	}
}

func TestNamesAndVersions(t *testing.T) {
	for _, ok := range []string{"tp_smapi", "acme-nic", "v4l2loopback", "xtables-addons", "Lime.Forensics"} {
		if err := PackageName(ok); err != nil {
			t.Errorf("name %s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "..", "a/b", "-x", "a b", "x\nPre-Depends: evil", "a'b", "a\"b"} {
		if PackageName(bad) == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
	for _, ok := range []string{"1.0", "0.3.0-1", "2.4.1~rc1", "20230101+git.abc", "0.12.7"} {
		if err := Version(ok); err != nil {
			t.Errorf("version %s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "..", "1/2", "1 0", "1\n", "~1", "1:2"} {
		if Version(bad) == nil {
			t.Errorf("version %q accepted", bad)
		}
	}
	for _, ok := range []string{"hello", "kmpack_pair_a", "v4l2loopback", "foo-bar", "8021q"} {
		if err := ModuleName(ok); err != nil {
			t.Errorf("module %s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a.ko", "a/b", "..", strings.Repeat("m", 56)} {
		if ModuleName(bad) == nil {
			t.Errorf("module %q accepted", bad)
		}
	}
	for _, bad := range []string{"..", ".", "", "a/b"} {
		if PathComponent(bad) == nil || Flavor(bad) == nil {
			t.Errorf("%q accepted as path component or flavor", bad)
		}
	}
}
