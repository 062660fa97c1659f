// Package efivars edits a copy of an EDK2 (OVMF) variable store offline, enough for the
// end-to-end suite to put a certificate into UEFI db before the firmware boots: the guest kernel
// then loads it into its .platform keyring (shared/reference/secure-boot.md §3, §4.1, format
// §4.3). It reads the firmware volume header, walks the authenticated variable records and appends
// one; nothing is signed (a store without PK is in setup mode, so the firmware checks nothing).
package efivars

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
)

// GUID is an EFI_GUID in its in-memory (mixed-endian) byte order.
type GUID [16]byte

// ParseGUID parses the canonical text form: the first three fields are stored little-endian,
// the last two as written.
func ParseGUID(s string) (GUID, error) {
	var g GUID
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 || len(s) != 36 {
		return g, fmt.Errorf("efivars: bad GUID %q", s)
	}
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	copy(g[8:], b[8:])
	return g, nil
}

// MustGUID is ParseGUID for constants.
func MustGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

func (g GUID) String() string {
	b := []byte{g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6]}
	b = append(b, g[8:]...)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

var (
	// ImageSecurityDatabase is the vendor GUID of db and dbx.
	ImageSecurityDatabase = MustGUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
	// CertX509 is EFI_CERT_X509_GUID, the signature type of a DER certificate.
	CertX509 = MustGUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
	// storeGUID is gEfiAuthenticatedVariableGuid, the format of OVMF's store.
	storeGUID = MustGUID("aaf32c78-947b-439a-a180-2e144ec37792")
)

// Variable attributes.
const (
	NonVolatile       = 0x01
	BootserviceAccess = 0x02
	RuntimeAccess     = 0x04
	TimeBasedAuth     = 0x20
	// DBAttributes are db's: NV|BS|RT|time-based authenticated write access.
	DBAttributes = NonVolatile | BootserviceAccess | RuntimeAccess | TimeBasedAuth
)

const (
	startID    = 0x55AA
	stateAdded = 0x3f
	// deleting clears bit 1 (VAR_DELETED = 0xfd); EDK2 ANDs the state bytes.
	stateDeletedMask = 0xfd
	// AUTHENTICATED_VARIABLE_HEADER: StartId, State, reserved, Attributes, MonotonicCount,
	// TimeStamp[16], PubKeyIndex, NameSize (36), DataSize (40), VendorGuid (44).
	headerSize = 60
)

// Variable is one record of the store.
type Variable struct {
	Offset     int
	State      byte
	Attributes uint32
	Name       string
	Vendor     GUID
	Data       []byte
}

// Live reports whether the record is the variable's current value.
func (v Variable) Live() bool { return v.State == stateAdded }

// bounds returns where the variable records start and where the store ends.
func bounds(store []byte) (start, end int, err error) {
	if len(store) < 0x48 || string(store[0x28:0x2c]) != "_FVH" {
		return 0, 0, errors.New("efivars: not a firmware volume (no _FVH signature)")
	}
	vs := int(binary.LittleEndian.Uint16(store[0x30:]))
	if vs+28 > len(store) || GUID(store[vs:vs+16]) != storeGUID {
		return 0, 0, errors.New("efivars: no authenticated variable store after the volume header")
	}
	if store[vs+20] != 0x5a || store[vs+21] != 0xfe {
		return 0, 0, errors.New("efivars: variable store not formatted and healthy")
	}
	end = vs + int(binary.LittleEndian.Uint32(store[vs+16:]))
	if end > len(store) {
		return 0, 0, errors.New("efivars: variable store larger than the file")
	}
	return vs + 28, end, nil
}

// List returns every record in the store, deleted ones included, and the offset of the first
// free byte.
func List(store []byte) (vars []Variable, free int, err error) {
	off, end, err := bounds(store)
	if err != nil {
		return nil, 0, err
	}
	le := binary.LittleEndian
	for off+headerSize <= end && le.Uint16(store[off:]) == startID {
		nameSize, dataSize := int(le.Uint32(store[off+36:])), int(le.Uint32(store[off+40:]))
		next := off + headerSize + nameSize + dataSize
		if nameSize%2 != 0 || next > end || next < off {
			return nil, 0, fmt.Errorf("efivars: record at %#x overruns the store", off)
		}
		name := store[off+headerSize : off+headerSize+nameSize]
		u := make([]uint16, len(name)/2)
		for i := range u {
			u[i] = le.Uint16(name[2*i:])
		}
		vars = append(vars, Variable{
			Offset:     off,
			State:      store[off+2],
			Attributes: le.Uint32(store[off+4:]),
			Name:       strings.TrimRight(string(utf16.Decode(u)), "\x00"),
			Vendor:     GUID(store[off+44 : off+60]),
			Data:       store[off+headerSize+nameSize : next],
		})
		// Name and data follow the header unpadded; the next header is 4-aligned.
		off = (next + 3) &^ 3
	}
	return vars, off, nil
}

// Set returns a copy of store in which name (of vendor) has the value data: a live record of
// that variable is marked deleted and a new one is appended, as the firmware itself would
// write it (monotonic count, timestamp and public key index zero).
func Set(store []byte, name string, vendor GUID, attrs uint32, data []byte) ([]byte, error) {
	vars, free, err := List(store)
	if err != nil {
		return nil, err
	}
	_, end, _ := bounds(store)
	out := bytes.Clone(store)
	for _, v := range vars {
		if v.Live() && v.Name == name && v.Vendor == vendor {
			out[v.Offset+2] &= stateDeletedMask
		}
	}
	u := utf16.Encode([]rune(name + "\x00"))
	rec := make([]byte, headerSize, headerSize+2*len(u)+len(data))
	le := binary.LittleEndian
	le.PutUint16(rec[0:], startID)
	rec[2] = stateAdded
	le.PutUint32(rec[4:], attrs)
	le.PutUint32(rec[36:], uint32(2*len(u)))
	le.PutUint32(rec[40:], uint32(len(data)))
	copy(rec[44:], vendor[:])
	for _, c := range u {
		rec = le.AppendUint16(rec, c)
	}
	rec = append(rec, data...)
	if free+len(rec) > end {
		return nil, fmt.Errorf("efivars: no room for %s (%d bytes) in the store", name, len(rec))
	}
	for _, b := range out[free : free+len(rec)] {
		if b != 0xff {
			return nil, fmt.Errorf("efivars: free space at %#x is not erased", free)
		}
	}
	copy(out[free:], rec)
	return out, nil
}

// X509SignatureList returns an EFI_SIGNATURE_LIST holding one DER certificate, owned by owner
// (what efitools' cert-to-efi-sig-list writes): type EFI_CERT_X509_GUID, list size, header size
// 0, signature size, then the owner GUID and the certificate.
func X509SignatureList(owner GUID, der []byte) []byte {
	le := binary.LittleEndian
	b := append([]byte{}, CertX509[:]...)
	b = le.AppendUint32(b, uint32(28+16+len(der)))
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, uint32(16+len(der)))
	b = append(b, owner[:]...)
	return append(b, der...)
}

// X509Certificates returns the DER certificates of the X.509 signature lists in data (a db
// value: concatenated EFI_SIGNATURE_LISTs); lists of other types are skipped.
func X509Certificates(data []byte) ([][]byte, error) {
	le := binary.LittleEndian
	var certs [][]byte
	for len(data) > 0 {
		if len(data) < 28 {
			return nil, errors.New("efivars: truncated signature list")
		}
		size, hdr, sigSize := int(le.Uint32(data[16:])), int(le.Uint32(data[20:])), int(le.Uint32(data[24:]))
		if size < 28+hdr || size > len(data) || sigSize <= 16 || (size-28-hdr)%sigSize != 0 {
			return nil, errors.New("efivars: malformed signature list")
		}
		if GUID(data[:16]) == CertX509 {
			for s := data[28+hdr : size]; len(s) > 0; s = s[sigSize:] {
				certs = append(certs, s[16:sigSize])
			}
		}
		data = data[size:]
	}
	return certs, nil
}
