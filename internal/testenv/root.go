package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// InstallKernel puts Debian's real kernel release into root as its image package would, without
// running the image's maintainer scripts (they would update this machine's bootloader and
// initramfs): the modules (hard links into the unpacked package), the modules.* indexes, and
// the symvers of the headers package under /usr/src, where a Debian system with headers has
// them. When root has a dpkg database, the image's status record and file list go in too, so
// dpkg sees the kernel installed and can remove it.
func InstallKernel(t testing.TB, root, release string) {
	t.Helper()
	pkg := "linux-image-" + release
	image := KernelImage(t, release)
	img := filepath.Join(image, "lib/modules", release)
	dst := filepath.Join(root, "lib/modules", release)
	hdr := filepath.Join(root, "usr/src/linux-headers-"+release)
	for _, d := range []string{dst, hdr} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustRun(t, "cp", "-al", filepath.Join(img, "kernel"), dst)
	idx, _ := filepath.Glob(filepath.Join(img, "modules.*"))
	mustRun(t, "cp", append(idx, dst)...)
	headers := ""
	if strings.HasSuffix(release, "-arm64") {
		headers = Arm64TreeOf(t, release).Dir // never installed: unpacked from its .deb files
	} else {
		headers = HeadersDir(t, release)
	}
	sv, err := os.ReadFile(filepath.Join(headers, "Module.symvers"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hdr, "Module.symvers"), sv, 0o644); err != nil {
		t.Fatal(err)
	}

	db := filepath.Join(root, "var/lib/dpkg")
	if _, err := os.Stat(db); err != nil {
		return
	}
	var control, files string
	if image == "/" { // installed on this machine: its records are dpkg's own
		control = mustRun(t, "dpkg-query", "-s", pkg)
		files = mustRun(t, "dpkg", "-L", pkg)
	} else {
		deb := Debs(t, pkg)[0]
		control = strings.Replace(mustRun(t, "dpkg-deb", "-f", deb), "\n", "\nStatus: install ok installed\n", 1)
		files = mustRun(t, "sh", "-c", "dpkg-deb --fsys-tarfile "+deb+" | tar t")
	}
	status, _ := os.ReadFile(filepath.Join(db, "status"))
	if err := os.WriteFile(filepath.Join(db, "status"), append(status, []byte(strings.TrimRight(control, "\n")+"\n\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	var list strings.Builder
	for _, l := range strings.Split(files, "\n") {
		if l = strings.TrimSuffix(strings.TrimPrefix(l, "."), "/"); l != "" {
			list.WriteString(l + "\n")
		}
	}
	if err := os.WriteFile(filepath.Join(db, "info", pkg+".list"), []byte(list.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// DpkgRoot is a root with a dpkg database, for dpkg --root --force-script-chrootless. It is
// empty but for the status records of this machine's kmod and libc6: maintainer scripts run
// outside the root, so this machine's depmod is the one they use.
func DpkgRoot(t testing.TB) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var status strings.Builder
	for _, pkg := range []string{"kmod", "libc6"} {
		status.WriteString(strings.TrimRight(mustRun(t, "dpkg-query", "-s", pkg), "\n") + "\n\n")
		if err := os.WriteFile(filepath.Join(root, "var/lib/dpkg/info", pkg+".list"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), []byte(status.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// WeakUpdatesLinks maps each link under root's /lib/modules/<release>/weak-updates (by its path
// inside that directory) to its target, resolved to a path from the root when relative.
func WeakUpdatesLinks(root, release string) map[string]string {
	out := map[string]string{}
	dir := filepath.Join(root, "lib/modules", release, "weak-updates")
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			if !filepath.IsAbs(target) {
				target = "/" + strings.TrimPrefix(filepath.Join(filepath.Dir(p), target), root+"/")
			}
			out[strings.TrimPrefix(p, dir+"/")] = target
		}
		return nil
	})
	return out
}

// InstallHeaders gives root release's real headers the way Debian lays them out: the -amd64
// tree (copied), its -common half and linux-kbuild (hard links), and /lib/modules/<release>/build
// an absolute link to the tree, resolved inside the root by kmpack. (The tree's top Makefile
// includes the -common Makefile by absolute path, which make resolves on this host: the same
// files, which is why they are only hard links here.)
func InstallHeaders(t *testing.T, root, release string) {
	t.Helper()
	host := HeadersDir(t, release)
	dst := filepath.Join(root, "usr/src", filepath.Base(host))
	os.RemoveAll(dst)
	CopyTree(t, host, dst)
	common, err := filepath.EvalSymlinks(filepath.Join("/lib/modules", release, "source"))
	if err != nil {
		t.Fatal(err)
	}
	kbuild, err := filepath.EvalSymlinks(filepath.Join(host, "scripts"))
	if err != nil {
		t.Fatal(err)
	}
	kbuild = filepath.Dir(kbuild)
	for _, d := range []string{common, kbuild} {
		if _, err := os.Stat(filepath.Join(root, d)); err == nil {
			continue
		}
		os.MkdirAll(filepath.Dir(filepath.Join(root, d)), 0o755)
		if out, err := exec.Command("cp", "-al", d, filepath.Join(root, d)).CombinedOutput(); err != nil {
			t.Fatalf("cp -al %s: %v %s", d, err, out)
		}
	}
	if err := os.Symlink("/usr/src/"+filepath.Base(host), filepath.Join(root, "lib/modules", release, "build")); err != nil {
		t.Fatal(err)
	}
}
