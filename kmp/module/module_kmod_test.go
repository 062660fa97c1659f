package module_test

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/module"
)

// kernelModuleSets are complete kernels: the downloaded 6.1 image package (uncompressed, signed
// .ko) and the 6.12 image setup installs as a dependency of its headers (.ko.xz).
func kernelModuleSets(t *testing.T) map[string]string {
	return map[string]string{
		testenv.Release53:  filepath.Join(testenv.UnpackedDeb(t, "linux-image-"+testenv.Release53), "lib/modules", testenv.Release53, "kernel"),
		testenv.Release612: filepath.Join("/lib/modules", testenv.Release612, "kernel"),
	}
}

// TestAgreesWithKmodOnWholeKernels compares every module of two complete Debian kernels with
// `modinfo` and `modprobe --dump-modversions`, byte for byte.
func TestAgreesWithKmodOnWholeKernels(t *testing.T) {
	testenv.Need(t, "modinfo", "modprobe")
	for krel, dir := range kernelModuleSets(t) {
		t.Run(krel, func(t *testing.T) {
			files := testenv.Modules(t, dir)
			if len(files) < 3000 {
				t.Fatalf("%s: only %d modules, expected a whole kernel", dir, len(files))
			}
			signed, withImports, withParams := 0, 0, 0
			var mu sync.Mutex
			var failures []string
			fail := func(s string) {
				mu.Lock()
				defer mu.Unlock()
				failures = append(failures, s)
			}
			work := make(chan []string)
			var wg sync.WaitGroup
			for w := 0; w < runtime.NumCPU(); w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for batch := range work {
						// modinfo takes many files per run; compare the whole batch's output.
						out, err := exec.Command("modinfo", batch...).Output()
						if err != nil {
							fail(fmt.Sprintf("modinfo on batch starting %s: %v", batch[0], err))
							continue
						}
						var ours bytes.Buffer
						for _, f := range batch {
							m, err := module.ReadModule(f)
							if err != nil {
								fail(err.Error())
								continue
							}
							ours.WriteString(m.ModinfoText(f))
							mu.Lock()
							if m.Signature != nil {
								signed++
							}
							if len(m.Imports) > 0 {
								withImports++
							}
							if len(m.Params) > 0 {
								withParams++
							}
							mu.Unlock()
							mv, err := exec.Command("modprobe", "--dump-modversions", f).Output()
							if err != nil {
								fail(fmt.Sprintf("modprobe --dump-modversions %s: %v", f, err))
							} else if got := m.ModversionsText(); got != string(mv) {
								fail(fmt.Sprintf("%s: modversions differ:\n%s", f, firstDiff(got, string(mv))))
							}
						}
						if ours.String() != string(out) {
							fail(fmt.Sprintf("modinfo output differs in batch starting %s:\n%s", batch[0], firstDiff(ours.String(), string(out))))
						}
					}
				}()
			}
			for i := 0; i < len(files); i += 200 {
				work <- files[i:min(i+200, len(files))]
			}
			close(work)
			wg.Wait()
			for i, f := range failures {
				if i == 10 {
					t.Errorf("... and %d more", len(failures)-10)
					break
				}
				t.Error(f)
			}
			// The comparison must have covered what it claims to.
			if signed != len(files) || withImports < len(files)*9/10 || withParams < 100 {
				t.Errorf("coverage: %d files, %d signed, %d with imports, %d with params", len(files), signed, withImports, withParams)
			}
			t.Logf("%s: %d modules agree with modinfo and modprobe --dump-modversions (%d signed, %d with parameters)", krel, len(files), signed, withParams)
		})
	}
}

// TestExportsAgreeWithModuleSymvers checks every module's exports (names, CRCs, GPL-ness,
// namespaces) against the Module.symvers the same kernel build wrote.
func TestExportsAgreeWithModuleSymvers(t *testing.T) {
	for krel, dir := range kernelModuleSets(t) {
		t.Run(krel, func(t *testing.T) {
			sv, err := module.ReadSymvers(filepath.Join(testenv.HeadersDir(t, krel), "Module.symvers"))
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]module.Symbol{}
			for _, s := range sv.Symbols {
				if s.Module != "vmlinux" {
					want[s.Name] = s
				}
			}
			got := 0
			for _, f := range testenv.Modules(t, dir) {
				m, err := module.ReadModule(f)
				if err != nil {
					t.Fatal(err)
				}
				rel, _ := filepath.Rel(dir, f)
				modPath := strings.TrimSuffix(strings.TrimSuffix(rel, ".xz"), ".ko")
				for _, e := range m.Exports {
					s, ok := want[e.Name]
					switch {
					case !ok:
						t.Errorf("%s exports %s, which Module.symvers does not list", rel, e.Name)
					case s.Module != modPath || !e.HasCRC || s.CRC != e.CRC || s.Export != e.ExportType() || s.Namespace != e.Namespace:
						t.Errorf("%s: export %s = {%s %#x %s %q}, Module.symvers says {%s %#x %s %q}",
							rel, e.Name, modPath, e.CRC, e.ExportType(), e.Namespace, s.Module, s.CRC, s.Export, s.Namespace)
					}
					delete(want, e.Name)
					got++
				}
			}
			for name, s := range want {
				t.Errorf("Module.symvers lists %s from %s, but no module exports it", name, s.Module)
				break
			}
			if got < 10000 {
				t.Errorf("only %d exports compared", got)
			}
			t.Logf("%s: %d module exports agree with Module.symvers", krel, got)
		})
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n  kmpack: %q\n  kmod:   %q", i+1, x, y)
		}
	}
	return "(equal)"
}
