package repo

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/kmpack/kmpack/kmp"
)

// RepomdData is one <data> entry of repomd.xml.
type RepomdData struct {
	Type     string
	Href     string // relative to the repository base, checked by CheckPath
	SHA256   string // of the file as stored (compressed)
	Size     int64  // 0 when repomd.xml does not say
	OpenSize int64
}

// Repomd is a parsed repodata/repomd.xml.
type Repomd struct {
	Revision string
	Data     []RepomdData
}

// Primary returns the primary (XML) entry.
func (r *Repomd) Primary() (RepomdData, bool) {
	for _, d := range r.Data {
		if d.Type == "primary" {
			return d, true
		}
	}
	return RepomdData{}, false
}

// RPMPackage is the part of a primary.xml <package> kmpack uses.
type RPMPackage struct {
	Name     string
	Arch     string
	Epoch    string
	Version  string
	Release  string
	Href     string // location href, relative to the repository base, checked by CheckPath
	SHA256   string // of the .rpm
	Size     int64  // <size package>
	Provides []RPMEntry
	Requires []RPMEntry
}

// EVR is the package's [epoch:]version-release.
func (p *RPMPackage) EVR() string {
	s := p.Version + "-" + p.Release
	if p.Epoch != "" && p.Epoch != "0" {
		s = p.Epoch + ":" + s
	}
	return s
}

// RPMEntry is one rpm:entry of provides or requires.
type RPMEntry struct {
	Name, Flags, Epoch, Ver, Rel string
}

// xmlDecoder is a strict decoder: encoding/xml expands only the five predefined entities and
// refuses others (no external entities, no billion laughs); we bound the bytes and the depth.
func xmlDecoder(r io.Reader) *xml.Decoder {
	d := xml.NewDecoder(r)
	d.Strict = true
	d.CharsetReader = func(label string, input io.Reader) (io.Reader, error) {
		if strings.EqualFold(label, "utf-8") || strings.EqualFold(label, "us-ascii") {
			return input, nil
		}
		return nil, fmt.Errorf("unsupported XML encoding %q", truncate(label, 40))
	}
	return d
}

// walker streams an XML document's tokens, tracking the element path and bounding depth.
type walker struct {
	d     *xml.Decoder
	stack []string
	text  strings.Builder
}

func (w *walker) next() (xml.Token, error) {
	t, err := w.d.Token()
	if err != nil {
		return nil, err
	}
	switch t := t.(type) {
	case xml.StartElement:
		w.stack = append(w.stack, t.Name.Local)
		if len(w.stack) > MaxXMLDepth {
			return nil, fmt.Errorf("XML nested deeper than %d elements", MaxXMLDepth)
		}
		w.text.Reset()
	case xml.EndElement:
		if len(w.stack) > 0 {
			w.stack = w.stack[:len(w.stack)-1]
		}
	case xml.CharData:
		if w.text.Len()+len(t) > MaxFieldBytes {
			return nil, fmt.Errorf("XML text longer than %d bytes", MaxFieldBytes)
		}
		w.text.Write(t)
	case xml.Directive:
		if strings.Contains(strings.ToUpper(string(t)), "ENTITY") {
			return nil, errors.New("XML entity declarations are refused")
		}
	}
	return t, nil
}

func attr(e xml.StartElement, name string) string {
	for _, a := range e.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func xmlSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size", truncate(s, 40))
	}
	if n > MaxPackageBytes {
		return 0, fmt.Errorf("%d bytes is more than the %d allowed", n, int64(MaxPackageBytes))
	}
	return n, nil
}

// ParseRepomd reads repodata/repomd.xml.
func ParseRepomd(name string, r io.Reader) (md *Repomd, err error) {
	defer kmp.Guard(name, &err)
	lr := &io.LimitedReader{R: r, N: MaxReleaseBytes + 1}
	md, err = parseRepomd(lr)
	if err == nil && lr.N <= 0 {
		err = fmt.Errorf("larger than %d bytes", MaxReleaseBytes)
	}
	if err != nil {
		return nil, kmp.InputErrorf(name, "%v", err)
	}
	return md, nil
}

func parseRepomd(r io.Reader) (*Repomd, error) {
	w := &walker{d: xmlDecoder(r)}
	md := &Repomd{}
	var cur *RepomdData
	var sumType string
	sawRoot := false
	for {
		t, err := w.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		switch t := t.(type) {
		case xml.StartElement:
			switch {
			case len(w.stack) == 1:
				if t.Name.Local != "repomd" {
					return nil, fmt.Errorf("root element <%s>, not <repomd>", truncate(t.Name.Local, 40))
				}
				sawRoot = true
			case len(w.stack) == 2 && t.Name.Local == "data":
				if len(md.Data) >= 1000 {
					return nil, errors.New("more than 1000 <data> entries")
				}
				md.Data = append(md.Data, RepomdData{Type: attr(t, "type")})
				cur = &md.Data[len(md.Data)-1]
			case len(w.stack) == 3 && cur != nil && t.Name.Local == "location":
				cur.Href = attr(t, "href")
			case len(w.stack) == 3 && cur != nil && t.Name.Local == "checksum":
				sumType = attr(t, "type")
			}
		case xml.EndElement:
			switch {
			case len(w.stack) == 1 && t.Name.Local == "revision":
				md.Revision = strings.TrimSpace(w.text.String())
			case len(w.stack) == 2 && cur != nil:
				switch t.Name.Local {
				case "checksum":
					if sumType == "sha256" {
						cur.SHA256 = strings.ToLower(strings.TrimSpace(w.text.String()))
					}
				case "size", "open-size":
					n, err := xmlSize(strings.TrimSpace(w.text.String()))
					if err != nil {
						return nil, fmt.Errorf("<data type=%q> <%s>: %v", truncate(cur.Type, 40), t.Name.Local, err)
					}
					if t.Name.Local == "size" {
						cur.Size = n
					} else {
						cur.OpenSize = n
					}
				}
			case len(w.stack) == 1 && t.Name.Local == "data":
				cur = nil
			}
		}
	}
	if !sawRoot {
		return nil, errors.New("no <repomd> element")
	}
	for _, d := range md.Data {
		if err := CheckPath(d.Href); err != nil {
			return nil, fmt.Errorf("<data type=%q> location: %v", truncate(d.Type, 40), err)
		}
		if d.Type == "primary" {
			if err := checkSHA256(d.SHA256); err != nil {
				return nil, fmt.Errorf("<data type=\"primary\"> has no sha256 checksum: %v", err)
			}
		}
	}
	return md, nil
}

// ParsePrimary reads an uncompressed primary.xml.
func ParsePrimary(name string, r io.Reader) (pkgs []RPMPackage, err error) {
	defer kmp.Guard(name, &err)
	lr := &io.LimitedReader{R: r, N: MaxIndexBytes + 1}
	pkgs, err = parsePrimary(lr)
	if err == nil && lr.N <= 0 {
		err = fmt.Errorf("larger than %d bytes", MaxIndexBytes)
	}
	if err != nil {
		return nil, kmp.InputErrorf(name, "%v", err)
	}
	return pkgs, nil
}

func parsePrimary(r io.Reader) ([]RPMPackage, error) {
	w := &walker{d: xmlDecoder(r)}
	var pkgs []RPMPackage
	var cur *RPMPackage
	var sumType, list string
	sawRoot := false
	for {
		t, err := w.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		switch t := t.(type) {
		case xml.StartElement:
			depth := len(w.stack)
			switch {
			case depth == 1:
				if t.Name.Local != "metadata" {
					return nil, fmt.Errorf("root element <%s>, not <metadata>", truncate(t.Name.Local, 40))
				}
				sawRoot = true
			case depth == 2 && t.Name.Local == "package":
				if len(pkgs) >= MaxEntries {
					return nil, fmt.Errorf("more than %d packages", MaxEntries)
				}
				pkgs = append(pkgs, RPMPackage{})
				cur = &pkgs[len(pkgs)-1]
			case cur == nil:
			case depth == 3 && t.Name.Local == "version":
				cur.Epoch, cur.Version, cur.Release = attr(t, "epoch"), attr(t, "ver"), attr(t, "rel")
			case depth == 3 && t.Name.Local == "checksum":
				sumType = attr(t, "type")
			case depth == 3 && t.Name.Local == "location":
				if b := attr(t, "base"); b != "" {
					return nil, fmt.Errorf("package %s: location xml:base %q is not supported", truncate(cur.Name, 80), truncate(b, 80))
				}
				cur.Href = attr(t, "href")
			case depth == 3 && t.Name.Local == "size":
				n, err := xmlSize(attr(t, "package"))
				if err != nil {
					return nil, fmt.Errorf("package %s: size: %v", truncate(cur.Name, 80), err)
				}
				cur.Size = n
			case depth == 4 && (t.Name.Local == "provides" || t.Name.Local == "requires"):
				list = t.Name.Local
			case depth == 5 && t.Name.Local == "entry" && list != "":
				e := RPMEntry{Name: attr(t, "name"), Flags: attr(t, "flags"), Epoch: attr(t, "epoch"), Ver: attr(t, "ver"), Rel: attr(t, "rel")}
				if len(cur.Provides)+len(cur.Requires) >= MaxDependencies {
					return nil, fmt.Errorf("package %s: more than %d provides and requires", truncate(cur.Name, 80), MaxDependencies)
				}
				if list == "provides" {
					cur.Provides = append(cur.Provides, e)
				} else {
					cur.Requires = append(cur.Requires, e)
				}
			}
		case xml.EndElement:
			depth := len(w.stack) + 1 // depth of the element that ended
			switch {
			case cur == nil:
			case depth == 3 && t.Name.Local == "name":
				cur.Name = strings.TrimSpace(w.text.String())
			case depth == 3 && t.Name.Local == "arch":
				cur.Arch = strings.TrimSpace(w.text.String())
			case depth == 3 && t.Name.Local == "checksum":
				if sumType == "sha256" {
					cur.SHA256 = strings.ToLower(strings.TrimSpace(w.text.String()))
				}
			case depth == 4 && (t.Name.Local == "provides" || t.Name.Local == "requires"):
				list = ""
			case depth == 2 && t.Name.Local == "package":
				if err := checkRPMPackage(cur); err != nil {
					return nil, err
				}
				cur = nil
			}
		}
	}
	if !sawRoot {
		return nil, errors.New("no <metadata> element")
	}
	return pkgs, nil
}

func checkRPMPackage(p *RPMPackage) error {
	if p.Name == "" {
		return errors.New("package without <name>")
	}
	n := truncate(p.Name, 80)
	if p.Version == "" || p.Arch == "" {
		return fmt.Errorf("package %s: no version or arch", n)
	}
	if err := CheckPath(p.Href); err != nil {
		return fmt.Errorf("package %s: location: %v", n, err)
	}
	if err := checkSHA256(p.SHA256); err != nil {
		return fmt.Errorf("package %s: no sha256 checksum: %v", n, err)
	}
	return nil
}
