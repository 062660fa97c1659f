package target

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"strings"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/module"
)

// A kernel × module's state, as autoinstall leaves it and status reports it.
const (
	// StateBuiltForKernel: a registered module package built for this very kernel is installed.
	StateBuiltForKernel = "built-for-this-kernel"
	// StateWeakLinked: a build for another kernel (From) loads here and is linked.
	StateWeakLinked = "weak-linked"
	// StateFromRepo: a prebuilt package for this kernel (Package, Version) was installed from
	// the machine's repositories by autoinstall's step 3.
	StateFromRepo = "installed-from-repo"
	// StateBuiltLocally: autoinstall built the registered source for this kernel.
	StateBuiltLocally = "built-locally"
	// StateSkipped: the source's BUILD_EXCLUSIVE rules say it is not for this kernel (dkms's
	// exit 77): not a failure.
	StateSkipped = "skipped"
	// StateFailed: nothing works; Reason says why, Log where the build log is.
	StateFailed = "failed"
	// StateMissing: no autoinstall has run for this kernel since the module was registered,
	// and nothing serves it.
	StateMissing = "missing"
)

var knownStates = []string{StateBuiltForKernel, StateWeakLinked, StateFromRepo, StateBuiltLocally, StateSkipped, StateFailed, StateMissing}

// StateSchema names the state file's format; a reader refuses any other.
const StateSchema = "kmpack-autoinstall-state/1"

// Bounds on the state file: a machine has a handful of kernels and modules.
const (
	MaxStateSize     = 16 << 20
	maxStateKernels  = 1024
	maxStateModules  = 4096
	maxStateFiles    = 4096
	maxStateText     = 64 << 10
	stateFile        = autoDir + "/state.json"
	builtDirName     = "kmpack-built"
	autoBuildsDir    = autoDir + "/builds"
	depmodPendingDir = autoDir + "/depmod-pending"
)

// Result is one kernel × module outcome of autoinstall.
type Result struct {
	State string `json:"state"`
	// From is, for weak-linked, the kernel whose build is linked.
	From string `json:"from,omitempty"`
	// Package and Version say what serves the module: the package (own build, link) or the
	// source's version (built-locally).
	Package string `json:"package,omitempty"`
	Version string `json:"version,omitempty"`
	// Reason says why it failed (or was skipped); Log is the build's log, a path from the root.
	Reason string `json:"reason,omitempty"`
	Log    string `json:"log,omitempty"`
	// Attempted is the source version autoinstall last tried to build; FailureKind the build
	// engine's word for its failure: "build" (the same inputs fail the same way: not retried
	// until the source's version changes or autoinstall --rebuild) or "temporary". A row can
	// be built-locally with a failure: the build of an earlier version stays (Reason says so).
	Attempted   string `json:"attempted,omitempty"`
	FailureKind string `json:"failure_kind,omitempty"`
	// Files are the modules autoinstall installed (built-locally), paths from the root, each
	// under /lib/modules/<kernel>/updates/kmpack-built/<module>/.
	Files []string `json:"files,omitempty"`
	// RepoPackage and RepoVersion are the package step 3 looked for (the repositories' build of
	// the module for this kernel) and the version they offer; RepoPending is true while it
	// waits for the package manager that is running now (a kernel hook inside dpkg); RepoReason
	// says why step 3 did not serve (not in the repositories, the package manager failed).
	RepoPackage string `json:"repo_package,omitempty"`
	RepoVersion string `json:"repo_version,omitempty"`
	RepoPending bool   `json:"repo_pending,omitempty"`
	RepoReason  string `json:"repo_reason,omitempty"`
	// Time is when autoinstall decided this (RFC 3339, UTC).
	Time string `json:"time,omitempty"`
	// Signer and KeyID name the key a local build's modules were signed with (the
	// certificate's issuer common name and serial, as modinfo shows them); empty: unsigned.
	Signer string `json:"signer,omitempty"`
	KeyID  string `json:"key_id,omitempty"`
}

// State is autoinstall's record: per kernel release, per module name, the last outcome.
type State struct {
	Schema  string                        `json:"schema"`
	Kernels map[string]map[string]*Result `json:"kernels"`
}

func newState() *State { return &State{Schema: StateSchema, Kernels: map[string]map[string]*Result{}} }

func (s *State) get(release, name string) *Result {
	if s.Kernels[release] == nil {
		return nil
	}
	return s.Kernels[release][name]
}

func (s *State) set(release, name string, r *Result) {
	if s.Kernels[release] == nil {
		s.Kernels[release] = map[string]*Result{}
	}
	s.Kernels[release][name] = r
}

// builtPrefix is where autoinstall installs name's modules for release, from the root.
func builtPrefix(release, name string) string {
	return "/lib/modules/" + release + "/updates/" + builtDirName + "/" + name + "/"
}

// ParseState parses and validates the state file. Every path in it is checked to be one
// autoinstall writes (a module under /lib/modules/<kernel>/updates/kmpack-built/<name>/, a
// log under its own builds directory), because a later run removes the files it lists. The
// error is one line naming file.
func ParseState(file string, data []byte) (st *State, err error) {
	defer kmp.Guard(file, &err)
	if len(data) > MaxStateSize {
		return nil, kmp.InputErrorf(file, "larger than %d bytes", MaxStateSize)
	}
	st = &State{}
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(st); err != nil {
		return nil, kmp.InputErrorf(file, "not a kmpack autoinstall state: %v", err)
	}
	if d.More() {
		return nil, kmp.InputErrorf(file, "not a kmpack autoinstall state: data after the JSON object")
	}
	if st.Schema != StateSchema {
		return nil, kmp.InputErrorf(file, "schema %q, not %s", st.Schema, StateSchema)
	}
	if st.Kernels == nil {
		st.Kernels = map[string]map[string]*Result{}
	}
	if len(st.Kernels) > maxStateKernels {
		return nil, kmp.InputErrorf(file, "more than %d kernels", maxStateKernels)
	}
	for rel, mods := range st.Kernels {
		if err := ident.KernelRelease(rel); err != nil {
			return nil, kmp.InputErrorf(file, "%v", err)
		}
		if len(mods) > maxStateModules {
			return nil, kmp.InputErrorf(file, "kernel %s: more than %d modules", rel, maxStateModules)
		}
		for name, r := range mods {
			if err := ident.PackageName(name); err != nil {
				return nil, kmp.InputErrorf(file, "kernel %s: %v", rel, err)
			}
			if r == nil {
				return nil, kmp.InputErrorf(file, "kernel %s, %s: null result", rel, name)
			}
			if err := r.validate(rel, name); err != nil {
				return nil, kmp.InputErrorf(file, "kernel %s, %s: %v", rel, name, err)
			}
		}
	}
	return st, nil
}

func (r *Result) validate(release, name string) error {
	ok := false
	for _, s := range knownStates {
		ok = ok || r.State == s
	}
	if !ok {
		return fmt.Errorf("unknown state %q", r.State)
	}
	if r.From != "" {
		if err := ident.KernelRelease(r.From); err != nil {
			return fmt.Errorf("from: %v", err)
		}
	}
	for field, p := range map[string]string{"package": r.Package, "repo_package": r.RepoPackage} {
		if p != "" {
			if err := ident.PackageName(p); err != nil {
				return fmt.Errorf("%s: %v", field, err)
			}
		}
	}
	for field, v := range map[string]string{"version": r.Version, "attempted": r.Attempted, "reason": r.Reason, "time": r.Time,
		"signer": r.Signer, "key_id": r.KeyID, "repo_version": r.RepoVersion, "repo_reason": r.RepoReason} {
		if len(v) > maxStateText || strings.ContainsAny(v, "\x00\n\r") {
			return fmt.Errorf("%s: longer than %d bytes or not one line", field, maxStateText)
		}
	}
	switch r.FailureKind {
	case "", build.FailureBuild, build.FailureTemporary:
	default:
		return fmt.Errorf("unknown failure kind %q", r.FailureKind)
	}
	if r.Log != "" {
		logs := "/" + autoBuildsDir + "/" + release + "/" + name + "/"
		if !strings.HasPrefix(r.Log, logs) || path.Clean(r.Log) != r.Log || !kmp.LexicallyInside(strings.TrimPrefix(r.Log, logs)) {
			return fmt.Errorf("log %q is not under %s", r.Log, logs)
		}
	}
	if len(r.Files) > maxStateFiles {
		return fmt.Errorf("more than %d files", maxStateFiles)
	}
	prefix := builtPrefix(release, name)
	for _, f := range r.Files {
		base, ok := strings.CutPrefix(f, prefix)
		if !ok || ident.PathComponent(base) != nil || !module.IsModuleFileName(base) {
			return fmt.Errorf("file %q is not a module in %s", f, prefix)
		}
	}
	return nil
}

func marshalState(st *State) ([]byte, error) {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
