// Package repo reads distro package repositories: Debian archives (Release/InRelease and
// Packages indexes) and rpm-md repositories (repomd.xml and primary.xml), selects the kernel
// devel package sets they offer, and fetches packages into a content-addressed cache with the
// repository's checksums verified. Every byte it reads comes from a server kmpack does not
// control: the parsers are bounded, refuse paths that leave the repository, and turn a panic
// into an InputError (kmp.Guard).
package repo

import (
	"fmt"
	"strings"
)

// Bounds on repository metadata. Debian's largest index (bookworm main amd64 Packages) is 50 MB
// with 66,000 stanzas; a Fedora primary.xml is about 100 MB uncompressed.
const (
	MaxIndexBytes    = 1 << 30   // an uncompressed Packages or primary.xml
	MaxReleaseBytes  = 64 << 20  // a Release/InRelease or repomd.xml
	MaxEntries       = 2_000_000 // stanzas in a Packages index, packages in primary.xml
	MaxFieldBytes    = 1 << 20   // one field (a Description, a Depends line)
	MaxPackageBytes  = 16 << 30  // one package file's declared size
	MaxPathBytes     = 4096      // a Filename / location href
	MaxPathParts     = 64        // its components
	MaxXMLDepth      = 32        // element nesting in repomd.xml / primary.xml
	MaxDependencies  = 10_000    // provides/requires entries of one rpm package
	maxReleaseHashes = 100_000   // lines in a Release SHA256 field
)

// CheckPath refuses a repository-relative path (Debian Filename, rpm-md location href, a Release
// index path) that could leave the repository: absolute, with a ".." or empty component, a
// backslash, control characters, or too long.
func CheckPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty path")
	case len(p) > MaxPathBytes:
		return fmt.Errorf("path of %d bytes (at most %d)", len(p), MaxPathBytes)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("absolute path %q", p)
	case strings.ContainsAny(p, "\\\x00"):
		return fmt.Errorf("path %q contains a backslash or NUL", p)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("path %q contains a control character", p)
		}
	}
	parts := strings.Split(p, "/")
	if len(parts) > MaxPathParts {
		return fmt.Errorf("path %q has %d components (at most %d)", p, len(parts), MaxPathParts)
	}
	for i, c := range parts {
		if c == ".." {
			return fmt.Errorf("path %q leaves the repository", p)
		}
		if (c == "" || c == ".") && i != len(parts)-1 || c == "" {
			return fmt.Errorf("path %q has an empty or \".\" component", p)
		}
	}
	return nil
}

func checkSHA256(s string) error {
	if len(s) != 64 {
		return fmt.Errorf("sha256 %q is not 64 hex digits", s)
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("sha256 %q is not 64 lowercase hex digits", s)
		}
	}
	return nil
}
