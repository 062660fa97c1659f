package kernel

import (
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// treePatterns are where distros install kernel devel trees, relative to the system root.
var treePatterns = []string{
	"lib/modules/*/build",
	"usr/lib/modules/*/build",
	"usr/src/linux-headers-*", // Debian, Ubuntu
	"usr/src/kernels/*",       // RHEL, Fedora
	"usr/src/linux-obj/*/*",   // SUSE: linux-obj/<arch>/<flavor>
	"usr/src/linux-*-obj/*/*",
}

// SkippedDir is a discovery candidate that is not a usable tree, with the reason.
type SkippedDir struct {
	Dir    string `json:"dir"`
	Reason string `json:"reason"`
}

// Discovery is the result of looking for kernel devel trees under a root.
type Discovery struct {
	Trees   []*KernelTree `json:"trees"`
	Skipped []SkippedDir  `json:"skipped,omitempty"`
}

// DiscoverKernelTrees finds the kernel devel trees installed under root ("/" for this system).
// Symlinks (such as /lib/modules/<krel>/build) are resolved inside root, so a root that is an
// unpacked package set or a test root never leads outside itself.
func DiscoverKernelTrees(root string) (*Discovery, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	d := &Discovery{Trees: []*KernelTree{}}
	dirs, dangling := CandidateDirs(root)
	d.Skipped = dangling
	// Each directory is looked at once: asking again could get another answer (a Makefile
	// created meanwhile) for a directory that was never opened.
	open := make([]string, len(dirs))
	for i, dir := range dirs {
		if looksLikeTree(dir) {
			open[i] = dir
		}
	}
	trees, errs := OpenKernelTrees(open)
	for i, dir := range dirs {
		switch {
		case open[i] == "":
			// -common and kbuild halves of Debian's headers, source-only trees: not an error.
			d.Skipped = append(d.Skipped, SkippedDir{Dir: dir, Reason: "no Makefile with .config: not a configured kernel tree"})
		case errs[i] != nil:
			d.Skipped = append(d.Skipped, SkippedDir{Dir: dir, Reason: errs[i].Error()})
		default:
			d.Trees = append(d.Trees, trees[i])
		}
	}
	SortKernelTrees(d.Trees)
	return d, nil
}

// CandidateDirs resolves the treePatterns matches under root (symlinks followed inside root),
// each directory once, and lists the matches that are dangling or not directories.
func CandidateDirs(root string) (dirs []string, dangling []SkippedDir) {
	seen := map[string]bool{}
	for _, pat := range treePatterns {
		matches, _ := filepath.Glob(filepath.Join(root, pat))
		sort.Strings(matches)
		for _, m := range matches {
			rel, _ := filepath.Rel(root, m)
			dir, err := securejoin.SecureJoin(root, rel)
			if err != nil || seen[dir] {
				continue
			}
			seen[dir] = true
			if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
				dangling = append(dangling, SkippedDir{Dir: m, Reason: "dangling or not a directory"})
				continue
			}
			dirs = append(dirs, dir)
		}
	}
	return dirs, dangling
}

func looksLikeTree(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, "Makefile")); err != nil {
		return false
	}
	for _, f := range []string{".config", "include/config/auto.conf"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return true
		}
	}
	return false
}

// SortKernelTrees orders trees by release (numeric parts compared as numbers), then directory.
func SortKernelTrees(trees []*KernelTree) {
	sort.SliceStable(trees, func(i, j int) bool {
		if c := CompareReleases(trees[i].Release, trees[j].Release); c != 0 {
			return c < 0
		}
		return trees[i].Dir < trees[j].Dir
	})
}

// CompareReleases compares kernel releases the way version sort does: runs of digits as numbers.
func CompareReleases(a, b string) int {
	for a != "" && b != "" {
		da, db := isDigit(a[0]), isDigit(b[0])
		if da && db {
			na, ra := splitRun(a, true)
			nb, rb := splitRun(b, true)
			na, nb = strings.TrimLeft(na, "0"), strings.TrimLeft(nb, "0")
			if len(na) != len(nb) {
				return cmpInt(len(na), len(nb))
			}
			if na != nb {
				return strings.Compare(na, nb)
			}
			a, b = ra, rb
			continue
		}
		sa, ra := splitRun(a, false)
		sb, rb := splitRun(b, false)
		if sa != sb {
			return strings.Compare(sa, sb)
		}
		a, b = ra, rb
	}
	return cmpInt(len(a), len(b))
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func splitRun(s string, digits bool) (string, string) {
	i := 0
	for i < len(s) && isDigit(s[i]) == digits {
		i++
	}
	return s[:i], s[i:]
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// OpenKernelTrees is OpenKernelTree of each of dirs, as many at a time as there are CPUs:
// parsing each tree's Module.symvers is most of what a no-change rebuild of many kernels spends.
// Results are in the order of dirs; an empty name is not opened (its tree and error are nil),
// so that a caller can keep its own indexes.
func OpenKernelTrees(dirs []string) ([]*KernelTree, []error) {
	trees, errs := make([]*KernelTree, len(dirs)), make([]error, len(dirs))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, d := range dirs {
		if d == "" {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			trees[i], errs[i] = OpenKernelTree(d)
		})
	}
	wg.Wait()
	return trees, errs
}
