package repo_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/repo"
)

// A stanza as Debian's archive writes it (bookworm-security, trimmed Description).
const headersStanza = `Package: linux-headers-6.1.0-57-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Installed-Size: 12345
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: amd64
Depends: linux-headers-6.1.0-57-common (= 6.1.192-3), linux-kbuild-6.1 (>= 6.1.192-3), linux-compiler-gcc-12-x86
Description: Header files for Linux 6.1.0-57-amd64
 This package provides the architecture-specific kernel header files.
 .
 More.
Section: kernel
Priority: optional
Filename: pool/updates/main/l/linux-signed-amd64/linux-headers-6.1.0-57-amd64_6.1.192-3_amd64.deb
Size: 1841556
SHA256: 515e0075e185aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa

`

func TestParsePackages(t *testing.T) {
	pkgs, err := repo.ParsePackages("Packages", strings.NewReader(headersStanza+strings.Replace(headersStanza, "-57-amd64", "-57-cloud-amd64", -1)))
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != 2 {
		t.Fatalf("%d packages", len(pkgs))
	}
	p := pkgs[0]
	if p.Package != "linux-headers-6.1.0-57-amd64" || p.Version != "6.1.192-3" || p.Size != 1841556 || p.Architecture != "amd64" ||
		!strings.HasPrefix(p.Filename, "pool/updates/main/") || len(p.Depends) != 3 {
		t.Fatalf("%+v", p)
	}
	if d := p.Depends[0]; d.Name != "linux-headers-6.1.0-57-common" || d.Op != "=" || d.Version != "6.1.192-3" {
		t.Fatalf("%+v", d)
	}
	if d := p.Depends[2]; d.Name != "linux-compiler-gcc-12-x86" || d.Op != "" {
		t.Fatalf("%+v", d)
	}
}

func TestParsePackagesRefusesHostile(t *testing.T) {
	for name, stanza := range map[string]string{
		"dotdot":   strings.Replace(headersStanza, "Filename: pool/", "Filename: pool/../../../etc/", 1),
		"absolute": strings.Replace(headersStanza, "Filename: pool/", "Filename: /etc/", 1),
		"size":     strings.Replace(headersStanza, "Size: 1841556", "Size: 99999999999999", 1),
		"negative": strings.Replace(headersStanza, "Size: 1841556", "Size: -1", 1),
		"sha":      strings.Replace(headersStanza, "SHA256: 515e", "SHA256: zz5e", 1),
		"nosha":    strings.Replace(headersStanza, "SHA256:", "MD5sum:", 1),
	} {
		_, err := repo.ParsePackages("http://x/Packages", strings.NewReader(stanza))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		testenv.CheckInputError(t, "http://x/Packages", err)
		t.Logf("%s: %v", name, err)
	}
}

const release = `Origin: Debian
Suite: oldstable-security
Codename: bookworm-security
Valid-Until: Sat, 05 Dec 2026 02:53:00 UTC
Acquire-By-Hash: yes
Architectures: amd64 arm64
Components: updates/main updates/contrib
SHA256:
 9e0b5aab00000000000000000000000000000000000000000000000000008c55  8790396 updates/main/binary-amd64/Packages.xz
 515e692f0000000000000000000000000000000000000000000000000000aaaa 50060337 updates/main/binary-amd64/Packages
`

func TestParseRelease(t *testing.T) {
	rel, err := repo.ParseRelease("Release", []byte(release))
	if err != nil {
		t.Fatal(err)
	}
	if rel.Codename != "bookworm-security" || !rel.AcquireByHash || len(rel.Components) != 2 || rel.Components[0] != "updates/main" || rel.Signed {
		t.Fatalf("%+v", rel)
	}
	if s := rel.SHA256["updates/main/binary-amd64/Packages.xz"]; s.Size != 8790396 {
		t.Fatalf("%+v", rel.SHA256)
	}
	if err := rel.CheckValidUntil("Release", time.Date(2026, 12, 5, 2, 52, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	err = rel.CheckValidUntil("Release", time.Date(2026, 12, 5, 2, 54, 0, 0, time.UTC))
	testenv.CheckInputError(t, "Release", err)
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatal(err)
	}
	_, err = repo.ParseRelease("Release", []byte(strings.Replace(release, "updates/main/binary-amd64/Packages\n", "../../x\n", 1)))
	testenv.CheckInputError(t, "Release", err)
	if err == nil {
		t.Fatal("accepted a .. path")
	}
}

const primary = `<?xml version="1.0" encoding="UTF-8"?>
<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="2">
<package type="rpm">
  <name>kernel-default-devel</name>
  <arch>x86_64</arch>
  <version epoch="0" ver="6.4.0" rel="150600.23.25.1"/>
  <checksum type="sha256" pkgid="YES">aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa</checksum>
  <summary>x</summary>
  <size package="123456" installed="1" archive="2"/>
  <location href="x86_64/kernel-default-devel-6.4.0-150600.23.25.1.x86_64.rpm"/>
  <format>
    <rpm:provides><rpm:entry name="kernel-default-devel" flags="EQ" epoch="0" ver="6.4.0" rel="150600.23.25.1"/></rpm:provides>
    <rpm:requires><rpm:entry name="kernel-devel" flags="EQ" epoch="0" ver="6.4.0" rel="150600.23.25.1"/></rpm:requires>
  </format>
</package>
<package type="rpm">
  <name>kernel-devel</name>
  <arch>noarch</arch>
  <version epoch="0" ver="6.4.0" rel="150600.23.25.1"/>
  <checksum type="sha256" pkgid="YES">bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb</checksum>
  <size package="654321"/>
  <location href="noarch/kernel-devel-6.4.0-150600.23.25.1.noarch.rpm"/>
</package>
</metadata>
`

func TestParsePrimary(t *testing.T) {
	pkgs, err := repo.ParsePrimary("primary.xml", strings.NewReader(primary))
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != 2 || pkgs[0].Name != "kernel-default-devel" || pkgs[0].EVR() != "6.4.0-150600.23.25.1" || pkgs[0].Size != 123456 ||
		len(pkgs[0].Provides) != 1 || len(pkgs[0].Requires) != 1 || pkgs[1].Href != "noarch/kernel-devel-6.4.0-150600.23.25.1.noarch.rpm" {
		t.Fatalf("%+v", pkgs)
	}
	for name, doc := range map[string]string{
		"dotdot": strings.Replace(primary, `href="noarch/`, `href="../`, 1),
		"abs":    strings.Replace(primary, `href="noarch/`, `href="/`, 1),
		"size":   strings.Replace(primary, `package="654321"`, `package="999999999999999"`, 1),
		"bomb":   `<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><metadata>&b;</metadata>`,
		"deep":   "<metadata>" + strings.Repeat("<a>", 100) + strings.Repeat("</a>", 100) + "</metadata>",
		"extent": `<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><metadata><package><name>&x;</name></package></metadata>`,
	} {
		_, err := repo.ParsePrimary("primary.xml", strings.NewReader(doc))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		testenv.CheckInputError(t, "primary.xml", err)
		t.Logf("%s: %v", name, err)
	}
}

const repomd = `<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo" xmlns:rpm="http://linux.duke.edu/metadata/rpm">
  <revision>1764500000</revision>
  <data type="primary">
    <checksum type="sha256">cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc</checksum>
    <open-checksum type="sha256">dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd</open-checksum>
    <location href="repodata/cccc-primary.xml.gz"/>
    <timestamp>1764500000</timestamp>
    <size>1234</size>
    <open-size>5678</open-size>
  </data>
</repomd>
`

func TestParseRepomd(t *testing.T) {
	md, err := repo.ParseRepomd("repomd.xml", strings.NewReader(repomd))
	if err != nil {
		t.Fatal(err)
	}
	p, ok := md.Primary()
	if !ok || p.Href != "repodata/cccc-primary.xml.gz" || p.Size != 1234 || p.OpenSize != 5678 || p.SHA256[0] != 'c' || md.Revision != "1764500000" {
		t.Fatalf("%+v", md)
	}
	_, err = repo.ParseRepomd("repomd.xml", strings.NewReader(strings.Replace(repomd, `href="repodata/`, `href="../`, 1)))
	if err == nil {
		t.Fatal("accepted ..")
	}
	testenv.CheckInputError(t, "repomd.xml", err)
}

func FuzzParsePackages(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	f.Add([]byte(headersStanza))
	f.Add([]byte("Package: a\n b\n\n\nPackage: c\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := repo.ParsePackages("Packages", bytes.NewReader(data))
		testenv.CheckInputError(t, "Packages", err)
	})
}

func FuzzParseRelease(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	f.Add([]byte(release))
	f.Add([]byte("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + release + "-----BEGIN PGP SIGNATURE-----\n\nxx\n-----END PGP SIGNATURE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := repo.ParseRelease("Release", data)
		testenv.CheckInputError(t, "Release", err)
	})
}

func FuzzParsePrimary(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	f.Add([]byte(primary))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := repo.ParsePrimary("primary.xml", bytes.NewReader(data))
		testenv.CheckInputError(t, "primary.xml", err)
	})
}

func FuzzParseRepomd(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	f.Add([]byte(repomd))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := repo.ParseRepomd("repomd.xml", bytes.NewReader(data))
		testenv.CheckInputError(t, "repomd.xml", err)
	})
}
