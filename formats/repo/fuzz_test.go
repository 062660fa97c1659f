package repo

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
)

// FuzzReadRPM: any bytes as an .rpm give a package or a one-line input error naming the
// file, never a panic.
func FuzzReadRPM(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	stage := f.TempDir()
	os.MkdirAll(filepath.Join(stage, "etc"), 0o755)
	os.WriteFile(filepath.Join(stage, "etc", "x.conf"), []byte("x"), 0o644)
	f.Add(testenv.MustRead(f, testenv.BuildRPM(f, testenv.RPMSpec{Name: "seed", Version: "1", Arch: "noarch", Stage: stage, Provides: []string{"ksym(default:x) = 1234abcd"}}, f.TempDir())))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "fuzz.rpm")
		os.WriteFile(p, data, 0o644)
		_, err := readRPM(p)
		testenv.CheckInputError(t, p, err)
	})
}

func archSeed(pkginfo string, files ...string) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: ".PKGINFO", Size: int64(len(pkginfo)), Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Write([]byte(pkginfo))
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f, Mode: 0o644, Typeflag: tar.TypeReg})
	}
	tw.Close()
	return gzipBytes(b.Bytes())
}

// FuzzReadArchPkg: any bytes as a .pkg.tar.gz give a package whose desc entry has no stray
// line breaks, or a one-line input error naming the file, never a panic.
func FuzzReadArchPkg(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	f.Add(archSeed("pkgname = a\npkgver = 1-1\narch = x86_64\ndepend = linux\n", "usr/lib/x"))
	f.Add(archSeed("pkgname = a\npkgname = b\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "fuzz.pkg.tar.gz")
		os.WriteFile(p, data, 0o644)
		a, err := readArchPkg(p)
		testenv.CheckInputError(t, p, err)
		if err != nil {
			return
		}
		a.file = "archlinux/fuzz.pkg.tar.gz"
		for _, block := range strings.Split(strings.TrimSuffix(string(a.desc()), "\n\n"), "\n\n") {
			if !strings.HasPrefix(block, "%") {
				t.Fatalf("desc block %q", block)
			}
		}
	})
}
