package formats

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"

	"github.com/kmpack/kmpack/kmp"
)

// PackageCache keeps bytes that are expensive to make and determined by their inputs in
// kmpack's cache directory: package files with a large payload (the runtime package's is the
// kmpack binary, whose gzip takes seconds), and the stripped runtime binary. Each lives in a
// slot, <Dir>/packages/<sha256 of the slot's name>, one file per slot: a header line (the key
// the bytes were made for, their sha256 and size) and the bytes. A new key replaces the
// slot's bytes, so the cache holds one runtime binary and one file per package name, not one
// per kmpack build or SOURCE_DATE_EPOCH.
//
// A cache directory may come from anywhere (CI restores them): a slot is read through an
// os.Root, only as a regular file that is no link, bounded, and its bytes are used only when
// they match the recorded sha256 and size; anything else is reported, removed and made anew.
// Slots are written to a temporary file that is renamed into place.
type PackageCache struct {
	Dir string
	// Salt identifies the code that makes the bytes: the sha256 of the kmpack binary, whose
	// emitters wrote the packages. With no Salt, packages are not cached.
	Salt string
	// Refresh takes nothing from the cache and stores what is made (kmpack build --no-cache).
	Refresh bool
	// Warn reports an unusable entry or a failure to store one (nil: silent). Neither fails
	// packaging: the bytes are made as if there were no cache.
	Warn func(string)
	// Secret authenticates entries (an HMAC-SHA256 over slot, key, sha256 and size in each
	// header): a cache directory restored from elsewhere can hold entries whose recorded
	// sha256 matches bytes someone else chose (a binary that becomes /usr/bin/kmpack in the
	// runtime package); only entries this host's kmpack wrote carry a valid MAC. With no
	// Secret (kmp.HostSecret), nothing is cached.
	Secret []byte
}

const (
	packageCacheDir    = "packages"
	packageCacheFormat = "kmpack-package-cache"
	packageCacheFmtVer = 1
	// maxCachedBytes bounds what one slot may hold (a package file, the stripped binary).
	maxCachedBytes = 1 << 30
	maxCacheHeader = 4096
	// minCachedPayload is the payload below which a package is not cached: emitting a small
	// package costs less than hashing, reading and writing its cache slot.
	minCachedPayload = 1 << 20
)

type cacheHeader struct {
	Format        string `json:"format"`
	FormatVersion int    `json:"formatVersion"`
	Key           string `json:"key"`
	SHA256        string `json:"sha256"`
	Size          int64  `json:"size"`
	MAC           string `json:"mac"`
}

// mac authenticates what a header says about slot's bytes.
func (c *PackageCache) mac(slot string, h cacheHeader) string {
	m := hmac.New(sha256.New, c.Secret)
	fmt.Fprintf(m, "%s\x00%s\x00%d\x00%s\x00%s\x00%d", packageCacheFormat, slot, h.FormatVersion, h.Key, h.SHA256, h.Size)
	return hex.EncodeToString(m.Sum(nil))
}

func slotPath(name string) string {
	sum := sha256.Sum256([]byte(name))
	return path.Join(packageCacheDir, hex.EncodeToString(sum[:]))
}

func (c *PackageCache) warn(format string, args ...any) {
	if c.Warn != nil {
		c.Warn(fmt.Sprintf(format, args...))
	}
}

// Get returns the bytes slot holds for key, or nil: when it holds none, holds another key's,
// or holds bytes that fail a check (reported and removed).
func (c *PackageCache) Get(slot, key string) []byte {
	if c == nil || c.Dir == "" || c.Refresh || len(c.Secret) == 0 {
		return nil
	}
	rel := slotPath(slot)
	root, err := os.OpenRoot(c.Dir)
	if err != nil {
		return nil
	}
	defer root.Close()
	data, err := c.readSlot(root, rel, slot, key)
	switch {
	case err == nil:
		return data
	case errors.Is(err, errOtherKey), errors.Is(err, fs.ErrNotExist):
		return nil
	}
	c.warn("package cache entry %s (%s) is unusable (%v): making it anew", path.Join(c.Dir, rel), slot, err)
	root.Remove(rel)
	return nil
}

var errOtherKey = errors.New("made for other inputs")

func (c *PackageCache) readSlot(root *os.Root, rel, slot, key string) ([]byte, error) {
	// Regular file only, never through a link, without blocking on a FIFO, bounded.
	f, fi, err := kmp.OpenRootFile(root, rel, true)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi.Size() > maxCachedBytes+maxCacheHeader {
		return nil, fmt.Errorf("larger than %d bytes", maxCachedBytes+maxCacheHeader)
	}
	// Read in one piece (the file's size): a grown buffer would copy the bytes over and over.
	all := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, all); err != nil {
		return nil, err
	}
	line, data, ok := bytes.Cut(all[:min(len(all), maxCacheHeader)], []byte("\n"))
	if !ok {
		return nil, errors.New("no header line")
	}
	data = all[len(line)+1:]
	var h cacheHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return nil, fmt.Errorf("header: %v", err)
	}
	if h.Format != packageCacheFormat || h.FormatVersion != packageCacheFmtVer {
		return nil, fmt.Errorf("format %q version %d, not %s version %d", h.Format, h.FormatVersion, packageCacheFormat, packageCacheFmtVer)
	}
	if h.Key != key {
		return nil, errOtherKey
	}
	if !hmac.Equal([]byte(h.MAC), []byte(c.mac(slot, h))) {
		return nil, errors.New("its header's MAC is not this host's (written by another user or machine, or altered)")
	}
	sum := sha256.Sum256(data)
	if int64(len(data)) != h.Size || hex.EncodeToString(sum[:]) != h.SHA256 {
		return nil, errors.New("its bytes do not match their recorded sha256 and size (truncated or altered)")
	}
	return data, nil
}

// Put stores data in slot for key, replacing what the slot held. A cache that cannot be
// written is reported and only costs making the bytes again next time.
func (c *PackageCache) Put(slot, key string, data []byte) {
	if c == nil || c.Dir == "" || len(data) > maxCachedBytes || len(c.Secret) == 0 {
		return
	}
	if err := c.put(slot, key, data); err != nil {
		c.warn("cannot store %s in the package cache %s: %v", slot, c.Dir, err)
	}
}

func (c *PackageCache) put(slot, key string, data []byte) error {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(c.Dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if err := root.MkdirAll(packageCacheDir, 0o755); err != nil {
		return err
	}
	kmp.RemoveDeadTemps(root, packageCacheDir, ".tmp-")
	sum := sha256.Sum256(data)
	h := cacheHeader{Format: packageCacheFormat, FormatVersion: packageCacheFmtVer,
		Key: key, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	h.MAC = c.mac(slot, h)
	header, err := json.Marshal(h)
	if err != nil {
		return err
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := path.Join(packageCacheDir, fmt.Sprintf(".tmp-%d-%x", os.Getpid(), rnd))
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(append(header, '\n'))
	if err == nil {
		_, err = f.Write(data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Rename(tmp, slotPath(slot))
	}
	if err != nil {
		root.Remove(tmp)
	}
	return err
}

// cacheable tells whether p's file is worth caching and can be: a large payload, a salt that
// identifies the emitters, and no signature (a signing key is not part of the key).
func (p *Package) cacheable() bool {
	signed := p.signing != nil && (p.Format == "rpm" && p.signing.RPM != nil || p.Format == "apk" && p.signing.APK != nil)
	return p.cache != nil && p.cache.Salt != "" && !signed && p.payloadSize() >= minCachedPayload
}

// cacheSlot is the slot of p's file: one per package file name and format.
func (p *Package) cacheSlot() string { return "package " + p.Format + " " + p.FileName }

// cacheKey is a digest of everything the emitters read from p, and of the emitters themselves
// (the salt): the package's exported fields, each file with its body's sha256, and the
// unexported fields that change what is written. A field added to Package must be added here
// when it is unexported (TestPackageCacheKeyCoversFields counts them).
func (p *Package) cacheKey(salt string) (string, error) {
	type file struct {
		File
		BodySHA256 string
		BodySize   int
	}
	q := *p
	q.Files = nil
	files := make([]file, len(p.Files))
	for i, f := range p.Files {
		sum := sha256.Sum256(f.Body)
		files[i] = file{File: f, BodySHA256: hex.EncodeToString(sum[:]), BodySize: len(f.Body)}
		files[i].Body = nil
	}
	doc, err := json.Marshal(struct {
		Salt       string
		Package    Package
		Files      []file
		Runtime    bool
		SourceRoot string
		CertDir    string
		Resource   []byte
		Base       string
	}{salt, q, files, p.runtime, p.sourceRoot, p.certDir, p.resource, p.base.id()})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(append([]byte(packageCacheFormat+" package\n"), doc...))
	return hex.EncodeToString(sum[:]), nil
}
