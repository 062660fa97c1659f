// Package target is what kmpack does on the machine its modules are for, beyond keeping
// weak-updates links (package weakupdates, which it drives): module sources kept on the
// machine (kmpack source, GLEP 33 and dkms add), a module for every kernel that arrives
// (kmpack autoinstall: own build, weak-updates link, local build, or a recorded failure),
// and an honest per kernel × module status (kmpack status, kmpack gate).
//
// It is a package of its own rather than more of weakupdates because it orchestrates three
// others (weakupdates, the build engine, the sources) and owns state of its own: weakupdates
// stays the engine that decides and makes links, usable without any of this.
//
// Everything under the root is reached through an os.Root; identifiers (source names,
// versions, kernel releases) are validated where they enter, so later joins into paths are
// safe; every file read from the state directory is bounded and parsed by a fuzzed parser.
package target

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/source"
	"github.com/kmpack/kmpack/kmp/unpack"
	"github.com/kmpack/kmpack/weakupdates"
)

// Where the state lives, relative to the root: next to weak-updates' registrations
// (var/lib/kmpack/weak-updates/kmps), one directory per concern.
const (
	stateBase  = "var/lib/kmpack"
	sourcesDir = stateBase + "/sources"
	autoDir    = stateBase + "/autoinstall"
	lockName   = autoDir + "/lock"
	// sourceTree is where sources are kept, as dkms and Gentoo keep them.
	sourceTree = "usr/src"
	// stagingPrefix names a source being added (.kmpack-staging-<pid>-<time>): a dead run's is
	// removed by the next add.
	stagingPrefix = ".kmpack-staging-"
)

// Bounds on a source added from a directory or a tarball. Real module sources are far below
// them (NVIDIA's open modules, among the largest: ~2,000 files, ~60 MB); they bound what a
// hostile or corrupt one costs.
const (
	MaxSourceBytes   = 2 << 30
	MaxSourceEntries = 100_000
	// MaxSourceRecordSize bounds a source registration (a hundred bytes in practice).
	MaxSourceRecordSize = 64 << 10
	// maxConfScan bounds the dkms.conf or kmpack.yaml read at add time.
	maxConfScan = 1 << 20
)

// Options say which system a target operation acts on.
type Options struct {
	// Root is the system's root directory ("" or "/": this machine).
	Root string
	// Log receives one line per change; Warn warnings (default os.Stderr).
	Log, Warn io.Writer
	// LockTimeout bounds the wait for another run (weakupdates.DefaultLockTimeout when 0).
	LockTimeout time.Duration
}

func (o *Options) root() string {
	if o.Root == "" {
		return "/"
	}
	return o.Root
}

func (o *Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

func (o *Options) warnf(format string, args ...any) {
	w := o.Warn
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, "kmpack: warning: "+format+"\n", args...)
}

func (o *Options) display(rel string) string { return filepath.Join(o.root(), rel) }

// locked opens the root and runs fn holding the lock every target operation takes: sources
// never change under a build, and two runs of autoinstall (two kernels' hooks at once) run one
// after the other.
func (o *Options) locked(fn func(r *os.Root) error) error {
	r, err := os.OpenRoot(o.root())
	if err != nil {
		return err
	}
	defer r.Close()
	timeout := o.LockTimeout
	if timeout == 0 {
		timeout = weakupdates.DefaultLockTimeout
	}
	unlock, err := weakupdates.LockFile(r, lockName, false, timeout)
	if err != nil {
		return fmt.Errorf("%s: %v", o.display(lockName), err)
	}
	defer unlock()
	return fn(r)
}

// SourcesSchema names kmpack source list --json's format.
const SourcesSchema = "kmpack-sources/1"

// SourceRecord is a registered module source: kept in /usr/src/<Name>-<Version>.
type SourceRecord struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Kind is how the source describes its build: kmpack.yaml, dkms.conf or kbuild.
	Kind string `json:"kind"`
	// Dir is /usr/src/<Name>-<Version>, recorded for readers that do not know the rule.
	Dir string `json:"dir"`
	// Owned is true when kmpack copied the source there (source remove deletes it); false when
	// it was registered in place (a *-dkms package's files, which its package removes).
	Owned bool `json:"owned"`
}

func sourceDir(name, version string) string { return sourceTree + "/" + name + "-" + version }

func sourceRecordFile(name, version string) string {
	return sourcesDir + "/" + name + "/" + version + ".json"
}

// Validate checks a record's identifiers and that its fields agree: once valid, Name and
// Version can be joined into paths under the root.
func (s *SourceRecord) Validate() error {
	if err := ident.PackageName(s.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if err := ident.Version(s.Version); err != nil {
		return fmt.Errorf("version: %w", err)
	}
	switch source.SourceKind(s.Kind) {
	case source.SourceSpec, source.SourceDKMS, source.SourceKbuild:
	default:
		return fmt.Errorf("kind: %q is not kmpack.yaml, dkms.conf or kbuild", s.Kind)
	}
	if want := "/" + sourceDir(s.Name, s.Version); s.Dir != want {
		return fmt.Errorf("dir: %q, not %s", s.Dir, want)
	}
	return nil
}

// ParseSourceRecord parses and validates a source registration. file names it in errors (its
// last two components must be <name>/<version>.json). The error is one line.
func ParseSourceRecord(file string, data []byte) (rec SourceRecord, err error) {
	defer kmp.Guard(file, &err)
	if len(data) > MaxSourceRecordSize {
		return rec, kmp.InputErrorf(file, "larger than %d bytes", MaxSourceRecordSize)
	}
	d := json.NewDecoder(bytes.NewReader(data))
	if err := d.Decode(&rec); err != nil {
		return SourceRecord{}, kmp.InputErrorf(file, "not a source registration: %v", err)
	}
	if d.More() {
		return SourceRecord{}, kmp.InputErrorf(file, "not a source registration: data after the JSON object")
	}
	if err := rec.Validate(); err != nil {
		return SourceRecord{}, kmp.InputErrorf(file, "%v", err)
	}
	if want := rec.Name + "/" + rec.Version + ".json"; !strings.HasSuffix(file, "/"+want) {
		return SourceRecord{}, kmp.InputErrorf(file, "registers %s %s, which belongs in %s", rec.Name, rec.Version, want)
	}
	return rec, nil
}

// AddSourceOptions describe kmpack source add.
type AddSourceOptions struct {
	Options
	// Path is a source directory or a tarball (tar, optionally gzip, xz, zstd or bzip2).
	Path string
	// Name and Version name a source that does not say them itself (a bare Kbuild tree, a
	// dkms.conf that computes them); for one that does, they must agree.
	Name, Version string
	// Replace forgets the other registered versions of the same name (a package upgrade).
	Replace bool
}

// AddSource registers a module source and keeps it in <root>/usr/src/<name>-<version>. A
// directory there already (a *-dkms package's files) is registered in place. The source is
// copied (or extracted) into a staging directory under the root first and identified from
// that copy, so what is identified is what is kept; nothing in it is run (a dkms.conf's
// PACKAGE_NAME and PACKAGE_VERSION are read as literal assignments, or given with Name and
// Version).
func AddSource(o AddSourceOptions) (SourceRecord, error) {
	var rec SourceRecord
	err := o.locked(func(r *os.Root) error {
		var err error
		if rec, err = addSource(r, &o); err != nil || !o.Replace {
			return err
		}
		return replaceOthers(r, &o.Options, rec)
	})
	return rec, err
}

// replaceOthers forgets the other versions of rec's name (their records, and the copies kmpack
// kept): an rpm upgrade runs the new package's %post before the old one's %preun, which cannot
// tell an upgrade to another version from a reinstall. The modules built from them stay until
// autoinstall replaces them with rec's.
func replaceOthers(r *os.Root, o *Options, rec SourceRecord) error {
	for _, old := range readSources(r, o) {
		if old.Name != rec.Name || old.Version == rec.Version {
			continue
		}
		if old.Owned {
			if err := r.RemoveAll(sourceDir(old.Name, old.Version)); err != nil {
				return err
			}
		}
		if err := weakupdates.RemoveDurably(r, sourceRecordFile(old.Name, old.Version)); err != nil {
			return err
		}
		o.logf("replaced %s %s", old.Name, old.Version)
	}
	return nil
}

func addSource(r *os.Root, o *AddSourceOptions) (SourceRecord, error) {
	fi, err := os.Stat(o.Path)
	if err != nil {
		return SourceRecord{}, kmp.InputErrorf(o.Path, "cannot add module source: %v", kmp.UnwrapPathError(err))
	}
	if fi.IsDir() {
		if rec, ok, err := registerInPlace(r, o); ok || err != nil {
			return rec, err
		}
	}
	// Staged in /usr/src itself: the rename into place must not cross a file system (/var is
	// often one of its own).
	if err := r.MkdirAll(sourceTree, 0o755); err != nil {
		return SourceRecord{}, err
	}
	kmp.RemoveDeadTemps(r, sourceTree, stagingPrefix)
	staging := fmt.Sprintf("%s/%s%d-%d", sourceTree, stagingPrefix, os.Getpid(), time.Now().UnixNano())
	if err := r.Mkdir(staging, 0o755); err != nil {
		return SourceRecord{}, err
	}
	defer r.RemoveAll(staging)
	sr, err := r.OpenRoot(staging)
	if err != nil {
		return SourceRecord{}, err
	}
	defer sr.Close()
	top := "."
	if fi.IsDir() {
		// Into a directory of its own: the staging directory is what gets renamed into place.
		top = "src"
		if err := sr.Mkdir(top, 0o755); err != nil {
			return SourceRecord{}, err
		}
		var dr *os.Root
		if dr, err = sr.OpenRoot(top); err == nil {
			err = copyTree(o.Path, dr)
			dr.Close()
		}
	} else {
		err = unpack.ExtractTarball(o.Path, sr, MaxSourceBytes, MaxSourceEntries)
	}
	if err != nil {
		return SourceRecord{}, err
	}
	if !fi.IsDir() {
		// A tarball: dkms mktarball's layout, or one top directory (name-version/), or the
		// files themselves.
		if st, err := sr.Lstat("dkms_source_tree"); err == nil && st.IsDir() {
			top = "dkms_source_tree"
		} else if d, err := sr.Open("."); err == nil {
			ents, _ := d.ReadDir(3)
			d.Close()
			if len(ents) == 1 && ents[0].IsDir() {
				top = ents[0].Name()
			}
		}
	}
	tr, err := sr.OpenRoot(top)
	if err != nil {
		return SourceRecord{}, err
	}
	// The tree kept is top: no link in it may lead out of it, through a chain of links or
	// above a tarball's top directory (builds follow links without an os.Root).
	if err := unpack.CheckTreeLinks(tr); err != nil {
		tr.Close()
		return SourceRecord{}, kmp.InputErrorf(o.Path, "%v", err)
	}
	rec, err := identify(tr, o.Path, o.Name, o.Version)
	tr.Close()
	if err != nil {
		return SourceRecord{}, err
	}
	dst := sourceDir(rec.Name, rec.Version)
	if err := checkFree(r, o, rec); err != nil {
		return SourceRecord{}, err
	}
	from := staging + "/" + top
	if top == "." {
		from = staging
	}
	if err := r.Rename(from, dst); err != nil {
		return SourceRecord{}, fmt.Errorf("%s: %v", o.display(dst), kmp.UnwrapPathError(err))
	}
	rec.Owned = true
	if err := writeSourceRecord(r, rec); err != nil {
		r.RemoveAll(dst)
		return SourceRecord{}, err
	}
	o.logf("added %s %s in %s", rec.Name, rec.Version, o.display(dst))
	return rec, nil
}

// registerInPlace registers a directory that already is <root>/usr/src/<name>-<version>
// (what a *-dkms package installs) without copying it. ok is false when Path is elsewhere.
func registerInPlace(r *os.Root, o *AddSourceOptions) (SourceRecord, bool, error) {
	dirFi, err := os.Stat(o.Path)
	if err != nil {
		return SourceRecord{}, false, nil
	}
	base := filepath.Base(filepath.Clean(o.Path))
	if ident.PathComponent(base) != nil {
		return SourceRecord{}, false, nil
	}
	inRoot, err := r.Stat(sourceTree + "/" + base)
	if err != nil || !os.SameFile(inRoot, dirFi) {
		return SourceRecord{}, false, nil
	}
	sr, err := r.OpenRoot(sourceTree + "/" + base)
	if err != nil {
		return SourceRecord{}, true, err
	}
	defer sr.Close()
	rec, err := identify(sr, o.Path, o.Name, o.Version)
	if err != nil {
		return SourceRecord{}, true, err
	}
	if sourceDir(rec.Name, rec.Version) != sourceTree+"/"+base {
		return SourceRecord{}, true, kmp.InputErrorf(o.Path, "holds %s %s, which belongs in /%s", rec.Name, rec.Version, sourceDir(rec.Name, rec.Version))
	}
	if b, _, err := kmp.ReadRootFile(r, sourceRecordFile(rec.Name, rec.Version), MaxSourceRecordSize); err == nil {
		// Registered in place before (a package's postinst run again): nothing to do.
		if old, err := ParseSourceRecord(o.display(sourceRecordFile(rec.Name, rec.Version)), b); err == nil && old == rec {
			return rec, true, nil
		}
		return SourceRecord{}, true, kmp.InputErrorf(o.Path, "%s %s is already added", rec.Name, rec.Version)
	}
	if err := dirTaken(r, &o.Options, o.Path, rec); err != nil {
		return SourceRecord{}, true, err
	}
	if err := writeSourceRecord(r, rec); err != nil {
		return SourceRecord{}, true, err
	}
	o.logf("added %s %s (in place, %s)", rec.Name, rec.Version, o.display(sourceDir(rec.Name, rec.Version)))
	return rec, true, nil
}

func checkFree(r *os.Root, o *AddSourceOptions, rec SourceRecord) error {
	if _, err := r.Lstat(sourceRecordFile(rec.Name, rec.Version)); err == nil {
		return kmp.InputErrorf(o.Path, "%s %s is already added (kmpack source remove %s/%s first)", rec.Name, rec.Version, rec.Name, rec.Version)
	}
	if err := dirTaken(r, &o.Options, o.Path, rec); err != nil {
		return err
	}
	dst := sourceDir(rec.Name, rec.Version)
	if _, err := r.Lstat(dst); err == nil {
		return kmp.InputErrorf(o.Path, "%s exists and is not a registered source: add it in place (kmpack source add %s) or remove it", o.display(dst), o.display(dst))
	}
	return nil
}

// dirTaken refuses rec when another registration names the same directory: "a-b" 1 and "a"
// "b-1" are both /usr/src/a-b-1, and removing one would delete the other's source.
func dirTaken(r *os.Root, o *Options, display string, rec SourceRecord) error {
	dir := "/" + sourceDir(rec.Name, rec.Version)
	for _, s := range readSources(r, o) {
		if s.Dir == dir && (s.Name != rec.Name || s.Version != rec.Version) {
			return kmp.InputErrorf(display, "%s %s would be kept in %s, where %s %s is registered", rec.Name, rec.Version, dir, s.Name, s.Version)
		}
	}
	return nil
}

func writeSourceRecord(r *os.Root, rec SourceRecord) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return weakupdates.WriteAtomic(r, sourceRecordFile(rec.Name, rec.Version), append(b, '\n'))
}

// identify finds what kind of source sr holds and its name and version, validated. Only
// kmpack.yaml is parsed (by the fuzzed spec parser); a dkms.conf is scanned for literal
// assignments, never run.
func identify(sr *os.Root, display, name, version string) (SourceRecord, error) {
	rec := SourceRecord{}
	var gotName, gotVersion string
	switch {
	case isFile(sr, source.SpecFileName):
		rec.Kind = string(source.SourceSpec)
		b, _, err := kmp.ReadRootFile(sr, source.SpecFileName, maxConfScan)
		if err != nil {
			return rec, kmp.InputErrorf(display, "%v", err)
		}
		spec, err := source.ParseSpec(filepath.Join(display, source.SpecFileName), b)
		if err != nil {
			return rec, err
		}
		gotName, gotVersion = spec.Name, spec.Version
	case isFile(sr, "dkms.conf"):
		rec.Kind = string(source.SourceDKMS)
		b, _, err := kmp.ReadRootFile(sr, "dkms.conf", maxConfScan)
		if err != nil {
			return rec, kmp.InputErrorf(display, "%v", err)
		}
		gotName, gotVersion = literalAssignment(b, "PACKAGE_NAME"), literalAssignment(b, "PACKAGE_VERSION")
		if (gotName == "" && name == "") || (gotVersion == "" && version == "") {
			return rec, kmp.InputErrorf(filepath.Join(display, "dkms.conf"),
				"PACKAGE_NAME or PACKAGE_VERSION is not a literal assignment (kmpack does not run a dkms.conf to add it): give --name and --version")
		}
	case isFile(sr, "Kbuild") || isFile(sr, "Makefile"):
		rec.Kind = string(source.SourceKbuild)
		if name == "" || version == "" {
			return rec, kmp.InputErrorf(display, "a bare Kbuild source does not say its name and version: give --name and --version")
		}
	default:
		return rec, kmp.InputErrorf(display, "not a module source: no kmpack.yaml, dkms.conf, Kbuild or Makefile")
	}
	rec.Name, rec.Version = gotName, gotVersion
	if name != "" {
		if gotName != "" && gotName != name {
			return rec, kmp.InputErrorf(display, "the source says name %q, not %q", gotName, name)
		}
		rec.Name = name
	}
	if version != "" {
		if gotVersion != "" && gotVersion != version {
			return rec, kmp.InputErrorf(display, "the source says version %q, not %q", gotVersion, version)
		}
		rec.Version = version
	}
	rec.Dir = "/" + sourceDir(rec.Name, rec.Version)
	if err := rec.Validate(); err != nil {
		return rec, kmp.InputErrorf(display, "%v", err)
	}
	return rec, nil
}

func isFile(r *os.Root, name string) bool {
	fi, err := r.Lstat(name)
	return err == nil && fi.Mode().IsRegular()
}

var assignRE = regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*?)\s*$`)

// literalAssignment is the value of the last `NAME=value` line of a dkms.conf when every
// assignment of NAME there is a plain word (optionally quoted): anything a shell would expand
// or run makes it "" (unknown), never a guess.
func literalAssignment(conf []byte, name string) string {
	val := ""
	sc := bufio.NewScanner(bytes.NewReader(conf))
	sc.Buffer(make([]byte, 64<<10), maxConfScan)
	for sc.Scan() {
		m := assignRE.FindStringSubmatch(strings.TrimSuffix(sc.Text(), "\r"))
		if m == nil || m[1] != name {
			// A use ($NAME, ${NAME}) is fine; any other mention may set it some other way
			// (read, declare, export, a function): unknown.
			line := strings.NewReplacer("${"+name, "", "$"+name, "").Replace(sc.Text())
			if strings.Contains(line, name) && !strings.HasPrefix(strings.TrimSpace(line), "#") {
				return ""
			}
			continue
		}
		v := m[2]
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		if v == "" || strings.ContainsAny(v, "$`\\\"'(){}; \t*?[]&|<>!#") {
			return ""
		}
		val = v
	}
	if sc.Err() != nil {
		return ""
	}
	return val
}

// copyTree copies the directory src into dst like cp -a, reading src through an os.Root:
// symbolic links are kept only when they stay inside the source (no link out), special files
// are refused, and the total is bounded.
func copyTree(src string, dst *os.Root) error {
	sr, err := os.OpenRoot(src)
	if err != nil {
		return kmp.InputErrorf(src, "%v", kmp.UnwrapPathError(err))
	}
	defer sr.Close()
	var bytes int64
	entries := 0
	return fs.WalkDir(sr.FS(), ".", func(rel string, d fs.DirEntry, err error) error {
		if err != nil {
			return kmp.InputErrorf(src, "%v", kmp.UnwrapPathError(err))
		}
		if rel == "." {
			return nil
		}
		if entries++; entries > MaxSourceEntries {
			return kmp.InputErrorf(src, "more than %d entries", MaxSourceEntries)
		}
		fi, err := sr.Lstat(rel)
		if err != nil {
			return kmp.InputErrorf(filepath.Join(src, rel), "%v", kmp.UnwrapPathError(err))
		}
		switch {
		case fi.IsDir():
			return dst.Mkdir(rel, (fi.Mode().Perm()|0o700)&^0o022)
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := sr.Readlink(rel)
			if err != nil {
				return err
			}
			if path.IsAbs(t) || !kmp.LexicallyInside(path.Join(path.Dir(rel), t)) {
				return kmp.InputErrorf(filepath.Join(src, rel), "symbolic link to %q leads out of the source", t)
			}
			return dst.Symlink(t, rel)
		case fi.Mode().IsRegular():
			if bytes += fi.Size(); bytes > MaxSourceBytes {
				return kmp.InputErrorf(src, "larger than %d bytes", MaxSourceBytes)
			}
			in, _, err := kmp.OpenRootFile(sr, rel, true)
			if err != nil {
				return kmp.InputErrorf(filepath.Join(src, rel), "%v", err)
			}
			defer in.Close()
			out, err := dst.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, (fi.Mode().Perm()|0o600)&^0o022)
			if err != nil {
				return err
			}
			// The file may grow after the Lstat: copy no more than it said.
			if _, err := io.Copy(out, io.LimitReader(in, fi.Size())); err != nil {
				out.Close()
				return err
			}
			return out.Close()
		}
		return kmp.InputErrorf(filepath.Join(src, rel), "%s has no place in a module source", kmp.FileKind(fi.Mode()))
	})
}

// readSources reads every source registration; one that cannot be read or is invalid is
// skipped with a warning naming its file (it must not stop the others, or a kernel's hooks).
func readSources(r *os.Root, o *Options) []SourceRecord {
	var out []SourceRecord
	d, err := r.Open(sourcesDir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			o.warnf("%s: %v", o.display(sourcesDir), kmp.UnwrapPathError(err))
		}
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	sort.Strings(names)
	for _, n := range names {
		if strings.HasPrefix(n, ".") || ident.PackageName(n) != nil {
			continue
		}
		vd, err := r.Open(sourcesDir + "/" + n)
		if err != nil {
			continue
		}
		files, _ := vd.Readdirnames(-1)
		vd.Close()
		sort.Strings(files)
		for _, f := range files {
			if !strings.HasSuffix(f, ".json") {
				continue
			}
			file := sourcesDir + "/" + n + "/" + f
			b, _, err := kmp.ReadRootFile(r, file, MaxSourceRecordSize)
			if err != nil {
				o.warnf("skipping source registration %s: %s", o.display(file), kmp.OneLine(err.Error()))
				continue
			}
			rec, err := ParseSourceRecord(o.display(file), b)
			if err != nil {
				o.warnf("skipping source registration: %s", err)
				continue
			}
			out = append(out, rec)
		}
	}
	return out
}

// ListSources returns the registered sources, by name then version.
func ListSources(o Options) ([]SourceRecord, error) {
	r, err := os.OpenRoot(o.root())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return readSources(r, &o), nil
}

// ParseSourceRef splits NAME[/VERSION] and validates both parts.
func ParseSourceRef(ref string) (name, version string, err error) {
	name, version, _ = strings.Cut(ref, "/")
	if err := ident.PackageName(name); err != nil {
		return "", "", err
	}
	if strings.Contains(ref, "/") {
		if err := ident.Version(version); err != nil {
			return "", "", err
		}
	}
	return name, version, nil
}

// RemoveSource forgets a source (every version when version is ""), deletes the copy kmpack
// kept, and takes the modules autoinstall built from it out of every kernel (depmod runs for
// each kernel that lost one). A source that is not registered is an InputError.
func RemoveSource(o Options, name, version string) error {
	ref := name
	if version != "" {
		ref += "/" + version
	}
	if _, _, err := ParseSourceRef(ref); err != nil {
		return kmp.InputErrorf(ref, "%v", err)
	}
	return o.locked(func(r *os.Root) error {
		var gone []SourceRecord
		for _, rec := range readSources(r, &o) {
			if rec.Name == name && (version == "" || rec.Version == version) {
				gone = append(gone, rec)
			}
		}
		if len(gone) == 0 {
			return kmp.InputErrorf(ref, "no such source registered (kmpack source list)")
		}
		for _, rec := range gone {
			if rec.Owned {
				if err := r.RemoveAll(sourceDir(rec.Name, rec.Version)); err != nil {
					return err
				}
			}
			if err := weakupdates.RemoveDurably(r, sourceRecordFile(rec.Name, rec.Version)); err != nil {
				return err
			}
			r.Remove(sourcesDir + "/" + rec.Name) // only when no version is left
			o.logf("removed %s %s", rec.Name, rec.Version)
		}
		left := slices.ContainsFunc(readSources(r, &o), func(s SourceRecord) bool { return s.Name == name })
		if left {
			return nil
		}
		return uninstallBuilt(r, &o, name)
	})
}
