package repo

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
)

// Source is a repository given on the command line: an apt source in sources.list one-line form
// ("deb [arch=amd64] http://host/debian bookworm main") or an rpm-md base URL.
type Source struct {
	Spec       string // as given
	Kind       string // "apt" or "rpm-md"
	Base       string // archive root (apt) or repository base (rpm-md), no trailing slash
	Suite      string
	Components []string
	Arch       string // Debian architecture (apt) or rpm arch; "" = the host's
	// Keyring verifies the metadata (InRelease, Release.gpg, repomd.xml.asc) when set:
	// apt's signed-by= option, or the caller's --keyring.
	Keyring string
	// KeyringDir, when set, is the directory Keyring is relative to and read beneath (a keyring
	// kmpack.yaml names is a file of the source).
	KeyringDir string
}

// CheckFromFile refuses what a repository named by a file (kmpack.yaml) may not do that one
// the operator names may: read the build host's files (file: URLs, apt's signed-by= path).
func (s *Source) CheckFromFile() error {
	if u, err := url.Parse(s.Base); err != nil || u.Scheme != "http" && u.Scheme != "https" {
		return kmp.InputErrorf(s.Spec, "a repository in a file must be an http or https URL")
	}
	if s.Keyring != "" {
		return kmp.InputErrorf(s.Spec, "signed-by= names a file of the build host: give the keyring as a file of the source (keyring:)")
	}
	return nil
}

// ParseSource parses a repository given by the user.
func ParseSource(spec string) (*Source, error) {
	f := strings.Fields(spec)
	if len(f) == 0 {
		return nil, kmp.InputErrorf("--repo", "empty repository")
	}
	s := &Source{Spec: spec}
	if f[0] == "deb" {
		s.Kind = "apt"
		f = f[1:]
		if len(f) > 0 && strings.HasPrefix(f[0], "[") {
			opts := []string{}
			for len(f) > 0 {
				opts = append(opts, f[0])
				last := strings.HasSuffix(f[0], "]")
				f = f[1:]
				if last {
					break
				}
			}
			for _, o := range strings.Fields(strings.Trim(strings.Join(opts, " "), "[]")) {
				k, v, _ := strings.Cut(o, "=")
				switch k {
				case "arch":
					s.Arch = v
				case "signed-by":
					s.Keyring = v
				default:
					return nil, kmp.InputErrorf(spec, "unsupported option %q (kmpack knows arch= and signed-by=)", k)
				}
			}
		}
		if len(f) < 3 {
			return nil, kmp.InputErrorf(spec, "want 'deb URL SUITE COMPONENT...'")
		}
		s.Base, s.Suite, s.Components = strings.TrimRight(f[0], "/"), f[1], f[2:]
		if strings.HasSuffix(s.Suite, "/") {
			return nil, kmp.InputErrorf(spec, "flat repositories (a suite ending in /) are not supported")
		}
		if err := CheckPath(s.Suite); err != nil {
			return nil, kmp.InputErrorf(spec, "suite: %v", err)
		}
		for _, c := range s.Components {
			if err := CheckPath(c); err != nil {
				return nil, kmp.InputErrorf(spec, "component: %v", err)
			}
		}
	} else {
		if len(f) != 1 {
			return nil, kmp.InputErrorf(spec, "want an rpm-md base URL or 'deb URL SUITE COMPONENT...'")
		}
		s.Kind, s.Base = "rpm-md", strings.TrimRight(f[0], "/")
	}
	u, err := url.Parse(s.Base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file") || (u.Scheme != "file" && u.Host == "") {
		return nil, kmp.InputErrorf(spec, "%q is not an http, https or file URL", s.Base)
	}
	return s, nil
}

// Index is what a repository offers.
type Index struct {
	Source   *Source   `json:"-"`
	Kernels  []Kernel  `json:"kernels"`
	Skipped  []Skipped `json:"skipped,omitempty"`
	Verified bool      `json:"verified"`
	// Notes are things the user should know (metadata not verified).
	Notes []string `json:"notes,omitempty"`
}

// debArch is this host's Debian architecture name.
func debArch() string { return kernel.DebianArch(kernel.HostMachine()) }

func rpmArch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	case "386":
		return "i686"
	}
	return runtime.GOARCH
}

// Load reads the repository's metadata (indexes are fetched into the cache by checksum) and
// finds the kernels it offers. Package URLs are filled in.
func Load(ctx context.Context, f *Fetcher, s *Source) (*Index, error) {
	var idx *Index
	var err error
	if s.Kind == "apt" {
		idx, err = loadApt(ctx, f, s)
	} else {
		idx, err = loadRPMMD(ctx, f, s)
	}
	if err != nil {
		return nil, err
	}
	idx.Source = s
	for i := range idx.Kernels {
		for j := range idx.Kernels[i].Packages {
			p := &idx.Kernels[i].Packages[j]
			p.URL = joinURL(s.Base, p.Path)
		}
	}
	return idx, nil
}

func loadApt(ctx context.Context, f *Fetcher, s *Source) (*Index, error) {
	dists := joinURL(s.Base, "dists/"+s.Suite)
	u := dists + "/InRelease"
	data, err := f.GetSmall(ctx, u, MaxReleaseBytes)
	inRelease := err == nil
	if IsNotFound(err) {
		u = dists + "/Release"
		data, err = f.GetSmall(ctx, u, MaxReleaseBytes)
	}
	if err != nil {
		return nil, err
	}
	sigSuffix := ".gpg"
	if inRelease {
		sigSuffix = ""
	}
	idx := &Index{}
	if data, err = s.verify(ctx, f, idx, u, data, sigSuffix); err != nil {
		return nil, err
	}
	rel, err := ParseRelease(u, data)
	if err != nil {
		return nil, err
	}
	if err := rel.CheckValidUntil(u, time.Now()); err != nil {
		return nil, err
	}
	arch := s.Arch
	if arch == "" {
		arch = debArch()
	}
	indexes := []string{arch, "all"}
	if arch != debArch() {
		// Another architecture's kernels build here with this host's kbuild package.
		indexes = append(indexes, debArch())
	}
	var pkgs []DebPackage
	for _, comp := range s.Components {
		for _, a := range indexes {
			dir := comp + "/binary-" + a + "/"
			found := false
			for _, name := range []string{"Packages.xz", "Packages.gz", "Packages.zst", "Packages.bz2", "Packages"} {
				sum, ok := rel.SHA256[dir+name]
				if !ok {
					continue
				}
				iu := dists + "/" + dir + name
				p, err := fetchIndex(ctx, f, iu, sum, func(name string, r io.Reader) (any, error) { return ParsePackages(name, r) })
				if IsNotFound(err) {
					continue // listed but not served (Debian lists uncompressed Packages it does not serve)
				}
				if err != nil {
					return nil, err
				}
				pkgs = append(pkgs, p.([]DebPackage)...)
				found = true
				break
			}
			if !found && a == arch {
				return nil, kmp.InputErrorf(u, "lists no Packages index for %s/binary-%s", comp, arch)
			}
		}
	}
	idx.Kernels, idx.Skipped = DebianKernels(pkgs, arch)
	return idx, nil
}

func loadRPMMD(ctx context.Context, f *Fetcher, s *Source) (*Index, error) {
	u := joinURL(s.Base, "repodata/repomd.xml")
	data, err := f.GetSmall(ctx, u, MaxReleaseBytes)
	if err != nil {
		return nil, err
	}
	idx := &Index{}
	if data, err = s.verify(ctx, f, idx, u, data, ".asc"); err != nil {
		return nil, err
	}
	md, err := ParseRepomd(u, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	prim, ok := md.Primary()
	if !ok {
		return nil, kmp.InputErrorf(u, "no primary data")
	}
	size := prim.Size
	if size == 0 {
		size = -1
	}
	pu := joinURL(s.Base, prim.Href)
	p, err := fetchIndex(ctx, f, pu, FileSum{SHA256: prim.SHA256, Size: size}, func(name string, r io.Reader) (any, error) { return ParsePrimary(name, r) })
	if err != nil {
		return nil, err
	}
	arch := s.Arch
	if arch == "" {
		arch = rpmArch()
	}
	idx.Kernels, idx.Skipped = RPMKernels(p.([]RPMPackage), arch)
	return idx, nil
}

// fetchIndex fetches a checksummed index into the cache and parses it decompressed.
func fetchIndex(ctx context.Context, f *Fetcher, u string, sum FileSum, parse func(string, io.Reader) (any, error)) (any, error) {
	path, err := f.Fetch(ctx, u, sum.SHA256, sum.Size)
	if err != nil {
		return nil, err
	}
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	r, err := decompress(u, fh)
	if err != nil {
		return nil, err
	}
	return parse(u, r)
}

func decompress(u string, r io.Reader) (io.Reader, error) {
	var err error
	switch {
	case strings.HasSuffix(u, ".gz"):
		r, err = gzip.NewReader(r)
	case strings.HasSuffix(u, ".xz"):
		r, err = xz.NewReader(r)
	case strings.HasSuffix(u, ".zst"):
		var d *zstd.Decoder
		d, err = zstd.NewReader(r, zstd.WithDecoderMaxMemory(MaxIndexBytes), zstd.WithDecoderConcurrency(1))
		r = d
	case strings.HasSuffix(u, ".bz2"):
		r = bzip2.NewReader(r)
	}
	if err != nil {
		return nil, kmp.InputErrorf(u, "cannot decompress: %v", err)
	}
	return &errNamer{r: r, u: u}, nil
}

// errNamer turns a decompression error into an InputError naming the index.
type errNamer struct {
	r io.Reader
	u string
}

func (e *errNamer) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		return n, fmt.Errorf("cannot decompress: %v", err)
	}
	return n, err
}

// verify checks the metadata file u (data) with s's keyring and returns the text to read: the
// signed text of a clearsigned file (sigSuffix ""), else data, checked against the detached
// signature at u+sigSuffix. Without a keyring it notes in idx that nothing was verified.
func (s *Source) verify(ctx context.Context, f *Fetcher, idx *Index, u string, data []byte, sigSuffix string) ([]byte, error) {
	kr, err := s.keyring()
	if err != nil {
		return nil, err
	}
	if kr == nil {
		idx.Notes = []string{unverifiedNote(u)}
		return data, nil
	}
	if sigSuffix == "" {
		if data, err = verifyClearsigned(u, data, kr); err != nil {
			return nil, err
		}
	} else {
		sig, err := f.GetSmall(ctx, u+sigSuffix, MaxReleaseBytes)
		if err != nil {
			return nil, err
		}
		if err := verifyDetached(u+sigSuffix, data, sig, kr); err != nil {
			return nil, err
		}
	}
	idx.Verified = true
	return data, nil
}
