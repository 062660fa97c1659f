package build_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
)

// corpusCase is one Debian *-dkms source of the dkms comparison and what it exercises.
type corpusCase struct {
	pkg string
	// releases are the installed trees it is built against; nil means all of them. The costly
	// ones build against a subset to keep CI's time.
	releases []string
	// alongside are *-dkms packages whose source must also be under /usr/src, for dkms and kmpack
	// alike, because the dkms.conf looks for it there.
	alongside []string
}

var (
	r53, r53c, r54, r612 = testenv.Release53, testenv.Release53Cloud, testenv.Release54, testenv.Release612
	corpusCases          = []corpusCase{
		{pkg: "acpi-call-dkms"},
		{pkg: "gost-crypto-dkms"},
		{pkg: "jool-dkms"},
		{pkg: "v4l2loopback-dkms"},
		// PRE_BUILD runs ./configure, which writes the absolute paths it was run with into a header
		// that the srcversion hashes: equal only when both build at dkms's own paths.
		{pkg: "iptables-netflow-dkms", releases: []string{r53, r612}},
		// dkms.conf hard-codes /usr/src/<name>-<version> (it builds there) and
		// /var/lib/dkms/<name>/<version>/build (modules are moved there), and finds xtables-addons'
		// source with find /usr/src -maxdepth 1 -name 'xtables-addons-*'.
		{pkg: "west-chamber-dkms", releases: []string{r53, r612}, alongside: []string{"xtables-addons-dkms"}},
		// BUILD_EXCLUSIVE_ARCH set by shell logic on the kernel's .config (the cloud kernel has no
		// I2C: skipped there), and modules built in two subdirectories.
		{pkg: "ddcci-dkms", releases: []string{r53, r53c, r612}},
		// 22 modules, two of them built in subdirectories of extensions/ and moved by MAKE (3.23
		// does not build for 6.12: both fail there, dkms with exit 7, no module after MAKE).
		{pkg: "xtables-addons-dkms", releases: []string{r54, r612}},
		// A version with a "-" (1.9.1-5), and MAKE naming ${dkms_tree}/<name>/<version>/build.
		{pkg: "lime-forensics-dkms", releases: []string{r53, r612}},
		// PACKAGE_NAME tp_smapi: a name with "_" (the package is tp-smapi-dkms); three modules.
		{pkg: "tp-smapi-dkms", releases: []string{r54, r612}},
	}
)

// nsPreamble makes the private mount namespace the comparison runs in: /usr/src and
// /var/lib/dkms are writable overlays whose changes go to $1 (the host's trees are only read),
// /lib/modules is read-only. The namespace (and its mounts) dies with its last process.
const nsPreamble = `fail() { echo "kmpack test namespace: $*" >&2; exit 199; }
d=$1; shift
for t in usrsrc dkms; do mkdir -p "$d/$t/upper" "$d/$t/work" || fail mkdir; done
mount -t overlay kmpack-test -o "lowerdir=/usr/src,upperdir=$d/usrsrc/upper,workdir=$d/usrsrc/work" /usr/src || fail overlay /usr/src
mount -t overlay kmpack-test -o "lowerdir=/var/lib/dkms,upperdir=$d/dkms/upper,workdir=$d/dkms/work" /var/lib/dkms || fail overlay /var/lib/dkms
mount --bind /lib/modules /lib/modules && mount -o remount,bind,ro /lib/modules || fail read-only /lib/modules
`

// inNamespace runs the bash script after nsPreamble, as root, in a mount and pid namespace of its
// own (everything in it is killed when unshare or the test dies) whose overlays' changes go to
// dir, and returns its output and exit code. Exit 199 is a namespace that could not be made.
func inNamespace(t *testing.T, dir, script string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private",
		"--pid", "--fork", "--kill-child", "--mount-proc",
		"bash", "--noprofile", "--norc", "-c", nsPreamble + script, "bash", dir}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee) && ee.ExitCode() == 199:
		t.Fatalf("making the test's mount namespace:\n%s", out)
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return string(out), ee.ExitCode()
	}
	t.Fatalf("unshare: %v\n%s", err, out)
	return "", 0
}

// dkmsOutcome is what `dkms build` did for one kernel.
type dkmsOutcome struct {
	status  manifest.KernelStatus
	code    int
	modules map[string]*module.ModuleInfo // by file name without suffixes
	output  string
}

// runDKMS builds src with Debian's dkms 3 for one kernel at dkms's default paths: the source
// copied to /usr/src/<name>-<version> (and the alongside sources beside it), built in
// /var/lib/dkms, both overlays of a namespace of its own.
func runDKMS(t *testing.T, dir, srcDir, name, version, release string, alongside []string) dkmsOutcome {
	t.Helper()
	out, code := inNamespace(t, dir, `name=$1 version=$2 release=$3 src=$4; shift 4
cp -a "$src" "/usr/src/$name-$version" || fail copying the source
for s; do cp -a "$s" /usr/src/ || fail copying "$s"; done
exec dkms build -m "$name" -v "$version" -k "$release"
`, append([]string{name, version, release, srcDir}, alongside...)...)
	o := dkmsOutcome{output: out, code: code, modules: map[string]*module.ModuleInfo{}}
	switch code {
	case 0:
		o.status = manifest.StatusBuilt
	case 77:
		o.status = manifest.StatusSkipped
	default:
		o.status = manifest.StatusFailed
	}
	files, _ := filepath.Glob(filepath.Join(dir, "dkms/upper", name, version, release, "*", "module", "*.ko*"))
	for _, f := range files {
		info, err := module.ReadModule(f)
		if err != nil {
			t.Fatalf("dkms's %s: %v", f, err)
		}
		o.modules[module.ModuleNameFromPath(f)] = info
	}
	return o
}

// buildKmpack builds the kmpack command into dir.
func buildKmpack(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "kmpack")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/kmpack/kmpack/cmd/kmpack").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/kmpack: %v\n%s", err, out)
	}
	return bin
}

// runKmpack runs `kmpack build` on src for the releases in the same kind of namespace as dkms
// (with the alongside sources under /usr/src) and returns its manifest.
func runKmpack(t *testing.T, bin, dir, srcDir, out string, releases, alongside []string) *manifest.Manifest {
	t.Helper()
	args := []string{bin, out, filepath.Join(dir, "cache"), srcDir, fmt.Sprint(len(alongside))}
	args = append(args, alongside...)
	for _, r := range releases {
		args = append(args, "-k", "/lib/modules/"+r+"/build")
	}
	text, code := inNamespace(t, dir, `bin=$1 out=$2 cache=$3 src=$4 n=$5; shift 5
for ((i = 0; i < n; i++)); do cp -a "$1" /usr/src/ || fail copying "$1"; shift; done
exec "$bin" --cache-dir "$cache" build -q --no-cache -j 2 -o "$out" "$@" "$src"
`, args...)
	// 4: a kernel failed, 5: every kernel skipped; the manifest says which.
	if code != 0 && code != 4 && code != 5 {
		t.Fatalf("kmpack build: exit %d\n%s", code, text)
	}
	m, err := manifest.Read(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	return m
}

func importsText(m *module.ModuleInfo) string {
	var b strings.Builder
	for _, s := range m.Imports {
		fmt.Fprintf(&b, "%#x %s\n", s.CRC, s.Name)
	}
	return b.String()
}

// mountsOutside lists the kmpack-test overlays visible in this (the host's) mount namespace.
func mountsOutside(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var leaked []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, " kmpack-test ") {
			leaked = append(leaked, l)
		}
	}
	return strings.Join(leaked, "\n")
}

// TestBuildMatchesDKMS builds Debian *-dkms sources (shared/reference/corpus.md and the cases of
// corpusCases) against installed header trees with the kmpack command and with dkms 3, both at
// dkms's own paths (/usr/src/<name>-<version>, /var/lib/dkms) in private mount namespaces whose
// overlays keep the host's trees untouched, and requires the same outcome per kernel (built,
// skipped, failed), the same modules, and for each module the same srcversion and imported CRCs.
func TestBuildMatchesDKMS(t *testing.T) {
	testenv.Need(t, "dkms", "make", "patch", "strip", "unshare", "go")
	if os.Geteuid() != 0 {
		t.Fatal("the dkms comparison needs root (mount namespaces with overlays over /usr/src and /var/lib/dkms)")
	}
	if len(corpusCases) != len(testenv.Corpus) {
		t.Fatalf("corpusCases has %d sources, testenv.Corpus %d", len(corpusCases), len(testenv.Corpus))
	}
	if m := mountsOutside(t); m != "" {
		t.Fatalf("kmpack-test overlays already mounted on the host:\n%s", m)
	}
	t.Cleanup(func() {
		if m := mountsOutside(t); m != "" {
			t.Errorf("kmpack-test overlays left mounted on the host:\n%s", m)
		}
	})
	bin := buildKmpack(t, t.TempDir()) // removed after every subtest
	for _, c := range corpusCases {
		t.Run(c.pkg, func(t *testing.T) {
			t.Parallel()
			releases := c.releases
			if releases == nil {
				releases = testenv.InstalledReleases
			}
			testenv.KernelTrees(t, releases...) // the headers are installed
			var alongside []string
			for _, p := range c.alongside {
				m, _ := filepath.Glob(filepath.Join(testenv.UnpackedDeb(t, p), "usr/src/*"))
				if len(m) != 1 {
					t.Fatalf("%s: expected one directory under /usr/src, found %v", p, m)
				}
				alongside = append(alongside, m[0])
			}
			work := t.TempDir()
			srcDir := testenv.CorpusSource(t, c.pkg, work)
			out := filepath.Join(work, "out")
			m := runKmpack(t, bin, filepath.Join(work, "kmpack-ns"), srcDir, out, releases, alongside)
			if len(m.Kernels) != len(releases) {
				t.Fatalf("kmpack reported %d kernels of %d", len(m.Kernels), len(releases))
			}
			name, version := m.Source.Name, m.Source.Version
			// Agreement on "failed everywhere" proves nothing (a broken dkms or kernel tree fails
			// both sides): dkms must have built the source for at least one kernel, and every
			// kernel dkms built must have produced modules to compare.
			dkmsBuilt := 0
			defer func() {
				if dkmsBuilt == 0 && !t.Failed() {
					t.Errorf("dkms built %s for none of %d kernels: nothing was compared", c.pkg, len(releases))
				}
			}()
			for _, kb := range m.Kernels {
				dk := runDKMS(t, filepath.Join(work, "dkms-ns-"+kb.Release), srcDir, name, version, kb.Release, alongside)
				if dk.status == manifest.StatusBuilt {
					dkmsBuilt++
					if len(dk.modules) == 0 {
						t.Errorf("%s: dkms reports a build but left no module to compare:\n%s", kb.Release, dk.output)
					}
				}
				t.Logf("%s %s: kmpack %s (%s), dkms %s (exit %d)", c.pkg, kb.Release, kb.Status, kb.Reason, dk.status, dk.code)
				if kb.Status != dk.status {
					t.Errorf("%s: kmpack %s (%s), dkms %s (exit %d):\nkmpack's log tail:\n%s\ndkms:\n%s", kb.Release, kb.Status, kb.Reason,
						dk.status, dk.code, strings.Join(kb.LogTail, "\n"), dk.output)
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
					info, err := module.ReadModule(filepath.Join(out, bm.File))
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
