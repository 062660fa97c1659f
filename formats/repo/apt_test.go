package repo

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
)

// debWith is a Debian package whose control.tar.gz holds control.
func debWith(control string) []byte {
	var tgz bytes.Buffer
	zw := gzip.NewWriter(&tgz)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "./control", Mode: 0o644, Size: int64(len(control)), Typeflag: tar.TypeReg})
	tw.Write([]byte(control))
	tw.Close()
	zw.Close()
	var b bytes.Buffer
	b.WriteString("!<arch>\n")
	member := func(name string, data []byte) {
		fmt.Fprintf(&b, "%-16s%-12d%-6d%-6d%-8s%-10d`\n", name, 0, 0, 0, "100644", len(data))
		b.Write(data)
		if len(data)%2 == 1 {
			b.WriteByte('\n')
		}
	}
	member("debian-binary", []byte("2.0\n"))
	member("control.tar.gz", tgz.Bytes())
	member("data.tar.gz", nil)
	return b.Bytes()
}

const goodControl = "Package: hello\nVersion: 1:1.0-1\nArchitecture: amd64\nDescription: x\n more\n"

func TestReadDeb(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ok.deb")
	os.WriteFile(p, debWith(goodControl), 0o644)
	d, err := readDeb(p)
	if err != nil {
		t.Fatal(err)
	}
	if d.name != "hello" || d.version != "1:1.0-1" || d.arch != "amd64" || d.fields[3].value != "x\n more" {
		t.Errorf("parsed %+v", d)
	}
	for name, control := range map[string]string{
		"two-paragraphs": goodControl + "\nPackage: other\n",
		"filename":       goodControl + "Filename: ../../etc/passwd\n",
		"duplicate":      goodControl + "Package: again\n",
		"no-version":     "Package: hello\nArchitecture: amd64\n",
		"bad-name":       "Package: ../x\nVersion: 1\nArchitecture: amd64\n",
		"control-char":   goodControl + "X-Bell: \a\n",
		"continuation":   " leading\n" + goodControl,
		"empty":          "",
	} {
		p := filepath.Join(dir, name+".deb")
		os.WriteFile(p, debWith(control), 0o644)
		_, err := readDeb(p)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		testenv.CheckInputError(t, p, err)
	}
}

// FuzzReadDeb: any bytes as a .deb give a package or a one-line input error naming the file,
// never a panic; an accepted control file renders a Packages stanza that reads back as one
// paragraph with the same fields.
func FuzzReadDeb(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	f.Add(debWith(goodControl))
	f.Add(debWith(goodControl + "\nPackage: b\n"))
	f.Add([]byte("!<arch>\ndebian-binary/  0           0     0     100644  4         `\n2.0\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "fuzz.deb")
		os.WriteFile(p, data, 0o644)
		d, err := readDeb(p)
		testenv.CheckInputError(t, p, err)
		if err != nil {
			return
		}
		for _, fl := range d.fields {
			if strings.Contains(fl.value, "\n\n") || strings.HasSuffix(fl.value, "\n") {
				t.Fatalf("field %s would end the stanza: %q", fl.name, fl.value)
			}
		}
	})
}

func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			b, _ := os.ReadFile(p)
			files[p] = string(b)
		}
		return nil
	})
	return files
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// A packages.json naming a file whose name would break an index line is refused, naming the
// index; so is a file in the repository's pool under such a name.
func TestHostileNames(t *testing.T) {
	out := t.TempDir()
	pk := filepath.Join(out, "packages")
	os.MkdirAll(pk, 0o755)
	index := filepath.Join(pk, "packages.json")
	os.WriteFile(index, []byte(`[{"file":"a\nFilename: x.deb","format":"deb"}]`), 0o644)
	_, err := Collect([]string{out})
	testenv.CheckInputError(t, index, err)
	if err == nil {
		t.Errorf("a file name with a line break was accepted")
	}
	repo := t.TempDir()
	bad := filepath.Join(repo, "pool/main/h/evil\nName: x/hello_1_amd64.deb")
	os.MkdirAll(filepath.Dir(bad), 0o755)
	os.WriteFile(bad, debWith(goodControl), 0o644)
	_, err = scanPool(repo)
	if err == nil || !kmp.IsInputError(err) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "a pool path kmpack does not write") {
		t.Errorf("a pool path with a line break: %v", err)
	}
}

// A publication that fails while writing leaves the repository as it was: the package files
// it had copied in are removed, the old metadata stays.
func TestFailedPublicationLeavesRepository(t *testing.T) {
	src := t.TempDir()
	mk := func(name string) Package {
		p := filepath.Join(src, name+"_1_amd64.deb")
		os.WriteFile(p, debWith("Package: "+name+"\nVersion: 1\nArchitecture: amd64\n"), 0o644)
		return Package{Path: p, Written: formats.Written{Name: name, Arch: "amd64", Format: "deb"}}
	}
	repo := filepath.Join(t.TempDir(), "repo")
	o := Options{Dir: repo, Date: time.Unix(1700000000, 0)}
	if _, err := Publish([]Package{mk("first")}, o); err != nil {
		t.Fatal(err)
	}
	// The second new package's place in the pool is taken by a directory: its copy fails
	// after the first new package was copied.
	os.MkdirAll(filepath.Join(repo, "pool/main/z/zeta/zeta_1_amd64.deb/x"), 0o755)
	before := snapshotDir(t, repo)
	if _, err := Publish([]Package{mk("alpha"), mk("zeta")}, o); err == nil {
		t.Fatal("publication into a blocked pool path succeeded")
	}
	if after := snapshotDir(t, repo); !equalMaps(before, after) {
		t.Errorf("the failed publication changed the repository")
	}
	if _, err := os.Stat(filepath.Join(repo, "pool/main/a/alpha/alpha_1_amd64.deb")); err == nil {
		t.Errorf("the package copied before the failure stayed")
	}
}
