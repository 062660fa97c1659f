package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/target"
)

// TestAutoinstallBuildLoadsInQemu is the target side's proof: a root with Debian's real 53 and
// 54 kernels (54's headers installed as Debian lays them out), the abichange module package
// built for 53 registered (add-kmp, as its postinst does) and its source registered (source
// add). 54 arrives: the build for 53 does not load there (_dev_info's CRC changed), so
// autoinstall builds the source against 54's headers; 54 then boots under qemu from an
// initramfs made from the root and loads the module from updates/.
func TestAutoinstallBuildLoadsInQemu(t *testing.T) {
	testenv.Need(t, "qemu-system-x86_64", "busybox", "cpio", "gzip", "depmod", "modprobe")
	start := time.Now()
	r53, r54 := testenv.Release53, testenv.Release54
	bin := filepath.Join(t.TempDir(), "kmpack")
	run(t, "go", "build", "-o", bin, "../cmd/kmpack")
	root := testenv.DpkgRoot(t)
	testenv.InstallKernel(t, root, r53)
	testenv.InstallKernel(t, root, r54)
	testenv.InstallHeaders(t, root, r54)

	// The module package for 53: its build installed where the debian profile puts it.
	out := filepath.Join(t.TempDir(), "out")
	run(t, bin, "--cache-dir", t.TempDir(), "build", "-q", "-o", out, "-k", testenv.HeadersDir(t, r53), testenv.TestModuleSource(t, "abi"))
	var m manifest.Manifest
	if err := json.Unmarshal(testenv.MustRead(t, filepath.Join(out, "manifest.json")), &m); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "lib/modules", r53, "updates/kmpack-abichange")
	os.MkdirAll(dir, 0o755)
	for _, mod := range m.Kernels[0].Modules {
		testenv.CopyTree(t, filepath.Join(out, mod.File), filepath.Join(dir, filepath.Base(mod.File)))
	}
	run(t, bin, "weak-updates", "--root", root, "add-kmp", "--name", "kmpack-abichange", "--package", "kmpack-abichange-modules-"+r53,
		"--version", "1.0-1", "--kernel", r53)
	run(t, bin, "source", "--root", root, "add", testenv.TestModuleSource(t, "abi"))

	// 54's hook.
	run(t, bin, "autoinstall", "--hook", "--root", root, r54)
	var rep target.Report
	if err := json.Unmarshal([]byte(run(t, bin, "status", "--root", root, "--json")), &rep); err != nil {
		t.Fatal(err)
	}
	var results []result
	for _, row := range rep.Rows {
		want := target.StateBuiltForKernel
		if row.Kernel == r54 {
			want = target.StateBuiltLocally
		}
		results = append(results, result{"status", row.Kernel, row.Module, want, row.State})
	}
	if len(rep.Rows) != 2 {
		t.Fatalf("status rows: %+v", rep.Rows)
	}

	pkgs := map[string]*testPackage{"kmpack-abichange": {probe: "kmpack_abi"}}
	// boot's checks of the other test packages are off: they are not in this root.
	expect := map[[2]string]string{{r54, "kmpack-abichange"}: "updates", {r54, "kmpack-hello"}: "absent",
		{r54, "kmpack-pair"}: "absent", {r54, "v4l2loopback"}: "absent"}
	rows, err := boot(t, root, r54, []string{"kmpack-abichange"}, pkgs, expect, nil)
	if err != nil {
		t.Fatal(err)
	}
	results = append(results, rows...)
	built := filepath.Join(root, "lib/modules", r54, "updates/kmpack-built/kmpack-abichange/kmpack_abi.ko")
	if _, err := os.Stat(built); err != nil || !strings.Contains(string(testenv.MustRead(t, filepath.Join(root, "lib/modules", r54, "modules.dep"))), "updates/kmpack-built/kmpack-abichange/kmpack_abi.ko:") {
		t.Errorf("the local build is not where the kernel finds it: %v", err)
	}
	report(t, results, start)
}
