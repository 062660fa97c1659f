package source_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/source"
)

// planFor evaluates a dkms.conf (written into a fresh source directory) for tree.
func planFor(t *testing.T, conf string, tree *kernel.KernelTree) (*source.BuildPlan, *source.Workspace, error) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := source.OpenSource(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Identify(context.Background(), tree, 2); err != nil {
		return nil, nil, err
	}
	ws := source.NewWorkspace(filepath.Join(dir, "ws"), src.Name, src.Version)
	p, err := src.Plan(context.Background(), tree, ws, 2)
	return p, ws, err
}

func mustPlan(t *testing.T, conf string, tree *kernel.KernelTree) (*source.BuildPlan, *source.Workspace) {
	t.Helper()
	p, ws, err := planFor(t, conf, tree)
	if err != nil {
		t.Fatal(err)
	}
	return p, ws
}

func TestDKMSConfIsBash(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release612)
	// Functions, arithmetic indexes, += appends, command substitution over the kernel config,
	// dkms's VER, and a helper variable that must not survive.
	conf := `PACKAGE_NAME="demo"
PACKAGE_VERSION="2.0"
HELPER=ignored
is_conf_set() { grep -q "^$1=[ym]" "$kernel_source_dir/.config"; }
i=0
BUILT_MODULE_NAME[$i]=core; DEST_MODULE_LOCATION[$i]=/updates; let i++
if is_conf_set CONFIG_X86_64; then BUILT_MODULE_NAME[$i]=x86only; DEST_MODULE_LOCATION[$i]=/extra; let i++; fi
if [[ $(VER $kernelver) < $(VER 6.5) ]]; then BUILT_MODULE_NAME+=(old); else BUILT_MODULE_NAME+=(new); fi
DEST_MODULE_LOCATION[$i]=/updates/dkms
BUILT_MODULE_LOCATION[$i]=sub/dir
STRIP[$i]=no
MAKE="make -C $kernel_source_dir M=$dkms_tree/$module/$module_version/build KVER=$kernelver ARCH_SEEN=$arch"
`
	for _, tree := range trees {
		p, ws := mustPlan(t, conf, tree)
		want := "new"
		if strings.HasPrefix(tree.Release, "6.1.") {
			want = "old"
		}
		var names []string
		for _, m := range p.Modules {
			names = append(names, m.BuiltName+"@"+m.BuiltLocation+">"+m.DestLocation)
		}
		if got := strings.Join(names, " "); got != "core@>/updates x86only@>/extra "+want+"@sub/dir>/updates/dkms" {
			t.Errorf("%s: modules %s", tree.Release, got)
		}
		if !p.Modules[0].Strip || p.Modules[2].Strip {
			t.Errorf("%s: STRIP not applied: %+v", tree.Release, p.Modules)
		}
		wantCmd := "make -C " + tree.Dir + " M=" + ws.BuildDir + " KVER=" + tree.Release + " ARCH_SEEN=x86_64"
		if p.Commands[0] != wantCmd {
			t.Errorf("%s: command %q, want %q", tree.Release, p.Commands[0], wantCmd)
		}
		if p.Name != "demo" || p.Version != "2.0" {
			t.Errorf("identity %s %s (CR not stripped?)", p.Name, p.Version)
		}
	}
}

// A dkms.conf written on Windows: dkms strips the CR from every value (dkms_crlf_test).
func TestDKMSConfCRLF(t *testing.T) {
	tree := testenv.KernelTrees(t, testenv.Release53)[0]
	p, _ := mustPlan(t, "PACKAGE_NAME=\"crlf\"\r\nPACKAGE_VERSION=\"1.0\"\r\nBUILT_MODULE_NAME[0]=\"m\"\r\nDEST_MODULE_LOCATION[0]=\"/updates\"\r\n", tree)
	if p.Name != "crlf" || p.Version != "1.0" || p.Modules[0].BuiltName != "m" || p.Modules[0].DestLocation != "/updates" {
		t.Errorf("CR kept: %q %q %+v", p.Name, p.Version, p.Modules)
	}
}

func TestDKMSConfDefaultsAndMatches(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release612)
	conf := `PACKAGE_NAME=solo
PACKAGE_VERSION=1
DEST_MODULE_LOCATION[0]=/extra
MAKE[0]="make default"
MAKE[1]="make for612"
MAKE_MATCH[1]="^6\.12"
PATCH[0]=all.patch
PATCH[1]=old.patch
PATCH_MATCH[1]="^6\.1\."
`
	for _, tree := range trees {
		p, _ := mustPlan(t, conf, tree)
		if len(p.Modules) != 1 || p.Modules[0].BuiltName != "solo" {
			t.Errorf("single module should default to PACKAGE_NAME: %+v", p.Modules)
		}
		is612 := strings.HasPrefix(tree.Release, "6.12")
		wantCmd, wantPatches := "make default", "patches/all.patch patches/old.patch"
		if is612 {
			wantCmd, wantPatches = "make for612", "patches/all.patch"
		}
		if p.Commands[0] != wantCmd || strings.Join(p.Patches, " ") != wantPatches {
			t.Errorf("%s: command %q patches %v", tree.Release, p.Commands[0], p.Patches)
		}
	}
	// No MAKE at all: dkms's default command.
	p, ws := mustPlan(t, "PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=x\nDEST_MODULE_LOCATION=/updates\n", trees[0])
	if p.Commands[0] != "make -C "+trees[0].Dir+" M="+ws.BuildDir {
		t.Errorf("default command %q", p.Commands[0])
	}
}

func TestDKMSConfBuildExclusive(t *testing.T) {
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release612)
	base := "PACKAGE_NAME=ex\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=a\nDEST_MODULE_LOCATION[0]=/updates\nBUILT_MODULE_NAME[1]=b\nDEST_MODULE_LOCATION[1]=/updates\n"
	cases := []struct {
		extra           string
		skip53, skip612 bool
		bExcluded53     bool
	}{
		{`BUILD_EXCLUSIVE_KERNEL="^6\.12"`, true, false, true},
		{`BUILD_EXCLUSIVE_KERNEL_MIN=6.2`, true, false, true},
		{`BUILD_EXCLUSIVE_KERNEL_MAX=6.1.999`, false, true, false},
		{`OBSOLETE_BY=6.5`, false, true, false},
		{`BUILD_EXCLUSIVE_ARCH=aarch64`, true, true, true},
		{`BUILD_EXCLUSIVE_CONFIG="CONFIG_X86_64 !CONFIG_NOT_THERE"`, false, false, false},
		{`BUILD_EXCLUSIVE_CONFIG="!CONFIG_MODULES"`, true, true, true},
		// Per-module (dkms 3.3): only module b is limited to 6.12.
		{`BUILD_EXCLUSIVE_KERNEL[1]="^6\.12"`, false, false, true},
	}
	for _, c := range cases {
		for _, tree := range trees {
			p, _ := mustPlan(t, base+c.extra+"\n", tree)
			wantSkip := c.skip53
			if tree.Release == testenv.Release612 {
				wantSkip = c.skip612
			}
			if (p.Skip != "") != wantSkip {
				t.Errorf("%s on %s: skip %q, want skipped=%v", c.extra, tree.Release, p.Skip, wantSkip)
			}
			if tree.Release == testenv.Release53 && (p.Modules[1].Excluded != "") != c.bExcluded53 {
				t.Errorf("%s on %s: module b excluded %q", c.extra, tree.Release, p.Modules[1].Excluded)
			}
		}
	}
}

func TestDKMSConfErrors(t *testing.T) {
	tree := testenv.KernelTrees(t, testenv.Release53)[0]
	ok := "PACKAGE_NAME=e\nPACKAGE_VERSION=1\n"
	cases := map[string]struct{ conf, want string }{
		"not bash":         {ok + "if then fi (\n", "not valid bash"},
		"no name":          {"PACKAGE_VERSION=1\nBUILT_MODULE_NAME=a\nDEST_MODULE_LOCATION=/updates\n", "no PACKAGE_NAME"},
		"no version":       {"PACKAGE_NAME=a\nBUILT_MODULE_NAME=a\nDEST_MODULE_LOCATION=/updates\n", "no PACKAGE_VERSION"},
		"sparse hole":      {ok + "BUILT_MODULE_NAME[0]=a\nBUILT_MODULE_NAME[2]=c\nDEST_MODULE_LOCATION[0]=/updates\nDEST_MODULE_LOCATION[1]=/updates\nDEST_MODULE_LOCATION[2]=/updates\n", "no BUILT_MODULE_NAME for record #1"},
		"ko suffix":        {ok + "BUILT_MODULE_NAME=a.ko\nDEST_MODULE_LOCATION=/updates\n", "ends in .o or .ko"},
		"no dest":          {ok + "BUILT_MODULE_NAME=a\n", "no DEST_MODULE_LOCATION"},
		"bad dest":         {ok + "BUILT_MODULE_NAME=a\nDEST_MODULE_LOCATION=/opt\n", "does not begin with /kernel, /updates or /extra"},
		"dest escapes":     {ok + "BUILT_MODULE_NAME=a\nDEST_MODULE_LOCATION=/updates/../../../etc\n", "outside the kernel's module directory"},
		"built escapes":    {ok + "BUILT_MODULE_NAME=a\nBUILT_MODULE_LOCATION=../../elsewhere\nDEST_MODULE_LOCATION=/updates\n", "points outside the source tree"},
		"patch escapes":    {ok + "BUILT_MODULE_NAME=a\nDEST_MODULE_LOCATION=/updates\nPATCH[0]=../../../etc/x.patch\n", "outside the source tree's patches/"},
		"prebuild escapes": {ok + "BUILT_MODULE_NAME=a\nDEST_MODULE_LOCATION=/updates\nPRE_BUILD=/bin/rm\n", "PRE_BUILD"},
		"duplicate":        {ok + "BUILT_MODULE_NAME[0]=a\nBUILT_MODULE_NAME[1]=a\nDEST_MODULE_LOCATION[0]=/updates\nDEST_MODULE_LOCATION[1]=/updates\n", "duplicate module"},
		"bad autoinstall":  {ok + "BUILT_MODULE_NAME=a\nDEST_MODULE_LOCATION=/updates\nAUTOINSTALL=maybe\n", "AUTOINSTALL"},
		"bad regex":        {ok + "BUILT_MODULE_NAME=a\nDEST_MODULE_LOCATION=/updates\nBUILD_EXCLUSIVE_KERNEL='(('\n", "not a regular expression"},
		"conf exits early": {"exit 0\n" + ok, "no PACKAGE_NAME"},
	}
	for name, c := range cases {
		_, _, err := planFor(t, c.conf, tree)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !kmp.IsInputError(err) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "dkms.conf: ") ||
			strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %q, want a one-line input error naming dkms.conf with %q", name, err, c.want)
		}
	}
}
