package kmp

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// readBounded takes the file's size as a hint only: a file that grew or shrank after its stat
// is read whole, and nothing past max+1 bytes is read.
func TestReadBounded(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	for _, c := range []struct {
		name      string
		size, max int64
		want      int
	}{
		{"exact", 10000, 20000, 10000},
		{"grew", 10, 20000, 10000},
		{"shrank", 50000, 60000, 10000},
		{"unknown", -1, 20000, 10000},
		{"stat says 0, as /proc files do", 0, 20000, 10000},
		{"at max", 10000, 10000, 10000},
		{"over max", 10000, 9999, 10000}, // max+1 read: the caller sees it is too large
		{"hint over max", 10000, 100, 101},
		{"claims a terabyte", 1 << 40, 1 << 40, 10000}, // at most preallocLimit before the bytes come
	} {
		t.Run(c.name, func(t *testing.T) {
			// One byte per Read: the loop, not one lucky call, must put the file together.
			got, err := readBounded(iotestOneByte{bytes.NewReader(data)}, c.size, c.max)
			if err != nil || len(got) != c.want || !bytes.Equal(got, data[:c.want]) {
				t.Fatalf("read %d bytes, err %v; want %d", len(got), err, c.want)
			}
		})
	}
}

// A bound that max+1 would overflow, or a negative one, is an error, not a panic.
func TestReadBoundedOutOfRange(t *testing.T) {
	for _, limit := range []int64{-1, math.MaxInt64, maxReadBound + 1} {
		if b, err := readBounded(strings.NewReader("x"), 1, limit); err == nil {
			t.Errorf("limit %d: read %q, want an error", limit, b)
		}
	}
}

type iotestOneByte struct{ r io.Reader }

func (o iotestOneByte) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

// HashRootFile is the file's sha256, refuses what ReadRootFile refuses, and never blocks on a FIFO.
func TestHashRootFile(t *testing.T) {
	dir := t.TempDir()
	data := []byte(strings.Repeat("symvers\n", 5000))
	if err := os.WriteFile(filepath.Join(dir, "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	sum, err := HashRootFile(root, "f", 1<<20)
	if err != nil || sum != sha256.Sum256(data) {
		t.Fatalf("HashRootFile = %x, %v; want %x", sum, err, sha256.Sum256(data))
	}
	if _, err := HashRootFile(root, "f", int64(len(data)-1)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("a file over the bound: %v", err)
	}
	if _, err := HashRootFile(root, "fifo", 1<<20); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a FIFO: %v", err)
	}
	if _, err := HashRootFile(root, "out", 1<<20); err == nil {
		t.Fatal("a symlink out of the root was followed")
	}
	b, _, err := ReadRootFile(root, "f", 1<<20)
	if err != nil || !bytes.Equal(b, data) {
		t.Fatalf("ReadRootFile: %d bytes, %v", len(b), err)
	}
}

// A file whose stat says 0 bytes but has content (the kernel's /proc files) is read whole.
func TestReadRootFileSizeZero(t *testing.T) {
	root, err := os.OpenRoot("/proc/self")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	fi, err := root.Stat("status")
	if err != nil || fi.Size() != 0 {
		t.Fatalf("/proc/self/status: size %v, %v; the test needs a file that reports 0", fi, err)
	}
	b, _, err := ReadRootFile(root, "status", 1<<20)
	if err != nil || !bytes.Contains(b, []byte("\nPid:")) || !bytes.Contains(b, []byte("\nVmRSS:")) {
		t.Fatalf("read %d bytes, %v: %q", len(b), err, b)
	}
}
