package manifest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
)

// ModuleFile is a built module read back from an output directory.
type ModuleFile struct {
	Path string // in the output directory
	Body []byte // as stored (maybe compressed)
	Info *module.ModuleInfo
}

// ReadModules reads and parses the modules of one kernel's build from the output directory
// root (opened at outDir) that kb's manifest describes.
func ReadModules(root *os.Root, outDir string, kb *KernelBuild) ([]ModuleFile, error) {
	var out []ModuleFile
	for _, bm := range kb.Modules {
		p := filepath.Join(outDir, filepath.FromSlash(bm.File))
		body, err := ReadOutputFile(root, bm.File, p)
		if err != nil {
			return nil, err
		}
		data, _, err := module.Decompress(p, body)
		if err != nil {
			return nil, err
		}
		info, err := module.ParseModule(p, data)
		if err != nil {
			return nil, err
		}
		out = append(out, ModuleFile{Path: p, Body: body, Info: info})
	}
	return out, nil
}

// ReadOutputFile reads a file of a build output (rel, slash-separated; p names it in errors)
// through root: the files kmpack writes there are regular files, so a symlink, FIFO, device or
// directory in their place (or a path leaving the output directory) is refused as bad input
// rather than followed or blocked on.
func ReadOutputFile(root *os.Root, rel, p string) ([]byte, error) {
	name := filepath.FromSlash(rel)
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return nil, fmt.Errorf("%s: %w", p, err)
	} else if err != nil {
		// Typically a path that leaves the output directory.
		return nil, kmp.InputErrorf(p, "%w", unwrapPathError(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, kmp.InputErrorf(p, "not a regular file (%s): kmpack writes module files as regular files", fi.Mode().Type())
	}
	body, _, err := kmp.ReadRootFile(root, name, module.MaxInputFile)
	if err != nil {
		return nil, kmp.InputErrorf(p, "%w", unwrapPathError(err))
	}
	return body, nil
}

// unwrapPathError drops an *fs.PathError's operation and path, which the InputError repeats.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
