package unpack

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
)

// Found is what FindKernels made of its arguments.
type Found struct {
	Trees    []*kernel.KernelTree `json:"trees"`
	Skipped  []kernel.SkippedDir  `json:"skipped,omitempty"`
	Packages *PackageSet          `json:"package_set,omitempty"`
	// Errors are the arguments that named no usable tree, one line each (the input's fault).
	Errors []string `json:"errors,omitempty"`
}

// FindKernels resolves what a user names as kernels (kmpack kernels' operands, build's
// --kernel, a spec's kernels:): with no arguments, the trees installed under root; else each
// argument is a tree directory, a glob (matching nothing is an error: a typo must not silently
// build against fewer kernels), or a package file, all package files being unpacked together
// into cacheDir. Arguments that name no tree are collected in Errors; only a failure of the
// machine is returned as an error.
func FindKernels(cacheDir, root string, args []string) (*Found, error) {
	res := &Found{Trees: []*kernel.KernelTree{}}
	if len(args) == 0 {
		d, err := kernel.DiscoverKernelTrees(root)
		if err != nil {
			return nil, err
		}
		res.Trees, res.Skipped = d.Trees, d.Skipped
		return res, nil
	}
	var expanded []string
	for _, a := range args {
		if !strings.ContainsAny(a, "*?[") {
			expanded = append(expanded, a)
			continue
		}
		m, err := filepath.Glob(a)
		switch {
		case err != nil:
			res.Errors = append(res.Errors, kmp.InputErrorf(a, "bad pattern: %v", err).Error())
		case len(m) == 0:
			res.Errors = append(res.Errors, kmp.InputErrorf(a, "no kernel tree or package matches").Error())
		}
		expanded = append(expanded, m...)
	}
	// Directories are opened side by side; what each argument gives (a tree, or its error) is
	// then taken in the arguments' order, as if they had been opened one after another.
	var pkgs, dirs []string
	statErrs := make([]error, len(expanded))
	dirOf := make([]int, len(expanded)) // index in dirs, -1 for an error or a package file
	for i, a := range expanded {
		dirOf[i] = -1
		fi, err := os.Stat(a)
		switch {
		case err != nil:
			statErrs[i] = kmp.InputErrorf(a, "%v", kmp.UnwrapPathError(err))
		case fi.IsDir():
			dirOf[i] = len(dirs)
			dirs = append(dirs, a)
		default:
			pkgs = append(pkgs, a)
		}
	}
	trees, errs := kernel.OpenKernelTrees(dirs)
	for i := range expanded {
		d := dirOf[i]
		switch {
		case statErrs[i] != nil:
			res.Errors = append(res.Errors, statErrs[i].Error())
		case d < 0: // a package file
		case errs[d] == nil:
			res.Trees = append(res.Trees, trees[d])
		case !kmp.IsInputError(errs[d]):
			return nil, errs[d]
		default:
			res.Errors = append(res.Errors, errs[d].Error())
		}
	}
	if len(pkgs) > 0 {
		set, d, err := OpenPackageTrees(cacheDir, pkgs)
		if set != nil {
			res.Packages = set
		}
		if d != nil {
			res.Trees = append(res.Trees, d.Trees...)
			res.Skipped = append(res.Skipped, d.Skipped...)
		}
		if err != nil {
			if !kmp.IsInputError(err) {
				return nil, err
			}
			res.Errors = append(res.Errors, err.Error())
		}
	}
	kernel.SortKernelTrees(res.Trees)
	return res, nil
}
