package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmpack/kmpack/internal/efivars"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/sign"
)

// Debian's ovmf package: UEFI firmware without Secure Boot, and a variable store without keys.
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// signCase is one kmpack build of the hello module that the guest insmods.
type signCase struct {
	dir, label string
	keys       []string // key names, in the order given to kmpack build
	greeting   int      // its parameter, so each load is told apart in the log
	expected   string
}

// TestSignedModulesInRealKernel proves kmpack's module signatures in Debian's real 6.1 kernel
// enforcing signatures (module.sig_enforce=1): a certificate made by kmpack keygen goes into UEFI
// db of a copy of OVMF's variable store, the kernel is booted directly by OVMF (no Secure Boot:
// Debian's kernel loads db certificates into its .platform keyring and consults it for modules;
// shared/reference/secure-boot.md §3, §4.1), and busybox insmod tries builds of the hello module:
// unsigned, signed by an untrusted key, by the trusted key, and by two keys of which only one is
// trusted, with the trusted signer first and second in the PKCS#7's SignerInfos. What counts is
// what the kernel did: insmod's exit and error, /proc/modules, and the kernel's log.
func TestSignedModulesInRealKernel(t *testing.T) {
	testenv.Need(t, "qemu-system-x86_64", "busybox", "cpio", "gzip")
	for _, f := range []string{ovmfCode, ovmfVars} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%v: run scripts/setup.sh (package ovmf)", err)
		}
	}
	start := time.Now()
	k := testenv.Release53
	bin := filepath.Join(t.TempDir(), "kmpack")
	run(t, "go", "build", "-o", bin, "../cmd/kmpack")

	// Three keys made by kmpack keygen; only T's certificate goes into db. Their names make T's
	// SignerInfo sort after A's and before Z's (a DER SET OF sorts by encoding).
	keyDir := t.TempDir()
	key := func(n string) string { return filepath.Join(keyDir, n, sign.KeyFile) }
	certOf := func(n string) string { return filepath.Join(keyDir, n, sign.CertPEMFile) }
	for _, n := range []string{"A", "T", "Z"} {
		os.MkdirAll(filepath.Join(keyDir, n), 0o700)
		run(t, bin, "keygen", "--out", filepath.Join(keyDir, n), "--cn", "kmpack e2e key "+n)
	}
	trusted, err := sign.LoadCertificate(certOf("T"))
	if err != nil {
		t.Fatal(err)
	}

	// busybox insmod exits with the errno of the failed syscall: 129 is EKEYREJECTED.
	const loaded = "loaded: in /proc/modules, greeting=%d"
	cases := []*signCase{
		{dir: "unsigned", label: "unsigned", greeting: 1,
			expected: "refused (exit 129): Key was rejected by service; Loading of unsigned module is rejected"},
		{dir: "untrusted", label: "key A (untrusted)", keys: []string{"A"}, greeting: 2,
			expected: "refused (exit 129): Key was rejected by service; Loading of module with unavailable key is rejected"},
		{dir: "trusted", label: "key T (trusted)", keys: []string{"T"}, greeting: 3, expected: fmt.Sprintf(loaded, 3)},
		// Key rotation: two signers, only T trusted; given in both orders on the command line.
		{dir: "dual-ta", keys: []string{"T", "A"}, greeting: 4, expected: fmt.Sprintf(loaded, 4)},
		{dir: "dual-zt", keys: []string{"Z", "T"}, greeting: 5, expected: fmt.Sprintf(loaded, 5)},
	}

	// kmpack build for 6.1.0-53, once per case; the cache keeps the unsigned build, so the signed
	// cases only re-sign.
	cache, src, stage := t.TempDir(), testenv.TestModuleSource(t, "hello"), t.TempDir()
	positions := map[int]bool{}
	for _, c := range cases {
		out := filepath.Join(t.TempDir(), "out")
		args := []string{"--cache-dir", cache, "build", "-q", "-o", out, "-k", testenv.HeadersDir(t, k)}
		for _, n := range c.keys {
			args = append(args, "--sign-key", key(n), "--sign-cert", certOf(n))
		}
		run(t, bin, append(args, src)...)
		var m manifest.Manifest
		if err := json.Unmarshal(testenv.MustRead(t, filepath.Join(out, "manifest.json")), &m); err != nil {
			t.Fatal(err)
		}
		if len(m.Kernels) != 1 || len(m.Kernels[0].Modules) != 1 {
			t.Fatalf("%s: want one kernel, one module: %+v", c.dir, m.Kernels)
		}
		f := filepath.Join(out, m.Kernels[0].Modules[0].File)
		data := testenv.MustRead(t, f)
		// Where the trusted signer sits among the SignerInfos the kernel reads.
		if len(c.keys) == 2 {
			_, der, err := module.SplitSignature(f, data)
			if err != nil {
				t.Fatal(err)
			}
			p, err := module.ParsePKCS7(der)
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(p.Signers, func(s module.PKCS7Signer) bool {
				return bytes.Equal(s.Serial, trusted.SerialNumber.Bytes())
			})
			if len(p.Signers) != 2 || i < 0 {
				t.Fatalf("%s: %d signers, trusted at %d", c.dir, len(p.Signers), i)
			}
			positions[i] = true
			c.label = fmt.Sprintf("keys %s, T %d of 2", strings.Join(c.keys, "+"), i+1)
		}
		os.MkdirAll(filepath.Join(stage, "sig", c.dir), 0o755)
		if err := os.WriteFile(filepath.Join(stage, "sig", c.dir, "kmpack_hello.ko"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !positions[0] || !positions[1] {
		t.Fatalf("the dual-signed builds must have the trusted signer first and second: %v", positions)
	}
	t.Logf("keys made and %d builds signed in %.0fs", len(cases), time.Since(start).Seconds())

	// T's certificate into db of a copy of OVMF's store.
	der, err := os.ReadFile(filepath.Join(keyDir, "T", sign.CertDERFile))
	if err != nil {
		t.Fatal(err)
	}
	store, err := os.ReadFile(ovmfVars)
	if err != nil {
		t.Fatal(err)
	}
	owner := efivars.MustGUID("6b6d7061-636b-6532-6573-69676e000001") // any GUID names the owner
	store, err = efivars.Set(store, "db", efivars.ImageSecurityDatabase, efivars.DBAttributes, efivars.X509SignatureList(owner, der))
	if err != nil {
		t.Fatal(err)
	}
	vars := filepath.Join(t.TempDir(), "OVMF_VARS_4M.fd")
	if err := os.WriteFile(vars, store, 0o644); err != nil {
		t.Fatal(err)
	}

	var tries strings.Builder
	for _, c := range cases {
		fmt.Fprintf(&tries, "try %s %d\n", c.dir, c.greeting)
	}
	// Each try prints insmod's exit and error, whether the module is in /proc/modules (then
	// unloads it for the next try), and what the kernel logged meanwhile (dmesg -c).
	initScript := `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "E2E kernel $(uname -r)"
echo "E2E enforce $(cat /sys/module/module/parameters/sig_enforce)"
dmesg -c | sed 's/^/E2E boot /'
try() {
	if insmod /sig/$1/kmpack_hello.ko greeting=$2 2>/tmp/err; then rc=0; else rc=$?; fi
	echo "E2E rc $1 $rc"
	sed "s/^/E2E err $1 /" /tmp/err
	if grep -q '^kmpack_hello ' /proc/modules; then echo "E2E proc $1"; rmmod kmpack_hello; fi
	dmesg -c | sed "s/^/E2E dmesg $1 /"
}
` + tries.String() + `
echo "E2E tainted $(cat /proc/sys/kernel/tainted)"
echo "E2E uptime $(cut -d' ' -f1 /proc/uptime)"
echo "E2E end"
poweroff -f
`
	initrd, err := initramfs(t, stage, initScript)
	if err != nil {
		t.Fatal(err)
	}
	vmlinuz := filepath.Join(testenv.UnpackedDeb(t, "linux-image-"+k), "boot/vmlinuz-"+k)
	bootStart := time.Now()
	lines, err := guest(k, "-machine", "q35", "-m", "512", "-nographic", "-no-reboot", "-nic", "none",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
		"-drive", "if=pflash,format=raw,unit=1,file="+vars,
		"-kernel", vmlinuz, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet module.sig_enforce=1")
	if err != nil {
		t.Fatal(err)
	}
	bootTime := time.Since(bootStart)

	// What the guest printed, by kind and case. Kernel log lines lose their timestamps.
	stamp := regexp.MustCompile(`^\[ *[0-9.]+\] `)
	got := map[string]map[string][]string{}
	for _, l := range lines {
		kind, rest, _ := strings.Cut(l, " ")
		c, msg, _ := strings.Cut(rest, " ")
		if kind == "boot" || kind == "enforce" || kind == "tainted" || kind == "uptime" {
			c, msg = "", rest
		}
		if got[kind] == nil {
			got[kind] = map[string][]string{}
		}
		got[kind][c] = append(got[kind][c], stamp.ReplaceAllString(msg, ""))
	}
	t.Logf("OVMF boot of %s with %d insmods: %.0fs (the kernel's share: %s s of uptime)", k, len(cases), bootTime.Seconds(), strings.Join(got["uptime"][""], ""))
	var rows []result
	row := func(what, expected, observed string) {
		rows = append(rows, result{"qemu-sig", k, what, expected, observed})
	}

	// The kernel enforces signatures and trusts T through db.
	row("sig_enforce", "Y", strings.Join(got["enforce"][""], " "))
	wantCert := fmt.Sprintf("Loaded X.509 cert 'kmpack e2e key T: %x'", trusted.SubjectKeyId)
	row("db cert", "UEFI:db: "+wantCert, dbCert(got["boot"][""]))
	for _, c := range cases {
		rc, proc := strings.Join(got["rc"][c.dir], " "), len(got["proc"][c.dir]) > 0
		var obs string
		switch {
		case rc == "0" && proc:
			log := fmt.Sprintf("kmpack-hello: loaded, greeting=%d", c.greeting)
			if slices.ContainsFunc(got["dmesg"][c.dir], func(l string) bool { return strings.Contains(l, log) }) {
				obs = fmt.Sprintf(loaded, c.greeting)
			} else {
				obs = "loaded, but the log lacks " + log
			}
		case rc == "0":
			obs = "insmod exit 0, not in /proc/modules"
		default:
			// busybox insmod: "insmod: can't insert 'F': <strerror>"; the kernel logs the
			// reason once per syscall it tries (finit_module, then init_module).
			errText := strings.Join(got["err"][c.dir], " ")
			if i := strings.LastIndex(errText, "': "); i >= 0 {
				errText = errText[i+3:]
			}
			var klog []string
			for _, l := range got["dmesg"][c.dir] {
				if !slices.Contains(klog, l) {
					klog = append(klog, l)
				}
			}
			obs = fmt.Sprintf("refused (exit %s): %s; %s", rc, errText, strings.Join(klog, " | "))
			if proc {
				obs += " (but in /proc/modules)"
			}
		}
		row(c.label, c.expected, obs)
	}
	// No module got in unverified: the kernel's E taint (8192) was never set.
	var taint int
	fmt.Sscan(strings.Join(got["tainted"][""], ""), &taint)
	row("taint", "no E (unsigned module) taint", map[bool]string{true: "no E (unsigned module) taint", false: fmt.Sprintf("tainted %d", taint)}[taint&8192 == 0 && len(got["tainted"][""]) > 0])
	report(t, rows, start)
}

// dbCert finds the certificate the kernel loaded from db: integrity's "Loading X.509
// certificate: UEFI:db" line, then the "Loaded X.509 cert" line naming a kmpack key.
func dbCert(boot []string) string {
	for i, l := range boot {
		if j := strings.Index(l, "Loaded X.509 cert 'kmpack"); j >= 0 {
			if i > 0 && strings.HasSuffix(boot[i-1], "Loading X.509 certificate: UEFI:db") {
				return "UEFI:db: " + l[j:]
			}
			return "not from db: " + l[j:]
		}
	}
	return "no kmpack certificate loaded"
}
