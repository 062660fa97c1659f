// Package e2e proves kmpack's packages in real kernels: it runs the main job (kmpack build with
// the debian, suse and rhel profiles) on the project's test modules and a real Debian *-dkms
// source for Debian's 6.1.0-53 and -54 amd64 kernels, installs the debs and the runtime package
// with the real dpkg into a root holding both kernels, boots each kernel under qemu with an
// initramfs made from that root, and compares what loads with what kmpack's compatibility check
// predicted. The RPMs are installed with the real rpm and resolved with depmod and modprobe.
//
// Run it alone with scripts/e2e.sh, which prints the result table.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/weakupdates"
)

// testPackage is one source the suite builds, which kernels its debian package is installed for,
// and the module the guest loads to exercise it (with its parameters).
type testPackage struct {
	source    func(t *testing.T) string
	installed []string
	probe     string
	params    []string
	// classes builds it with build --classes: kernels its first build loads in are served by
	// that build (a debian package of their own carrying it), not built for.
	classes bool
	// built is filled in: the build's packages by (profile, kernel), and its module files by kernel.
	built   map[[2]string]formats.Written
	outDir  string
	modules map[string][]string
}

// refusal is a build the compatibility check refused for a kernel, and the symbols it blamed.
type refusal struct {
	files   []string
	symbols []string
}

// result is one table row.
type result struct {
	where, kernel, module, expected, observed string
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// servedSource is the hello module renamed kmpack_served (package kmpack-served).
func servedSource(t *testing.T) string {
	dir := testenv.TestModuleSource(t, "hello")
	for _, f := range []string{"kmpack.yaml", "Kbuild"} {
		p := filepath.Join(dir, f)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.NewReplacer("kmpack-hello", "kmpack-served", "kmpack_hello", "kmpack_served").Replace(string(b)))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func debFile0(t *testing.T, p *testPackage, kernel string) string {
	w, ok := p.built[[2]string{"debian", kernel}]
	if !ok {
		t.Fatalf("no debian package for %s in %v", kernel, p.built)
	}
	return filepath.Join(p.outDir, formats.PackagesDir, w.File)
}

// checkServed checks a --classes build of two kernels: the older built, the newer served by it
// (the manifest says so, with compatible verdicts), its debian package carrying the older build,
// and no suse or rhel package for it (weak-updates serves it there).
func checkServed(t *testing.T, p *testPackage, m *manifest.Manifest, deb54, r53, r54 string) {
	k53, k54 := m.Kernel(r53), m.Kernel(r54)
	if k53 == nil || k54 == nil || k53.Status != manifest.StatusBuilt || k54.Status != manifest.StatusServed || k54.ServedBy != r53 ||
		len(k54.Serving) == 0 || !k54.Serving[0].Compatible || m.Summary.Served != 1 || m.Summary.Built != 1 {
		t.Fatalf("--classes: want %s built and %s served by it: %+v %+v", r53, r54, k53, k54)
	}
	x := t.TempDir()
	run(t, "dpkg-deb", "-x", deb54, x)
	ko := filepath.Join(x, "lib/modules", r54, "updates/kmpack-served/kmpack_served.ko")
	mi, err := module.ReadModule(ko)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(mi.Vermagic, r53+" ") {
		t.Fatalf("the served kernel's package carries vermagic %q, want the %s build's", mi.Vermagic, r53)
	}
	for _, prof := range []string{"suse", "rhel"} {
		if _, ok := p.built[[2]string{prof, r54}]; ok {
			t.Errorf("%s: a package for the served kernel %s (weak-updates serves it)", prof, r54)
		}
	}
}

func TestPackagesLoadInRealKernels(t *testing.T) {
	testenv.Need(t, "qemu-system-x86_64", "busybox", "cpio", "gzip", "dpkg", "rpm", "depmod", "modprobe")
	start := time.Now()
	r53, r54 := testenv.Release53, testenv.Release54
	kernels := []string{r53, r54}
	bin := filepath.Join(t.TempDir(), "kmpack")
	run(t, "go", "build", "-o", bin, "../cmd/kmpack")
	cache := t.TempDir()

	pkgs := map[string]*testPackage{
		// Imports only long-stable symbols: built for 53 only, it must load in 54 through weak-updates.
		"kmpack-hello": {source: func(t *testing.T) string { return testenv.TestModuleSource(t, "hello") },
			installed: []string{r53}, probe: "kmpack_hello", params: []string{"greeting=4711"}},
		// Imports _dev_info, whose CRC changed: built for 53 only, it must stay out of 54.
		"kmpack-abichange": {source: func(t *testing.T) string { return testenv.TestModuleSource(t, "abi") },
			installed: []string{r53}, probe: "kmpack_abi"},
		// b uses a symbol a exports: built for 54 only, both must load in 53, a first.
		"kmpack-pair": {source: func(t *testing.T) string { return testenv.TestModuleSource(t, "pair") },
			installed: []string{r54}, probe: "kmpack_pair_b"},
		// hello as kmpack_served, built with --classes: built for 53 only, 54 is served by that
		// build; its debian package for 54 carries the 53 build (vermagic 6.1.0-53-amd64), which
		// 54 must load from updates/ (with modversions the kernel ignores the release in vermagic).
		"kmpack-served": {source: servedSource, installed: []string{r53, r54}, probe: "kmpack_served", classes: true},
		// Debian's v4l2loopback-dkms source: needs the kernel's videodev and mc; installed for both.
		"v4l2loopback": {source: func(t *testing.T) string { return testenv.CorpusSource(t, "v4l2loopback-dkms", t.TempDir()) },
			installed: []string{r53, r54}, probe: "v4l2loopback"},
	}
	names := slices.Sorted(maps.Keys(pkgs))

	// The main job: kmpack build for both kernels, three profiles.
	for _, name := range names {
		p := pkgs[name]
		p.outDir = filepath.Join(t.TempDir(), "out")
		args := []string{"--cache-dir", cache, "build", "-q", "-o", p.outDir, "--profile", "debian,suse,rhel", "--no-source-package"}
		if p.classes {
			args = append(args, "--classes")
		}
		for _, k := range kernels {
			args = append(args, "-k", testenv.HeadersDir(t, k))
		}
		run(t, bin, append(args, p.source(t))...)
		b, err := os.ReadFile(filepath.Join(p.outDir, formats.PackagesDir, "packages.json"))
		if err != nil {
			t.Fatal(err)
		}
		var written []formats.Written
		if err := json.Unmarshal(b, &written); err != nil {
			t.Fatal(err)
		}
		p.built = map[[2]string]formats.Written{}
		for _, w := range written {
			p.built[[2]string{w.Profile, w.Kernel}] = w
		}
		var m manifest.Manifest
		b, _ = os.ReadFile(filepath.Join(p.outDir, "manifest.json"))
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		p.modules = map[string][]string{}
		if p.classes {
			checkServed(t, p, &m, debFile0(t, p, r54), r53, r54)
		}
		for _, kb := range m.Kernels {
			for _, bm := range kb.Modules {
				p.modules[kb.Release] = append(p.modules[kb.Release], filepath.Join(p.outDir, bm.File))
			}
		}
	}
	debFile := func(p *testPackage, kernel string) string {
		w, ok := p.built[[2]string{"debian", kernel}]
		if !ok {
			t.Fatalf("no debian package for %s in %v", kernel, p.built)
		}
		return filepath.Join(p.outDir, formats.PackagesDir, w.File)
	}

	// What kmpack's compatibility check predicts, against the headers trees.
	targets := map[string]*weakupdates.Target{}
	for _, k := range kernels {
		tg, err := weakupdates.OpenTarget(t.Context(), testenv.HeadersDir(t, k), weakupdates.TargetOptions{CacheDir: cache})
		if err != nil {
			t.Fatal(err)
		}
		targets[k] = tg
	}
	expect, refusedFor := expectations(t, names, pkgs, kernels, targets)
	// The suite is only a proof if the check predicts both outcomes.
	if expect[[2]string{r54, "kmpack-hello"}] != "weak-updates" || expect[[2]string{r54, "kmpack-abichange"}] != "absent" {
		t.Fatalf("the compatibility check no longer predicts the cases this suite needs: %v", expect)
	}

	// The root: both kernels (as their image packages install them), then the runtime and the
	// module packages with the real dpkg.
	root := testenv.DpkgRoot(t)
	for _, k := range kernels {
		testenv.InstallKernel(t, root, k)
	}
	dpkg := func(args ...string) {
		run(t, "dpkg", append([]string{"--root", root, "--force-script-chrootless"}, args...)...)
	}
	dpkg("-i", filepath.Join(pkgs["kmpack-hello"].outDir, formats.PackagesDir, pkgs["kmpack-hello"].built[[2]string{"debian", ""}].File))
	var debs []string
	for _, name := range names {
		for _, k := range pkgs[name].installed {
			debs = append(debs, debFile(pkgs[name], k))
		}
	}
	dpkg(append([]string{"-i"}, debs...)...)

	// Boot both kernels at once.
	results := bootAll(t, root, kernels, names, pkgs, expect, refusedFor, nil)

	// The RPM side: the same builds' suse and rhel packages for 53 installed with the real rpm
	// (scripts off: SUSE's and Red Hat's scriptlet tools are not on Debian) into a root with the
	// 53 kernel and the distro's depmod search order; depmod and modprobe must find each module
	// at the path the package installed it to.
	for _, prof := range []struct{ name, conf string }{
		{"suse", "search updates extra weak-updates kgraft built-in\n"}, // suse-module-tools 00-system.conf
		{"rhel", "search updates extra built-in weak-updates\n"},        // kmod's dist.conf on RHEL
	} {
		rroot := t.TempDir()
		run(t, "rpm", "--root", rroot, "--initdb")
		testenv.InstallKernel(t, rroot, r53)
		confDir := filepath.Join(rroot, "etc/depmod.d")
		os.MkdirAll(confDir, 0o755)
		os.WriteFile(filepath.Join(confDir, "dist.conf"), []byte(prof.conf), 0o644)
		var rpms []string
		for _, name := range names {
			w := pkgs[name].built[[2]string{prof.name, r53}]
			rpms = append(rpms, filepath.Join(pkgs[name].outDir, formats.PackagesDir, w.File))
		}
		run(t, "rpm", append([]string{"--root", rroot, "-i", "--nodeps", "--noscripts"}, rpms...)...)
		wants := map[string]string{}
		for i, name := range names {
			p := pkgs[name]
			for _, f := range strings.Fields(run(t, "rpm", "-qlp", rpms[i])) {
				if module.IsModuleFileName(filepath.Base(f)) && module.ModuleNameFromPath(f) == p.probe {
					wants[name] = f
					// A same-named module in the kernel's own tree, as when a package replaces
					// an in-tree driver: depmod's search order must still pick the package's.
					shadow := filepath.Join(rroot, "lib/modules", r53, "kernel/drivers/kmpack-shadow", filepath.Base(f))
					os.MkdirAll(filepath.Dir(shadow), 0o755)
					b, _ := os.ReadFile(filepath.Join(rroot, f))
					os.WriteFile(shadow, b, 0o644)
				}
			}
		}
		run(t, "depmod", "-b", rroot, "-C", confDir, "-a", r53)
		for _, name := range names {
			p := pkgs[name]
			want := wants[name]
			out, _ := exec.Command("modprobe", "-n", "-v", "-d", rroot, "-S", r53, "-C", confDir, p.probe).CombinedOutput()
			got := "not found"
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if f := strings.Fields(lines[len(lines)-1]); len(f) >= 2 && f[0] == "insmod" {
				got = strings.TrimPrefix(f[1], rroot)
			}
			prefix := "/lib/modules/" + r53 + "/"
			results = append(results, result{"rpm " + prof.name, r53, p.probe, strings.TrimPrefix(want, prefix), strings.TrimPrefix(got, prefix)})
		}
	}

	report(t, results, start)
}

// expectations are what kmpack's compatibility check predicts for each (kernel, package):
// "updates" where the package is installed for the kernel, else "weak-updates" when the check
// finds a build for another kernel compatible, else "absent". For an absent package, refusedFor
// holds the build the check refused and the symbols whose CRCs it says differ: the guest
// force-loads that build and the kernel must name one of them.
func expectations(t *testing.T, names []string, pkgs map[string]*testPackage, kernels []string, targets map[string]*weakupdates.Target) (map[[2]string]string, map[[2]string]refusal) {
	expect := map[[2]string]string{} // (kernel, package) -> updates | weak-updates | absent
	refusedFor := map[[2]string]refusal{}
	for _, name := range names {
		p := pkgs[name]
		for _, k := range kernels {
			if slices.Contains(p.installed, k) {
				expect[[2]string{k, name}] = "updates"
				continue
			}
			expect[[2]string{k, name}] = "absent"
			for _, other := range p.installed {
				var mods []*module.ModuleInfo
				for _, f := range p.modules[other] {
					mi, err := module.ReadModule(f)
					if err != nil {
						t.Fatal(err)
					}
					mods = append(mods, mi)
				}
				ok := true
				var syms []string
				for _, v := range weakupdates.Check(mods, targets[k]) {
					ok = ok && v.Compatible
					for _, r := range v.Reasons {
						if r.Kind == weakupdates.ReasonCRC {
							syms = append(syms, r.Symbol)
						}
					}
				}
				if ok {
					expect[[2]string{k, name}] = "weak-updates"
				} else if len(syms) > 0 {
					refusedFor[[2]string{k, name}] = refusal{files: p.modules[other], symbols: syms}
				}
			}
		}
	}
	return expect, refusedFor
}

// boot makes kernel k's initramfs from root (busybox, the modules the probes need with their
// dependencies, modules.dep as the packages' scripts and the runtime left it) and boots it,
// returning one row per package plus the checks of parameters, load order and dependencies.
func boot(t *testing.T, root, k string, names []string, pkgs map[string]*testPackage, expect map[[2]string]string, refusedFor map[[2]string]refusal, gk *guestKmpack) ([]result, error) {
	stage := t.TempDir()
	modDir := filepath.Join("lib/modules", k)
	dep, err := os.ReadFile(filepath.Join(root, modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{} // module name -> its file and its dependencies' files
	for _, line := range strings.Split(string(dep), "\n") {
		file, rest, ok := strings.Cut(line, ":")
		if ok {
			deps[module.ModuleNameFromPath(file)] = append([]string{file}, strings.Fields(rest)...)
		}
	}
	copyFile := func(rel string) error {
		src, dst := filepath.Join(root, rel), filepath.Join(stage, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	}
	for _, name := range names {
		for _, f := range deps[pkgs[name].probe] {
			rel := filepath.Join(modDir, f)
			fi, err := os.Lstat(filepath.Join(root, rel))
			if err != nil {
				return nil, err
			}
			if fi.Mode()&os.ModeSymlink != 0 {
				// A weak-updates link: keep it a link, and bring its target along.
				target, _ := os.Readlink(filepath.Join(root, rel))
				os.MkdirAll(filepath.Dir(filepath.Join(stage, rel)), 0o755)
				if err := os.Symlink(target, filepath.Join(stage, rel)); err != nil {
					return nil, err
				}
				rel = filepath.Join(filepath.Dir(rel), target)
			}
			if err := copyFile(rel); err != nil {
				return nil, err
			}
		}
	}
	for _, idx := range []string{"modules.dep", "modules.alias", "modules.builtin", "modules.softdep", "modules.symbols"} {
		if err := copyFile(filepath.Join(modDir, idx)); err != nil {
			return nil, err
		}
	}
	var probes strings.Builder
	for _, name := range names {
		p := pkgs[name]
		fmt.Fprintf(&probes, "probe %s %s\n", p.probe, strings.Join(p.params, " "))
	}
	// Builds the check refused are force-loaded from /refused: the kernel must refuse them too.
	for _, name := range names {
		r, ok := refusedFor[[2]string{k, name}]
		if !ok {
			continue
		}
		for _, f := range r.files {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, err
			}
			os.MkdirAll(filepath.Join(stage, "refused"), 0o755)
			os.WriteFile(filepath.Join(stage, "refused", filepath.Base(f)), b, 0o644)
			fmt.Fprintf(&probes, "force %s\n", filepath.Base(f))
		}
	}
	// The runtime package's kmpack, run by the guest against the kernel it booted: its version,
	// and its compat check of each package's build for the other kernel (the candidates),
	// reading the kernel's symvers where the root has them (Debian's headers) and vermagic and
	// struct module size from the kernel's own modules in the initramfs.
	kmpackScript := ""
	if gk != nil {
		b, err := os.ReadFile(gk.binary)
		if err != nil {
			return nil, err
		}
		os.MkdirAll(filepath.Join(stage, "usr/bin"), 0o755)
		if err := os.WriteFile(filepath.Join(stage, "usr/bin/kmpack"), b, 0o755); err != nil {
			return nil, err
		}
		if err := copyFile(filepath.Join("usr/src/linux-headers-"+k, "Module.symvers")); err != nil {
			return nil, err
		}
		// One of the kernel's own modules, for vermagic and struct module size (the probes'
		// dependencies may bring none: 54 loads no in-tree module).
		for _, line := range strings.Split(string(dep), "\n") {
			if file, _, ok := strings.Cut(line, ":"); ok && strings.HasPrefix(file, "kernel/") {
				if err := copyFile(filepath.Join(modDir, file)); err != nil {
					return nil, err
				}
				break
			}
		}
		var calls strings.Builder
		for _, name := range names {
			for _, f := range gk.candidates[name] {
				dst := filepath.Join(stage, "candidates", name, filepath.Base(f))
				os.MkdirAll(filepath.Dir(dst), 0o755)
				b, err := os.ReadFile(f)
				if err != nil {
					return nil, err
				}
				os.WriteFile(dst, b, 0o644)
			}
			if len(gk.candidates[name]) > 0 {
				fmt.Fprintf(&calls, "kc %s\n", name)
			}
		}
		kmpackScript = `t0=$(cut -d' ' -f1 /proc/uptime)
echo "E2E kmpack version $(/usr/bin/kmpack --version 2>&1)"
kc() { /usr/bin/kmpack compat -k /lib/modules/$K /candidates/$1/* 2>&1 | sed "s/^/E2E kmpack $1 /"; }
` + calls.String() + `echo "E2E kmpack time $t0 $(cut -d' ' -f1 /proc/uptime)"
`
	}
	initScript := `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
K=$(uname -r)
echo "E2E kernel $K"
probe() {
	m=$1
	shift
	path=$(grep -E "/$m\.ko(\.xz|\.zst|\.gz)?:" /lib/modules/$K/modules.dep | cut -d: -f1)
	if modprobe "$m" "$@" 2>/tmp/err; then st=loaded; else st=failed; fi
	echo "E2E module $m ${path:--} $st $(head -c 160 /tmp/err | tr '\n' ' ')"
}
force() {
	if insmod "/refused/$1" 2>/dev/null; then st=loaded; else st=refused; fi
	echo "E2E force $1 $st"
}
` + probes.String() + `
echo "E2E loaded $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
echo "E2E param $(cat /sys/module/kmpack_hello/parameters/greeting 2>/dev/null)"
[ -c /dev/video0 ] && echo "E2E device /dev/video0"
dmesg | grep -E 'kmpack|v4l2loopback|disagrees|Unknown symbol' | sed 's/^/E2E dmesg /'
` + kmpackScript + `echo "E2E end"
poweroff -f
`
	m := machineOf(t, k)
	initrd, err := initramfs(t, stage, initScript, m.busybox)
	if err != nil {
		return nil, err
	}
	vmlinuz := filepath.Join(testenv.KernelImage(t, k), "boot/vmlinuz-"+k)
	lines, err := guest(k, m.qemu, append(m.args, "-nographic", "-no-reboot", "-m", "512",
		"-kernel", vmlinuz, "-initrd", initrd, "-append", "console="+m.console+" panic=-1 quiet")...)
	if err != nil {
		return nil, err
	}

	var rows []result
	observed, forced := map[string]string{}, map[string]string{}
	loaded, param, dmesg, video := "", "", []string{}, false
	var kmpackLines [][]string
	for _, l := range lines {
		f := strings.Fields(l)
		switch {
		case f[0] == "module" && len(f) >= 4:
			m, path, st := f[1], f[2], f[3]
			switch {
			case st == "loaded" && strings.HasPrefix(path, "updates/"):
				observed[m] = "updates"
			case st == "loaded" && strings.HasPrefix(path, "weak-updates/"):
				observed[m] = "weak-updates"
			case st == "failed" && path == "-":
				observed[m] = "absent"
			default:
				observed[m] = st + " " + path + " " + strings.Join(f[4:], " ")
			}
		case f[0] == "force" && len(f) == 3:
			forced[f[1]] = f[2]
		case f[0] == "loaded":
			loaded = l
		case f[0] == "param" && len(f) > 1:
			param = f[1]
		case f[0] == "dmesg":
			dmesg = append(dmesg, l)
		case f[0] == "device":
			video = true
		case f[0] == "kmpack" && len(f) >= 3:
			kmpackLines = append(kmpackLines, f[1:])
		}
	}
	for _, name := range names {
		p := pkgs[name]
		rows = append(rows, result{"qemu", k, p.probe, expect[[2]string{k, name}], observed[p.probe]})
	}
	has := func(mod string) bool { return slices.Contains(strings.Fields(loaded), mod) }
	index := func(s string) int {
		return slices.IndexFunc(dmesg, func(l string) bool { return strings.Contains(l, s) })
	}
	// The parameter took effect, the pair loaded in order, v4l2loopback brought its in-tree
	// dependencies and made its device.
	check := func(what string, ok bool, want, got string) {
		if ok {
			got = want
		}
		rows = append(rows, result{"qemu", k, what, want, got})
	}
	for _, name := range names {
		r, ok := refusedFor[[2]string{k, name}]
		if !ok {
			continue
		}
		for _, f := range r.files {
			mod := module.ModuleNameFromPath(f)
			named := slices.ContainsFunc(dmesg, func(l string) bool {
				return slices.ContainsFunc(r.symbols, func(sym string) bool {
					return strings.Contains(l, mod+": disagrees about version of symbol "+sym)
				})
			})
			check(mod+" forced", forced[filepath.Base(f)] == "refused" && named,
				"refused: "+strings.Join(r.symbols, ","), "insmod "+forced[filepath.Base(f)])
		}
	}
	if gk != nil {
		rows = append(rows, gk.rows(t, k, names, pkgs, expect, refusedFor, kmpackLines)...)
	}
	if expect[[2]string{k, "kmpack-hello"}] != "absent" {
		check("hello param", param == "4711" && index("greeting=4711") >= 0, "greeting=4711 in sysfs and log", "sysfs "+param)
	}
	if expect[[2]string{k, "kmpack-pair"}] != "absent" {
		a, b := index("kmpack-pair: a loaded"), index("value from a=4242")
		check("pair order", has("kmpack_pair_a") && has("kmpack_pair_b") && a >= 0 && a < b, "a then b, b got 4242", fmt.Sprintf("%s; log a@%d b@%d", loaded, a, b))
	}
	if expect[[2]string{k, "v4l2loopback"}] != "absent" {
		check("v4l2 deps", has("videodev") && has("mc") && video, "videodev, mc loaded; /dev/video0", loaded)
	}
	return rows, nil
}

// machine is how a kernel's architecture boots under qemu: the emulator, its machine options,
// the serial console, and a static busybox for the initramfs.
type machine struct {
	qemu    string
	args    []string
	console string
	busybox string
}

// machineOf is the machine of kernel k: amd64 kernels boot on qemu-system-x86_64 with the host's
// busybox, arm64 ones (TCG, -M virt, cortex-a57) with busybox from Debian's arm64 busybox-static.
func machineOf(t *testing.T, k string) machine {
	if strings.HasSuffix(k, "-arm64") {
		return machine{"qemu-system-aarch64", []string{"-M", "virt", "-cpu", "cortex-a57"}, "ttyAMA0",
			filepath.Join(testenv.UnpackedDeb(t, "busybox-static"), "bin/busybox")}
	}
	return machine{"qemu-system-x86_64", nil, "ttyS0", "/bin/busybox"}
}

// bootAll boots each kernel (at once) from root with boot and returns every kernel's rows; a
// kernel whose guest did not run to its end is an error of the test. gk, when set, is the
// kmpack each guest runs (boot).
func bootAll(t *testing.T, root string, kernels, names []string, pkgs map[string]*testPackage, expect map[[2]string]string, refusedFor map[[2]string]refusal, gk *guestKmpack) []result {
	var results []result
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, k := range kernels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rows, err := boot(t, root, k, names, pkgs, expect, refusedFor, gk)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("%s: %v", k, err)
			}
			results = append(results, rows...)
		}()
	}
	wg.Wait()
	return results
}

// initramfs packs stage, with busybox (a static one for the kernel's architecture) as
// /bin/busybox and init as /init, into a gzipped newc cpio and returns its path.
func initramfs(t *testing.T, stage, init, busybox string) (string, error) {
	os.MkdirAll(filepath.Join(stage, "bin"), 0o755)
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return "", err
	}
	os.WriteFile(filepath.Join(stage, "bin/busybox"), bb, 0o755)
	os.WriteFile(filepath.Join(stage, "init"), []byte(init), 0o755)
	initrd := filepath.Join(t.TempDir(), "initrd.gz")
	if out, err := exec.Command("sh", "-c", `cd "$1" && find . | cpio -o -H newc --quiet | gzip -1 > "$2"`, "sh", stage, initrd).CombinedOutput(); err != nil {
		return "", fmt.Errorf("initramfs: %v: %s", err, out)
	}
	return initrd, nil
}

// guest runs qemu (qemu-system-x86_64, qemu-system-aarch64) with args until the guest powers
// off (at most 3 minutes) and returns what the guest printed after "E2E " on each console line.
// The guest must print "E2E kernel K" and, last, "E2E end".
func guest(k, qemu string, args ...string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, args...)
	console, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var lines []string
	sc := bufio.NewScanner(console)
	for sc.Scan() {
		// The kernel's own console output may share a line with the guest's.
		if _, l, ok := strings.Cut(strings.TrimRight(sc.Text(), "\r"), "E2E "); ok {
			lines = append(lines, l)
		}
	}
	io.Copy(io.Discard, console)
	cmd.Wait()
	if !slices.Contains(lines, "end") || !slices.Contains(lines, "kernel "+k) {
		return nil, fmt.Errorf("the guest did not run to its end (timeout or panic); console:\n%s", strings.Join(lines, "\n"))
	}
	return lines, nil
}

// report prints the result table (expected, observed) and fails the test on any disagreement.
func report(t *testing.T, results []result, start time.Time) {
	slices.SortStableFunc(results, func(a, b result) int { return strings.Compare(a.where+a.kernel, b.where+b.kernel) })
	var table strings.Builder
	fmt.Fprintf(&table, "%-9s %-15s %-18s %-36s %s\n", "where", "kernel", "module", "expected", "observed")
	bad := 0
	for _, r := range results {
		mark := ""
		if r.expected != r.observed {
			mark, bad = "   <-- DISAGREES", bad+1
		}
		fmt.Fprintf(&table, "%-9s %-15s %-18s %-36s %s%s\n", r.where, r.kernel, r.module, r.expected, r.observed, mark)
	}
	fmt.Fprintf(&table, "%d checks, %d disagree, %.0fs\n", len(results), bad, time.Since(start).Seconds())
	fmt.Print(table.String())
	if bad > 0 {
		t.Errorf("end-to-end results:\n%s", table.String())
	}
}
