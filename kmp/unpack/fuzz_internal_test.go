package unpack

import (
	"bytes"
	"io"
	"testing"
)

// FuzzArReader: the ar reader .deb files go through. Invariant: no panic; every member yields
// exactly the size its header states or an error, and never more bytes than the archive has.
// (In package kmp because the reader is internal; the package-level target is FuzzUnpackPackage.)
func FuzzArReader(f *testing.F) {
	f.Setenv("KMPACK_PANIC", "1")
	f.Add([]byte("!<arch>\ndebian-binary/  0           0     0     100644  4         `\n2.0\ndata.tar.gz/    0           0     0     100644  3         `\nabc\n"))
	f.Add([]byte("!<arch>\nx               0           0     0     100644  -1        `\n"))
	f.Add([]byte("!<arch>\nx               0           0     0     100644  9999999999`\nshort"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := newArReader(bytes.NewReader(data))
		if err != nil {
			return
		}
		total := int64(8)
		for {
			h, err := r.Next()
			if err == io.EOF {
				if total != int64(len(data)) && total+1 != int64(len(data)) {
					t.Fatalf("clean end at %d of %d bytes", total, len(data))
				}
				return
			}
			if err != nil {
				return
			}
			if h.Size < 0 {
				t.Fatalf("negative size %d", h.Size)
			}
			n, err := io.Copy(io.Discard, r)
			if err != nil {
				if n >= h.Size {
					t.Fatalf("error %v after all %d bytes", err, n)
				}
				return
			}
			if n != h.Size {
				t.Fatalf("member %q: read %d bytes, header says %d", h.Name, n, h.Size)
			}
			total += 60 + h.Size + h.Size%2
			if total-h.Size%2 > int64(len(data)) {
				t.Fatalf("read past the end: %d of %d", total, len(data))
			}
		}
	})
}
