package build

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
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
	// OutputDir receives modules, logs and manifest.json. It must not exist, be empty, or be a
	// previous kmpack build output (which is replaced as a whole).
	OutputDir string
	// Compression overrides the kernel's CONFIG_MODULE_COMPRESS_* choice when set.
	Compression module.Compression
	// NoStrip keeps debug info in every module (dkms's STRIP[#]=no for all).
	NoStrip bool
	// IgnoreBuildDepends builds sources whose dkms.conf has BUILD_DEPENDS anyway.
	IgnoreBuildDepends bool
	// KeepWork keeps the workspaces of failed builds for inspection.
	KeepWork bool
	// Progress, when set, is called (from several goroutines, serialised) on every state change.
	Progress func(ProgressEvent)
	// Warn, when set, receives warnings once each (compiler mismatch, deprecated directives).
	Warn func(string)
	// Siblings, when set, judges each built kernel's modules against other kernels (kmpack
	// build --siblings); its verdicts are recorded in the manifest.
	Siblings func(release string, modules []*module.ModuleInfo) []manifest.SiblingVerdict
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

// Build builds src against every tree, in parallel under opts.Jobs, and writes the results to
// opts.OutputDir. Bad input (the source's description, an output directory kmpack does not own)
// is an error before anything is written. A kernel's failure does not stop the others: the
// manifest says what happened to each.
func Build(ctx context.Context, src *source.Source, trees []*kernel.KernelTree, opts BuildOptions) (*manifest.Manifest, error) {
	if len(trees) == 0 {
		return nil, errors.New("no kernel trees to build against")
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if opts.OutputDir == "" {
		return nil, errors.New("no output directory")
	}
	out, err := filepath.Abs(opts.OutputDir)
	if err != nil {
		return nil, err
	}
	if err := checkOutputDir(out); err != nil {
		return nil, err
	}
	src.Exclude = append(src.Exclude, out)
	if opts.CacheDir != "" {
		if c, err := filepath.Abs(opts.CacheDir); err == nil {
			src.Exclude = append(src.Exclude, c)
		}
	}
	seen := map[string]bool{}
	for _, t := range trees {
		if seen[t.Release] {
			return nil, inputErrorf(t.Dir, "kernel release %s is given twice (one build per release)", t.Release)
		}
		seen[t.Release] = true
		// Describing a tree runs nothing; building runs its (checked, PATH-found) compiler anyway.
		ProbeCompiler(&t.Compiler)
	}

	work, err := os.MkdirTemp("", "kmpack-build-")
	if err != nil {
		return nil, err
	}
	src.Exclude = append(src.Exclude, work)
	keepWork := false
	defer func() {
		if !keepWork {
			os.RemoveAll(work)
		}
	}()

	// Plan every kernel first: a dkms.conf or spec problem stops everything before any build.
	if src.Kind == source.SourceDKMS {
		if err := src.Identify(ctx, trees[0], opts.Jobs); err != nil {
			return nil, err
		}
	}
	b := &builder{opts: opts, src: src, out: out, warned: map[string]bool{}}
	for _, t := range trees {
		ws := source.NewWorkspace(filepath.Join(work, t.Release), src.Name, src.Version)
		plan, err := src.Plan(ctx, t, ws, opts.Jobs)
		if err != nil {
			return nil, err
		}
		for _, w := range plan.Warnings {
			b.warn(w)
		}
		b.jobs = append(b.jobs, &kernelJob{tree: t, ws: ws, plan: plan,
			result: &manifest.KernelBuild{Release: t.Release, Tree: t.Dir, Flavor: t.Flavor, Arch: t.Arch, Status: manifest.StatusQueued, Modules: []*manifest.BuiltModule{}}})
	}
	if b.srcHash, err = src.Hash(); err != nil {
		return nil, fmt.Errorf("hashing the source: %w", err)
	}

	stage, err := os.MkdirTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	b.stage = stage
	src.Exclude = append(src.Exclude, stage)
	if b.js, err = newJobServer(opts.Jobs); err != nil {
		return nil, err
	}
	defer b.js.close()

	var wg sync.WaitGroup
	for _, j := range b.jobs {
		b.progress(ProgressEvent{Release: j.tree.Release, Status: manifest.StatusQueued})
		wg.Add(1)
		go func(j *kernelJob) {
			defer wg.Done()
			b.runKernel(ctx, j)
		}(j)
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if b.fatal != nil {
		return nil, b.fatal
	}

	m := &manifest.Manifest{
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
		case manifest.StatusFailed:
			m.Summary.Failed++
			if opts.KeepWork {
				keepWork = true
			}
		}
	}
	if opts.Siblings != nil {
		for _, k := range m.Kernels {
			if k.Status != manifest.StatusBuilt {
				continue
			}
			var mods []*module.ModuleInfo
			for _, bm := range k.Modules {
				mi, err := module.ReadModule(filepath.Join(stage, bm.File))
				if err != nil {
					return nil, err
				}
				mods = append(mods, mi)
			}
			k.Siblings = opts.Siblings(k.Release, mods)
		}
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(stage, "manifest.json"), append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := replaceDir(stage, out); err != nil {
		return nil, err
	}
	if m.Summary.Failed > 0 {
		return m, fmt.Errorf("%w for %d of %d kernels", ErrBuildFailed, m.Summary.Failed, len(m.Kernels))
	}
	return m, nil
}

// checkOutputDir refuses to write over a directory kmpack did not make.
func checkOutputDir(out string) error {
	entries, err := os.ReadDir(out)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return inputErrorf(out, "cannot use as output directory: %v", unwrapPathError(err))
	}
	if len(entries) == 0 || exists(filepath.Join(out, "manifest.json")) {
		return nil
	}
	return inputErrorf(out, "output directory is not empty and holds no kmpack manifest.json; refusing to replace it")
}

// replaceDir puts stage at out, replacing a previous output as a whole.
func replaceDir(stage, out string) error {
	if err := os.Chmod(stage, 0o755); err != nil {
		return err
	}
	if exists(out) {
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

func (b *builder) setFatal(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fatal == nil {
		b.fatal = err
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
	if b.fromCache(j) {
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
	reason, err := b.buildKernel(ctx, j)
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
		r.Status, r.Reason = manifest.StatusFailed, reason
		// Failures are cached too: the same inputs fail the same way, and a no-change
		// re-run must rebuild nothing (--no-cache retries).
		b.storeCache(j)
		finish(manifest.StatusFailed, reason)
		return
	}
	r.Status = manifest.StatusBuilt
	b.storeCache(j)
	finish(manifest.StatusBuilt, "")
}

// treeIdentityFiles are what makes one kernel tree produce different modules from another of
// the same release: its configuration, exported symbols and generated headers.
var treeIdentityFiles = []string{
	".config", "Module.symvers", "Makefile", ".kernelvariables", "include/config/auto.conf",
	"include/generated/autoconf.h", "include/generated/utsrelease.h", "include/generated/compile.h",
	"arch/x86/include/generated/asm/orc_hash.h",
}

func (b *builder) cacheKey(j *kernelJob) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00source %s\x00", BuildEngineVersion, b.srcHash)
	plan, err := json.Marshal(j.plan)
	if err != nil {
		return "", err
	}
	// Workspace paths differ on every run; what the commands mean does not.
	plan = bytes.ReplaceAll(plan, []byte(j.ws.Root), []byte("@WORKSPACE@"))
	fmt.Fprintf(h, "plan %s\x00", plan)
	fmt.Fprintf(h, "tree %s %s\x00", j.tree.Release, j.tree.Dir)
	for _, f := range treeIdentityFiles {
		data, err := os.ReadFile(filepath.Join(j.tree.Dir, f))
		if err != nil {
			fmt.Fprintf(h, "%s absent\x00", f)
			continue
		}
		sum := sha256.Sum256(data)
		fmt.Fprintf(h, "%s %x\x00", f, sum)
	}
	cc := j.tree.Compiler
	fmt.Fprintf(h, "cc %s %s %s\x00", cc.Path, cc.HostVersion, cc.VersionText)
	fmt.Fprintf(h, "compress %s nostrip %v\x00", b.compression(j.tree), b.opts.NoStrip)
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (b *builder) compression(t *kernel.KernelTree) module.Compression {
	if b.opts.Compression != "" {
		return b.opts.Compression
	}
	return t.ModuleCompression
}

func (b *builder) cacheDir(key string) string {
	if b.opts.CacheDir == "" {
		return ""
	}
	return filepath.Join(b.opts.CacheDir, "builds", key)
}

// cachedResult is what the cache keeps of a successful build besides the files.
type cachedResult struct {
	Result *manifest.KernelBuild `json:"result"`
}

func (b *builder) fromCache(j *kernelJob) bool {
	dir := b.cacheDir(j.result.CacheKey)
	if dir == "" {
		return false
	}
	data, err := os.ReadFile(filepath.Join(dir, "result.json"))
	if err != nil {
		return false
	}
	var c cachedResult
	if json.Unmarshal(data, &c) != nil || c.Result == nil {
		return false
	}
	rel := filepath.Join("modules", j.tree.Release)
	if err := os.MkdirAll(filepath.Join(b.stage, rel), 0o755); err != nil {
		return false
	}
	for _, m := range c.Result.Modules {
		if err := kmp.CopyFile(filepath.Join(dir, "files", filepath.Base(m.File)), filepath.Join(b.stage, m.File), 0o644); err != nil {
			return false
		}
	}
	if c.Result.Symvers != "" {
		if kmp.CopyFile(filepath.Join(dir, "files", "Module.symvers"), filepath.Join(b.stage, c.Result.Symvers), 0o644) != nil {
			return false
		}
	}
	if err := os.MkdirAll(filepath.Join(b.stage, "logs"), 0o755); err != nil {
		return false
	}
	if kmp.CopyFile(filepath.Join(dir, "build.log"), filepath.Join(b.stage, c.Result.Log), 0o644) != nil {
		return false
	}
	r := j.result
	r.Modules, r.Symvers, r.Log, r.Compiler, r.Warnings = c.Result.Modules, c.Result.Symvers, c.Result.Log, c.Result.Compiler, c.Result.Warnings
	r.Status, r.Reason, r.LogTail = c.Result.Status, c.Result.Reason, c.Result.LogTail
	r.Cached = true
	return true
}

// storeCache keeps a successful build. A cache that cannot be written only costs a rebuild.
func (b *builder) storeCache(j *kernelJob) {
	dir := b.cacheDir(j.result.CacheKey)
	if dir == "" {
		return
	}
	if exists(dir) {
		return
	}
	parent := filepath.Dir(dir)
	if os.MkdirAll(parent, 0o755) != nil {
		return
	}
	tmp, err := os.MkdirTemp(parent, ".tmp-")
	if err != nil {
		return
	}
	defer os.RemoveAll(tmp)
	if os.Mkdir(filepath.Join(tmp, "files"), 0o755) != nil {
		return
	}
	r := j.result
	for _, m := range r.Modules {
		if kmp.CopyFile(filepath.Join(b.stage, m.File), filepath.Join(tmp, "files", filepath.Base(m.File)), 0o644) != nil {
			return
		}
	}
	if r.Symvers != "" && kmp.CopyFile(filepath.Join(b.stage, r.Symvers), filepath.Join(tmp, "files", "Module.symvers"), 0o644) != nil {
		return
	}
	if kmp.CopyFile(filepath.Join(b.stage, r.Log), filepath.Join(tmp, "build.log"), 0o644) != nil {
		return
	}
	data, err := json.Marshal(cachedResult{Result: r})
	if err != nil || os.WriteFile(filepath.Join(tmp, "result.json"), data, 0o644) != nil {
		return
	}
	if os.Rename(tmp, dir) == nil {
		os.Chmod(dir, 0o755)
	}
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
	fmt.Fprintf(j.log, "kmpack (%s) build log for %s/%s for kernel %s (%s)\n", BuildEngineVersion, plan.Name, plan.Version, tree.Release, tree.Arch)
	fmt.Fprintf(j.log, "kernel tree: %s\nworkspace: %s\n\n", tree.Dir, ws.Root)

	if err := os.MkdirAll(filepath.Dir(ws.BuildDir), 0o755); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(ws.SourceDir), 0o755); err != nil {
		return "", err
	}
	if err := b.src.CopyTo(ws.SourceDir); err != nil {
		return "", fmt.Errorf("copying the source: %w", err)
	}
	if err := os.Symlink(ws.SourceDir, filepath.Join(filepath.Dir(ws.BuildDir), "source")); err != nil {
		return "", err
	}
	if err := b.src.CopyTo(ws.BuildDir); err != nil {
		return "", fmt.Errorf("copying the source: %w", err)
	}

	for _, p := range plan.Patches {
		if !exists(filepath.Join(ws.BuildDir, p)) {
			return fmt.Sprintf("patch %s is not in the source tree", p), nil
		}
		if code, err := b.run(ctx, j, "applying patch "+p, "patch -p1 < "+kmp.ShellQuote(p)); err != nil {
			return "", err
		} else if code != 0 {
			return fmt.Sprintf("patch %s did not apply (exit %d)", p, code), nil
		}
	}
	if reason, err := b.hook(ctx, j, "PRE_BUILD", plan.PreBuild); reason != "" || err != nil {
		return reason, err
	}
	for _, c := range plan.Commands {
		code, err := b.run(ctx, j, "building", b.insertMakeVars(c, tree))
		if err != nil {
			return "", err
		}
		if code != 0 {
			return fmt.Sprintf("build command failed (exit %d): %s", code, kmp.OneLine(c)), nil
		}
	}
	if reason, err := b.collect(j); reason != "" || err != nil {
		return reason, err
	}
	if reason, err := b.hook(ctx, j, "POST_BUILD", plan.PostBuild); reason != "" || err != nil {
		return reason, err
	}
	if sv := filepath.Join(ws.BuildDir, "Module.symvers"); exists(sv) {
		r.Symvers = filepath.Join("modules", tree.Release, "Module.symvers")
		if err := kmp.CopyFile(sv, filepath.Join(b.stage, r.Symvers), 0o644); err != nil {
			return "", err
		}
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
	if tree.Compiler.Available && tree.Compiler.Kind == "gcc" {
		ins += " CC=" + kmp.ShellQuote(tree.Compiler.Command)
	}
	return ins + rest
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
		script := filepath.Join(j.ws.BuildDir, f[0])
		fi, err := os.Stat(script)
		if err != nil || fi.Mode()&0o111 == 0 || fi.IsDir() {
			msg := fmt.Sprintf("%s script %s is not executable: not run (as dkms does)", name, f[0])
			fmt.Fprintf(j.log, "# warning: %s\n", msg)
			j.result.Warnings = append(j.result.Warnings, msg)
			return "", nil
		}
		// dkms: exec $run, word-split without quote processing.
		quoted := []string{kmp.ShellQuote(script)}
		for _, a := range f[1:] {
			quoted = append(quoted, kmp.ShellQuote(a))
		}
		cmd = "exec " + strings.Join(quoted, " ")
	}
	code, err := b.run(ctx, j, "running "+name, cmd)
	if err != nil {
		return "", err
	}
	if code != 0 {
		return fmt.Sprintf("%s failed (exit %d)", name, code), nil
	}
	return "", nil
}

// run runs a shell command in the build directory, logging it as dkms's make.log does.
func (b *builder) run(ctx context.Context, j *kernelJob, what, command string) (int, error) {
	fmt.Fprintf(j.log, "# %s\n# command: %s\n", what, command)
	start := time.Now()
	vars := []string{
		"kernelver=" + kmp.ShellQuote(j.tree.Release),
		"arch=" + kmp.ShellQuote(j.tree.Arch),
		"kernel_source_dir=" + kmp.ShellQuote(j.tree.Dir),
		"dkms_tree=" + kmp.ShellQuote(j.ws.DKMSTree),
		"source_tree=" + kmp.ShellQuote(filepath.Dir(j.ws.SourceDir)),
		"build_dir=" + kmp.ShellQuote(j.ws.BuildDir),
		"module=" + kmp.ShellQuote(j.plan.Name),
		"module_version=" + kmp.ShellQuote(j.plan.Version),
		fmt.Sprintf("jobs=%d", b.opts.Jobs),
	}
	script := strings.Join(vars, "\n") + "\n" + command
	cmd := exec.CommandContext(ctx, "bash", "--noprofile", "--norc", "-c", script)
	cmd.Dir = j.ws.BuildDir
	cmd.Stdout, cmd.Stderr = j.log, j.log
	cmd.ExtraFiles = b.js.files()
	env := source.CleanBuildEnv(os.Environ())
	env = append(env, "MAKEFLAGS="+b.js.makeflags(), "LC_ALL=C",
		// Builds happen in a temporary workspace; its path must not end up in the modules.
		"KCFLAGS=-ffile-prefix-map="+j.ws.BuildDir+"=/usr/src/"+j.plan.Name+"-"+j.plan.Version,
		// Kbuild's reproducible-build switch. Besides dating vmlinux, it stops 6.x kernels from
		// running pahole with -j for module BTF, which (pahole < 1.27) orders types differently
		// from run to run: without it a module's .BTF, and so its bytes, vary between builds.
		"KBUILD_BUILD_TIMESTAMP="+buildTimestamp())
	if cc := j.tree.Compiler; cc.Available {
		env = append(env, "CC="+cc.Command)
	}
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return 0, fmt.Errorf("running %s: %w", what, err)
		}
		code = ee.ExitCode()
		if code < 0 {
			code = 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
		}
	}
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	el := time.Since(start).Round(time.Second)
	fmt.Fprintf(j.log, "# exit code: %d\n# elapsed time: %02d:%02d:%02d\n%s\n\n", code,
		int(el.Hours()), int(el.Minutes())%60, int(el.Seconds())%60, strings.Repeat("-", 80))
	return code, nil
}

// collect finds the built modules, checks them, strips and compresses them into the output.
func (b *builder) collect(j *kernelJob) (string, error) {
	r, ws, plan, tree := j.result, j.ws, j.plan, j.tree
	type found struct {
		path string
		m    source.PlannedModule
	}
	var mods []found
	if plan.AllModules {
		var paths []string
		err := filepath.WalkDir(ws.BuildDir, func(p string, d fs.DirEntry, err error) error {
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
			rel, _ := filepath.Rel(ws.BuildDir, p)
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
			p := filepath.Join(ws.BuildDir, m.BuiltLocation, m.BuiltName+".ko")
			if !exists(p) {
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
		data, err := os.ReadFile(f.path)
		if err != nil {
			return "", err
		}
		strip := f.m.Strip && !b.opts.NoStrip
		if strip {
			tmp := filepath.Join(ws.Root, "strip-"+f.m.DestName+".ko")
			if err := os.WriteFile(tmp, data, 0o644); err != nil {
				return "", err
			}
			tool := "strip"
			if tree.Config.Enabled("CONFIG_CC_IS_CLANG") {
				tool = "llvm-strip"
			}
			if out, err := exec.Command(tool, "-g", tmp).CombinedOutput(); err != nil {
				return fmt.Sprintf("%s -g %s failed: %s", tool, f.m.BuiltName, firstLine(string(out))), nil
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

// tailLines returns the last n lines of a file.
func tailLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
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
