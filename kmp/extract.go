package kmp

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// extractor writes the entries of an untrusted archive under root and nowhere else:
// entry names with ".." components are refused (never silently clamped), nothing is written
// through a symlink, symlinks whose target would resolve outside root are refused, and device
// nodes, FIFOs and sockets are refused. Absolute symlink targets (Debian's
// /lib/modules/<krel>/build -> /usr/src/linux-headers-<krel>) are taken as relative to root,
// the way dpkg --root and rpm --root see them, and written as relative links.
type extractor struct {
	root    string // absolute, symlink-free
	archive string // names the archive in errors
	// allowAbsolute accepts entry names starting with "/": RPM payloads name every file that way,
	// while a tar member named so is a hostile archive.
	allowAbsolute bool
	links         []string // symlinks created, checked once all entries are in place
	files         int
}

func (x *extractor) fail(name, format string, args ...any) error {
	return inputErrorf(x.archive, "entry %q: %s", name, fmt.Sprintf(format, args...))
}

// clean validates an entry name and returns it relative to root ("" for the root itself).
func (x *extractor) clean(name string) (string, error) {
	if name == "" {
		return "", x.fail(name, "empty name")
	}
	if strings.ContainsRune(name, 0) {
		return "", x.fail(name, "NUL in name")
	}
	if strings.HasPrefix(name, "/") && !x.allowAbsolute {
		return "", x.fail(name, "absolute path")
	}
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
			continue
		case "..":
			return "", x.fail(name, "path traversal (.. component)")
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "/"), nil
}

// parent makes the directories leading to rel, refusing to pass through anything that is not
// a real directory (a symlink planted by an earlier entry, for one).
func (x *extractor) parent(name, rel string) error {
	dir := x.root
	parts := strings.Split(rel, "/")
	for i, p := range parts[:len(parts)-1] {
		dir = filepath.Join(dir, p)
		fi, err := os.Lstat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case fi.Mode()&fs.ModeSymlink != 0:
			return x.fail(name, "passes through symlink %s", strings.Join(parts[:i+1], "/"))
		case !fi.IsDir():
			return x.fail(name, "passes through non-directory %s", strings.Join(parts[:i+1], "/"))
		}
	}
	return nil
}

// replaceable removes what stands at p so a new entry can take its place (later archive members
// win, as with tar), but never replaces a directory with something else.
func (x *extractor) replaceable(name, p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return x.fail(name, "would replace a directory")
	}
	return os.Remove(p)
}

func (x *extractor) Dir(name string, mode fs.FileMode) error {
	rel, err := x.clean(name)
	if err != nil || rel == "" {
		return err
	}
	if err := x.parent(name, rel); err != nil {
		return err
	}
	p := filepath.Join(x.root, rel)
	fi, err := os.Lstat(p)
	if err == nil {
		if fi.IsDir() {
			return nil
		}
		return x.fail(name, "directory would replace a file or symlink")
	}
	return os.Mkdir(p, dirMode(mode))
}

func (x *extractor) File(name string, mode fs.FileMode, r io.Reader) error {
	rel, err := x.clean(name)
	if err != nil {
		return err
	}
	if rel == "" {
		return x.fail(name, "file entry names the root")
	}
	if err := x.parent(name, rel); err != nil {
		return err
	}
	p := filepath.Join(x.root, rel)
	if err := x.replaceable(name, p); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode(mode))
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return inputErrorf(x.archive, "entry %q: %v", name, err)
	}
	x.files++
	return f.Close()
}

func (x *extractor) Symlink(name, target string) error {
	rel, err := x.clean(name)
	if err != nil {
		return err
	}
	if rel == "" || target == "" || strings.ContainsRune(target, 0) {
		return x.fail(name, "bad symlink")
	}
	if err := x.parent(name, rel); err != nil {
		return err
	}
	if strings.HasPrefix(target, "/") {
		// Re-root: /usr/src/x seen from lib/modules/k/build becomes ../../../usr/src/x.
		for _, c := range strings.Split(target, "/") {
			if c == ".." {
				return x.fail(name, "symlink target %q escapes the archive root", target)
			}
		}
		up := strings.Repeat("../", strings.Count(rel, "/"))
		target = up + strings.TrimPrefix(path.Clean(target), "/")
		if target == up {
			target = "."
		}
	} else if !lexicallyInside(path.Join(path.Dir(rel), target)) {
		return x.fail(name, "symlink target %q escapes the archive root", target)
	}
	p := filepath.Join(x.root, rel)
	if err := x.replaceable(name, p); err != nil {
		return err
	}
	x.links = append(x.links, rel)
	return os.Symlink(target, p)
}

// Hardlink links name to an entry already extracted.
func (x *extractor) Hardlink(name, target string) error {
	rel, err := x.clean(name)
	if err != nil {
		return err
	}
	trel, err := x.clean(target)
	if err != nil {
		return err
	}
	if rel == "" || trel == "" {
		return x.fail(name, "bad hard link")
	}
	tp := filepath.Join(x.root, trel)
	fi, err := os.Lstat(tp)
	if err != nil || !fi.Mode().IsRegular() {
		return x.fail(name, "hard link to %q, which is not a regular file extracted earlier", target)
	}
	if err := x.parent(name, rel); err != nil {
		return err
	}
	p := filepath.Join(x.root, rel)
	if err := x.replaceable(name, p); err != nil {
		return err
	}
	return os.Link(tp, p)
}

// Special refuses device nodes, FIFOs and sockets.
func (x *extractor) Special(name, kind string) error {
	return x.fail(name, "%s entries are not allowed", kind)
}

// checkLinks resolves every symlink for real, through the links it meets, and refuses any that
// ends up outside root. The lexical check in Symlink alone can be fooled by a chain of links.
func (x *extractor) checkLinks() error {
	for _, rel := range x.links {
		if _, err := resolveInside(x.root, rel); err != nil {
			return inputErrorf(x.archive, "symlink %q: %v", rel, err)
		}
	}
	return nil
}

func lexicallyInside(p string) bool {
	p = path.Clean(p)
	return p != ".." && !strings.HasPrefix(p, "../")
}

// resolveInside follows rel under root component by component, symlinks included, and fails if
// the path ever leaves root. A missing component ends the walk: the rest is checked lexically.
func resolveInside(root, rel string) (string, error) {
	var cur []string // resolved components below root
	todo := strings.Split(rel, "/")
	for hops := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				return "", fmt.Errorf("resolves outside the root")
			}
			cur = cur[:len(cur)-1]
			continue
		}
		p := filepath.Join(append([]string{root}, append(cur, c)...)...)
		fi, err := os.Lstat(p)
		if err != nil {
			rest := path.Join(append(append([]string{}, cur...), append([]string{c}, todo...)...)...)
			if !lexicallyInside(rest) {
				return "", fmt.Errorf("resolves outside the root")
			}
			return rest, nil
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = append(cur, c)
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("too many levels of symlinks")
		}
		t, err := os.Readlink(p)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(t, "/") {
			cur = nil
		}
		todo = append(strings.Split(t, "/"), todo...)
	}
	return strings.Join(cur, "/"), nil
}

func dirMode(m fs.FileMode) fs.FileMode {
	return (m.Perm() | 0o700) &^ 0o022
}

// fileMode keeps the execute bits (kbuild's scripts need them) and drops setuid, setgid,
// sticky and group/world write.
func fileMode(m fs.FileMode) fs.FileMode {
	return (m.Perm() | 0o600) &^ 0o022
}
