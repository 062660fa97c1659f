package source

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/kmpack/kmpack/kmp/ident"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
)

// Spec is a kmpack.yaml: everything about a module source kmpack needs to build and package it.
// The README documents every key with a full example.
type Spec struct {
	Name        string `yaml:"name,omitempty" json:"name"`
	Version     string `yaml:"version,omitempty" json:"version"`
	Release     string `yaml:"release,omitempty" json:"release,omitempty"`
	License     string `yaml:"license,omitempty" json:"license,omitempty"`
	Summary     string `yaml:"summary,omitempty" json:"summary,omitempty"`
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	Vendor      string `yaml:"vendor,omitempty" json:"vendor,omitempty"`
	Maintainer  string `yaml:"maintainer,omitempty" json:"maintainer,omitempty"`
	URL         string `yaml:"url,omitempty" json:"url,omitempty"`
	// Modules lists the modules the build produces. Empty means every .ko the build makes,
	// installed under InstallDir.
	Modules []SpecModule `yaml:"modules,omitempty" json:"modules,omitempty"`
	// InstallDir is where modules without their own install-dir go, relative to
	// /lib/modules/<release>; default "updates".
	InstallDir     string      `yaml:"install-dir,omitempty" json:"install_dir,omitempty"`
	Build          SpecBuild   `yaml:"build,omitempty" json:"build"`
	Patches        []SpecPatch `yaml:"patches,omitempty" json:"patches,omitempty"`
	BuildExclusive Exclusion   `yaml:"build-exclusive,omitempty" json:"build_exclusive"`
	// Kernels are what to build against when the command line names none: directories, globs,
	// .deb/.rpm files (relative to the spec's directory), and repositories.
	Kernels []SpecKernel `yaml:"kernels,omitempty" json:"kernels,omitempty"`
	// Formats and Profile choose the packages (deb, rpm, ...) and conventions (suse, rhel, debian).
	Formats []string `yaml:"formats,omitempty" json:"formats,omitempty"`
	Profile string   `yaml:"profile,omitempty" json:"profile,omitempty"`
	// Signing says whether modules must be signed and with which keys.
	Signing SpecSigning `yaml:"signing,omitempty" json:"signing"`

	path string
}

// SpecSigning is kmpack.yaml's signing section. A source names its keys, but a file kmpack
// reads cannot make it sign with a key of the build host by itself: Keys are used only when
// the operator says so (kmpack build --sign), and there is no signer command here (a file
// names no program to run).
type SpecSigning struct {
	// Required makes a build that would sign nothing an error.
	Required bool `yaml:"required,omitempty" json:"required,omitempty"`
	// Keys are key/certificate pairs: files inside the source, relative to kmpack.yaml's
	// directory (a CI job decrypts them there); they are never copied into a build.
	Keys []SpecSigningKey `yaml:"keys,omitempty" json:"keys,omitempty"`
}

// SpecSigningKey is one signer of SpecSigning.
type SpecSigningKey struct {
	Key  string `yaml:"key" json:"key"`
	Cert string `yaml:"cert" json:"cert"`
}

// SpecModule is one module of a Spec.
type SpecModule struct {
	// Name is the built module's file name without .ko.
	Name string `yaml:"name,omitempty" json:"name"`
	// Location is the directory the build leaves it in, relative to the source root.
	Location string `yaml:"location,omitempty" json:"location,omitempty"`
	// DestName renames it on install; InstallDir overrides the spec's install-dir.
	DestName       string    `yaml:"dest-name,omitempty" json:"dest_name,omitempty"`
	InstallDir     string    `yaml:"install-dir,omitempty" json:"install_dir,omitempty"`
	Strip          *bool     `yaml:"strip,omitempty" json:"strip,omitempty"`
	BuildExclusive Exclusion `yaml:"build-exclusive,omitempty" json:"build_exclusive"`
}

// SpecBuild says how to build. With no commands, kmpack runs
// `make -C <kernel tree> M=<build dir> modules <make-args>`.
type SpecBuild struct {
	MakeArgs []string      `yaml:"make-args,omitempty" json:"make_args,omitempty"`
	Commands []SpecCommand `yaml:"commands,omitempty" json:"commands,omitempty"`
	// PreBuild and PostBuild are shell commands run in the build directory before the make
	// commands and after the modules were collected.
	PreBuild  string `yaml:"pre-build,omitempty" json:"pre_build,omitempty"`
	PostBuild string `yaml:"post-build,omitempty" json:"post_build,omitempty"`
	// Strip is the default for modules (true: strip -g, as dkms does).
	Strip *bool `yaml:"strip,omitempty" json:"strip,omitempty"`
}

// SpecCommand is a shell command with an optional regex on the kernel release. Commands run
// with $kernelver, $kernel_source_dir, $build_dir, $dkms_tree, $arch and $jobs set. Of the
// commands whose match matches (or that have none), all run, in order.
type SpecCommand struct {
	Run   string `yaml:"run,omitempty" json:"run"`
	Match string `yaml:"match,omitempty" json:"match,omitempty"`
}

// SpecPatch is a patch file (relative to the source root) applied with patch -p1 to kernels
// whose release matches Match (all when empty).
type SpecPatch struct {
	File  string `yaml:"file,omitempty" json:"file"`
	Match string `yaml:"match,omitempty" json:"match,omitempty"`
}

// SpecFileName is the file kmpack looks for in a source directory.
const SpecFileName = "kmpack.yaml"

// ReadSpec reads and validates a kmpack.yaml. Unknown keys, a missing name or version, and
// values the build could not use are *InputErrors naming the file.
func ReadSpec(path string) (*Spec, error) {
	b, err := readInDir(path, MaxSpecSize)
	if err != nil {
		return nil, kmp.InputErrorf(path, "cannot read spec: %v", err)
	}
	return ParseSpec(path, b)
}

// MaxSpecSize bounds a kmpack.yaml (real ones are a few KB).
const MaxSpecSize = 1 << 20

// readInDir reads a file of the source through an os.Root at its directory: a regular file (a
// FIFO cannot block, /dev/zero cannot exhaust memory), no link out of the directory, at most max
// bytes.
func readInDir(path string, max int64) ([]byte, error) {
	root, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, kmp.UnwrapPathError(err)
	}
	defer root.Close()
	b, _, err := kmp.ReadRootFile(root, filepath.Base(path), max)
	if err != nil {
		return nil, errors.New(strings.TrimPrefix(kmp.UnwrapPathError(err).Error(), filepath.Base(path)+": "))
	}
	return b, nil
}

// ParseSpec parses kmpack.yaml bytes; path is used in errors and to resolve relative paths.
func ParseSpec(path string, b []byte) (s *Spec, err error) {
	defer kmp.Guard(path, &err)
	s = &Spec{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(s); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, kmp.InputErrorf(path, "empty spec")
		}
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
		return nil, kmp.InputErrorf(path, "%s", strings.ReplaceAll(msg, "\n  ", "; "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, kmp.InputErrorf(path, "more than one YAML document")
	}
	s.path = path
	// A description's leading blank lines carry nothing in any package format, and YAML cannot
	// write them back (a block scalar drops them): kmpack init must not change the spec.
	s.Description = strings.TrimLeft(s.Description, "\n")
	if err := s.validate(); err != nil {
		return nil, kmp.InputErrorf(path, "%v", err)
	}
	return s, nil
}

var moduleNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Limits of the free-text metadata fields (bytes). They are far above any real value and keep
// every package format's header and control file sane.
const (
	MaxSummary     = 200
	MaxMaintainer  = 200
	MaxVendor      = 200
	MaxLicense     = 200
	MaxURL         = 1024
	MaxDescription = 16 << 10
)

// CheckText checks a free-text metadata field (summary, maintainer, description, ...), which
// package formats write into control files and headers where a line break starts a new field.
// It must be valid UTF-8 without control characters (C0, DEL, C1, U+2028/U+2029) and at most
// max bytes; a multi-line field (the description) may hold line feeds and tabs.
func CheckText(field, v string, max int, multiline bool) error {
	if len(v) > max {
		return fmt.Errorf("%s: longer than %d bytes", field, max)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("%s: not valid UTF-8", field)
	}
	for _, r := range v {
		if multiline && (r == '\n' || r == '\t') {
			continue
		}
		if r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f || r == 0x2028 || r == 0x2029 {
			what := "control character"
			if r == '\n' || r == '\r' || r == 0x85 || r == 0x2028 || r == 0x2029 {
				what = "line break"
			}
			return fmt.Errorf("%s %s: %s %s not allowed (it is a single line)", field, strconv.QuoteToASCII(v), what, strconv.QuoteRuneToASCII(r))
		}
	}
	return nil
}

// specProfiles are the packaging profiles kmpack.yaml may name, with the format each makes
// (formats.Profiles, kept in step by a test there).
var specProfiles = map[string]string{"suse": "rpm", "rhel": "rpm", "debian": "deb", "alpine": "apk", "arch": "archlinux", "kmm": "oci"}

// SpecProfiles returns the profiles kmpack.yaml accepts and the package format of each.
func SpecProfiles() map[string]string { return maps.Clone(specProfiles) }

// checkPackaging checks formats and profile as formats.ResolveProfiles will use them.
func (s *Spec) checkPackaging() error {
	known := slices.Sorted(maps.Values(specProfiles))
	known = slices.Compact(known)
	for i, f := range s.Formats {
		if !slices.Contains(known, f) {
			return fmt.Errorf("formats[%d]: unknown package format %s (known: %s)", i, strconv.QuoteToASCII(f), strings.Join(known, ", "))
		}
	}
	if s.Profile == "" {
		if slices.Contains(s.Formats, "rpm") {
			return fmt.Errorf("formats: rpm needs a profile: suse or rhel")
		}
		return nil
	}
	format, ok := specProfiles[s.Profile]
	if !ok {
		return fmt.Errorf("profile: unknown packaging profile %s (known: %s)", strconv.QuoteToASCII(s.Profile), strings.Join(slices.Sorted(maps.Keys(specProfiles)), ", "))
	}
	if len(s.Formats) > 0 && !slices.Contains(s.Formats, format) {
		return fmt.Errorf("profile: %s makes %s packages, and formats asks only for %v", s.Profile, format, s.Formats)
	}
	for _, f := range s.Formats {
		if f == "rpm" && format != "rpm" {
			return fmt.Errorf("formats: rpm needs profile suse or rhel (profile is %s)", s.Profile)
		}
	}
	return nil
}

func (s *Spec) validate() error {
	for i, k := range s.Signing.Keys {
		if k.Key == "" || k.Cert == "" {
			return fmt.Errorf("signing.keys[%d]: key and cert are both required", i)
		}
		for _, v := range []string{k.Key, k.Cert} {
			if err := CheckText(fmt.Sprintf("signing.keys[%d]", i), v, 4096, false); err != nil {
				return err
			}
			// A source names only its own files: never a key of the host, nor a token.
			if filepath.IsAbs(v) || !kmp.LexicallyInside(filepath.ToSlash(v)) || strings.Contains(v, ":") {
				return fmt.Errorf("signing.keys[%d]: %s is not a path inside the source (kmpack.yaml cannot name a key of the host; give such keys with --sign-key)", i, strconv.QuoteToASCII(v))
			}
		}
	}
	if len(s.Kernels) > 256 {
		return fmt.Errorf("kernels: more than 256 entries")
	}
	for i := range s.Kernels {
		if err := s.Kernels[i].validate(fmt.Sprintf("kernels[%d]", i)); err != nil {
			return err
		}
	}
	if s.Name == "" {
		return fmt.Errorf("name: required")
	}
	if err := ident.PackageName(s.Name); err != nil {
		return fmt.Errorf("name: %v (it names packages and /usr/src/<name>-<version>)", err)
	}
	if s.Version == "" {
		return fmt.Errorf("version: required")
	}
	if err := ident.Version(s.Version); err != nil {
		return fmt.Errorf("version: %v", err)
	}
	if s.Release != "" {
		if err := ident.Version(s.Release); err != nil {
			return fmt.Errorf("release: %v", err)
		}
		if strings.Contains(s.Release, "-") {
			return fmt.Errorf("release %s: no - (every package format separates version and release with it)", strconv.QuoteToASCII(s.Release))
		}
	}
	for _, f := range []struct {
		name, value string
		max         int
		multiline   bool
	}{
		{"summary", s.Summary, MaxSummary, false},
		{"maintainer", s.Maintainer, MaxMaintainer, false},
		{"vendor", s.Vendor, MaxVendor, false},
		{"license", s.License, MaxLicense, false},
		{"url", s.URL, MaxURL, false},
		{"description", s.Description, MaxDescription, true},
	} {
		if err := CheckText(f.name, f.value, f.max, f.multiline); err != nil {
			return err
		}
	}
	if err := s.checkPackaging(); err != nil {
		return err
	}
	if err := checkInstallDir(s.InstallDir); err != nil {
		return fmt.Errorf("install-dir: %v", err)
	}
	if err := s.BuildExclusive.validate(); err != nil {
		return fmt.Errorf("build-exclusive: %v", err)
	}
	seenBuilt, seenDest := map[string]bool{}, map[string]bool{}
	for i, m := range s.Modules {
		where := fmt.Sprintf("modules[%d]", i)
		if !moduleNameRE.MatchString(m.Name) {
			return fmt.Errorf("%s.name %q: a module file name without .ko (letters, digits, _ and -)", where, m.Name)
		}
		if m.DestName != "" && !moduleNameRE.MatchString(m.DestName) {
			return fmt.Errorf("%s.dest-name %q: a module file name without .ko", where, m.DestName)
		}
		if filepath.IsAbs(m.Location) || escapes(m.Location) {
			return fmt.Errorf("%s.location %q points outside the source tree", where, m.Location)
		}
		if err := checkInstallDir(m.InstallDir); err != nil {
			return fmt.Errorf("%s.install-dir: %v", where, err)
		}
		if err := m.BuildExclusive.validate(); err != nil {
			return fmt.Errorf("%s.build-exclusive: %v", where, err)
		}
		built := filepath.Join(m.Location, m.Name)
		dest := m.DestName
		if dest == "" {
			dest = m.Name
		}
		if seenBuilt[built] {
			return fmt.Errorf("%s: module %s listed twice", where, built)
		}
		if seenDest[dest] {
			return fmt.Errorf("%s: two modules install as %s.ko", where, dest)
		}
		seenBuilt[built], seenDest[dest] = true, true
	}
	for i, c := range s.Build.Commands {
		if strings.TrimSpace(c.Run) == "" {
			return fmt.Errorf("build.commands[%d].run: empty", i)
		}
		if _, err := regexp.Compile(c.Match); err != nil {
			return fmt.Errorf("build.commands[%d].match %q: %v", i, c.Match, err)
		}
	}
	for i, p := range s.Patches {
		if p.File == "" || filepath.IsAbs(p.File) || escapes(p.File) {
			return fmt.Errorf("patches[%d].file %q must be a path inside the source tree", i, p.File)
		}
		if _, err := regexp.Compile(p.Match); err != nil {
			return fmt.Errorf("patches[%d].match %q: %v", i, p.Match, err)
		}
	}
	return nil
}

// checkInstallDir accepts a directory relative to /lib/modules/<release>, such as updates,
// extra/foo or updates/dkms.
func checkInstallDir(d string) error {
	if d == "" {
		return nil
	}
	if escapes(d) || strings.ContainsAny(d, " \t\n") {
		return fmt.Errorf("%q must be a directory inside /lib/modules/<release>", d)
	}
	return nil
}

func (s *Spec) installDir(m SpecModule) string {
	d := m.InstallDir
	if d == "" {
		d = s.InstallDir
	}
	if d == "" {
		d = "updates"
	}
	return "/" + strings.Trim(filepath.Clean("/"+d), "/")
}

// specPlan makes the build plan for one kernel.
func specPlan(s *Spec, tree *kernel.KernelTree, ws *Workspace) *BuildPlan {
	p := &BuildPlan{Name: s.Name, Version: s.Version, PreBuild: s.Build.PreBuild, PostBuild: s.Build.PostBuild}
	for _, c := range s.Build.Commands {
		if c.Match == "" || matches(c.Match, tree.Release) {
			p.Commands = append(p.Commands, c.Run)
		}
	}
	if len(s.Build.Commands) == 0 {
		cmd := "make -C " + kmp.ShellQuote(ws.Kernel(tree)) + " M=" + kmp.ShellQuote(ws.BuildDir) + " modules"
		for _, a := range s.Build.MakeArgs {
			cmd += " " + kmp.ShellQuote(a)
		}
		if tree.Config.Enabled("CONFIG_CC_IS_CLANG") {
			cmd += " LLVM=1"
		}
		p.Commands = []string{cmd}
	}
	for _, pt := range s.Patches {
		if pt.Match == "" || matches(pt.Match, tree.Release) {
			p.Patches = append(p.Patches, filepath.Clean(pt.File))
		}
	}
	strip := s.Build.Strip == nil || *s.Build.Strip
	if len(s.Modules) == 0 {
		p.AllModules, p.AllModulesTo = true, s.installDir(SpecModule{})
		p.Skip = s.BuildExclusive.check(tree)
		return p
	}
	global := s.BuildExclusive.check(tree)
	for _, m := range s.Modules {
		pm := PlannedModule{
			BuiltName: m.Name, BuiltLocation: filepath.Clean("/" + m.Location)[1:],
			DestName: m.DestName, DestLocation: s.installDir(m), Strip: strip,
		}
		if pm.DestName == "" {
			pm.DestName = m.Name
		}
		if m.Strip != nil {
			pm.Strip = *m.Strip
		}
		pm.Excluded = global
		if pm.Excluded == "" {
			pm.Excluded = m.BuildExclusive.check(tree)
		}
		p.Modules = append(p.Modules, pm)
	}
	p.Skip = global
	if p.Skip == "" {
		p.Skip = p.Modules[0].Excluded
		for _, m := range p.Modules {
			if m.Excluded == "" {
				p.Skip = ""
			}
		}
	}
	return p
}

// WriteSpec writes s as kmpack.yaml.
func WriteSpec(w io.Writer, s *Spec) error {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(s); err != nil {
		return err
	}
	return enc.Close()
}

// Path is the file the spec was read from.
func (s *Spec) Path() string { return s.path }
