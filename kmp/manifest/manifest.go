// Package manifest is what a build says it produced: every kernel's outcome and every module
// file, written as manifest.json in a build output. The build engine writes it; packaging
// (formats), weak-updates and release pipelines read it, without depending on the engine.
package manifest

import "github.com/kmpack/kmpack/kmp/module"

// KernelStatus is the outcome of one kernel's build.
type KernelStatus string

const (
	StatusQueued   KernelStatus = "queued"
	StatusBuilding KernelStatus = "building"
	StatusBuilt    KernelStatus = "built"
	StatusSkipped  KernelStatus = "skipped"
	StatusFailed   KernelStatus = "failed"
	// StatusServed is a kernel not built for (kmpack build --classes): the modules built for
	// KernelBuild.ServedBy load there, as KernelBuild.Serving's verdicts say.
	StatusServed KernelStatus = "served"
)

// SiblingVerdict says whether one module built for a kernel can load in a sibling kernel, and
// if not, why.
type SiblingVerdict struct {
	Module     string   `json:"module"`
	Kernel     string   `json:"kernel"`
	Compatible bool     `json:"compatible"`
	Reasons    []string `json:"reasons,omitempty"`
}

// Manifest describes a build: every kernel's outcome and every module produced. It is written
// as manifest.json in the output directory for release pipelines.
type Manifest struct {
	// Format and FormatVersion are OutputFormat and OutputFormatVersion: what marks a
	// directory as kmpack build's output (the only kind it replaces).
	Format        string         `json:"format"`
	FormatVersion int            `json:"formatVersion"`
	Tool          string         `json:"tool"`
	Source        ManifestSource `json:"source"`
	Kernels       []*KernelBuild `json:"kernels"`
	Summary       BuildSummary   `json:"summary"`
	// Certificates are the build's signing certificates, DER, in certs/: packaging ships them
	// to the machines that must trust the modules (kmpack package reads them from here).
	Certificates []Certificate `json:"certificates,omitempty"`
	// Shard is set in the output of one shard of a sharded build (kmpack build --shard):
	// kmpack merge checks that the outputs it combines are the shards of one plan.
	Shard *ShardInfo `json:"shard,omitempty"`
}

// ShardInfo says which shard of which plan a build output is.
type ShardInfo struct {
	Index int `json:"index"` // 1-based
	Count int `json:"count"`
	// Plan identifies the sharding: a digest of every kernel release of the plan, its cost
	// and the count. Kernels are every release of the plan (all shards'), in build order.
	Plan    string   `json:"plan"`
	Kernels []string `json:"kernels"`
}

// Certificate is one signer's certificate as the build wrote it.
type Certificate struct {
	// File is the DER certificate relative to the output directory: certs/<serial in hex>.der.
	File string `json:"file"`
	// KeyID and Signer are what the modules' signature records name (ModuleSignerKey).
	KeyID  string `json:"key_id"`
	Signer string `json:"signer"`
	// SHA256 is the DER certificate's fingerprint.
	SHA256 string `json:"sha256"`
}

// ManifestSource identifies what was built.
type ManifestSource struct {
	Dir string `json:"dir"`
	// Kind is how the source describes itself: kmpack.yaml, dkms.conf or kbuild.
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
}

// BuildSummary counts kernels by outcome.
type BuildSummary struct {
	Built   int `json:"built"`
	Cached  int `json:"cached"`
	Skipped int `json:"skipped"`
	Failed  int `json:"failed"`
	// Served counts kernels served by another kernel's build (build --classes).
	Served int `json:"served,omitempty"`
}

// Where a kernel's build ran (KernelBuild.Paths).
const (
	PathsDKMS      = "dkms"
	PathsWorkspace = "workspace"
)

// KernelBuild is one kernel's outcome.
type KernelBuild struct {
	Release string       `json:"release"`
	Tree    string       `json:"tree"`
	Flavor  string       `json:"flavor"`
	Arch    string       `json:"arch"`
	Status  KernelStatus `json:"status"`
	// Cached is true when the result was reused from the build cache (nothing was rebuilt).
	Cached bool `json:"cached"`
	// Reason says why the kernel was skipped or failed.
	Reason string `json:"reason,omitempty"`
	// FailureKind is FailureBuild (the same inputs fail the same way: cached) or
	// FailureTemporary (a signal, no space left, an I/O error: not cached).
	FailureKind string `json:"failure_kind,omitempty"`
	// Log is the full build log, relative to the output directory; LogTail its last lines on failure.
	Log      string   `json:"log,omitempty"`
	LogTail  []string `json:"log_tail,omitempty"`
	Duration float64  `json:"duration_seconds"`
	// BuildSeconds is what compiling this result cost where it was compiled: this run's
	// compile time, or, for a result from a cache, the time recorded when it was made (0:
	// unknown, from a cache entry older than the field). Plans balance shards by it.
	BuildSeconds float64 `json:"build_seconds,omitempty"`
	Compiler     string  `json:"compiler,omitempty"`
	CacheKey     string  `json:"cache_key,omitempty"`
	// Paths is where the build's commands ran: PathsDKMS (dkms's own paths, in a private mount
	// namespace) or PathsWorkspace (a $TMPDIR workspace, where namespaces are unavailable).
	Paths string `json:"paths,omitempty"`
	// Symvers is the Module.symvers the build wrote, relative to the output directory.
	Symvers  string           `json:"symvers,omitempty"`
	Modules  []*BuiltModule   `json:"modules"`
	Excluded []ExcludedModule `json:"excluded,omitempty"`
	Warnings []string         `json:"warnings,omitempty"`
	// Siblings are the modules' verdicts against the kernels of build --siblings.
	Siblings []SiblingVerdict `json:"siblings,omitempty"`
	// ServedBy is, for a served kernel, the release whose build serves it; Serving are that
	// build's modules' verdicts against this kernel (all compatible).
	ServedBy string           `json:"served_by,omitempty"`
	Serving  []SiblingVerdict `json:"serving,omitempty"`
}

// ExcludedModule is a module BUILD_EXCLUSIVE kept out of one kernel's build.
type ExcludedModule struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// BuiltModule is one finished module file.
type BuiltModule struct {
	// Name is the module's name (modinfo name=); File is the file relative to the output directory.
	Name string `json:"name"`
	File string `json:"file"`
	// InstallPath is where the module installs, /lib/modules/<release>/<dest location>/<file>.
	InstallPath string             `json:"install_path"`
	SHA256      string             `json:"sha256"`
	Size        int64              `json:"size"`
	Compression module.Compression `json:"compression"`
	Stripped    bool               `json:"stripped"`
	Vermagic    string             `json:"vermagic"`
	SrcVersion  string             `json:"srcversion,omitempty"`
	Version     string             `json:"version,omitempty"`
	License     string             `json:"license,omitempty"`
	Depends     []string           `json:"depends,omitempty"`
	// Imports counts the symbols with a modversions CRC the module needs; Exports lists what it provides.
	Imports int      `json:"imports"`
	Exports []string `json:"exports,omitempty"`
	// Signature is the module signature kmpack appended, if any.
	Signature *ModuleSignature `json:"signature,omitempty"`
}

// ModuleSignature is who signed a module and with which hash.
type ModuleSignature struct {
	Hash    string            `json:"hash"`
	Signers []ModuleSignerKey `json:"signers"`
}

// ModuleSignerKey is one signer: the certificate's subject common name (modinfo's signer) and
// its serial in hex (modinfo's sig_key).
type ModuleSignerKey struct {
	Signer string `json:"signer"`
	KeyID  string `json:"key_id"`
}
