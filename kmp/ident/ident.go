// Package ident validates the identifiers kmpack reads from untrusted places (kernel trees,
// package files, kmpack.yaml, dkms.conf results, weak-updates registrations, the command line)
// and later puts into paths, file names, scriptlets and package control files. Each is checked
// once, where it enters; code downstream may then join it into a path or a shell word without
// further checks. The rules are deliberately narrower than what a filesystem allows and wide
// enough for every real value seen in Debian, Ubuntu, SUSE, RHEL, Fedora, Alpine and Arch.
package ident

import (
	"fmt"
	"strconv"
)

// Error says which identifier was refused and why. Its message is one line.
type Error struct {
	Kind  string // "kernel release", "package name", ...
	Value string
	Why   string
}

func (e *Error) Error() string {
	return fmt.Sprintf("invalid %s %s: %s", e.Kind, strconv.QuoteToASCII(e.Value), e.Why)
}

// Limits, chosen from the kernel's and the package formats' own.
const (
	// MaxKernelRelease is the kernel's own limit: utsname.release is 65 bytes with its NUL.
	MaxKernelRelease = 64
	// MaxModuleName is MODULE_NAME_LEN (64 - sizeof(unsigned long)) less the NUL.
	MaxModuleName = 55
	// MaxName and MaxVersion bound package names and versions (dpkg and rpm have no hard
	// limit; these are far above any real one and keep paths short).
	MaxName    = 128
	MaxVersion = 128
	MaxFlavor  = 64
)

func check(kind, v string, max int, first, rest func(byte) bool) error {
	switch {
	case v == "":
		return &Error{kind, v, "empty"}
	case len(v) > max:
		return &Error{kind, v, fmt.Sprintf("longer than %d bytes", max)}
	case v == "." || v == "..":
		return &Error{kind, v, "is a relative path component"}
	case !first(v[0]):
		return &Error{kind, v, fmt.Sprintf("must not start with %s", strconv.QuoteRuneToASCII(rune(v[0])))}
	}
	for i := 1; i < len(v); i++ {
		if !rest(v[i]) {
			return &Error{kind, v, fmt.Sprintf("character %s not allowed", strconv.QuoteRuneToASCII(rune(v[i])))}
		}
	}
	return nil
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func in(set string) func(byte) bool {
	return func(c byte) bool {
		if alnum(c) {
			return true
		}
		for i := 0; i < len(set); i++ {
			if set[i] == c {
				return true
			}
		}
		return false
	}
}

// KernelRelease checks a kernel release ("6.1.0-53-amd64", "5.14.0-427.13.1.el9_4.x86_64",
// "6.4.0-150600.23.7-default", "6.12.117+deb12-amd64", "6.6.1-0-lts"). It names directories
// (/lib/modules/<release>), so it is one path component with no "..".
func KernelRelease(v string) error {
	return check("kernel release", v, MaxKernelRelease, alnum, in("._+~-"))
}

// PackageName checks a module source's name (PACKAGE_NAME, kmpack.yaml name, a registration's
// package): it names /usr/src/<name>-<version> and every package kmpack writes. Upper case and
// "_" are allowed here (dkms allows them); each package format maps them to its own rules.
func PackageName(v string) error {
	return check("package name", v, MaxName, alnum, in("._+-"))
}

// Version checks a source's version as dkms accepts it in practice ("1.0", "0.3.0-1",
// "2.4.1~rc1", "20230101+git.abc"); each package format maps it to its own rules.
func Version(v string) error {
	return check("version", v, MaxVersion, alnum, in("._+~-"))
}

// ModuleName checks a kernel module's name, the file name without ".ko".
func ModuleName(v string) error {
	return check("module name", v, MaxModuleName, in("_-"), in("_-"))
}

// Flavor checks a kernel flavor ("amd64", "cloud-amd64", "default", "64k").
func Flavor(v string) error {
	return check("flavor", v, MaxFlavor, alnum, in("._+-"))
}

// PathComponent checks one component of a relative path kmpack builds from untrusted data
// (an install directory such as "updates" or "extra/acme" is a sequence of these).
func PathComponent(v string) error {
	return check("path component", v, 255, in("_+-"), in("._+~-"))
}
