package module

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
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

// MaxDecompressed bounds what one compressed input may expand to, so a compression bomb is an
// error and not an exhausted machine. The largest real module (amdgpu) is under 30 MiB.
const MaxDecompressed = 1 << 30

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

// DecompressReader wraps r in the decompressor c needs.
func DecompressReader(r io.Reader, c Compression) (io.Reader, func(), error) {
	switch c {
	case CompressGzip:
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return z, func() { z.Close() }, nil
	case CompressXZ:
		z, err := xz.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return z, func() {}, nil
	case CompressZstd:
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxDecompressed))
		if err != nil {
			return nil, nil, err
		}
		return z, z.Close, nil
	}
	return r, func() {}, nil
}

// Decompress returns data decompressed according to its magic bytes (unchanged if it is not
// compressed) and the compression found.
func Decompress(path string, data []byte) ([]byte, Compression, error) {
	c := DetectCompression(data)
	if c == CompressNone {
		return data, c, nil
	}
	r, done, err := DecompressReader(bytes.NewReader(data), c)
	if err != nil {
		return nil, c, inputErrorf(path, "corrupt %s data: %v", c, err)
	}
	defer done()
	out, err := io.ReadAll(io.LimitReader(r, MaxDecompressed+1))
	if err != nil {
		return nil, c, inputErrorf(path, "corrupt %s data: %v", c, err)
	}
	if len(out) > MaxDecompressed {
		return nil, c, inputErrorf(path, "decompresses to more than %d bytes", MaxDecompressed)
	}
	return out, c, nil
}

// ReadMaybeCompressed reads a whole file, decompressing it if it is gzip, xz or zstd.
func ReadMaybeCompressed(path string) ([]byte, Compression, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, CompressNone, err
	}
	return Decompress(path, data)
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
