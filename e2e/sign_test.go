package e2e

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
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
	// With Secure Boot (SMM), and a store with Debian's PK, Microsoft's KEK and db, SB on.
	ovmfCodeSecboot = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
	ovmfVarsMS      = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
)

// shimLock is the vendor GUID of shim's variables (MokList).
var shimLock = efivars.MustGUID("605dab50-e046-4300-abb6-3dd810dd8b23")

// busybox insmod exits with the errno of the failed syscall: 129 is EKEYREJECTED.
const loadedFmt = "loaded: in /proc/modules, greeting=%d"

// signCase is one kmpack build of the hello module that the guest insmods.
type signCase struct {
	dir, label string
	keys       []string // key names, in the order given to kmpack build
	greeting   int      // its parameter, so each load is told apart in the log
	expected   string
}

// TestSignedModulesInRealKernel proves kmpack's module signatures in Debian's real 6.1 kernel
// enforcing signatures. Key T, made by kmpack keygen, is trusted two ways, booted at once
// (shared/reference/secure-boot.md §3, §4):
//   - qemu-db: T's certificate in UEFI db of a copy of OVMF's variable store, the kernel booted
//     directly by OVMF without Secure Boot and with module.sig_enforce=1 (Debian's kernel loads db
//     certificates into its .platform keyring and consults it for modules);
//   - qemu-mok: the real Secure Boot chain, Microsoft-signed shim -> Debian's signed grub ->
//     Debian's signed kernel, with T's certificate in shim's MokList (no option on the command
//     line: Secure Boot locks the kernel down, which enforces signatures).
//
// In each, busybox insmod tries builds of the hello module: unsigned, signed by an untrusted key,
// by T, and by two keys of which only T is trusted, with T's SignerInfo first and second. What
// counts is what the kernel did: insmod's exit and error, /proc/modules, and the kernel's log.
func TestSignedModulesInRealKernel(t *testing.T) {
	testenv.Need(t, "qemu-system-x86_64", "busybox", "cpio", "gzip")
	for _, f := range []string{ovmfCode, ovmfVars, ovmfCodeSecboot, ovmfVarsMS} {
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

	cases := []*signCase{
		{dir: "unsigned", label: "unsigned", greeting: 1,
			expected: "refused (exit 129): Key was rejected by service; Loading of unsigned module is rejected"},
		{dir: "untrusted", label: "key A (untrusted)", keys: []string{"A"}, greeting: 2,
			expected: "refused (exit 129): Key was rejected by service; Loading of module with unavailable key is rejected"},
		{dir: "trusted", label: "key T (trusted)", keys: []string{"T"}, greeting: 3, expected: fmt.Sprintf(loadedFmt, 3)},
		// Key rotation: two signers, only T trusted; given in both orders on the command line.
		{dir: "dual-ta", keys: []string{"T", "A"}, greeting: 4, expected: fmt.Sprintf(loadedFmt, 4)},
		{dir: "dual-zt", keys: []string{"Z", "T"}, greeting: 5, expected: fmt.Sprintf(loadedFmt, 5)},
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

	der, err := os.ReadFile(filepath.Join(keyDir, "T", sign.CertDERFile))
	if err != nil {
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
mount -t securityfs securityfs /sys/kernel/security
echo "E2E kernel $(uname -r)"
echo "E2E enforce $(cat /sys/module/module/parameters/sig_enforce)"
echo "E2E lockdown $(cat /sys/kernel/security/lockdown)"
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
	initrd, err := initramfs(t, stage, initScript, "/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	// linux-image-6.1.0-53-amd64's vmlinuz is the one Debian signs for Secure Boot.
	vmlinuz := filepath.Join(testenv.UnpackedDeb(t, "linux-image-"+k), "boot/vmlinuz-"+k)

	esp := secureBootESP(t, vmlinuz, initrd)

	// Both ways to trust T, booted at once.
	setups := []trustSetup{
		{where: "qemu-db", vars: ovmfVars, variable: "db", vendor: efivars.ImageSecurityDatabase, attrs: efivars.DBAttributes,
			source: "UEFI:db", lockdown: "[none] integrity confidentiality",
			args: func(vars string) []string {
				return []string{"-machine", "q35",
					"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + ovmfCode,
					"-drive", "if=pflash,format=raw,unit=1,file=" + vars,
					"-kernel", vmlinuz, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet module.sig_enforce=1"}
			}},
		{where: "qemu-mok", vars: ovmfVarsMS, variable: "MokList", vendor: shimLock, attrs: efivars.NonVolatile | efivars.BootserviceAccess,
			source: "UEFI:MokListRT (MOKvar table)", lockdown: "none [integrity] confidentiality",
			args: func(vars string) []string {
				return []string{"-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on",
					"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + ovmfCodeSecboot,
					"-drive", "if=pflash,format=raw,unit=1,file=" + vars,
					"-drive", "file=fat:" + esp + ",format=raw,if=virtio,readonly=on"}
			}},
	}
	var rows []result
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, su := range setups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := su.run(t, k, der, cases, trusted)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("%s: %v", su.where, err)
			}
			rows = append(rows, r...)
		}()
	}
	wg.Wait()
	report(t, rows, start)
}

// trustSetup is one way to make the kernel trust T: which OVMF store gets T's certificate in
// which variable, how qemu boots, and what the kernel must say about it.
type trustSetup struct {
	where, vars, variable string
	vendor                efivars.GUID
	attrs                 uint32
	// source is how the kernel names where it loaded T from; lockdown its lockdown state.
	source, lockdown string
	args             func(vars string) []string
}

// run writes T's certificate (DER) into a copy of the setup's variable store, boots the kernel
// and returns the table rows: enforcement, T loaded from the expected source, each case.
func (su trustSetup) run(t *testing.T, k string, der []byte, cases []*signCase, trusted *x509.Certificate) ([]result, error) {
	store, err := os.ReadFile(su.vars)
	if err != nil {
		return nil, err
	}
	owner := efivars.MustGUID("6b6d7061-636b-6532-6573-69676e000001") // any GUID names the owner
	store, err = efivars.Set(store, su.variable, su.vendor, su.attrs, efivars.X509SignatureList(owner, der))
	if err != nil {
		return nil, err
	}
	vars := filepath.Join(t.TempDir(), "OVMF_VARS_4M.fd") // the firmware writes to it
	if err := os.WriteFile(vars, store, 0o644); err != nil {
		return nil, err
	}
	bootStart := time.Now()
	lines, err := guest(k, "qemu-system-x86_64", append([]string{"-m", "512", "-nographic", "-no-reboot", "-nic", "none"}, su.args(vars)...)...)
	if err != nil {
		return nil, err
	}
	bootTime := time.Since(bootStart)

	// What the guest printed, by kind and case. Kernel log lines lose their timestamps.
	stamp := regexp.MustCompile(`^\[ *[0-9.]+\] `)
	got := map[string]map[string][]string{}
	for _, l := range lines {
		kind, rest, _ := strings.Cut(l, " ")
		c, msg, _ := strings.Cut(rest, " ")
		if kind != "rc" && kind != "err" && kind != "proc" && kind != "dmesg" {
			c, msg = "", rest
		}
		if got[kind] == nil {
			got[kind] = map[string][]string{}
		}
		got[kind][c] = append(got[kind][c], stamp.ReplaceAllString(msg, ""))
	}
	t.Logf("%s: boot of %s with %d insmods: %.0fs (the kernel's share: %s s of uptime)", su.where, k, len(cases), bootTime.Seconds(), strings.Join(got["uptime"][""], ""))
	var rows []result
	row := func(what, expected, observed string) {
		rows = append(rows, result{su.where, k, what, expected, observed})
	}

	// Secure Boot (lockdown) only through shim; signatures enforced either way; T trusted.
	row("lockdown", su.lockdown, strings.Join(got["lockdown"][""], " "))
	row("sig_enforce", "Y", strings.Join(got["enforce"][""], " "))
	wantCert := fmt.Sprintf("Loaded X.509 cert 'kmpack e2e key T: %x'", trusted.SubjectKeyId)
	row("T's cert", su.source+": "+wantCert, loadedCert(got["boot"][""]))
	for _, c := range cases {
		rc, proc := strings.Join(got["rc"][c.dir], " "), len(got["proc"][c.dir]) > 0
		var obs string
		switch {
		case rc == "0" && proc:
			log := fmt.Sprintf("kmpack-hello: loaded, greeting=%d", c.greeting)
			if slices.ContainsFunc(got["dmesg"][c.dir], func(l string) bool { return strings.Contains(l, log) }) {
				obs = fmt.Sprintf(loadedFmt, c.greeting)
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
			// Only the kernel's lines about modules: others the boot prints meanwhile (the TSC
			// clocksource switch, seconds in) are not the refusal.
			var klog []string
			for _, l := range got["dmesg"][c.dir] {
				if strings.Contains(strings.ToLower(l), "module") && !slices.Contains(klog, l) {
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
	return rows, nil
}

// loadedCert finds the kmpack certificate the kernel loaded at boot: integrity's "Loading X.509
// certificate: SOURCE" line, then the "Loaded X.509 cert" line naming it; it returns "SOURCE:
// Loaded X.509 cert '...'".
func loadedCert(boot []string) string {
	const loading = "Loading X.509 certificate: "
	for i, l := range boot {
		if j := strings.Index(l, "Loaded X.509 cert 'kmpack"); j >= 0 {
			if i > 0 && strings.Contains(boot[i-1], loading) {
				_, src, _ := strings.Cut(boot[i-1], loading)
				return src + ": " + l[j:]
			}
			return "from an unnamed source: " + l[j:]
		}
	}
	return "no kmpack certificate loaded"
}

// secureBootESP makes the EFI system partition of the Secure Boot chain as a directory (qemu
// serves it as a FAT disk): Microsoft-signed shim as the removable-media loader, its MokManager,
// Debian's signed grub with a grub.cfg that boots the kernel and initramfs at once. No fallback
// (fbx64.efi), so shim starts grub.
func secureBootESP(t *testing.T, vmlinuz, initrd string) string {
	esp := t.TempDir()
	boot := filepath.Join(esp, "EFI/BOOT")
	os.MkdirAll(boot, 0o755)
	files := map[string]string{
		filepath.Join(testenv.UnpackedDeb(t, "shim-signed"), "usr/lib/shim/shimx64.efi.signed"):                             "EFI/BOOT/BOOTX64.EFI",
		filepath.Join(testenv.UnpackedDeb(t, "shim-helpers-amd64-signed"), "usr/lib/shim/mmx64.efi.signed"):                 "EFI/BOOT/mmx64.efi",
		filepath.Join(testenv.UnpackedDeb(t, "grub-efi-amd64-signed"), "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"): "EFI/BOOT/grubx64.efi",
		vmlinuz: "vmlinuz",
		initrd:  "initrd.gz",
	}
	for src, dst := range files {
		if err := os.WriteFile(filepath.Join(esp, dst), testenv.MustRead(t, src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := "set timeout=0\nlinux /vmlinuz console=ttyS0 panic=-1 quiet\ninitrd /initrd.gz\nboot\n"
	if err := os.WriteFile(filepath.Join(boot, "grub.cfg"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return esp
}
