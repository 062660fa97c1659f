package unpack

import (
	"archive/tar"
	"bufio"
	"io"
	"os"
	"path"
	"strings"

	rpmutils "github.com/sassoftware/go-rpmutils"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
)

// maxControl bounds a .deb's control file: dpkg's own are a few KiB.
const maxControl = 1 << 20

// DebControl reads the control file of a Debian binary package (the "control" member of its
// control.tar[.gz|.xz|.zst]) with kmpack's own ar reader. A file that is not a Debian binary
// package, or whose control file is missing or larger than 1 MiB, is an InputError naming file.
func DebControl(file string) (control []byte, err error) {
	defer kmp.Guard(file, &err)
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, kmp.InputErrorf(file, "not a regular file")
	}
	r, err := newArReader(bufio.NewReader(f))
	if err != nil {
		return nil, kmp.InputErrorf(file, "not a Debian package: %v", err)
	}
	sawBinary := false
	for {
		h, err := r.Next()
		if err == io.EOF {
			return nil, kmp.InputErrorf(file, "no control.tar member: not a Debian binary package")
		}
		if err != nil {
			return nil, kmp.InputErrorf(file, "corrupt ar archive: %v", err)
		}
		switch {
		case h.Name == "debian-binary":
			b, _ := io.ReadAll(io.LimitReader(r, 64))
			if !strings.HasPrefix(string(b), "2.") {
				return nil, kmp.InputErrorf(file, "unsupported deb format %q", strings.TrimSpace(string(b)))
			}
			sawBinary = true
		case strings.HasPrefix(h.Name, "control.tar"):
			if !sawBinary {
				return nil, kmp.InputErrorf(file, "control member before debian-binary: not a Debian package")
			}
			c, ok := debTarCompression(strings.TrimPrefix(h.Name, "control.tar"))
			if !ok {
				return nil, kmp.InputErrorf(file, "unsupported member %q", h.Name)
			}
			dr, done, err := module.DecompressReader(io.LimitReader(r, h.Size), c)
			if err != nil {
				return nil, kmp.InputErrorf(file, "member %q: %v", h.Name, err)
			}
			defer done()
			tr := tar.NewReader(dr)
			for {
				th, err := tr.Next()
				if err == io.EOF {
					return nil, kmp.InputErrorf(file, "%s has no control file", h.Name)
				}
				if err != nil {
					return nil, kmp.InputErrorf(file, "member %q: %v", h.Name, err)
				}
				if path.Clean(th.Name) != "control" {
					continue
				}
				if th.Typeflag != tar.TypeReg || th.Size > maxControl {
					return nil, kmp.InputErrorf(file, "control file is not a regular file of at most 1 MiB")
				}
				b, err := io.ReadAll(io.LimitReader(tr, maxControl))
				if err != nil {
					return nil, kmp.InputErrorf(file, "member %q: %v", h.Name, err)
				}
				return b, nil
			}
		}
	}
}

// RPMHeader reads an RPM's signature and main headers, after checking their sizes against
// rpm's own limits (go-rpmutils allocates what a header claims). A file that is not an RPM is
// an InputError naming file.
func RPMHeader(file string) (h *rpmutils.RpmHeader, err error) {
	defer kmp.Guard(file, &err)
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, kmp.InputErrorf(file, "not a regular file")
	}
	if err := checkRPMHeaderSizes(f); err != nil {
		return nil, kmp.InputErrorf(file, "not an RPM: %v", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if h, err = rpmutils.ReadHeader(bufio.NewReader(f)); err != nil {
		return nil, kmp.InputErrorf(file, "corrupt RPM header: %v", err)
	}
	return h, nil
}
