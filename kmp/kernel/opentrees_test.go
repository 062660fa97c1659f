package kernel_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/kmpack/kmpack/kmp/kernel"
)

// smallTree writes the least a directory needs to be described as a kernel tree.
func smallTree(t *testing.T, dir, symvers string) {
	t.Helper()
	for name, data := range map[string]string{
		"Makefile":                       "all:\n",
		".config":                        "CONFIG_X86_64=y\nCONFIG_MODVERSIONS=y\n",
		"include/generated/utsrelease.h": "#define UTS_RELEASE \"6.1.0-1-amd64\"\n",
		"Module.symvers":                 symvers,
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A tree described with and without keeping its table has the same counts, a symbol defined
// twice counting once, by its last definition (modpost's rule).
func TestSymversCountsWithAndWithoutTable(t *testing.T) {
	dir := t.TempDir()
	smallTree(t, dir, "0x1\tfoo\tvmlinux\tEXPORT_SYMBOL\t\n0x2\tbar\tvmlinux\tEXPORT_SYMBOL\t\n0x3\tfoo\tdrivers/m\tEXPORT_SYMBOL\t\n")
	a, err := kernel.OpenKernelTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := kernel.OpenKernelTreeWithSymvers(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []*kernel.KernelTree{a, b} {
		if tr.Symvers.Symbols != 2 || tr.Symvers.Vmlinux != 1 {
			t.Errorf("%d symbols, %d from vmlinux; want 2 and 1", tr.Symvers.Symbols, tr.Symvers.Vmlinux)
		}
	}
}

// Discovery looks at each candidate once: a Makefile that comes and goes (anyone who can
// write in /usr/src) never gives a tree that was not opened.
func TestDiscoverWhileATreeChanges(t *testing.T) {
	root := t.TempDir()
	for _, n := range []string{"a", "b", "c"} {
		smallTree(t, filepath.Join(root, "usr/src/linux-headers-"+n), "0x1\tfoo\tvmlinux\tEXPORT_SYMBOL\t\n")
	}
	mk := filepath.Join(root, "usr/src/linux-headers-b/Makefile")
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			os.Remove(mk)
			os.WriteFile(mk, []byte("all:\n"), 0o644)
		}
	}()
	defer func() { stop.Store(true); <-done }()
	for i := range 500 {
		d, err := func() (d *kernel.Discovery, err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("panic: %v", r)
				}
			}()
			return kernel.DiscoverKernelTrees(root)
		}()
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if len(d.Trees)+len(d.Skipped) != 3 {
			t.Fatalf("round %d: %d trees and %d skipped, want 3 in all", i, len(d.Trees), len(d.Skipped))
		}
		for _, tr := range d.Trees {
			if tr == nil {
				t.Fatalf("round %d: a nil tree", i)
			}
		}
	}
}
