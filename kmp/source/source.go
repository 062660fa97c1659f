package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/kernel"
)

// SourceKind says how a module source describes its build.
type SourceKind string

const (
	SourceDKMS   SourceKind = "dkms.conf"
	SourceSpec   SourceKind = "kmpack.yaml"
	SourceKbuild SourceKind = "kbuild"
)

// Source is module source code and the description of how to build it.
type Source struct {
	// Dir is the source root: what gets copied for every kernel's build.
	Dir  string     `json:"dir"`
	Kind SourceKind `json:"kind"`
	// File is the kmpack.yaml or dkms.conf, when there is one.
	File string `json:"file,omitempty"`
	Spec *Spec  `json:"-"`
	// Name and Version identify the source. For a dkms.conf they come from its first
	// evaluation; for a bare Kbuild directory from the directory name (version 0) unless set.
	Name    string `json:"name"`
	Version string `json:"version"`

	mu         sync.Mutex
	identified bool
	// Exclude names paths (absolute) never copied into a build nor hashed, such as an output
	// directory inside the source.
	Exclude []string `json:"-"`
}

// Excluding is a copy of s that also leaves paths (absolute) out of copies and hashes: the
// build engine's view of a caller's Source, which it never changes.
func (s *Source) Excluding(paths ...string) *Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &Source{Dir: s.Dir, Kind: s.Kind, File: s.File, Spec: s.Spec, Name: s.Name, Version: s.Version,
		identified: s.identified, Exclude: append(slices.Clone(s.Exclude), paths...)}
}

// OpenSource opens a module source: a directory holding kmpack.yaml, dkms.conf or a Kbuild
// tree (looked for in that order), or the path of a kmpack.yaml or dkms.conf itself.
func OpenSource(path string) (*Source, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, kmp.InputErrorf(path, "cannot open module source: %v", kmp.UnwrapPathError(err))
	}
	s := &Source{Dir: abs}
	if !fi.IsDir() {
		s.Dir = filepath.Dir(abs)
		switch {
		case filepath.Base(abs) == "dkms.conf" || strings.HasSuffix(abs, ".conf"):
			s.Kind, s.File = SourceDKMS, abs
		case strings.HasSuffix(abs, ".yaml") || strings.HasSuffix(abs, ".yml"):
			s.Kind, s.File = SourceSpec, abs
		default:
			return nil, kmp.InputErrorf(path, "not a module source: expected a directory, a kmpack.yaml or a dkms.conf")
		}
	} else if f := filepath.Join(abs, SpecFileName); exists(f) {
		s.Kind, s.File = SourceSpec, f
	} else if f := filepath.Join(abs, "dkms.conf"); exists(f) {
		s.Kind, s.File = SourceDKMS, f
	} else if exists(filepath.Join(abs, "Kbuild")) || exists(filepath.Join(abs, "Makefile")) {
		s.Kind = SourceKbuild
	} else {
		return nil, kmp.InputErrorf(path, "not a module source: no kmpack.yaml, dkms.conf, Kbuild or Makefile")
	}
	switch s.Kind {
	case SourceSpec:
		if s.Spec, err = ReadSpec(s.File); err != nil {
			return nil, err
		}
		s.Name, s.Version, s.identified = s.Spec.Name, s.Spec.Version, true
	case SourceKbuild:
		s.Name, s.Version, s.identified = kbuildName(s.Dir), "0", true
	}
	return s, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

var nonNameRE = regexp.MustCompile(`[^a-z0-9+._-]+`)

func kbuildName(dir string) string {
	n := strings.Trim(nonNameRE.ReplaceAllString(strings.ToLower(filepath.Base(dir)), "-"), "-._+")
	if n == "" {
		n = "module"
	}
	return n
}

// NewWorkspace lays out a build workspace under root for source name/version, whose commands
// see the workspace's own paths.
func NewWorkspace(root, name, version string) *Workspace {
	ws := &Workspace{Root: root, DKMSTree: filepath.Join(root, "dkms")}
	ws.SourceDir = filepath.Join(root, "src", name+"-"+version)
	ws.BuildDir = filepath.Join(ws.DKMSTree, name, version, "build")
	ws.HostSourceDir, ws.HostBuildDir = ws.SourceDir, ws.BuildDir
	return ws
}

// NewPrivateWorkspace lays out a build workspace under root for source name/version and kernel
// tree whose commands see dkms's paths (the build engine mounts them; see Workspace).
// $kernel_source_dir is dkms's /lib/modules/<release>/build where that leads to the tree on
// this host (a dkms.conf is evaluated on the host, before any mount), else the tree's own path;
// in the build, /lib/modules/<release>/build leads to the tree either way.
func NewPrivateWorkspace(root string, tree *kernel.KernelTree, name, version string) *Workspace {
	ws := NewWorkspace(root, name, version)
	ws.Private = true
	ws.KernelDir = tree.Dir
	if kb := filepath.Join(ModulesDir, tree.Release, "build"); sameDir(kb, tree.Dir) {
		ws.KernelDir = kb
	}
	ws.DKMSTree = DKMSTreeDir
	ws.SourceDir = filepath.Join(DKMSSourceTree, name+"-"+version)
	ws.BuildDir = filepath.Join(DKMSTreeDir, name, version, "build")
	return ws
}

func sameDir(a, b string) bool {
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}

func (s *Source) dkmsEnv(tree *kernel.KernelTree, ws *Workspace, jobs int) DKMSEnv {
	cfg := filepath.Join(tree.Dir, ".config")
	return DKMSEnv{
		KernelVer: tree.Release, Arch: tree.Arch, KernelSourceDir: ws.Kernel(tree), KernelConfig: cfg,
		DKMSTree: ws.DKMSTree, SourceTree: filepath.Dir(ws.SourceDir), InstallTree: "/lib/modules",
		Module: s.Name, ModuleVersion: s.Version, Jobs: jobs, Dir: s.Dir,
	}
}

// Identify learns a dkms.conf source's PACKAGE_NAME and PACKAGE_VERSION by evaluating it
// for tree (dkms evaluates it the same way, per kernel, before every action).
func (s *Source) Identify(ctx context.Context, tree *kernel.KernelTree, jobs int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.identified {
		return nil
	}
	ws := NewWorkspace(filepath.Join(os.TempDir(), "kmpack-identify"), "unknown", "unknown")
	conf, err := EvalDKMSConf(ctx, s.File, s.dkmsEnv(tree, ws, jobs))
	if err != nil {
		return err
	}
	s.Name, s.Version = conf.Scalar("PACKAGE_NAME"), conf.Scalar("PACKAGE_VERSION")
	if s.Name == "" || s.Version == "" {
		// dkmsPlan reports exactly what is missing.
		if _, err := dkmsPlan(conf, tree, ws); err != nil {
			return err
		}
	}
	if err := ident.PackageName(s.Name); err != nil {
		return kmp.InputErrorf(s.File, "PACKAGE_NAME: %v", err)
	}
	if err := ident.Version(s.Version); err != nil {
		return kmp.InputErrorf(s.File, "PACKAGE_VERSION: %v", err)
	}
	s.identified = true
	return nil
}

// SetIdentity names a source whose name and version were learnt before (kmpack package takes
// a dkms.conf source's from the build's manifest instead of evaluating the file again).
func (s *Source) SetIdentity(name, version string) error {
	if err := ident.PackageName(name); err != nil {
		return err
	}
	if err := ident.Version(version); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Name, s.Version, s.identified = name, version, true
	return nil
}

// Plan makes the build plan for tree in workspace ws (from NewWorkspace with s.Name, s.Version).
func (s *Source) Plan(ctx context.Context, tree *kernel.KernelTree, ws *Workspace, jobs int) (*BuildPlan, error) {
	switch s.Kind {
	case SourceSpec:
		return specPlan(s.Spec, tree, ws), nil
	case SourceKbuild:
		cmd := "make -C " + kmp.ShellQuote(ws.Kernel(tree)) + " M=" + kmp.ShellQuote(ws.BuildDir) + " modules"
		if tree.Config.Enabled("CONFIG_CC_IS_CLANG") {
			cmd += " LLVM=1"
		}
		return &BuildPlan{Name: s.Name, Version: s.Version, Commands: []string{cmd},
			AllModules: true, AllModulesTo: "/updates"}, nil
	}
	conf, err := EvalDKMSConf(ctx, s.File, s.dkmsEnv(tree, ws, jobs))
	if err != nil {
		return nil, err
	}
	p, err := dkmsPlan(conf, tree, ws)
	if err != nil {
		return nil, err
	}
	if p.Name != s.Name || p.Version != s.Version {
		return nil, kmp.InputErrorf(s.File, "PACKAGE_NAME/PACKAGE_VERSION change with the kernel (%s/%s for %s, %s/%s before)",
			p.Name, p.Version, tree.Release, s.Name, s.Version)
	}
	p.DKMSHooks = true
	return p, nil
}

// excluded reports whether path (absolute) is one the source must not copy or hash.
func (s *Source) excluded(path string) bool {
	for _, e := range s.Exclude {
		if path == e {
			return true
		}
	}
	return false
}

// walk visits the source root and everything under it in lexical order (fs.WalkDir's),
// without following symlinks, leaving out excluded paths and, when skipGit, .git directories.
// It reads through an os.Root on the source directory: nothing it opens, even if the tree
// changes under it, is outside the source.
func (s *Source) walk(skipGit bool, visit func(p, rel string, fi fs.FileInfo) error) error {
	return s.walkRoot(skipGit, func(_ *os.Root, p, rel string, fi fs.FileInfo) error { return visit(p, rel, fi) })
}

// walkRoot is walk, giving visit the os.Root to read the files through.
func (s *Source) walkRoot(skipGit bool, visit func(root *os.Root, p, rel string, fi fs.FileInfo) error) error {
	root, err := os.OpenRoot(s.Dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return fs.WalkDir(root.FS(), ".", func(rel string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		p := filepath.Join(s.Dir, rel)
		if rel != "." && (s.excluded(p) || (skipGit && d.IsDir() && d.Name() == ".git")) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := root.Lstat(rel)
		if err != nil {
			return err
		}
		return visit(root, p, rel, fi)
	})
}

// Hash is the sha256 over every file of the source (names, modes, contents, link targets),
// except .git and excluded paths: the source part of a build's cache key.
func (s *Source) Hash() (string, error) {
	h := sha256.New()
	err := s.walkRoot(true, func(root *os.Root, p, rel string, fi fs.FileInfo) error {
		return kmp.HashEntry(h, root, rel, fi)
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// CopyTo copies the source into dst like cp -a: modes and symlinks kept (as links, never
// followed), the user's tree never touched again.
func (s *Source) CopyTo(dst string) error {
	return s.walkRoot(false, func(root *os.Root, p, rel string, fi fs.FileInfo) error {
		target := filepath.Join(dst, rel)
		switch {
		case fi.IsDir():
			return os.MkdirAll(target, fi.Mode().Perm()|0o700)
		case fi.Mode()&os.ModeSymlink != 0:
			t, err := root.Readlink(rel)
			if err != nil {
				return err
			}
			return os.Symlink(t, target)
		case fi.Mode().IsRegular():
			f, _, err := kmp.OpenRootFile(root, rel, true)
			if err != nil {
				return err
			}
			defer f.Close()
			return kmp.CopyFrom(f, target, fi.Mode().Perm())
		}
		return nil // sockets, fifos, devices have no place in a module source
	})
}
