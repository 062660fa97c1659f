package repo

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/kmpack/kmpack/kmp"
)

// Stanza is one paragraph of a Debian control file: field names as written, values with
// continuation lines joined by "\n" (leading space kept off).
type Stanza map[string]string

// readStanzas reads paragraphs of a control-format file, calling fn for each, bounded by
// MaxEntries and MaxFieldBytes. Field names are matched case-insensitively by canonicalizing to
// the first spelling seen per paragraph (Debian's own tools treat them case-insensitively).
func readStanzas(r io.Reader, fn func(Stanza) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	cur := Stanza{}
	var last string
	n := 0
	flush := func() error {
		if len(cur) == 0 {
			return nil
		}
		n++
		if n > MaxEntries {
			return fmt.Errorf("more than %d stanzas", MaxEntries)
		}
		err := fn(cur)
		cur, last = Stanza{}, ""
		return err
	}
	lineNo := 0
	for {
		line, err := readLine(br)
		if err == io.EOF {
			return flush()
		}
		if err != nil {
			return err
		}
		lineNo++
		if strings.TrimSpace(line) == "" {
			if err := flush(); err != nil {
				return err
			}
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last == "" {
				return fmt.Errorf("line %d: continuation line without a field", lineNo)
			}
			v := cur[last] + "\n" + strings.TrimSpace(line)
			if len(v) > MaxFieldBytes {
				return fmt.Errorf("line %d: field %s longer than %d bytes", lineNo, last, MaxFieldBytes)
			}
			cur[last] = v
			continue
		}
		name, val, ok := strings.Cut(line, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return fmt.Errorf("line %d: not a field: %q", lineNo, truncate(line, 80))
		}
		name = canonicalField(name)
		if _, dup := cur[name]; dup {
			return fmt.Errorf("line %d: field %s given twice", lineNo, name)
		}
		cur[name] = strings.TrimSpace(val)
		last = name
	}
}

// readLine reads one line of at most MaxFieldBytes without its newline.
func readLine(br *bufio.Reader) (string, error) {
	var buf []byte
	for {
		frag, isPrefix, err := br.ReadLine()
		if err != nil {
			if err == io.EOF && len(buf) > 0 {
				return string(buf), nil
			}
			return "", err
		}
		buf = append(buf, frag...)
		if len(buf) > MaxFieldBytes {
			return "", fmt.Errorf("line longer than %d bytes", MaxFieldBytes)
		}
		if !isPrefix {
			return string(buf), nil
		}
	}
}

func canonicalField(name string) string {
	switch strings.ToLower(name) {
	case "package":
		return "Package"
	case "version":
		return "Version"
	case "architecture":
		return "Architecture"
	case "filename":
		return "Filename"
	case "size":
		return "Size"
	case "sha256":
		return "SHA256"
	case "depends":
		return "Depends"
	case "source":
		return "Source"
	case "valid-until":
		return "Valid-Until"
	}
	return name
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// DebPackage is the part of a Packages stanza kmpack uses.
type DebPackage struct {
	Package      string
	Version      string
	Architecture string
	Source       string
	Filename     string // relative to the archive root, checked by CheckPath
	Size         int64
	SHA256       string
	Depends      []Dependency
}

// Dependency is one alternative-free Depends entry ("name (op version)"); alternatives
// ("a | b") keep only their first name, which is what kernel header packages need.
type Dependency struct {
	Name    string
	Op      string // "", "=", ">=", "<=", ">>", "<<"
	Version string
}

// ParsePackages reads a Debian Packages index (uncompressed) named name (for messages). Stanzas
// missing a download field or with a hostile Filename are errors: the whole index is refused.
func ParsePackages(name string, r io.Reader) (pkgs []DebPackage, err error) {
	defer kmp.Guard(name, &err)
	lr := &io.LimitedReader{R: r, N: MaxIndexBytes + 1}
	err = readStanzas(lr, func(s Stanza) error {
		p, err := debPackage(s)
		if err != nil {
			return err
		}
		pkgs = append(pkgs, p)
		return nil
	})
	if err == nil && lr.N <= 0 {
		err = fmt.Errorf("larger than %d bytes", MaxIndexBytes)
	}
	if err != nil {
		return nil, kmp.InputErrorf(name, "%v", err)
	}
	return pkgs, nil
}

func debPackage(s Stanza) (DebPackage, error) {
	p := DebPackage{
		Package: s["Package"], Version: s["Version"], Architecture: s["Architecture"],
		Filename: s["Filename"], SHA256: strings.ToLower(s["SHA256"]), Source: s["Source"],
	}
	if p.Package == "" {
		return p, errors.New("stanza without Package")
	}
	for _, f := range []struct{ k, v string }{{"Version", p.Version}, {"Architecture", p.Architecture}, {"Filename", p.Filename}, {"Size", s["Size"]}, {"SHA256", p.SHA256}} {
		if f.v == "" {
			return p, fmt.Errorf("package %s: no %s", truncate(p.Package, 80), f.k)
		}
	}
	if err := CheckPath(p.Filename); err != nil {
		return p, fmt.Errorf("package %s: Filename: %v", truncate(p.Package, 80), err)
	}
	if err := checkSHA256(p.SHA256); err != nil {
		return p, fmt.Errorf("package %s: SHA256: %v", truncate(p.Package, 80), err)
	}
	size, err := parseSize(s["Size"])
	if err != nil {
		return p, fmt.Errorf("package %s: Size: %v", truncate(p.Package, 80), err)
	}
	p.Size = size
	if d := s["Depends"]; d != "" {
		p.Depends, err = parseDepends(d)
		if err != nil {
			return p, fmt.Errorf("package %s: Depends: %v", truncate(p.Package, 80), err)
		}
	}
	return p, nil
}

func parseSize(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size", truncate(s, 40))
	}
	if n > MaxPackageBytes {
		return 0, fmt.Errorf("%d bytes is more than the %d a package may have", n, int64(MaxPackageBytes))
	}
	return n, nil
}

func parseDepends(s string) ([]Dependency, error) {
	var out []Dependency
	for _, ent := range strings.Split(s, ",") {
		ent = strings.TrimSpace(ent)
		if ent == "" {
			continue
		}
		alt, _, _ := strings.Cut(ent, "|")
		alt = strings.TrimSpace(alt)
		var d Dependency
		name, rest, hasVer := strings.Cut(alt, "(")
		d.Name = strings.TrimSpace(name)
		if i := strings.IndexByte(d.Name, ':'); i >= 0 { // multiarch qualifier
			d.Name = d.Name[:i]
		}
		if i := strings.IndexAny(d.Name, " [<"); i >= 0 { // arch/profile restrictions
			d.Name = d.Name[:i]
		}
		if hasVer {
			rest, _, ok := strings.Cut(rest, ")")
			if !ok {
				return nil, fmt.Errorf("unbalanced parenthesis in %q", truncate(ent, 80))
			}
			rest = strings.TrimSpace(rest)
			for _, op := range []string{">=", "<=", ">>", "<<", "=", ">", "<"} {
				if strings.HasPrefix(rest, op) {
					d.Op, d.Version = op, strings.TrimSpace(rest[len(op):])
					break
				}
			}
			if d.Op == "" || d.Version == "" {
				return nil, fmt.Errorf("bad version relation in %q", truncate(ent, 80))
			}
		}
		if d.Name == "" {
			return nil, fmt.Errorf("empty name in %q", truncate(ent, 80))
		}
		out = append(out, d)
		if len(out) > MaxDependencies {
			return nil, fmt.Errorf("more than %d dependencies", MaxDependencies)
		}
	}
	return out, nil
}

// Release is the part of a Debian Release/InRelease file kmpack uses.
type Release struct {
	Suite, Codename string
	Architectures   []string
	Components      []string
	AcquireByHash   bool
	ValidUntil      string
	// SHA256 maps a path relative to dists/<suite>/ to its checksum and size.
	SHA256 map[string]FileSum
	// Signed is true when the input was an InRelease (clearsigned); it says nothing about
	// whether the signature was verified.
	Signed bool
}

// FileSum is a checksum and size from repository metadata.
type FileSum struct {
	SHA256 string
	Size   int64
}

// ParseRelease reads a Release file or an InRelease (the clearsigned form; the signature is not
// checked here, see VerifyInRelease). Paths in SHA256 are checked by CheckPath.
func ParseRelease(name string, data []byte) (rel *Release, err error) {
	defer kmp.Guard(name, &err)
	if len(data) > MaxReleaseBytes {
		return nil, kmp.InputErrorf(name, "larger than %d bytes", MaxReleaseBytes)
	}
	rel = &Release{SHA256: map[string]FileSum{}}
	if bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte("-----BEGIN PGP SIGNED MESSAGE-----")) {
		text, err := clearsignedText(data)
		if err != nil {
			return nil, kmp.InputErrorf(name, "malformed clearsigned InRelease: %v", err)
		}
		data = text
		rel.Signed = true
	}
	var first Stanza
	err = readStanzas(bytes.NewReader(data), func(s Stanza) error {
		if first == nil {
			first = s
		}
		return nil
	})
	if err != nil {
		return nil, kmp.InputErrorf(name, "%v", err)
	}
	if first == nil {
		return nil, kmp.InputErrorf(name, "empty Release file")
	}
	rel.Suite, rel.Codename, rel.ValidUntil = first["Suite"], first["Codename"], first["Valid-Until"]
	rel.Architectures = strings.Fields(first["Architectures"])
	rel.Components = strings.Fields(first["Components"])
	rel.AcquireByHash = strings.EqualFold(first["Acquire-By-Hash"], "yes")
	sums := first["SHA256"]
	if sums == "" {
		return nil, kmp.InputErrorf(name, "no SHA256 field (kmpack does not trust MD5Sum or SHA1 alone)")
	}
	for i, line := range strings.Split(sums, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if i > maxReleaseHashes {
			return nil, kmp.InputErrorf(name, "more than %d SHA256 lines", maxReleaseHashes)
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, kmp.InputErrorf(name, "SHA256 line %q is not \"sum size path\"", truncate(line, 80))
		}
		sum := strings.ToLower(f[0])
		if err := checkSHA256(sum); err != nil {
			return nil, kmp.InputErrorf(name, "SHA256 of %s: %v", truncate(f[2], 80), err)
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || size < 0 || size > MaxIndexBytes {
			return nil, kmp.InputErrorf(name, "SHA256 of %s: bad size %q", truncate(f[2], 80), truncate(f[1], 40))
		}
		if err := CheckPath(f[2]); err != nil {
			return nil, kmp.InputErrorf(name, "SHA256: %v", err)
		}
		rel.SHA256[f[2]] = FileSum{SHA256: sum, Size: size}
	}
	return rel, nil
}

// clearsignedText extracts the signed text of a clearsigned message (RFC 4880 section 7): the
// armor header lines, a blank line, the dash-escaped text, the signature. It is ours, not
// ProtonMail's clearsign.Decode, which panics on some malformed inputs (v1.4.1, found by
// FuzzParseRelease: testdata/fuzz/FuzzParseRelease/b9c6e77974744ed0).
func clearsignedText(data []byte) ([]byte, error) {
	lines := bytes.Split(bytes.TrimLeft(data, " \t\r\n"), []byte("\n"))
	i := 1
	for ; i < len(lines) && len(bytes.TrimSpace(lines[i])) > 0; i++ {
		if !bytes.HasPrefix(lines[i], []byte("Hash:")) {
			return nil, fmt.Errorf("unexpected armor header %q", truncate(string(lines[i]), 40))
		}
	}
	i++ // the blank line
	var out bytes.Buffer
	for ; i < len(lines); i++ {
		l := bytes.TrimRight(lines[i], "\r")
		if bytes.Equal(bytes.TrimRight(l, " \t"), []byte("-----BEGIN PGP SIGNATURE-----")) {
			return out.Bytes(), nil
		}
		if bytes.HasPrefix(l, []byte("- ")) {
			l = l[2:]
		} else if bytes.HasPrefix(l, []byte("-")) {
			return nil, fmt.Errorf("line %q is not dash-escaped", truncate(string(l), 40))
		}
		out.Write(l)
		out.WriteByte('\n')
	}
	return nil, errors.New("no signature block")
}

// CheckValidUntil refuses a Release whose Valid-Until is past (a mirror replaying old metadata,
// as apt refuses it) or unreadable.
func (r *Release) CheckValidUntil(name string, now time.Time) error {
	if r.ValidUntil == "" {
		return nil
	}
	var t time.Time
	var err error
	for _, layout := range []string{time.RFC1123, time.RFC1123Z, "Mon, 2 Jan 2006 15:04:05 MST", "Mon, 2 Jan 2006 15:04:05 -0700"} {
		if t, err = time.Parse(layout, r.ValidUntil); err == nil {
			break
		}
	}
	if err != nil {
		return kmp.InputErrorf(name, "Valid-Until %q is not a date", truncate(r.ValidUntil, 60))
	}
	if now.After(t) {
		return kmp.InputErrorf(name, "expired: Valid-Until %s", r.ValidUntil)
	}
	return nil
}
