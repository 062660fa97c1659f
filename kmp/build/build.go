package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/proc"
	"github.com/kmpack/kmpack/kmp/sign"
	"github.com/kmpack/kmpack/kmp/source"
)

// BuildEngineVersion is part of every build cache key: bump it when a change to the build
// engine changes what a build produces.
const BuildEngineVersion = "kmpack-build-1"

// BuildOptions tune Build. The zero value builds with one job per CPU, the kernels' own module
// compression, stripping as the source says, and no cache.
type BuildOptions struct {
	// Jobs is the job budget shared by all kernels (make jobs plus running kernel builds).
	Jobs int
	// CacheDir holds finished builds (CacheDir/builds/<key>); "" disables the cache.
	CacheDir string
	// CompileCache, when set, is where compile results are kept for reuse by later compiles
	// with the same input (ccache, run from PATH; see ccache.go), one partition per source
	// name; the modules are the same bytes as without it, and so is the build cache's key.
	// Without ccache on PATH, Warn says so once and the build goes on without it.
	CompileCache string
	// CacheURL, when set, is a shared second level of the cache (needs CacheDir): an OCI
	// registry repository, oci://HOST/REPO or oci+http://HOST/REPO (see remotecache.go). Local
	// misses are pulled from it, fresh successful builds pushed to it; a registry that fails
	// costs one warning and the builds go on locally.
	CacheURL string
	// TrustCacheURL lets a signing build sign modules pulled from CacheURL (by this run or an
	// earlier one); without it, a signing build rebuilds them.
	TrustCacheURL bool
	// Refresh ignores what the cache holds (kmpack build --no-cache); fresh results still
	// replace the cache's entries.
	Refresh bool
	// OutputDir receives modules, logs and manifest.json. It must not exist, be empty, or be a
	// previous kmpack build output (which is replaced as a whole).
	OutputDir string
	// Compression overrides the kernel's CONFIG_MODULE_COMPRESS_* choice when set.
	Compression module.Compression
	// NoStrip keeps debug info in every module (dkms's STRIP[#]=no for all).
	NoStrip bool
	// IgnoreBuildDepends builds sources whose dkms.conf has BUILD_DEPENDS anyway.
	IgnoreBuildDepends bool
	// NoPrivateMounts builds in $TMPDIR workspaces even where private mount namespaces are
	// available (see source.Workspace); without them that is what happens anyway, with a note.
	NoPrivateMounts bool
	// Signers sign every module on its way into the output (strip, sign, compress, as
	// modules_install does), with the kernel's CONFIG_MODULE_SIG_HASH; two signers give one
	// signature with two signer infos. The cache keeps unsigned modules: changing a key
	// re-signs without rebuilding.
	Signers []sign.Signer
	// Secrets are files a build must not read (signing keys, passphrase and PIN files): in a
	// private mount namespace they read as empty. (Without one, a build running as the same
	// user can read them: use a PKCS#11 token or a signer command there.)
	Secrets []string
	// KeepWork keeps the workspaces of failed builds for inspection.
	KeepWork bool
	// Timeout, when set, bounds each kernel's build (patches, hooks, make, collection); a
	// kernel that runs out of time fails (not cached) and the others go on.
	Timeout time.Duration
	// Progress, when set, is called (from several goroutines, serialised) on every state change.
	Progress func(ProgressEvent)
	// Warn, when set, receives warnings once each (compiler mismatch, deprecated directives).
	Warn func(string)
	// Siblings, when set, judges each built kernel's modules against other kernels (kmpack
	// build --siblings); its verdicts are recorded in the manifest.
	Siblings func(release string, modules []*module.ModuleInfo) []manifest.SiblingVerdict
	// Classes, when set, builds one kernel per class (kmpack build --classes): kernels of one
	// flavor, architecture, series and plan are built oldest first, and a kernel the judge
	// says an earlier build's modules load in is served by it (StatusServed) instead of built.
	Classes ClassJudge
	// Shard, when set, is recorded in the manifest: this build is one shard of a sharded
	// build (kmpack build --shard; see plan.go), for kmpack merge to check.
	Shard *manifest.ShardInfo
}

// ProgressEvent is a kernel's build changing state.
type ProgressEvent struct {
	Release string
	Status  manifest.KernelStatus
	Cached  bool
	Detail  string
	Elapsed time.Duration
}

// ErrBuildFailed is returned (wrapped) by Build when at least one kernel failed.
var ErrBuildFailed = errors.New("build failed")

// MaxJobs bounds BuildOptions.Jobs (kmpack build -j): the jobserver's tokens live in a pipe.
const MaxJobs = 1024

// Build builds src against every tree, in parallel under opts.Jobs, and writes the results to
// opts.OutputDir. Bad input (the source's description, an output directory kmpack does not own)
// is an error before anything is written. A kernel's failure does not stop the others: the
// manifest says what happened to each. A failure of the machine (or a cancelled ctx) stops
// every kernel's build and writes nothing.
func Build(ctx context.Context, src *source.Source, trees []*kernel.KernelTree, opts BuildOptions) (*manifest.Manifest, error) {
	if len(trees) == 0 {
		return nil, errors.New("no kernel trees to build against")
	}
	if opts.Jobs <= 0 {
		opts.Jobs = min(runtime.NumCPU(), MaxJobs)
	}
	if opts.Jobs > MaxJobs {
		return nil, fmt.Errorf("%d jobs: at most %d", opts.Jobs, MaxJobs)
	}
	if opts.OutputDir == "" {
		return nil, errors.New("no output directory")
	}
	if opts.CacheURL != "" {
		if opts.CacheDir == "" {
			return nil, errors.New("a shared cache (cache URL) needs a local build cache directory: the local cache is its first level")
		}
		if _, _, err := ParseCacheURL(opts.CacheURL); err != nil {
			return nil, err
		}
	}
	out, err := filepath.Abs(opts.OutputDir)
	if err != nil {
		return nil, err
	}
	if err := checkOutputDir(out); err != nil {
		return nil, err
	}
	if src, err = prepareSource(ctx, src, trees, opts, out); err != nil {
		return nil, err
	}
	work, err := makeWorkDir()
	if err != nil {
		return nil, err
	}
	keepWork := false
	defer func() {
		if keepWork {
			work.Keep() // the next build's clean-up leaves it alone
		}
		work.Remove(keepWork)
	}()
	src.Exclude = append(src.Exclude, work.Path)

	// Plan every kernel first: a dkms.conf or spec problem stops everything before any build.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	b := &builder{opts: opts, src: src, out: out, warned: map[string]bool{}, cancel: cancel, workTag: work.TagEnv()}
	if b.bash, err = exec.LookPath("bash"); err != nil {
		return nil, fmt.Errorf("build commands need bash: %w", err)
	}
	private := b.probePrivateMounts(ctx, work.Path, trees[0])
	if len(opts.Signers) > 0 && !private && b.opts.CacheDir != "" && !b.opts.Refresh {
		// Without private mounts a build can write the cache, and what it planted there would
		// be signed with the vendor's key: signed builds then rebuild everything.
		b.opts.Refresh = true
		b.warn("signing without private mount namespaces: cached builds are not reused (a build could have planted modules in the cache); every kernel is rebuilt")
	}
	if opts.CompileCache != "" {
		switch {
		case len(opts.Signers) > 0 && !private:
			b.warn("signing without private mount namespaces: the compile cache is not used (a build could have planted objects in it)")
		default:
			dir, note, err := openCompileCache(opts.CompileCache, src.Name)
			if err != nil {
				return nil, fmt.Errorf("compile cache: %w", err)
			}
			if note != "" {
				b.warn(note)
			}
			b.ccache = dir
		}
	}
	if err := b.planKernels(ctx, trees, work.Path, private); err != nil {
		return nil, err
	}
	if opts.CacheDir != "" {
		if b.cache, err = openCache(opts.CacheDir); err != nil {
			return nil, err
		}
		defer b.cache.Close()
	}
	if opts.CacheURL != "" {
		if b.remote, err = newRemoteCache(opts.CacheURL, b.warn); err != nil {
			return nil, err
		}
		b.secrets = secretNeedles(opts.Secrets)
		if (len(opts.Signers) > 0 || len(opts.Secrets) > 0) && !private {
			// A build could have read a signing key: nothing it made leaves the machine.
			b.remote.pushDown = true
			b.warn(fmt.Sprintf("signing without private mount namespaces: fresh builds are not pushed to the shared cache %s (a build could have read the signing keys)", opts.CacheURL))
		}
	}

	// From here on the output's parent is written to: under the output's lock, so that two
	// builds into one output cannot mix.
	stage, err := stageOutput(out)
	if err != nil {
		return nil, err
	}
	defer stage.close()
	b.stage = stage.Path()
	src.Exclude = append(src.Exclude, stage.Path())
	if b.js, err = newJobServer(ctx, opts.Jobs); err != nil {
		return nil, err
	}
	defer b.js.close()

	for _, j := range b.jobs {
		b.progress(ProgressEvent{Release: j.tree.Release, Status: manifest.StatusQueued})
	}
	run := func(jobs []*kernelJob) {
		var wg sync.WaitGroup
		for _, j := range jobs {
			wg.Add(1)
			go func(j *kernelJob) {
				defer wg.Done()
				defer func() {
					if r := recover(); r != nil {
						b.setFatal(fmt.Errorf("internal error building for %s: %v", j.tree.Release, r))
					}
				}()
				b.runKernel(ctx, j)
			}(j)
		}
		wg.Wait()
	}
	if opts.Classes != nil {
		b.buildClasses(run)
	} else {
		run(b.jobs)
	}
	if b.fatal != nil {
		return nil, b.fatal
	}
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}

	m := &manifest.Manifest{
		Format: manifest.OutputFormat, FormatVersion: manifest.OutputFormatVersion,
		Tool:   "kmpack " + BuildEngineVersion,
		Source: manifest.ManifestSource{Dir: src.Dir, Kind: string(src.Kind), Name: src.Name, Version: src.Version, SHA256: b.srcHash},
	}
	for _, j := range b.jobs {
		r := j.result
		m.Kernels = append(m.Kernels, r)
		switch r.Status {
		case manifest.StatusBuilt:
			m.Summary.Built++
			if r.Cached {
				m.Summary.Cached++
			}
		case manifest.StatusSkipped:
			m.Summary.Skipped++
		case manifest.StatusServed:
			m.Summary.Served++
		case manifest.StatusFailed:
			m.Summary.Failed++
			if opts.KeepWork {
				keepWork = true
			}
		}
	}
	m.Shard = opts.Shard
	if m.Certificates, err = b.writeCertificates(); err != nil {
		return nil, err
	}
	if opts.Siblings != nil {
		for _, k := range m.Kernels {
			if k.Status != manifest.StatusBuilt {
				continue
			}
			mods, err := b.stagedModules(k)
			if err != nil {
				return nil, err
			}
			k.Siblings = opts.Siblings(k.Release, mods)
		}
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(b.stage, "manifest.json"), append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := replaceDir(b.stage, out); err != nil {
		return nil, err
	}
	if m.Summary.Failed > 0 {
		return m, fmt.Errorf("%w for %d of %d kernels", ErrBuildFailed, m.Summary.Failed, len(m.Kernels))
	}
	return m, nil
}

// kbuildSafePath reports whether make and Kbuild can take p as a directory (M=, -C): no
// spaces, quotes, $, #, :, = or other characters they split on or expand.
func kbuildSafePath(p string) bool {
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/._+-,@%~", c)) {
			return false
		}
	}
	return true
}

// BuildLogLimit caps what one kernel's commands write into its build log (the rest is
// counted and noted): a build that floods its output cannot fill the disk or the cache.
const BuildLogLimit = 64 << 20

// cappedWriter passes on the first left bytes and counts the rest. Commands write to it
// through one pipe (stdout and stderr share it), from exec's single copying goroutine.
type cappedWriter struct {
	mu      sync.Mutex
	w       io.Writer
	left    int64
	dropped int64
}

func (c *cappedWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := int64(len(p))
	if n > c.left {
		c.dropped += n - c.left
		n = c.left
	}
	if n > 0 {
		if _, err := c.w.Write(p[:n]); err != nil {
			return 0, err
		}
		c.left -= n
	}
	return len(p), nil
}

func (c *cappedWriter) takeDropped() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.dropped
	c.dropped = 0
	return d
}

// errKernelTimeout is the cause of a kernel's context when BuildOptions.Timeout ran out.
var errKernelTimeout = errors.New("kernel build timed out")

// workPrefix names build workspaces in $TMPDIR.
const workPrefix = "kmpack-build-"

// replaceDir puts stage at out, replacing a previous output as a whole.
func replaceDir(stage, out string) error {
	if err := os.Chmod(stage, 0o755); err != nil {
		return err
	}
	if _, err := os.Lstat(out); err == nil {
		old := stage + ".old"
		if err := os.Rename(out, old); err != nil {
			return err
		}
		defer os.RemoveAll(old)
	}
	return os.Rename(stage, out)
}

type builder struct {
	opts    BuildOptions
	src     *source.Source
	srcHash string
	out     string
	stage   string
	js      *jobServer
	jobs    []*kernelJob
	cache   *os.Root
	remote  *remoteCache   // the shared cache (CacheURL), or nil
	secrets []secretNeedle // what no pushed file may contain
	cancel  context.CancelCauseFunc
	ccache  string // the compile cache partition (CCACHE_DIR) this build uses, or ""
	workTag string // proc.OwnerEnv=<workspace>, in every child's environment
	bash    string // the shell that runs build commands, found on PATH once

	mu     sync.Mutex
	warned map[string]bool
	fatal  error
}

type kernelJob struct {
	tree   *kernel.KernelTree
	ws     *source.Workspace
	plan   *source.BuildPlan
	result *manifest.KernelBuild
	log    *os.File
	output *cappedWriter // the commands' output into log
	mounts *mountPlan    // the private mounts every command of a private workspace runs in
	// temporary: a command of the build was killed by a signal (OOM killer, an operator).
	temporary bool
}

func (b *builder) progress(ev ProgressEvent) {
	if b.opts.Progress == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.opts.Progress(ev)
}

func (b *builder) warn(msg string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.warned[msg] || b.opts.Warn == nil {
		b.warned[msg] = true
		return
	}
	b.warned[msg] = true
	b.opts.Warn(msg)
}

func (b *builder) fatalErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fatal
}

func (b *builder) setFatal(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fatal == nil {
		b.fatal = err
		b.cancel(err) // one kernel's machine failure stops the others
	}
}

func (b *builder) runKernel(ctx context.Context, j *kernelJob) {
	r := j.result
	start := time.Now()
	finish := func(status manifest.KernelStatus, reason string) {
		r.Status, r.Reason = status, reason
		r.Duration = time.Since(start).Round(time.Millisecond).Seconds()
		b.progress(ProgressEvent{Release: r.Release, Status: status, Cached: r.Cached, Detail: reason, Elapsed: time.Since(start)})
	}
	for _, m := range j.plan.Modules {
		if m.Excluded != "" {
			r.Excluded = append(r.Excluded, manifest.ExcludedModule{Name: m.DestName, Reason: m.Excluded})
		}
	}
	if j.plan.Skip != "" {
		finish(manifest.StatusSkipped, j.plan.Skip)
		return
	}
	if len(j.plan.BuildDepends) > 0 && !b.opts.IgnoreBuildDepends {
		finish(manifest.StatusFailed, fmt.Sprintf("BUILD_DEPENDS on %s: kmpack builds one source at a time and cannot install it for this kernel (build it first and pass --ignore-build-depends)",
			strings.Join(j.plan.BuildDepends, ", ")))
		return
	}
	cc := j.tree.Compiler
	switch {
	case j.tree.Cross() && !cc.Available:
		// The host's own compiler would make host objects: no build is worth trying.
		finish(manifest.StatusFailed, cc.Missing(j.tree.Arch))
		return
	case cc.Available:
		r.Compiler = cc.Path
		if !cc.Exact && cc.Version != "" {
			b.warn(fmt.Sprintf("kernels built with %s %s are built here with %s %s (same major version)", cc.Kind, cc.Version, cc.Path, cc.HostVersion))
		}
	case cc.VersionText != "":
		// Once per compiler, not per kernel: ten kernels of one series share it.
		b.warn(fmt.Sprintf("the compiler kernels were built with (%s) is not on this host: building them with the default compiler; install %s-%s for modules that match the kernel",
			cc.VersionText, cc.Kind, strings.Split(cc.Version, ".")[0]))
	}

	key, err := b.cacheKey(j)
	if err != nil {
		b.setFatal(err)
		finish(manifest.StatusFailed, err.Error())
		return
	}
	r.CacheKey = key
	if b.fromCache(j) || b.fromRemote(ctx, j) {
		if err := b.signModules(j); err != nil {
			b.setFatal(err)
			finish(manifest.StatusFailed, err.Error())
			return
		}
		finish(r.Status, r.Reason)
		return
	}

	token, err := b.js.acquire()
	if err != nil {
		b.setFatal(err)
		finish(manifest.StatusFailed, err.Error())
		return
	}
	defer b.js.release(token)
	start = time.Now()
	b.progress(ProgressEvent{Release: r.Release, Status: manifest.StatusBuilding})
	kctx := ctx
	if b.opts.Timeout > 0 {
		var cancel context.CancelFunc
		kctx, cancel = context.WithTimeoutCause(ctx, b.opts.Timeout, errKernelTimeout)
		defer cancel()
	}
	reason, err := b.buildKernel(kctx, j)
	r.BuildSeconds = time.Since(start).Round(time.Millisecond).Seconds()
	if err != nil && ctx.Err() == nil && errors.Is(err, errKernelTimeout) {
		// This kernel's time ran out: its process groups are killed; the others go on.
		reason, err = fmt.Sprintf("the build did not finish within %v (--timeout)", b.opts.Timeout), nil
		j.temporary = true
	}
	if err != nil { // the machine failed, not the build
		b.setFatal(err)
		finish(manifest.StatusFailed, err.Error())
		return
	}
	if reason != "" {
		r.Modules, r.Symvers = []*manifest.BuiltModule{}, ""
		// A failed kernel leaves no module files behind, only its log.
		if err := os.RemoveAll(filepath.Join(b.stage, "modules", r.Release)); err != nil {
			b.setFatal(err)
		}
		r.LogTail = tailLines(filepath.Join(b.stage, r.Log), 25)
		r.Status, r.Reason, r.FailureKind = manifest.StatusFailed, reason, FailureBuild
		if j.temporary || temporaryFailure(r.LogTail) {
			r.FailureKind = FailureTemporary
		}
		// A build failure is cached with its cause, so a no-change re-run rebuilds nothing;
		// --no-cache retries and its result replaces the entry. Temporary causes are not cached.
		b.storeCache(j)
		finish(manifest.StatusFailed, reason)
		return
	}
	r.Status = manifest.StatusBuilt
	b.storeCache(j)
	b.pushRemote(ctx, j)
	if err := b.signModules(j); err != nil {
		b.setFatal(err)
		finish(manifest.StatusFailed, err.Error())
		return
	}
	finish(manifest.StatusBuilt, "")
}

// temporaryFailureText are what a build log says when the machine, not the source, made the
// build fail: such failures are not cached.
var temporaryFailureText = []string{
	"No space left on device", "Input/output error", "Cannot allocate memory",
	"virtual memory exhausted", "Killed signal terminated program", "Disk quota exceeded",
}

func temporaryFailure(logTail []string) bool {
	for _, l := range logTail {
		for _, t := range temporaryFailureText {
			if strings.Contains(l, t) {
				return true
			}
		}
	}
	return false
}

// treeIdentityFiles are what makes one kernel tree produce different modules from another of
// the same release: its configuration, exported symbols and generated headers.
var treeIdentityFiles = []string{
	".config", "Module.symvers", "Makefile", ".kernelvariables", "include/config/auto.conf",
	"include/generated/autoconf.h", "include/generated/utsrelease.h", "include/generated/compile.h",
	"arch/x86/include/generated/asm/orc_hash.h",
}

// maxTreeIdentityFile bounds each tree file hashed into the cache key (the largest, Module.symvers
// or .config, are a few MB).
const maxTreeIdentityFile = 256 << 20

func (b *builder) cacheKey(j *kernelJob) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00source %s\x00", BuildEngineVersion, b.srcHash)
	plan, err := json.Marshal(j.plan)
	if err != nil {
		return "", err
	}
	// Workspace paths differ on every run; what the commands mean does not.
	plan = bytes.ReplaceAll(plan, []byte(j.ws.Root), []byte("@WORKSPACE@"))
	fmt.Fprintf(h, "plan %s\x00paths %s\x00", plan, j.result.Paths)
	fmt.Fprintf(h, "tree %s %s\x00", j.tree.Release, j.tree.Dir)
	// The tree's identity is read through an os.Root at the tree: regular files only (a FIFO
	// cannot block, a link cannot lead out), each bounded.
	tree, err := os.OpenRoot(j.tree.Dir)
	if err != nil {
		return "", err
	}
	defer tree.Close()
	for _, f := range treeIdentityFiles {
		sum, err := kmp.HashRootFile(tree, f, maxTreeIdentityFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			fmt.Fprintf(h, "%s absent\x00", f)
			continue
		case err != nil:
			return "", kmp.InputErrorf(filepath.Join(j.tree.Dir, f), "%v", kmp.UnwrapPathError(err))
		}
		fmt.Fprintf(h, "%s %x\x00", f, sum)
	}
	cc := j.tree.Compiler
	fmt.Fprintf(h, "cc %s %s %s\x00", cc.Path, cc.HostVersion, cc.VersionText)
	// The compiler's path names its target; the architecture and the binutils that strip are
	// named too, so that no entry of one architecture's build can serve another's.
	fmt.Fprintf(h, "arch %s cross %s strip %s\x00", j.tree.Arch, j.tree.CrossCompile(), stripTool(j.tree))
	fmt.Fprintf(h, "compress %s nostrip %v\x00", b.compression(j.tree), b.opts.NoStrip)
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (b *builder) compression(t *kernel.KernelTree) module.Compression {
	if b.opts.Compression != "" {
		return b.opts.Compression
	}
	return t.ModuleCompression
}

// buildKernel runs one kernel's build in its workspace. It returns a non-empty reason when the
// build failed, and an error only when the machine did.
func (b *builder) buildKernel(ctx context.Context, j *kernelJob) (reason string, err error) {
	r, ws, plan, tree := j.result, j.ws, j.plan, j.tree
	if err := os.MkdirAll(filepath.Join(b.stage, "logs"), 0o755); err != nil {
		return "", err
	}
	r.Log = filepath.Join("logs", tree.Release+".log")
	j.log, err = os.Create(filepath.Join(b.stage, r.Log))
	if err != nil {
		return "", err
	}
	defer j.log.Close()
	j.output = &cappedWriter{w: j.log, left: BuildLogLimit}
	fmt.Fprintf(j.log, "kmpack (%s) build log for %s/%s for kernel %s (%s)\n", BuildEngineVersion, plan.Name, plan.Version, tree.Release, tree.Arch)
	fmt.Fprintf(j.log, "kernel tree: %s\nworkspace: %s\n\n", tree.Dir, ws.Root)

	if err := os.MkdirAll(filepath.Dir(ws.HostBuildDir), 0o755); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(ws.HostSourceDir), 0o755); err != nil {
		return "", err
	}
	if err := b.src.CopyTo(ws.HostSourceDir); err != nil {
		return "", fmt.Errorf("copying the source: %w", err)
	}
	// dkms's <name>/<version>/source link, to the source as the commands see it.
	if err := os.Symlink(ws.SourceDir, filepath.Join(filepath.Dir(ws.HostBuildDir), "source")); err != nil {
		return "", err
	}
	if err := b.src.CopyTo(ws.HostBuildDir); err != nil {
		return "", fmt.Errorf("copying the source: %w", err)
	}
	if ws.Private {
		protect := []string{b.stage}
		for _, d := range []string{b.opts.CacheDir, b.opts.CompileCache} {
			if d != "" {
				if c, err := filepath.Abs(d); err == nil {
					protect = append(protect, c)
				}
			}
		}
		var writable []string
		if b.ccache != "" {
			// Its own source's partition of the (read-only) compile cache.
			writable = append(writable, b.ccache)
		}
		if j.mounts, err = privateMounts(ws, tree, protect, writable, b.opts.Secrets); err != nil {
			return "", fmt.Errorf("private build mounts: %w", err)
		}
		fmt.Fprintf(j.log, "private mounts: %s is %s, %s is %s, %s leads to %s (read-only)\n\n",
			ws.SourceDir, ws.HostSourceDir, filepath.Dir(ws.BuildDir), filepath.Dir(ws.HostBuildDir), ws.KernelDir, tree.Dir)
	}
	if b.ccache != "" {
		if tree.Compiler.Available && tree.Compiler.Kind == "gcc" {
			fmt.Fprintf(j.log, "compile cache: CC=%s, CCACHE_DIR=%s\n\n", b.cc(tree), b.ccache)
		} else {
			fmt.Fprintf(j.log, "compile cache: not used (kmpack names no gcc for this kernel)\n\n")
		}
	}

	for _, p := range plan.Patches {
		// The patch is read through an os.Root on the build directory: a symlink in the
		// source cannot make kmpack feed a host file to patch.
		pf, err := kmp.OpenInside(ws.HostBuildDir, p)
		if err != nil {
			return fmt.Sprintf("patch %s: %v", p, err), nil
		}
		code, err := b.run(ctx, j, "applying patch "+p, "patch -p1", pf)
		pf.Close()
		if err != nil {
			return "", err
		} else if code != 0 {
			return fmt.Sprintf("patch %s did not apply (exit %d)", p, code), nil
		}
	}
	if reason, err := b.hook(ctx, j, "PRE_BUILD", plan.PreBuild); reason != "" || err != nil {
		return reason, err
	}
	for _, c := range plan.Commands {
		code, err := b.run(ctx, j, "building", b.insertMakeVars(c, tree), nil)
		if err != nil {
			return "", err
		}
		if code != 0 {
			return fmt.Sprintf("build command failed (exit %d): %s", code, kmp.OneLine(c)), nil
		}
	}
	if reason, err := b.collect(ctx, j); reason != "" || err != nil {
		return reason, err
	}
	if reason, err := b.hook(ctx, j, "POST_BUILD", plan.PostBuild); reason != "" || err != nil {
		return reason, err
	}
	if sv, err := kmp.OpenInside(ws.HostBuildDir, "Module.symvers"); err == nil {
		r.Symvers = filepath.Join("modules", tree.Release, "Module.symvers")
		err := kmp.CopyFrom(sv, filepath.Join(b.stage, r.Symvers), 0o644)
		sv.Close()
		if err != nil {
			return "", err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Sprintf("Module.symvers: %v", kmp.UnwrapPathError(err)), nil
	}
	return "", nil
}

// insertMakeVars does what dkms does to a MAKE that starts with a bare `make`: it names the
// kernel release. kmpack also names the kernel's compiler when the host has it, and gives no -j:
// every make joins kmpack's jobserver through MAKEFLAGS instead.
func (b *builder) insertMakeVars(cmd string, tree *kernel.KernelTree) string {
	rest, ok := strings.CutPrefix(cmd, "make")
	if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '\t' && rest[0] != '\n') {
		return cmd
	}
	ins := "make KERNELRELEASE=" + kmp.ShellQuote(tree.Release)
	if cross := tree.CrossCompile(); cross != "" {
		ins += " ARCH=" + kmp.ShellQuote(kernel.KernelArch(tree.Arch)) + " CROSS_COMPILE=" + kmp.ShellQuote(cross)
	}
	if tree.Compiler.Available && tree.Compiler.Kind == "gcc" {
		ins += " CC=" + kmp.ShellQuote(b.cc(tree))
	}
	return ins + rest
}

// cc is the CC a build of tree gets: the kernel's compiler, through ccache with the compile
// cache. (Only a compiler kmpack names goes through ccache; clang kernels are not named.)
func (b *builder) cc(tree *kernel.KernelTree) string {
	if b.ccache != "" && tree.Compiler.Available && tree.Compiler.Kind == "gcc" {
		return "ccache " + tree.Compiler.Command
	}
	return tree.Compiler.Command
}

// hook runs PRE_BUILD or POST_BUILD. dkms runs these as scripts relative to the build directory
// (skipped with a warning when not executable); a kmpack.yaml's are shell commands.
func (b *builder) hook(ctx context.Context, j *kernelJob, name, hook string) (string, error) {
	if hook == "" {
		return "", nil
	}
	cmd := hook
	if j.plan.DKMSHooks {
		f := strings.Fields(hook)
		if len(f) == 0 {
			return "", nil
		}
		fi, err := kmp.StatInside(j.ws.HostBuildDir, f[0])
		if err != nil || fi.Mode()&0o111 == 0 || fi.IsDir() {
			msg := fmt.Sprintf("%s script %s is not executable: not run (as dkms does)", name, f[0])
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				msg = fmt.Sprintf("%s script %s: %v: not run", name, f[0], kmp.UnwrapPathError(err))
			}
			fmt.Fprintf(j.log, "# warning: %s\n", msg)
			j.result.Warnings = append(j.result.Warnings, msg)
			return "", nil
		}
		script := filepath.Join(j.ws.BuildDir, f[0])
		// dkms: exec $run, word-split without quote processing.
		quoted := []string{kmp.ShellQuote(script)}
		for _, a := range f[1:] {
			quoted = append(quoted, kmp.ShellQuote(a))
		}
		cmd = "exec " + strings.Join(quoted, " ")
	}
	code, err := b.run(ctx, j, "running "+name, cmd, nil)
	if err != nil {
		return "", err
	}
	if code != 0 {
		return fmt.Sprintf("%s failed (exit %d)", name, code), nil
	}
	return "", nil
}

// run runs a shell command in the build directory, logging it as dkms's make.log does. It
// runs in a process group of its own (kmp/proc), killed as a whole when ctx is cancelled.
func (b *builder) run(ctx context.Context, j *kernelJob, what, command string, stdin *os.File) (int, error) {
	fmt.Fprintf(j.log, "# %s\n# command: %s\n", what, command)
	start := time.Now()
	vars := []string{
		"kernelver=" + kmp.ShellQuote(j.tree.Release),
		"arch=" + kmp.ShellQuote(j.tree.Arch),
		"kernel_source_dir=" + kmp.ShellQuote(j.ws.Kernel(j.tree)),
		"dkms_tree=" + kmp.ShellQuote(j.ws.DKMSTree),
		"source_tree=" + kmp.ShellQuote(filepath.Dir(j.ws.SourceDir)),
		"build_dir=" + kmp.ShellQuote(j.ws.BuildDir),
		"module=" + kmp.ShellQuote(j.plan.Name),
		"module_version=" + kmp.ShellQuote(j.plan.Version),
		fmt.Sprintf("jobs=%d", b.opts.Jobs),
	}
	script := strings.Join(vars, "\n") + "\n" + command
	env := source.CleanBuildEnv(os.Environ())
	env = append(env, "MAKEFLAGS="+b.js.makeflags(), "LC_ALL=C", b.workTag,
		// Kbuild's reproducible-build switch. Besides dating vmlinux, it stops 6.x kernels from
		// running pahole with -j for module BTF, which (pahole < 1.27) orders types differently
		// from run to run: without it a module's .BTF, and so its bytes, vary between builds.
		"KBUILD_BUILD_TIMESTAMP="+buildTimestamp())
	if !j.ws.Private {
		// A workspace's path is random: it must not end up in the modules. (At dkms's
		// paths the modules hold what dkms's would.)
		env = append(env, "KCFLAGS=-ffile-prefix-map="+j.ws.BuildDir+"=/usr/src/"+j.plan.Name+"-"+j.plan.Version)
	}
	if cc := j.tree.Compiler; cc.Available {
		env = append(env, "CC="+b.cc(j.tree))
	}
	if cross := j.tree.CrossCompile(); cross != "" {
		// For the commands that are not a bare make (a configure, a build script) and the
		// makes they start: Kbuild reads both from the environment too.
		env = append(env, "ARCH="+kernel.KernelArch(j.tree.Arch), "CROSS_COMPILE="+cross)
	}
	if b.ccache != "" {
		env = ccacheEnv(env, b.ccache)
	}
	var cmd *exec.Cmd
	var err error
	if j.ws.Private {
		var status, statusW *os.File
		cmd, status, statusW, err = privateCommand(ctx, j.mounts, b.js.files(), env, b.bash, "--noprofile", "--norc", "-c", script)
		if err != nil {
			return 0, err
		}
		cmd.Stdout, cmd.Stderr = j.output, j.output
		if stdin != nil {
			cmd.Stdin = stdin
		}
		err = runPrivate(cmd, status, statusW)
		var pm *privateMountError
		if errors.As(err, &pm) && ctx.Err() == nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
	} else {
		cmd = proc.Command(ctx, b.bash, "--noprofile", "--norc", "-c", script)
		cmd.Dir = j.ws.BuildDir
		cmd.Stdout, cmd.Stderr = j.output, j.output
		if stdin != nil {
			cmd.Stdin = stdin
		}
		cmd.ExtraFiles = b.js.files()
		cmd.Env = env
		err = proc.Run(cmd)
	}
	if ctx.Err() != nil {
		fmt.Fprintf(j.log, "\n# stopped (process group killed): %v\n", context.Cause(ctx))
		return 0, context.Cause(ctx)
	}
	code, signaled, ok := proc.ExitCode(err)
	if !ok {
		return 0, fmt.Errorf("running %s: %w", what, err)
	}
	if signaled {
		j.temporary = true
	}
	if d := j.output.takeDropped(); d > 0 {
		fmt.Fprintf(j.log, "\n# [kmpack: %d more bytes of output not logged: the log is capped at %d bytes]\n", d, BuildLogLimit)
	}
	el := time.Since(start).Round(time.Second)
	fmt.Fprintf(j.log, "# exit code: %d\n# elapsed time: %02d:%02d:%02d\n%s\n\n", code,
		int(el.Hours()), int(el.Minutes())%60, int(el.Seconds())%60, strings.Repeat("-", 80))
	return code, nil
}

// collect finds the built modules, checks them, strips and compresses them into the output.
func (b *builder) collect(ctx context.Context, j *kernelJob) (string, error) {
	r, ws, plan, tree := j.result, j.ws, j.plan, j.tree
	type found struct {
		path string
		m    source.PlannedModule
	}
	var mods []found
	if plan.AllModules {
		var paths []string
		err := filepath.WalkDir(ws.HostBuildDir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasSuffix(p, ".ko") {
				paths = append(paths, p)
			}
			return err
		})
		if err != nil {
			return "", err
		}
		sort.Strings(paths)
		seen := map[string]string{}
		for _, p := range paths {
			name := strings.TrimSuffix(filepath.Base(p), ".ko")
			rel, _ := filepath.Rel(ws.HostBuildDir, p)
			if prev, dup := seen[name]; dup {
				return fmt.Sprintf("two modules named %s.ko were built (%s and %s): list them in kmpack.yaml with distinct dest-name", name, prev, rel), nil
			}
			seen[name] = rel
			mods = append(mods, found{p, source.PlannedModule{BuiltName: name, BuiltLocation: filepath.Dir(rel), DestName: name,
				DestLocation: plan.AllModulesTo, Strip: true}})
		}
		if len(mods) == 0 {
			return "the build produced no .ko file", nil
		}
	} else {
		for i, m := range plan.Modules {
			if m.Excluded != "" {
				continue
			}
			p := filepath.Join(ws.HostBuildDir, m.BuiltLocation, m.BuiltName+".ko")
			if _, err := kmp.StatInside(ws.HostBuildDir, filepath.Join(m.BuiltLocation, m.BuiltName+".ko")); err != nil {
				return fmt.Sprintf("module #%d %s: the build did not produce %s", i, m.BuiltName,
					filepath.Join(m.BuiltLocation, m.BuiltName+".ko")), nil
			}
			mods = append(mods, found{p, m})
		}
	}
	rel := filepath.Join("modules", tree.Release)
	if err := os.MkdirAll(filepath.Join(b.stage, rel), 0o755); err != nil {
		return "", err
	}
	comp := b.compression(tree)
	for _, f := range mods {
		// Read through an os.Root on the build directory: a built "module" that is a symlink
		// to a file outside it is not shipped.
		built, _ := filepath.Rel(ws.HostBuildDir, f.path)
		data, err := kmp.ReadInside(ws.HostBuildDir, built)
		if err != nil {
			return fmt.Sprintf("module %s: %v", built, kmp.UnwrapPathError(err)), nil
		}
		strip := f.m.Strip && !b.opts.NoStrip
		if strip {
			tmp := filepath.Join(ws.Root, "strip-"+f.m.DestName+".ko")
			if err := os.WriteFile(tmp, data, 0o644); err != nil {
				return "", err
			}
			tool := stripTool(tree)
			var out proc.Buffer
			cmd := proc.Command(ctx, tool, "-g", tmp)
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := proc.Run(cmd); err != nil {
				if ctx.Err() != nil {
					return "", context.Cause(ctx)
				}
				return fmt.Sprintf("%s -g %s failed: %v %s", tool, f.m.BuiltName, err, kmp.FirstLine(out.String())), nil
			}
			if data, err = os.ReadFile(tmp); err != nil {
				return "", err
			}
		}
		info, err := module.ParseModule(f.path, data)
		if err != nil {
			return fmt.Sprintf("built module is not a valid kernel module: %v", err), nil
		}
		if vm := strings.Fields(info.Vermagic); len(vm) == 0 || vm[0] != tree.Release {
			return fmt.Sprintf("%s.ko has vermagic %q, not kernel %s: its build ignored KERNELRELEASE or the kernel tree", f.m.BuiltName, info.Vermagic, tree.Release), nil
		}
		packed, err := module.CompressBytes(data, comp)
		if err != nil {
			return "", err
		}
		file := filepath.Join(rel, f.m.DestName+".ko"+comp.Extension())
		if err := os.WriteFile(filepath.Join(b.stage, file), packed, 0o644); err != nil {
			return "", err
		}
		sum := sha256.Sum256(packed)
		bm := &manifest.BuiltModule{
			Name: info.Name, File: file,
			InstallPath: filepath.Join("/lib/modules", tree.Release, f.m.DestLocation, f.m.DestName+".ko"+comp.Extension()),
			SHA256:      hex.EncodeToString(sum[:]), Size: int64(len(packed)), Compression: comp, Stripped: strip,
			Vermagic: info.Vermagic, SrcVersion: info.SrcVersion, Version: info.Version, License: info.License,
			Depends: info.Depends, Imports: len(info.Imports),
		}
		for _, e := range info.Exports {
			bm.Exports = append(bm.Exports, e.Name)
		}
		r.Modules = append(r.Modules, bm)
	}
	return "", nil
}

// stripTool is the strip that understands the tree's modules: llvm-strip for clang kernels
// (every architecture), else the tree's cross binutils' (aarch64-linux-gnu-strip) or the host's.
func stripTool(tree *kernel.KernelTree) string {
	if tree.Config.Enabled("CONFIG_CC_IS_CLANG") {
		return "llvm-strip"
	}
	return tree.CrossCompile() + "strip"
}

// tailLines returns the last n lines of a file, from its last 64 KiB (a line is cut to 1000
// bytes: a log may hold megabytes without a newline).
func tailLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	const window = 64 << 10
	off := max(fi.Size()-window, 0)
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return nil
	}
	lines := strings.Split(strings.TrimSuffix(string(buf), "\n"), "\n")
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // the first is a partial line
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		if len(l) > 1000 {
			lines[i] = l[:1000] + "..."
		}
	}
	return lines
}

// buildTimestamp is KBUILD_BUILD_TIMESTAMP: SOURCE_DATE_EPOCH when set, else the epoch.
func buildTimestamp() string {
	if e := os.Getenv("SOURCE_DATE_EPOCH"); e != "" {
		return "@" + e
	}
	return "@0"
}
