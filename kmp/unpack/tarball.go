package unpack

import (
	"bufio"
	"compress/bzip2"
	"io"
	"os"
	"syscall"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
)

// ExtractTarball extracts a tar archive (plain, gzip, xz, zstd or bzip2, told by its first
// bytes, not its name) under dst with the same rules as a package's payload: nothing written
// outside dst, no ".." names, no device nodes, no link that resolves outside dst, at most
// maxBytes of file data and maxEntries entries. Errors name the archive and are one line.
func ExtractTarball(archive string, dst *os.Root, maxBytes int64, maxEntries int) (err error) {
	defer kmp.Guard(archive, &err)
	// Opened non-blocking and checked once open: a FIFO named as the tarball cannot hang us.
	f, err := os.OpenFile(archive, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return kmp.InputErrorf(archive, "%v", kmp.UnwrapPathError(err))
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return kmp.InputErrorf(archive, "not a regular file")
	}
	br := bufio.NewReader(f)
	head, _ := br.Peek(8)
	var r io.Reader = br
	switch c := module.DetectCompression(head); {
	case len(head) >= 3 && string(head[:3]) == "BZh":
		r = bzip2.NewReader(br)
	case c != module.CompressNone:
		dr, done, err := module.DecompressReader(br, c)
		if err != nil {
			return kmp.InputErrorf(archive, "not a %s tarball: %v", c, err)
		}
		defer done()
		r = dr
	}
	budget := &unpackBudget{maxBytes: maxBytes, maxEntries: maxEntries}
	x := &extractor{root: dst, archive: archive, budget: budget}
	defer x.close()
	if err := untar(archive, r, x); err != nil {
		return err
	}
	return checkLinks(dst, budget.links)
}
