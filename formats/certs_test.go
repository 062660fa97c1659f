package formats_test

import (
	"context"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/sign"
	"github.com/kmpack/kmpack/kmp/source"
)

// fakeMokutil stands in for mokutil in a scratch root: it records its arguments in
// /var/log/mokutil.argv and keeps "enrolled" keys (imported ones count, as a queued key does for
// the real --test-key) in /var/lib/fake-mok/keys; /var/lib/fake-mok/noefi makes it fail as on a
// machine without EFI variables, sb-off makes --sb-state say Secure Boot is disabled.
const fakeMokutil = `#!/bin/sh
echo "$*" >> /var/log/mokutil.argv
state=/var/lib/fake-mok
if [ -e $state/noefi ]; then echo "EFI variables are not supported on this system" >&2; exit 1; fi
case "$1" in
--sb-state) if [ -e $state/sb-off ]; then echo "SecureBoot disabled"; else echo "SecureBoot enabled"; fi ;;
--test-key)
	for f in $state/keys/*; do
		if [ -e "$f" ] && cmp -s "$f" "$2"; then echo "$2 is already enrolled"; exit 1; fi
	done
	echo "$2 is not enrolled"; exit 0 ;;
--import) mkdir -p $state/keys && cp "$2" "$state/keys/${2##*/}" ;;
--delete) rm -f "$state/keys/${2##*/}" "$state/keys/$(basename "$2" .delete)" ;;
esac
exit 0
`

// chrootRoot is a scratch root with a static busybox as /bin/sh and its applets, in which the
// real rpm and dpkg run maintainer scripts (chrooted), with the fake mokutil and a root password.
func chrootRoot(t *testing.T, withMokutil bool) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to chroot")
	}
	testenv.Need(t, "busybox", "rpm", "dpkg")
	root := t.TempDir()
	for _, d := range []string{"bin", "dev", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "var/tmp", "var/log", "var/lib/fake-mok",
		"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, "cp", bb, filepath.Join(root, "bin/busybox"))
	mustRun(t, "chroot", root, "/bin/busybox", "--install", "-s")
	mustRun(t, "mknod", "-m", "666", filepath.Join(root, "dev/null"), "c", "1", "3")
	for f, body := range map[string]string{
		"sbin/ldconfig":       "#!/bin/sh\nexit 0\n",
		"var/lib/dpkg/status": "",
		"etc/shadow":          "root:$6$salt$hash:19000:0:99999:7:::\n",
	} {
		if err := os.WriteFile(filepath.Join(root, f), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if withMokutil {
		if err := os.WriteFile(filepath.Join(root, "usr/bin/mokutil"), []byte(fakeMokutil), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustRun(t, "rpm", "--root", root, "--initdb")
	return root
}

// rpmIn runs rpm in root without dependency checks, dropping the warning Debian's rpm prints.
func rpmIn(t *testing.T, root string, args ...string) string {
	t.Helper()
	out := mustRun(t, "rpm", append([]string{"--root", root, "--nodeps"}, args...)...)
	var keep []string
	for _, l := range strings.SplitAfter(out, "\n") {
		if !strings.HasPrefix(l, "rpm: ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "")
}

func mokLog(root string) string {
	b, _ := os.ReadFile(filepath.Join(root, "var/log/mokutil.argv"))
	return string(b)
}

func resetMokLog(t *testing.T, root string) {
	t.Helper()
	os.Remove(filepath.Join(root, "var/log/mokutil.argv"))
}

// signedBuild builds the hello test module for 6.1.0-53, signed with a fresh key.
func signedBuild(t *testing.T) (*built, *sign.Signer) {
	t.Helper()
	testenv.Need(t, "make", "strip")
	kp, err := sign.Keygen(sign.KeygenOptions{Dir: t.TempDir(), CN: "kmpack cert package test", Days: 30, Bits: 2048})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := sign.LoadKeyFile(kp.Key, kp.CertPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	testenv.CopyTree(t, testenv.TestModuleSource(t, "hello"), filepath.Join(dir, "src"))
	src, err := source.OpenSource(filepath.Join(dir, "src"))
	if err != nil {
		t.Fatal(err)
	}
	trees := testenv.KernelTrees(t, testenv.Release53)
	out := filepath.Join(dir, "out")
	m, err := build.Build(context.Background(), src, trees, build.BuildOptions{Jobs: 2, OutputDir: out, Signers: []sign.Signer{*signer}})
	if err != nil {
		t.Fatal(err)
	}
	return &built{src: src, manifest: m, out: out, trees: trees}, signer
}

// Signed modules get a certificate package per profile, in each distro's place, required by
// the module packages; the real rpm and dpkg install it into a scratch root where a fake
// mokutil records what the scriptlets ask: enrollment is queued once, not again when the key is
// enrolled, and an install without mokutil (or without a root password) succeeds and prints the
// exact command.
func TestCertificatePackages(t *testing.T) {
	b, signer := signedBuild(t)
	dir, written := packageBuild(t, b, "suse", "rhel", "debian")
	der := signer.Cert.Raw
	// SUSE's name: the first 8 hex digits of the SHA-1 fingerprint, as openssl prints it.
	pemFile := filepath.Join(t.TempDir(), "c.der")
	if err := os.WriteFile(pemFile, der, 0o644); err != nil {
		t.Fatal(err)
	}
	fp := mustRun(t, "openssl", "x509", "-inform", "DER", "-in", pemFile, "-noout", "-fingerprint", "-sha1")
	id := strings.ReplaceAll(strings.TrimSpace(fp[strings.Index(fp, "=")+1:]), ":", "")[:8]
	name := b.src.Name
	files := map[string]string{}
	for _, w := range written {
		files[w.Name] = filepath.Join(dir, w.File)
	}
	certPkgs := map[string]string{"suse": name + "-ueficert", "rhel": name + "-kmod-cert", "debian": name + "-modules-cert"}
	certPaths := map[string]string{
		"suse":   "/etc/uefi/certs/" + id + ".crt",
		"rhel":   "/etc/pki/akmods/certs/" + name + "-" + strings.ToLower(id) + ".der",
		"debian": "/usr/share/" + name + "-modules-cert/" + strings.ToLower(id) + ".der",
	}
	for prof, pkg := range certPkgs {
		if files[pkg] == "" {
			t.Fatalf("%s: no %s package in %+v", prof, pkg, written)
		}
	}
	// The module packages require their certificate package.
	kmp := files[name+"-kmp-amd64"]
	if req := mustRun(t, "rpm", "-qp", "--requires", kmp); !strings.Contains(req, name+"-ueficert\n") {
		t.Errorf("KMP does not require %s-ueficert:\n%s", name, req)
	}
	if req := mustRun(t, "rpm", "-qp", "--requires", files["kmod-"+name]); !strings.Contains(req, name+"-kmod-cert = ") {
		t.Errorf("kmod does not require %s-kmod-cert:\n%s", name, req)
	}
	debName := name + "-modules-" + testenv.Release53
	if files[debName] == "" {
		t.Fatalf("no %s in %+v", debName, written)
	}
	if dep := mustRun(t, "dpkg-deb", "-f", files[debName], "Depends"); !strings.Contains(dep, name+"-modules-cert (= ") {
		t.Errorf("deb Depends %q lacks the certificate package", dep)
	}
	// The certificate is the signer's, DER, where the distro keeps it.
	for prof, pkg := range certPkgs {
		x := t.TempDir()
		if prof == "debian" {
			mustRun(t, "dpkg-deb", "-x", files[pkg], x)
		} else {
			mustRun(t, "sh", "-c", "cd "+x+" && rpm2cpio "+files[pkg]+" | cpio -idm --quiet")
		}
		got, err := os.ReadFile(filepath.Join(x, certPaths[prof]))
		if err != nil || string(got) != string(der) {
			t.Errorf("%s: %s is not the signing certificate (%v)", pkg, certPaths[prof], err)
		}
		if _, err := x509.ParseCertificate(got); err != nil {
			t.Errorf("%s: %v", pkg, err)
		}
	}
	if s := mustRun(t, "rpm", "-qp", "--scripts", files[certPkgs["suse"]]); !strings.Contains(s, "postinstall scriptlet") ||
		!strings.Contains(s, "preuninstall scriptlet") || !strings.Contains(s, "postuninstall scriptlet") {
		t.Errorf("ueficert scriptlets:\n%s", s)
	}

	t.Run("suse", func(t *testing.T) {
		cert := certPaths["suse"]
		root := chrootRoot(t, true)
		rpmI := func(args ...string) string { return rpmIn(t, root, args...) }
		out := rpmI("-i", files[certPkgs["suse"]])
		if got, want := mokLog(root), "--test-key "+cert+"\n--test-key "+cert+"\n--import "+cert+" --root-pw\n"; got != want {
			t.Errorf("install: mokutil calls\n%s\nwant\n%s", got, want)
		}
		if !strings.Contains(out, "queued "+cert+" for enrollment") {
			t.Errorf("install output: %q", out)
		}
		resetMokLog(t, root)
		if out := rpmI("-i", "--reinstall", files[certPkgs["suse"]]); out != "" || strings.Contains(mokLog(root), "--import") {
			t.Errorf("reinstall of an enrolled certificate: output %q, mokutil calls\n%s", out, mokLog(root))
		}
		resetMokLog(t, root)
		rpmI("-e", certPkgs["suse"])
		if got := mokLog(root); !strings.Contains(got, "--delete "+cert+".delete --root-pw") {
			t.Errorf("erase: mokutil calls\n%s", got)
		}
		if _, err := os.Lstat(filepath.Join(root, cert+".delete")); err == nil {
			t.Errorf("%s.delete left behind", cert)
		}
		// With suse-module-tools' cert-script, the scriptlets hand over to it.
		hook := filepath.Join(root, "usr/lib/module-init-tools/kernel-scriptlets")
		os.MkdirAll(hook, 0o755)
		for _, op := range []string{"post", "preun", "postun"} {
			os.WriteFile(filepath.Join(hook, "cert-"+op), []byte("#!/bin/sh\necho cert-"+op+" \"$@\" >> /var/log/cert-script\n"), 0o755)
		}
		os.RemoveAll(filepath.Join(root, "var/lib/fake-mok/keys"))
		rpmI("-i", files[certPkgs["suse"]])
		rpmI("-e", certPkgs["suse"])
		if got, want := string(testenv.MustRead(t, filepath.Join(root, "var/log/cert-script"))),
			"cert-post --certs "+id+" 1\ncert-preun --certs "+id+" 0\ncert-postun --certs "+id+" 0\n"; got != want {
			t.Errorf("cert-script calls\n%s\nwant\n%s", got, want)
		}
	})

	t.Run("rhel", func(t *testing.T) {
		cert := certPaths["rhel"]
		root := chrootRoot(t, true)
		rpmI := func(args ...string) string { return rpmIn(t, root, args...) }
		rpmI("-i", files[certPkgs["rhel"]])
		if got, want := mokLog(root), "--test-key "+cert+"\n--sb-state\n--import "+cert+" --root-pw\n"; got != want {
			t.Errorf("install: mokutil calls\n%s\nwant\n%s", got, want)
		}
		resetMokLog(t, root)
		if out := rpmI("-i", "--reinstall", files[certPkgs["rhel"]]); out != "" || mokLog(root) != "--test-key "+cert+"\n" {
			t.Errorf("reinstall: output %q, mokutil calls\n%s", out, mokLog(root))
		}
		// Secure Boot off: nothing queued, and it says so.
		rpmI("-e", certPkgs["rhel"])
		os.RemoveAll(filepath.Join(root, "var/lib/fake-mok/keys"))
		os.WriteFile(filepath.Join(root, "var/lib/fake-mok/sb-off"), nil, 0o644)
		resetMokLog(t, root)
		out := rpmI("-i", files[certPkgs["rhel"]])
		if strings.Contains(mokLog(root), "--import") || !strings.Contains(out, "Secure Boot is not enabled") ||
			!strings.Contains(out, "run: mokutil --import "+cert+"\n") {
			t.Errorf("Secure Boot off: output %q, mokutil calls\n%s", out, mokLog(root))
		}
		// No mokutil: installs, says what to run.
		root = chrootRoot(t, false)
		out = rpmIn(t, root, "-i", files[certPkgs["rhel"]])
		if !strings.Contains(out, "install mokutil and run: mokutil --import "+cert+"\n") {
			t.Errorf("without mokutil: %q", out)
		}
	})

	t.Run("debian", func(t *testing.T) {
		cert := certPaths["debian"]
		pkg := files[certPkgs["debian"]]
		root := chrootRoot(t, true)
		out := mustRun(t, "dpkg", "--root", root, "-i", pkg)
		if got, want := mokLog(root), "--test-key "+cert+"\n--import "+cert+" --root-pw\n"; got != want {
			t.Errorf("install: mokutil calls\n%s\nwant\n%s", got, want)
		}
		if !strings.Contains(out, "queued "+cert+" for enrollment") {
			t.Errorf("install output:\n%s", out)
		}
		resetMokLog(t, root)
		out = mustRun(t, "dpkg", "--root", root, "-i", pkg)
		if mokLog(root) != "--test-key "+cert+"\n" || strings.Contains(out, "mokutil") {
			t.Errorf("reinstall: output\n%s\nmokutil calls\n%s", out, mokLog(root))
		}
		// Root without a password: nothing queued, the command printed.
		mustRun(t, "dpkg", "--root", root, "-P", certPkgs["debian"])
		os.RemoveAll(filepath.Join(root, "var/lib/fake-mok/keys"))
		os.WriteFile(filepath.Join(root, "etc/shadow"), []byte("root:!:19000:0:99999:7:::\n"), 0o640)
		resetMokLog(t, root)
		out = mustRun(t, "dpkg", "--root", root, "-i", pkg)
		if strings.Contains(mokLog(root), "--import") || !strings.Contains(out, "; run: mokutil --import "+cert+"\n") {
			t.Errorf("locked root: output\n%s\nmokutil calls\n%s", out, mokLog(root))
		}
		// No mokutil, and no EFI: installs, prints the exact command.
		root = chrootRoot(t, false)
		out = mustRun(t, "dpkg", "--root", root, "-i", pkg)
		if !strings.Contains(out, "run: apt-get install mokutil && mokutil --import "+cert+"\n") {
			t.Errorf("without mokutil:\n%s", out)
		}
		root = chrootRoot(t, true)
		os.WriteFile(filepath.Join(root, "var/lib/fake-mok/noefi"), nil, 0o644)
		out = mustRun(t, "dpkg", "--root", root, "-i", pkg)
		if !strings.Contains(out, "not booted with UEFI") || !strings.Contains(out, "run: mokutil --import "+cert+"\n") {
			t.Errorf("without EFI:\n%s", out)
		}
		// Installed into another root without chroot: no enrollment of this machine's firmware.
		root = chrootRoot(t, true)
		out = mustRun(t, "dpkg", "--root", root, "--force-script-chrootless", "-i", pkg)
		if mokLog(root) != "" || !strings.Contains(out, "mokutil --import "+cert+"\n") {
			t.Errorf("chrootless: output\n%s\nmokutil calls\n%s", out, mokLog(root))
		}
	})
}

var _ = formats.PackagesDir
