package build_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/source"
)

// dkmsOutcome is what `dkms build` did for one kernel.
type dkmsOutcome struct {
	status  manifest.KernelStatus
	code    int
	modules map[string]*module.ModuleInfo // by file name without suffixes
	output  string
}

// runDKMS builds src with Debian's dkms 3 for one kernel, in a dkms tree of its own.
func runDKMS(t *testing.T, work, srcDir, name, version, release string) dkmsOutcome {
	t.Helper()
	sourceTree := filepath.Join(work, "dkms-source")
	if _, err := os.Stat(filepath.Join(sourceTree, name+"-"+version)); err != nil {
		os.MkdirAll(sourceTree, 0o755)
		testenv.CopyTree(t, srcDir, filepath.Join(sourceTree, name+"-"+version))
	}
	dkmsTree := filepath.Join(work, "dkms-tree-"+release)
	os.MkdirAll(dkmsTree, 0o755)
	cmd := exec.Command("dkms", "build", "--dkmstree", dkmsTree, "--sourcetree", sourceTree,
		"-m", name, "-v", version, "-k", release)
	out, err := cmd.CombinedOutput()
	o := dkmsOutcome{output: string(out), modules: map[string]*module.ModuleInfo{}}
	var ee *exec.ExitError
	switch {
	case err == nil:
		o.status = manifest.StatusBuilt
	case errors.As(err, &ee) && ee.ExitCode() == 77:
		o.status, o.code = manifest.StatusSkipped, 77
	case errors.As(err, &ee):
		o.status, o.code = manifest.StatusFailed, ee.ExitCode()
	default:
		t.Fatalf("running dkms: %v", err)
	}
	files, _ := filepath.Glob(filepath.Join(dkmsTree, name, version, release, "*", "module", "*.ko*"))
	for _, f := range files {
		info, err := module.ReadModule(f)
		if err != nil {
			t.Fatalf("dkms's %s: %v", f, err)
		}
		o.modules[module.ModuleNameFromPath(f)] = info
	}
	return o
}

func importsText(m *module.ModuleInfo) string {
	var b strings.Builder
	for _, s := range m.Imports {
		fmt.Fprintf(&b, "%#x %s\n", s.CRC, s.Name)
	}
	return b.String()
}

// TestBuildMatchesDKMS builds the Debian *-dkms sources of shared/reference/corpus.md against
// every installed header tree with kmpack and with dkms 3, and requires the same outcome per
// kernel (built, skipped, failed), the same modules, and for each module the same srcversion
// and imported CRCs.
func TestBuildMatchesDKMS(t *testing.T) {
	testenv.Need(t, "dkms", "make", "patch", "strip")
	trees := testenv.KernelTrees(t, testenv.InstalledReleases...)
	for _, pkg := range testenv.Corpus {
		t.Run(pkg, func(t *testing.T) {
			t.Parallel()
			work := t.TempDir()
			srcDir := testenv.CorpusSource(t, pkg, work)
			src, err := source.OpenSource(srcDir)
			if err != nil {
				t.Fatal(err)
			}
			m, err := build.Build(context.Background(), src, trees, build.BuildOptions{
				Jobs: 2, OutputDir: filepath.Join(work, "out")})
			if err != nil && !errors.Is(err, build.ErrBuildFailed) {
				t.Fatal(err)
			}
			if len(m.Kernels) != len(trees) {
				t.Fatalf("kmpack reported %d kernels of %d", len(m.Kernels), len(trees))
			}
			// Agreement on "failed everywhere" proves nothing (a broken dkms or kernel tree fails
			// both sides): dkms must have built the source for at least one kernel, and every
			// kernel dkms built must have produced modules to compare.
			dkmsBuilt := 0
			defer func() {
				if dkmsBuilt == 0 && !t.Failed() {
					t.Errorf("dkms built %s for none of %d kernels: nothing was compared", pkg, len(trees))
				}
			}()
			for _, kb := range m.Kernels {
				dk := runDKMS(t, work, srcDir, src.Name, src.Version, kb.Release)
				if dk.status == manifest.StatusBuilt {
					dkmsBuilt++
					if len(dk.modules) == 0 {
						t.Errorf("%s: dkms reports a build but left no module to compare:\n%s", kb.Release, dk.output)
					}
				}
				t.Logf("%s %s: kmpack %s (%s), dkms %s (exit %d)", pkg, kb.Release, kb.Status, kb.Reason, dk.status, dk.code)
				if kb.Status != dk.status {
					t.Errorf("%s: kmpack %s (%s), dkms %s (exit %d):\n%s", kb.Release, kb.Status, kb.Reason, dk.status, dk.code, dk.output)
					continue
				}
				var ours []string
				for _, bm := range kb.Modules {
					name := module.ModuleNameFromPath(bm.File)
					ours = append(ours, name)
					theirs := dk.modules[name]
					if theirs == nil {
						t.Errorf("%s: kmpack built %s, dkms did not", kb.Release, bm.File)
						continue
					}
					info, err := module.ReadModule(filepath.Join(work, "out", bm.File))
					if err != nil {
						t.Fatal(err)
					}
					if info.SrcVersion != theirs.SrcVersion || bm.SrcVersion != info.SrcVersion {
						t.Errorf("%s %s: srcversion %s (manifest %s), dkms %s", kb.Release, name, info.SrcVersion, bm.SrcVersion, theirs.SrcVersion)
					}
					if a, b := importsText(info), importsText(theirs); a != b {
						t.Errorf("%s %s: imports differ:\nkmpack:\n%sdkms:\n%s", kb.Release, name, a, b)
					}
					if len(info.Imports) == 0 {
						t.Errorf("%s %s: no imported CRCs to compare", kb.Release, name)
					}
				}
				var theirs []string
				for n := range dk.modules {
					theirs = append(theirs, n)
				}
				sort.Strings(ours)
				sort.Strings(theirs)
				if strings.Join(ours, " ") != strings.Join(theirs, " ") {
					t.Errorf("%s: kmpack built [%s], dkms [%s]", kb.Release, strings.Join(ours, " "), strings.Join(theirs, " "))
				}
			}
		})
	}
}
