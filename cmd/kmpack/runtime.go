package main

import (
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
)

// kmpackModule and kmpackMain are what a kmpack binary's build information names as its main
// module and main package.
const (
	kmpackModule = "github.com/kmpack/kmpack"
	kmpackMain   = kmpackModule + "/cmd/kmpack"
)

// errRuntimeBinaryUnused is a --runtime-binary given where no runtime package is written.
const errRuntimeBinaryUnused = "--runtime-binary: no runtime package is written (it goes with the debian, rhel and suse profiles, without --no-runtime-package)"

// maxRuntimeBinary bounds a --runtime-binary file (kmpack is some 20 MB).
const maxRuntimeBinary = 256 << 20

// runtimes are the kmpack binaries the debian profile's runtime packages carry, one for each
// architecture of the kernels packaged: this kmpack for this host's, a --runtime-binary for
// each other (checkRuntimeBinaries). A --runtime-binary is stripped with binutils for its
// architecture (aarch64-linux-gnu-strip): the host's strip handles this host's machine only.
// Where that strip is missing, a binary with a symbol table is packaged as it is, with a
// warning. cache's Salt is this kmpack's sha256 (the emitters); a --runtime-binary is part of
// each key through the package's file digests, and of its stripped copy's key.
func runtimes(c *cli.Context, profiles []string, m *manifest.Manifest, cache *formats.PackageCache) ([]*formats.Runtime, error) {
	arches := map[string]string{} // machine -> a kernel of it
	for _, k := range m.Kernels {
		if k.Status == manifest.StatusBuilt || k.Status == manifest.StatusServed {
			addArch(arches, k.Arch, k.Release)
		}
	}
	given, err := checkRuntimeBinaries(c, profiles, arches)
	if err != nil {
		return nil, err
	}
	self, err := selfRuntime(cache)
	if err != nil {
		return nil, err
	}
	var out []*formats.Runtime
	for _, a := range slices.Sorted(maps.Keys(arches)) {
		g, ok := given[a]
		if !ok {
			out = append(out, self) // checkRuntimeBinaries: a is this host's
			continue
		}
		b := g.binary
		sum := sha256.Sum256(b)
		strip := kernel.GNUTriplet(a) + "-strip"
		if a == kernel.HostMachine() {
			strip = "strip"
		}
		if path, err := exec.LookPath(strip); err == nil {
			if b, err = stripChecked(g, hex.EncodeToString(sum[:]), path, cache); err != nil {
				return nil, cli.Exit(fmt.Sprintf("--runtime-binary %s: %s: %v", g.name, strip, err), exitFailure)
			}
		} else if hasSymbols(b) {
			cache.Warn(fmt.Sprintf("--runtime-binary %s is packaged unstripped: no %s here (Debian's binutils-%s)", g.name, strip, kernel.GNUTriplet(a)))
		}
		out = append(out, &formats.Runtime{Binary: b, Version: self.Version, Arch: a, ManPage: self.ManPage, Completions: self.Completions})
	}
	return out, nil
}

// stripChecked strips the bytes of g that were checked (a copy: the file may have changed since),
// its slot in the cache named by g's path.
func stripChecked(g runtimeBinary, sum, strip string, cache *formats.PackageCache) ([]byte, error) {
	tmp, err := os.MkdirTemp("", "kmpack-runtime-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	in := filepath.Join(tmp, "kmpack")
	if err := os.WriteFile(in, g.binary, 0o755); err != nil {
		return nil, err
	}
	return strippedCopy("runtime binary "+g.path, in, sum, strip, cache)
}

// addArch records a kernel's architecture (this host's when unknown).
func addArch(arches map[string]string, arch, release string) {
	if arch == "" {
		arch = kernel.HostMachine()
	}
	if arches[arch] == "" {
		arches[arch] = release
	}
}

// runtimeBinary is a --runtime-binary as given (name), its absolute path and its bytes.
type runtimeBinary struct {
	name, path string
	binary     []byte
}

// checkRuntimeBinaries reads and checks the --runtime-binary files against the architectures
// of the kernels packaged (machine -> a kernel of it), never running them: each an ELF
// executable for an architecture a packaged kernel has, statically linked, one per
// architecture, and the same kmpack as this one (sameKmpack), since the module packages'
// scripts are written for this kmpack's command line. Every architecture but this host's
// needs one. kmpack build checks them before building.
func checkRuntimeBinaries(c *cli.Context, profiles []string, arches map[string]string) (map[string]runtimeBinary, error) {
	given := map[string]runtimeBinary{}
	for _, file := range c.StringSlice("runtime-binary") {
		rb, arch, err := readRuntimeBinary(file, arches)
		if err != nil {
			return nil, err
		}
		if prev, dup := given[arch]; dup {
			return nil, usagef("--runtime-binary %s: a second kmpack for %s (%s is one)", file, arch, prev.name)
		}
		given[arch] = rb
	}
	for _, a := range slices.Sorted(maps.Keys(arches)) {
		if _, ok := given[a]; ok || a == kernel.HostMachine() {
			continue
		}
		ga := kernel.GoArch(a)
		what := fmt.Sprintf("the debian packages for %s (%s) depend on the kmpack runtime package for %s", arches[a], a, kernel.DebianArch(a))
		if !slices.Contains(profiles, "debian") {
			what = fmt.Sprintf("the rpm packages for %s (%s) go with the kmpack runtime rpm for %s", arches[a], a, a)
		}
		return nil, usagef("%s, which carries kmpack built for %s: build it from this kmpack's source (CGO_ENABLED=0 GOARCH=%s go build -trimpath -o kmpack-%s ./cmd/kmpack) and give it with --runtime-binary kmpack-%s, or leave the runtime package out with --no-runtime-package",
			what, a, ga, ga, ga)
	}
	return given, nil
}

func readRuntimeBinary(file string, arches map[string]string) (runtimeBinary, string, error) {
	bad := func(format string, args ...any) (runtimeBinary, string, error) {
		return runtimeBinary{}, "", cli.Exit(fmt.Sprintf("--runtime-binary %s: ", file)+fmt.Sprintf(format, args...), exitInput)
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return bad("%v", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return bad("%v", err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxRuntimeBinary {
		return bad("not a regular file of at most %d bytes", maxRuntimeBinary)
	}
	b, err := os.ReadFile(abs)
	if err != nil {
		return bad("%v", err)
	}
	arch, err := formats.RuntimeMachine(b)
	if err != nil {
		return bad("%v", err)
	}
	if arches[arch] == "" {
		return bad("built for %s, and no kernel packaged is (%s)", arch, strings.Join(slices.Sorted(maps.Keys(arches)), ", "))
	}
	if err := sameKmpack(b); err != nil {
		return bad("%v", err)
	}
	return runtimeBinary{name: file, path: abs, binary: b}, arch, nil
}

// hasSymbols tells whether an ELF file has a symbol table to strip.
func hasSymbols(b []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false
	}
	return f.Section(".symtab") != nil
}

// goStringVar reads the value of a Go string variable (main.version) from an ELF binary's
// symbol table and data, without running it: the symbol's address holds the string header
// (pointer and length), the pointer the bytes. ok is false when the binary has no symbol table
// (linked with -s) or the symbol is not there.
func goStringVar(f *elf.File, name string) (value string, ok bool) {
	syms, err := f.Symbols()
	if err != nil {
		return "", false
	}
	i := slices.IndexFunc(syms, func(s elf.Symbol) bool { return s.Name == name })
	if i < 0 {
		return "", false
	}
	word := uint64(8)
	if f.Class == elf.ELFCLASS32 {
		word = 4
	}
	hdr, ok := elfRead(f, syms[i].Value, 2*word)
	if !ok {
		return "", false
	}
	get := func(b []byte) uint64 {
		if word == 4 {
			return uint64(f.ByteOrder.Uint32(b))
		}
		return f.ByteOrder.Uint64(b)
	}
	ptr, n := get(hdr), get(hdr[word:])
	if n > 4096 {
		return "", false
	}
	b, ok := elfRead(f, ptr, n)
	return string(b), ok
}

// elfRead reads n bytes at virtual address addr from the section holding them.
func elfRead(f *elf.File, addr, n uint64) ([]byte, bool) {
	for _, s := range f.Sections {
		if s.Type == elf.SHT_NOBITS || s.Flags&elf.SHF_ALLOC == 0 || addr < s.Addr || addr-s.Addr > s.Size || n > s.Size-(addr-s.Addr) {
			continue
		}
		b := make([]byte, n)
		if _, err := s.ReadAt(b, int64(addr-s.Addr)); err != nil {
			return nil, false
		}
		return b, true
	}
	return nil, false
}

// sameKmpack checks, reading b and never running it, that b is kmpack built from the same
// source as this one, so that the runtime package carries the command line the module
// packages' scripts are written for: its Go build information names kmpack's main package;
// its version (main.version, read from its symbol table and data) is this kmpack's; where both
// record them, the module version (go install ...@v1.2.0) and the VCS revision (with or
// without uncommitted changes alike) are the same; and every module both link is at the same
// version. Two builds of one version from different commits are told apart only by a VCS
// revision (Go records none for a git worktree, or with -buildvcs=false). A binary linked
// with -s has no symbol table: it is accepted only when its module version or VCS revision
// is this kmpack's.
func sameKmpack(b []byte) error {
	theirs, err := buildinfo.Read(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("no Go build information (%v): not a kmpack binary", err)
	}
	if theirs.Path != kmpackMain || theirs.Main.Path != kmpackModule {
		return fmt.Errorf("not kmpack: its main package is %q (module %q), not %s", theirs.Path, theirs.Main.Path, kmpackMain)
	}
	ours, ok := ownBuildInfo()
	if !ok {
		return fmt.Errorf("this kmpack has no build information to compare it with")
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return err
	}
	v, ok := goStringVar(f, "main.version")
	if !ok {
		v = ""
	}
	return compareIdentity(identityOf(ours, version), identityOf(theirs, v))
}

// buildIdentity is what tells one kmpack build from another: its version, the module version
// (go install ...@v1.2.0), the VCS revision and whether the tree had changes, and the versions
// of the modules it links.
type buildIdentity struct {
	version, module, revision, modified string
	deps                                map[string]string
}

func identityOf(bi *debug.BuildInfo, version string) buildIdentity {
	id := buildIdentity{version: version, deps: map[string]string{}}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		id.module = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			id.revision = s.Value
		case "vcs.modified":
			id.modified = s.Value
		}
	}
	for _, d := range bi.Deps {
		for d.Replace != nil {
			d = d.Replace
		}
		id.deps[d.Path] = d.Version
	}
	return id
}

// ownBuildInfo is this kmpack's build information.
var ownBuildInfo = debug.ReadBuildInfo

func compareIdentity(ours, theirs buildIdentity) error {
	differ := func(what, a, b string) error {
		if a == "" {
			a = "none"
		}
		if b == "" {
			b = "none"
		}
		return fmt.Errorf("not this kmpack (%s %s, this kmpack's %s): build it from this kmpack's source", what, b, a)
	}
	known := false
	if theirs.version != "" {
		if theirs.version != ours.version {
			return differ("version", ours.version, theirs.version)
		}
		known = true
	}
	if ours.module != "" || theirs.module != "" {
		if ours.module != theirs.module {
			return differ("module version", ours.module, theirs.module)
		}
		known = true
	}
	if ours.revision != "" && theirs.revision != "" {
		if ours.revision != theirs.revision {
			return differ("VCS revision", ours.revision, theirs.revision)
		}
		if ours.modified != theirs.modified {
			return differ("vcs.modified", ours.modified, theirs.modified)
		}
		known = true
	}
	if !known {
		return fmt.Errorf("cannot tell whether it is this kmpack: linked with -s, it records neither its version, a module version nor a VCS revision (build it without -ldflags=-s)")
	}
	for _, p := range slices.Sorted(maps.Keys(ours.deps)) {
		if v, ok := theirs.deps[p]; ok && v != ours.deps[p] {
			return differ("dependency "+p, ours.deps[p], v)
		}
	}
	return nil
}
