package unpack

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// arReader reads the common ar format .deb files use. It is ours rather than
// github.com/blakesmith/ar's Reader because that one panics on malformed headers (found by
// FuzzUnpackPackage) and does not check the global magic; untrusted packages need errors.
type arReader struct {
	r      io.Reader
	offset int64 // of the next header
	remain int64 // unread bytes of the current member
	pad    int64
}

type arHeader struct {
	Name string
	Size int64
}

func newArReader(r io.Reader) (*arReader, error) {
	magic := make([]byte, 8)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != "!<arch>\n" {
		return nil, fmt.Errorf("no ar magic at offset 0")
	}
	return &arReader{r: r, offset: 8}, nil
}

// Next skips what is left of the current member and reads the next header; io.EOF at the end.
func (a *arReader) Next() (*arHeader, error) {
	if a.remain+a.pad > 0 {
		if _, err := io.CopyN(io.Discard, a.r, a.remain+a.pad); err != nil {
			return nil, fmt.Errorf("member truncated before offset %d", a.offset)
		}
	}
	hdr := make([]byte, 60)
	n, err := io.ReadFull(a.r, hdr)
	if n == 0 && err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		return nil, fmt.Errorf("truncated header at offset %d", a.offset)
	}
	if !bytes.Equal(hdr[58:60], []byte("`\n")) {
		return nil, fmt.Errorf("bad header terminator at offset %d", a.offset)
	}
	// Ten decimal digits, space-padded: at most 9999999999, so the offset arithmetic below
	// cannot overflow. Signs ("+5", "-1") are not ar syntax.
	sizeField := strings.TrimRight(string(hdr[48:58]), " ")
	size, err := strconv.ParseInt(sizeField, 10, 64)
	if err != nil || sizeField == "" || strings.TrimLeft(sizeField, "0123456789") != "" {
		return nil, fmt.Errorf("bad member size %q at offset %d", sizeField, a.offset)
	}
	h := &arHeader{Name: strings.TrimSuffix(strings.TrimSpace(string(hdr[:16])), "/"), Size: size}
	a.remain, a.pad = size, size%2
	a.offset += 60 + size + size%2
	return h, nil
}

func (a *arReader) Read(p []byte) (int, error) {
	if a.remain <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > a.remain {
		p = p[:a.remain]
	}
	n, err := a.r.Read(p)
	a.remain -= int64(n)
	if err == io.EOF && a.remain > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
