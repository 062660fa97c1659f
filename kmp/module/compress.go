package module

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	xzdec "github.com/xi2/xz"

	"github.com/kmpack/kmpack/kmp"
)

// Compression names how a file is compressed, as a kernel's CONFIG_MODULE_COMPRESS_* does.
type Compression string

const (
	CompressNone Compression = "none"
	CompressGzip Compression = "gzip"
	CompressXZ   Compression = "xz"
	CompressZstd Compression = "zstd"
)

// Extension is the file suffix the kernel's build gives modules compressed this way.
func (c Compression) Extension() string {
	switch c {
	case CompressGzip:
		return ".gz"
	case CompressXZ:
		return ".xz"
	case CompressZstd:
		return ".zst"
	}
	return ""
}

// Limits on what kmpack reads from one file (a module, a symvers table), chosen so that a hostile
// or mistaken input fails with an error instead of exhausting the machine, while every real
// input fits with a wide margin:
//
//   - MaxInputFile: the largest file read at all, compressed or not. The largest module Linux
//     ships (amdgpu) is about 30 MiB stripped and a few hundred MiB with full debug info (a
//     module kmpack built, before packaging strips it); Module.symvers is a few MiB.
//   - MaxDecompressed: the most one compressed input may expand to, for the same reason.
//   - maxXZDict, maxZstdWindow: the largest decoder window accepted. A stream's header names its
//     window and the decoder allocates it, so a 100-byte file could otherwise claim 1.5 GiB (xz)
//     or more (zstd). 64 MiB is xz -9's dictionary, the largest preset; 128 MiB is zstd's
//     --ultra -22 / --long=27 window. Kernel modules use 1 MiB (xz) and at most 8 MiB (zstd).
//
// Decompressing is done twice, first counting (and checking the first bytes) without keeping the
// output, then into a buffer of exactly the counted size: a compression bomb costs CPU time but
// never more than a decoder window of memory, and a real input costs its decompressed size plus
// the window, never a doubling buffer's slack.
const (
	MaxInputFile    = 1 << 30
	MaxDecompressed = 1 << 30
	maxXZDict       = 64 << 20
	maxZstdWindow   = 128 << 20
)

var (
	magicGzip = []byte{0x1f, 0x8b}
	magicXZ   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicZstd = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// DetectCompression looks at the first bytes, not the file name: a misnamed file is still read.
func DetectCompression(head []byte) Compression {
	switch {
	case bytes.HasPrefix(head, magicXZ):
		return CompressXZ
	case bytes.HasPrefix(head, magicZstd):
		return CompressZstd
	case bytes.HasPrefix(head, magicGzip):
		return CompressGzip
	}
	return CompressNone
}

// DecompressReader wraps r in the decompressor c needs, with the window limits above.
func DecompressReader(r io.Reader, c Compression) (io.Reader, func(), error) {
	switch c {
	case CompressGzip:
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return z, func() { z.Close() }, nil
	case CompressXZ:
		z, err := xzdec.NewReader(r, maxXZDict)
		if err != nil {
			return nil, nil, err
		}
		return z, func() {}, nil
	case CompressZstd:
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(MaxDecompressed))
		if err != nil {
			return nil, nil, err
		}
		return z, z.Close, nil
	}
	return r, func() {}, nil
}

// HeadCheck inspects the first bytes of an input (after decompression) and says why it is not
// what the caller wants; a nil HeadCheck accepts anything.
type HeadCheck func(head []byte) error

// headLen is how many bytes a HeadCheck sees (fewer if the input is shorter).
const headLen = 64

// Decompress returns data decompressed according to its magic bytes (unchanged if it is not
// compressed) and the compression found. At most MaxDecompressed bytes are produced.
func Decompress(path string, data []byte) ([]byte, Compression, error) {
	return decompressChecked(path, data, nil)
}

func decompressChecked(path string, data []byte, check HeadCheck) ([]byte, Compression, error) {
	c := DetectCompression(data)
	if c == CompressNone {
		if check != nil {
			if err := check(data[:min(len(data), headLen)]); err != nil {
				return nil, c, &kmp.InputError{Path: path, Err: err}
			}
		}
		return data, c, nil
	}
	out, err := decompressTwice(path, c, func() (io.Reader, error) { return bytes.NewReader(data), nil }, check)
	return out, c, err
}

// decompressTwice decompresses what open returns (called once per pass, each time from the
// start): first counting, refusing more than MaxDecompressed bytes or a head check failure as
// soon as they show, then into an exactly sized buffer.
func decompressTwice(path string, c Compression, open func() (io.Reader, error), check HeadCheck) ([]byte, error) {
	corrupt := func(err error) error {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return kmp.InputErrorf(path, "corrupt %s data: %v", c, err)
	}
	pass := func(dst []byte) (int64, error) {
		src, err := open()
		if err != nil {
			return 0, err
		}
		r, done, err := DecompressReader(src, c)
		if err != nil {
			return 0, corrupt(err)
		}
		defer done()
		lr := io.LimitReader(r, MaxDecompressed+1)
		if dst != nil {
			n, err := io.ReadFull(lr, dst)
			if err != nil {
				if err == io.ErrUnexpectedEOF {
					return int64(n), kmp.InputErrorf(path, "changed while it was read")
				}
				return int64(n), corrupt(err)
			}
			// The rest must be empty, as it was in the first pass.
			extra, err := io.Copy(io.Discard, lr)
			if err != nil {
				return int64(n), corrupt(err)
			}
			if extra != 0 {
				return int64(n) + extra, kmp.InputErrorf(path, "changed while it was read")
			}
			return int64(n), nil
		}
		head := make([]byte, headLen)
		n, err := io.ReadFull(lr, head)
		if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
			return 0, corrupt(err)
		}
		if check != nil {
			if err := check(head[:n]); err != nil {
				return 0, &kmp.InputError{Path: path, Err: fmt.Errorf("%s-compressed: %w", c, err)}
			}
		}
		rest, err := io.Copy(io.Discard, lr)
		if err != nil {
			return 0, corrupt(err)
		}
		total := int64(n) + rest
		if total > MaxDecompressed {
			return 0, kmp.InputErrorf(path, "decompresses to more than %d bytes", MaxDecompressed)
		}
		return total, nil
	}
	size, err := pass(nil)
	if err != nil {
		return nil, err
	}
	out := make([]byte, size)
	if _, err := pass(out); err != nil {
		return nil, err
	}
	return out, nil
}

// ReadMaybeCompressed reads a whole file, decompressing it if it is gzip, xz or zstd.
func ReadMaybeCompressed(path string) ([]byte, Compression, error) {
	return ReadInput(path, nil)
}

// ReadInput reads an untrusted input file: it must be a regular file (not a directory, device or
// FIFO) of at most MaxInputFile bytes; gzip, xz and zstd are decompressed (at most
// MaxDecompressed bytes). check, if not nil, sees the first bytes of the (decompressed) content
// before the rest is read. Every refusal is an *InputError.
func ReadInput(path string, check HeadCheck) ([]byte, Compression, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, CompressNone, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, CompressNone, err
	}
	head := make([]byte, headLen)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, CompressNone, err
	}
	head = head[:n]
	c := DetectCompression(head)
	if c == CompressNone && check != nil {
		if err := check(head); err != nil {
			return nil, c, &kmp.InputError{Path: path, Err: err}
		}
	}
	if fi.Size() > MaxInputFile {
		return nil, c, kmp.InputErrorf(path, "%d bytes: larger than the %d bytes kmpack reads", fi.Size(), MaxInputFile)
	}
	if c == CompressNone {
		// Read what the file holds now, up to the cap: it may have changed since Stat.
		data := make([]byte, fi.Size())
		copy(data, head)
		if int64(n) < fi.Size() {
			m, err := io.ReadFull(f, data[n:])
			if err != nil && err != io.ErrUnexpectedEOF {
				return nil, c, err
			}
			data = data[:n+m]
		}
		var one [1]byte
		if m, _ := f.Read(one[:]); m != 0 {
			return nil, c, kmp.InputErrorf(path, "changed while it was read")
		}
		return data, c, nil
	}
	out, err := decompressTwice(path, c, func() (io.Reader, error) {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		return bufio.NewReader(io.LimitReader(f, MaxInputFile)), nil
	}, check)
	return out, c, err
}

// openRegular opens path for reading if it is a regular file. The type is checked before the
// open (opening a FIFO would block) and again on the open file (it may have been replaced).
func openRegular(path string) (*os.File, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, kmp.InputErrorf(path, "not a regular file (%s)", kmp.FileKind(fi.Mode()))
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if fi, err = f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err != nil {
			return nil, err
		}
		return nil, kmp.InputErrorf(path, "not a regular file (%s)", kmp.FileKind(fi.Mode()))
	}
	return f, nil
}

// CompressBytes compresses a module the way the kernel's own build does (scripts/Makefile.modinst):
// xz with a CRC32 check and a 1 MiB dictionary (what the in-kernel decompressor accepts), gzip -9,
// zstd at its best level. The output depends only on the input, for reproducible packages.
func CompressBytes(data []byte, c Compression) ([]byte, error) {
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch c {
	case CompressNone, "":
		return data, nil
	case CompressGzip:
		w, err = gzip.NewWriterLevel(&buf, gzip.BestCompression)
	case CompressXZ:
		w, err = xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 1 << 20}.NewWriter(&buf)
	case CompressZstd:
		w, err = zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1))
	default:
		return nil, fmt.Errorf("unknown compression %q", c)
	}
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ParseCompression reads a --compress value.
func ParseCompression(s string) (Compression, error) {
	switch Compression(s) {
	case CompressNone, CompressGzip, CompressXZ, CompressZstd:
		return Compression(s), nil
	}
	return "", fmt.Errorf("unknown compression %q (none, gzip, xz or zstd)", s)
}
