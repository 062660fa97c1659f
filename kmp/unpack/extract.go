package unpack

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/kmpack/kmpack/kmp"
)

// Limits on what one unpack may write. Real kernel devel packages stay far below them
// (linux-headers-6.1 common: ~18,000 entries, ~60 MB; a whole linux-image: ~4,100 modules,
// ~400 MB); they bound what a hostile or corrupt package can cost.
const (
	// MaxUnpackBytes is the most file data one set of packages may unpack to.
	MaxUnpackBytes = 8 << 30
	// MaxUnpackRatio bounds unpacked bytes by the size of the package files (plus 64 MiB):
	// kernel packages compress 4-10x; a 153 KB package that unpacks to 1.1 GB is a bomb.
	MaxUnpackRatio = 100
	// MaxUnpackEntries is the most archive entries one set of packages may hold.
	MaxUnpackEntries = 1_000_000
	// MaxEntryName bounds an entry's name (PATH_MAX) and MaxEntryDepth its components.
	MaxEntryName  = 4096
	MaxEntryDepth = 64
)

// extractor writes the entries of an untrusted archive under root and nowhere else. Every
// filesystem operation goes through an os.Root, so the kernel (openat2 RESOLVE_BENEATH or Go's
// component-wise walk with O_NOFOLLOW) refuses any path that would leave root, whatever chain
// of symlinks earlier entries planted. On top of that, entry names with ".." components are
// refused (never silently clamped), nothing is written through a symlink, symlinks whose target
// would resolve outside root are refused, and device nodes, FIFOs and sockets are refused.
// Absolute symlink targets (Debian's /lib/modules/<krel>/build -> /usr/src/linux-headers-<krel>)
// are taken as relative to root, the way dpkg --root and rpm --root see them, and written as
// relative links.
type extractor struct {
	root    *os.Root
	archive string // names the archive in errors
	// allowAbsolute accepts entry names starting with "/": RPM payloads name every file that way,
	// while a tar member named so is a hostile archive.
	allowAbsolute bool
	files         int
	budget        *unpackBudget
	// dirs are the paths this extractor made or found to be real directories. Nothing it does
	// turns a directory into anything else (replaceable refuses to), so the answer holds for
	// the rest of the archive: an entry's ancestors are checked once, not once per entry (a
	// linux-headers -common package's 17,000 files sit 6-10 directories deep, and each Lstat
	// through the os.Root walks every component again).
	dirs map[string]bool
	// dir is the directory the last file went to, open as an os.Root (archives list a
	// directory's files together): the next file there is created by name in it.
	dir     *os.Root
	dirName string
}

// in returns the directory rel (already made by parent) as an os.Root, for creating files by
// name in it. The caller does not close it.
func (x *extractor) in(rel string) (*os.Root, error) {
	if rel == "." {
		return x.root, nil
	}
	if x.dir != nil && x.dirName == rel {
		return x.dir, nil
	}
	x.close()
	d, err := x.root.OpenRoot(rel)
	if err != nil {
		return nil, err
	}
	x.dir, x.dirName = d, rel
	return d, nil
}

// close releases what the extractor holds open.
func (x *extractor) close() {
	if x.dir != nil {
		x.dir.Close()
		x.dir, x.dirName = nil, ""
	}
}

func (x *extractor) knownDir(rel string) {
	if x.dirs == nil {
		x.dirs = map[string]bool{}
	}
	x.dirs[rel] = true
}

// unpackBudget is shared by the extractors of one package set.
type unpackBudget struct {
	bytes, maxBytes int64
	entries         int
	// maxEntries bounds entries when set (MaxUnpackEntries otherwise).
	maxEntries int
	// links are the symlinks every package of the set created, checked once all are in place:
	// a link one package makes can complete a chain another package's link starts.
	links []createdLink
}

type createdLink struct{ rel, archive string }

func (x *extractor) fail(name, format string, args ...any) error {
	return kmp.InputErrorf(x.archive, "entry %q: %s", name, fmt.Sprintf(format, args...))
}

// clean validates an entry name and returns it relative to root ("" for the root itself).
func (x *extractor) clean(name string) (string, error) {
	if x.budget != nil {
		limit := MaxUnpackEntries
		if x.budget.maxEntries > 0 {
			limit = x.budget.maxEntries
		}
		if x.budget.entries++; x.budget.entries > limit {
			return "", x.fail(name, "more than %d entries", limit)
		}
	}
	if name == "" {
		return "", x.fail(name, "empty name")
	}
	if len(name) > MaxEntryName {
		return "", x.fail(name[:64]+"...", "name longer than %d bytes", MaxEntryName)
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
	if len(parts) > MaxEntryDepth {
		return "", x.fail(name, "deeper than %d components", MaxEntryDepth)
	}
	return strings.Join(parts, "/"), nil
}

// parent makes the directories leading to rel, refusing to pass through anything that is not
// a real directory (a symlink planted by an earlier entry, for one).
func (x *extractor) parent(name, rel string) error {
	if d := path.Dir(rel); d == "." || x.dirs[d] {
		return nil
	}
	parts := strings.Split(rel, "/")
	for i := range parts[:len(parts)-1] {
		dir := strings.Join(parts[:i+1], "/")
		if x.dirs[dir] {
			continue
		}
		fi, err := x.root.Lstat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := x.root.Mkdir(dir, 0o755); err != nil {
				return x.fail(name, "%v", err)
			}
		case err != nil:
			return x.fail(name, "%v", err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return x.fail(name, "passes through symlink %s", dir)
		case !fi.IsDir():
			return x.fail(name, "passes through non-directory %s", dir)
		}
		x.knownDir(dir)
	}
	return nil
}

// replaceable removes what stands at rel so a new entry can take its place (later archive
// members win, as with tar), but never replaces a directory with something else.
func (x *extractor) replaceable(name, rel string) error {
	fi, err := x.root.Lstat(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return x.fail(name, "%v", err)
	}
	if fi.IsDir() {
		return x.fail(name, "would replace a directory")
	}
	return x.root.Remove(rel)
}

func (x *extractor) Dir(name string, mode fs.FileMode) error {
	rel, err := x.clean(name)
	if err != nil || rel == "" {
		return err
	}
	if err := x.parent(name, rel); err != nil {
		return err
	}
	if x.dirs[rel] {
		return nil
	}
	fi, err := x.root.Lstat(rel)
	if err == nil {
		if fi.IsDir() {
			x.knownDir(rel)
			return nil
		}
		return x.fail(name, "directory would replace a file or symlink")
	}
	if err := x.root.Mkdir(rel, dirMode(mode)); err != nil {
		return x.fail(name, "%v", err)
	}
	x.knownDir(rel)
	return nil
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
	dir, err := x.in(path.Dir(rel))
	if err != nil {
		return x.fail(name, "%v", err)
	}
	// Most entries are new: only when something stands there already is it looked at.
	base := path.Base(rel)
	f, err := dir.OpenFile(base, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, fileMode(mode))
	if errors.Is(err, fs.ErrExist) {
		if err := x.replaceable(name, rel); err != nil {
			return err
		}
		f, err = dir.OpenFile(base, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, fileMode(mode))
	}
	if err != nil {
		return x.fail(name, "%v", err)
	}
	if x.budget != nil {
		left := x.budget.maxBytes - x.budget.bytes
		n, err := io.Copy(f, io.LimitReader(r, left+1))
		x.budget.bytes += n
		if err == nil && n > left {
			err = fmt.Errorf("the packages unpack to more than %d bytes", x.budget.maxBytes)
		}
		if err != nil {
			f.Close()
			return x.fail(name, "%v", err)
		}
	} else if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return x.fail(name, "%v", err)
	}
	x.files++
	return f.Close()
}

func (x *extractor) Symlink(name, target string) error {
	rel, err := x.clean(name)
	if err != nil {
		return err
	}
	if rel == "" || target == "" || len(target) > MaxEntryName || strings.ContainsRune(target, 0) {
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
	} else if !kmp.LexicallyInside(path.Join(path.Dir(rel), target)) {
		return x.fail(name, "symlink target %q escapes the archive root", target)
	}
	if err := x.replaceable(name, rel); err != nil {
		return err
	}
	if x.budget != nil {
		x.budget.links = append(x.budget.links, createdLink{rel, x.archive})
	}
	if err := x.root.Symlink(target, rel); err != nil {
		return x.fail(name, "%v", err)
	}
	return nil
}

// Hardlink links name to a regular file already extracted. The target is looked up without
// passing through any symlink, and the link itself is made through the os.Root, so no chain of
// links can make it reach a file outside root.
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
	fi, err := x.root.Lstat(trel)
	if err != nil || !fi.Mode().IsRegular() || x.noSymlinkOnPath(trel) != nil {
		return x.fail(name, "hard link to %q, which is not a regular file extracted earlier", target)
	}
	if err := x.parent(name, rel); err != nil {
		return err
	}
	if err := x.replaceable(name, rel); err != nil {
		return err
	}
	if err := x.root.Link(trel, rel); err != nil {
		return x.fail(name, "%v", err)
	}
	return nil
}

// noSymlinkOnPath fails when a directory leading to rel is a symlink (or not a directory).
func (x *extractor) noSymlinkOnPath(rel string) error {
	parts := strings.Split(rel, "/")
	for i := range parts[:len(parts)-1] {
		dir := strings.Join(parts[:i+1], "/")
		fi, err := x.root.Lstat(dir)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("passes through %s, which is not a directory", dir)
		}
	}
	return nil
}

// Special refuses device nodes, FIFOs and sockets.
func (x *extractor) Special(name, kind string) error {
	return x.fail(name, "%s entries are not allowed", kind)
}

// checkLinks resolves every symlink the set's packages created, for real, through the links it
// meets, and refuses any that ends up outside root. The lexical check in Symlink alone can be
// fooled by a chain of links, within a package or across the packages of a set; the os.Root
// has kept every write inside, and this keeps the finished tree from holding a link that leads
// out (make and the compiler follow links without an os.Root).
func checkLinks(root *os.Root, links []createdLink) error {
	for _, l := range links {
		if _, err := resolveInside(root, l.rel); err != nil {
			return kmp.InputErrorf(l.archive, "symlink %q: %v", l.rel, err)
		}
	}
	return nil
}

// resolveInside follows rel under root component by component, symlinks included, and fails if
// the path ever leaves root. A missing component ends the walk: the rest is checked lexically.
func resolveInside(root *os.Root, rel string) (string, error) {
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
		p := strings.Join(append(cur[:len(cur):len(cur)], c), "/")
		fi, err := root.Lstat(p)
		if err != nil {
			rest := path.Join(append(append([]string{}, cur...), append([]string{c}, todo...)...)...)
			if !kmp.LexicallyInside(rest) {
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
		t, err := root.Readlink(p)
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

// CheckTreeLinks resolves every symbolic link below root, for real, through the links it
// meets, and refuses the first that leads outside root: a lexical check of each link alone is
// fooled by a chain of them. The error names the link relative to root; the caller names the
// tree.
func CheckTreeLinks(root *os.Root) error {
	return kmp.WalkRoot(root, func(_ *os.Root, _, rel string, fi fs.FileInfo) error {
		if fi.Mode()&fs.ModeSymlink == 0 {
			return nil
		}
		if _, err := resolveInside(root, rel); err != nil {
			return fmt.Errorf("symbolic link %s %v", rel, err)
		}
		return nil
	})
}
