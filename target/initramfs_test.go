package target_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/target"
)

// TestInitramfsModulesDebian lists the modules of a real initramfs: initramfs-tools'
// mkinitramfs for this machine's 6.12 kernel (zstd, xz-compressed modules, Debian 12's
// defaults), compared with what its own lsinitramfs lists.
func TestInitramfsModulesDebian(t *testing.T) {
	testenv.Need(t, "mkinitramfs", "lsinitramfs")
	k := testenv.Release612
	if _, err := os.Stat(filepath.Join("/lib/modules", k, "kernel")); err != nil {
		t.Skipf("kernel %s not installed: %v", k, err)
	}
	img := filepath.Join(t.TempDir(), "initrd.img-"+k)
	if out, err := exec.Command("mkinitramfs", "-o", img, k).CombinedOutput(); err != nil {
		t.Fatalf("mkinitramfs: %v\n%s", err, out)
	}
	out, err := exec.Command("lsinitramfs", img).Output()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, ".ko") {
			b := filepath.Base(l)
			b = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(b, ".xz"), ".zst"), ".gz")
			want = append(want, strings.ReplaceAll(strings.TrimSuffix(b, ".ko"), "-", "_"))
		}
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := target.InitramfsModules(img, f)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	slices.Sort(want)
	want = slices.Compact(want)
	if len(want) < 10 || !slices.Contains(got, "ext4") || !slices.Equal(got, want) {
		t.Fatalf("%d modules, lsinitramfs lists %d", len(got), len(want))
	}
}

// initramfs writes, with the real cpio and compressors, what initramfs-tools and dracut write
// when there is early microcode: a plain cpio archive, then a compressed one.
func initramfs(t *testing.T, compress string, main ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	archive := func(names ...string) []byte {
		tree := filepath.Join(dir, "tree-"+strings.Join(names, "")[:4])
		os.RemoveAll(tree)
		for _, n := range names {
			os.MkdirAll(filepath.Join(tree, filepath.Dir(n)), 0o755)
			os.WriteFile(filepath.Join(tree, n), []byte("data of "+n), 0o644)
		}
		cmd := exec.Command("sh", "-c", "find . | LC_ALL=C sort | cpio --quiet -o -H newc")
		cmd.Dir = tree
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	early := archive("kernel/x86/microcode/GenuineIntel.bin")
	body := archive(main...)
	if compress != "" {
		cmd := exec.Command(compress, "-c")
		cmd.Stdin = bytes.NewReader(body)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		body = out
	}
	return append(early, body...)
}

func TestInitramfsModulesLayouts(t *testing.T) {
	testenv.Need(t, "cpio", "zstd", "xz", "gzip")
	mods := []string{"usr/lib/modules/K/kernel/fs/ext4/ext4.ko.xz", "usr/lib/modules/K/updates/kmpack-built/kmpack-hello/kmpack-hello.ko", "usr/bin/busybox"}
	for _, c := range []string{"", "gzip", "xz", "zstd"} {
		img := initramfs(t, c, mods...)
		got, err := target.InitramfsModules("initrd", bytes.NewReader(img))
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		slices.Sort(got)
		if !slices.Equal(got, []string{"ext4", "kmpack_hello"}) {
			t.Fatalf("%s: %v", c, got)
		}
		last := len(img) - 40 // inside the compressed stream's end
		if c == "" {
			last = bytes.LastIndex(img, []byte("TRAILER!!!")) - 20 // not the zeros after it
		}
		for _, n := range []int{3, 200, last} {
			_, err := target.InitramfsModules("initrd", bytes.NewReader(img[:n]))
			if err == nil {
				t.Fatalf("%s truncated at %d: accepted", c, n)
			}
			testenv.CheckInputError(t, "initrd", err)
		}
	}
	if _, err := target.InitramfsModules("initrd", bytes.NewReader([]byte("\x04\x22\x4d\x18lz4 frame"))); err == nil || !strings.Contains(err.Error(), "neither a cpio archive") {
		t.Fatalf("lz4: %v", err)
	}
}

// An initramfs is read from /boot by root: hostile input.
func FuzzInitramfsModules(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	f.Add([]byte("070701" + strings.Repeat("0", 8*13) + "\x00"))
	f.Add([]byte("07070100000000000000000000000000000000000000010000000000000000000000000000000000000000000000000000000b00000000TRAILER!!!\x00\x00\x00\x00"))
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		mods, err := target.InitramfsModules("initrd", bytes.NewReader(data))
		testenv.CheckInputError(t, "initrd", err)
		if err == nil && len(mods)*110 > len(data)*1032+110 {
			t.Fatalf("%d modules from %d bytes", len(mods), len(data))
		}
	})
}
