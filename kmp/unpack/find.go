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
	var pkgs []string
	dirs := make([]string, len(expanded)) // the argument where it is a directory, else ""
	errs := make([]error, len(expanded))
	for i, a := range expanded {
		fi, err := os.Stat(a)
		switch {
		case err != nil:
			errs[i] = kmp.InputErrorf(a, "%v", kmp.UnwrapPathError(err))
		case fi.IsDir():
			dirs[i] = a
		default:
			pkgs = append(pkgs, a)
		}
	}
	trees, openErrs := kernel.OpenKernelTrees(dirs)
	for i := range expanded {
		err := errs[i]
		if dirs[i] != "" {
			err = openErrs[i]
		}
		switch {
		case trees[i] != nil:
			res.Trees = append(res.Trees, trees[i])
		case err == nil: // a package file
		case !kmp.IsInputError(err):
			return nil, err
		default:
			res.Errors = append(res.Errors, err.Error())
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
