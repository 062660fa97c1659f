package repo

import (
	"bytes"
	"compress/gzip"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
)

func rpmPackage(t *testing.T, name string) Package {
	t.Helper()
	stage := t.TempDir()
	os.MkdirAll(filepath.Join(stage, "etc"), 0o755)
	os.WriteFile(filepath.Join(stage, "etc", name+".conf"), []byte(name), 0o644)
	p := testenv.BuildRPM(t, testenv.RPMSpec{Name: name, Version: "1.0", Arch: "noarch", Stage: stage}, t.TempDir())
	return Package{Path: p, Written: formats.Written{Name: name, Arch: "noarch", Format: "rpm"}}
}

// An rpm-md repository: the indexes repomd.xml names are there with its checksums, primary
// lists the packages (with their /etc files), a second publication of the same packages
// writes nothing, a third with one more keeps the first package's file.
func TestPublishRPMMD(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	o := Options{Dir: dir, Date: time.Unix(1700000000, 0)}
	a := rpmPackage(t, "alpha")
	res, err := Publish([]Package{a}, o)
	if err != nil || !res.Changed || len(res.Added) != 1 {
		t.Fatalf("publish: %+v %v", res, err)
	}
	before := snapshotDir(t, dir)
	if res, err := Publish([]Package{a}, o); err != nil || res.Changed {
		t.Fatalf("second publish: %+v %v", res, err)
	}
	if after := snapshotDir(t, dir); !equalMaps(before, after) {
		t.Errorf("the second publication changed the repository")
	}
	if _, err := Publish([]Package{rpmPackage(t, "beta")}, o); err != nil {
		t.Fatal(err)
	}
	var repomd struct {
		Data []struct {
			Type     string `xml:"type,attr"`
			Location struct {
				Href string `xml:"href,attr"`
			} `xml:"location"`
			Checksum string `xml:"checksum"`
		} `xml:"data"`
	}
	if err := xml.Unmarshal(testenv.MustRead(t, filepath.Join(dir, "repodata/repomd.xml")), &repomd); err != nil || len(repomd.Data) != 3 {
		t.Fatalf("repomd.xml: %v %+v", err, repomd)
	}
	for _, d := range repomd.Data {
		b := testenv.MustRead(t, filepath.Join(dir, d.Location.Href))
		if hashBytes(b).sha256 != d.Checksum {
			t.Errorf("%s: checksum differs from repomd.xml's", d.Location.Href)
		}
		if d.Type != "primary" {
			continue
		}
		zr, err := gzip.NewReader(bytesReader(b))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(zr)
		var md struct {
			Packages []struct {
				Name  string   `xml:"name"`
				Files []string `xml:"format>file"`
				Href  struct {
					Href string `xml:"href,attr"`
				} `xml:"location"`
			} `xml:"package"`
		}
		if err := xml.Unmarshal(raw, &md); err != nil || len(md.Packages) != 2 || md.Packages[0].Name != "alpha" || md.Packages[1].Name != "beta" {
			t.Fatalf("primary: %v %+v", err, md)
		}
		if len(md.Packages[0].Files) != 1 || md.Packages[0].Files[0] != "/etc/alpha.conf" {
			t.Errorf("primary files of alpha: %q", md.Packages[0].Files)
		}
	}
	if testenv.MustRead(t, filepath.Join(dir, res.Added[0]))[0] != 0xed {
		t.Errorf("alpha's file changed")
	}

	// Not an RPM though packages.json says so: one line naming it, nothing written.
	fake := filepath.Join(t.TempDir(), "fake.rpm")
	os.WriteFile(fake, []byte("not an rpm"), 0o644)
	before = snapshotDir(t, dir)
	_, err = Publish([]Package{{Path: fake, Written: formats.Written{Name: "fake", Arch: "noarch", Format: "rpm"}}}, o)
	testenv.CheckInputError(t, fake, err)
	if err == nil || !equalMaps(before, snapshotDir(t, dir)) {
		t.Errorf("a fake RPM: %v, or the repository changed", err)
	}
}

// Files that are not Arch packages though their names say so: one-line errors naming them.
func TestReadArchPkgRefuses(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string][]byte{
		"garbage.pkg.tar.zst": []byte("not zstd"),
		"empty.pkg.tar":       make([]byte, 1024),
		"noinfo.pkg.tar.gz":   gzipBytes([]byte("x")),
		"name.zip":            []byte("PK"),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		_, err := readArchPkg(p)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		testenv.CheckInputError(t, p, err)
	}
}

func gzipBytes(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}
