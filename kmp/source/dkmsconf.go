package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/proc"
	"github.com/kmpack/kmpack/templates"
)

// dkmsConfVariables are the names dkms keeps after sourcing a dkms.conf (dkms.in's
// dkms_conf_variables, v3.4): anything else the file sets is a helper and is dropped.
var dkmsConfVariables = []string{
	"PACKAGE_NAME", "PACKAGE_VERSION", "POST_ADD", "POST_BUILD", "POST_INSTALL", "POST_REMOVE",
	"PRE_BUILD", "PRE_INSTALL", "BUILD_DEPENDS", "BUILD_DEPENDS_REBUILD", "BUILD_EXCLUSIVE_ARCH",
	"BUILD_EXCLUSIVE_CONFIG", "BUILD_EXCLUSIVE_KERNEL", "BUILD_EXCLUSIVE_KERNEL_MIN",
	"BUILD_EXCLUSIVE_KERNEL_MAX", "MAKE", "MAKE_MATCH", "PATCH", "PATCH_MATCH", "BUILT_MODULE_NAME",
	"BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION", "STRIP", "AUTOINSTALL",
	"NO_WEAK_MODULES", "OBSOLETE_BY",
	// Deprecated: accepted and reported, with no effect (as in dkms 3).
	"CLEAN", "REMAKE_INITRD", "MODULES_CONF", "MODULES_CONF_OBSOLETES", "MODULES_CONF_ALIAS_TYPE",
	"MODULES_CONF_OBSOLETE_ONLY",
}

// DKMSEnv is what dkms has defined while it sources a dkms.conf for one kernel.
type DKMSEnv struct {
	KernelVer       string
	Arch            string
	KernelSourceDir string
	KernelConfig    string
	DKMSTree        string
	SourceTree      string
	InstallTree     string
	Module          string
	ModuleVersion   string
	Jobs            int
	// Dir is the working directory the file is sourced in.
	Dir string
}

// DKMSConf is a dkms.conf evaluated for one kernel: every index of every directive it set.
type DKMSConf struct {
	Path string
	Vars map[string]map[int]string
	// Stderr is what the file printed on stderr while it was sourced (warnings, failed commands).
	Stderr string
}

// Get returns NAME[i], "" when unset.
func (c *DKMSConf) Get(name string, i int) string { return c.Vars[name][i] }

// Scalar returns NAME, which bash treats as NAME[0].
func (c *DKMSConf) Scalar(name string) string { return c.Vars[name][0] }

// Indexes returns the set indexes of NAME in order (bash arrays may be sparse).
func (c *DKMSConf) Indexes(name string) []int {
	var idx []int
	for i := range c.Vars[name] {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	return idx
}

// DKMSEvalTimeout bounds one evaluation of a dkms.conf (and its syntax check).
const DKMSEvalTimeout = 2 * time.Minute

// maxDKMSDirectives bounds the directives' text an evaluation may produce.
const maxDKMSDirectives = 16 << 20

// EvalDKMSConf sources path under real bash with dkms's variables, as dkms does before every
// action: any bash is allowed, only the dkms.conf directives survive, values lose a trailing CR.
// A file that is not valid bash is an *InputError.
func EvalDKMSConf(ctx context.Context, path string, env DKMSEnv) (conf *DKMSConf, err error) {
	if _, err := os.Stat(path); err != nil {
		return nil, kmp.InputErrorf(path, "cannot read dkms.conf: %v", kmp.UnwrapPathError(err))
	}
	// bash -n parses without running: a syntax error is reported before anything runs, which
	// dkms itself does not do (it sources what parses and carries on). Once per content: a
	// build evaluates one dkms.conf for every kernel.
	if err := checkDKMSSyntax(ctx, path); err != nil {
		return nil, err
	}
	return evalDKMSConf(ctx, path, env)
}

// syntaxChecked holds the SHA-256 of dkms.conf contents bash -n accepted in this process.
var syntaxChecked sync.Map

func checkDKMSSyntax(ctx context.Context, path string) error {
	data, err := kmp.ReadRegularFile(path, maxDKMSConf)
	if err != nil {
		return kmp.InputErrorf(path, "cannot read dkms.conf: %v", err)
	}
	sum := sha256.Sum256(data)
	if _, ok := syntaxChecked.Load(sum); ok {
		return nil
	}
	var synErr proc.Buffer
	checkCtx, cancelCheck := context.WithTimeout(ctx, DKMSEvalTimeout)
	defer cancelCheck()
	check := proc.Command(checkCtx, "bash", "--noprofile", "--norc", "-n", path)
	check.Stderr = &synErr
	if err := proc.Run(check); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if checkCtx.Err() != nil {
			return kmp.InputErrorf(path, "checking dkms.conf's syntax did not finish within %v", DKMSEvalTimeout)
		}
		msg := strings.TrimSpace(synErr.String())
		msg = strings.TrimPrefix(msg, path+": ")
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		return kmp.InputErrorf(path, "not valid bash: %s", msg)
	}
	syntaxChecked.Store(sum, true)
	return nil
}

// maxDKMSConf bounds a dkms.conf (real ones are a few KB).
const maxDKMSConf = 1 << 20

func evalDKMSConf(ctx context.Context, path string, env DKMSEnv) (conf *DKMSConf, err error) {
	evalCtx, cancel := context.WithTimeout(ctx, DKMSEvalTimeout)
	defer cancel()
	// The directives come back on fd 3, into an unlinked temporary file rather than a pipe: a
	// background job the file started cannot hold kmpack's read open.
	outFile, err := os.CreateTemp("", "kmpack-dkms-eval-")
	if err != nil {
		return nil, err
	}
	os.Remove(outFile.Name())
	defer outFile.Close()
	cmd := proc.Command(evalCtx, "bash", "--noprofile", "--norc", "-c", templates.DKMSEval, "kmpack-dkms-eval", path)
	cmd.Dir = env.Dir
	cmd.ExtraFiles = []*os.File{outFile}
	cmd.Env = append(CleanBuildEnv(os.Environ()),
		"KMPACK_DKMS_kernelver="+env.KernelVer,
		"KMPACK_DKMS_arch="+env.Arch,
		"KMPACK_DKMS_kernel_source_dir="+env.KernelSourceDir,
		"KMPACK_DKMS_kernel_config="+env.KernelConfig,
		"KMPACK_DKMS_dkms_tree="+env.DKMSTree,
		"KMPACK_DKMS_source_tree="+env.SourceTree,
		"KMPACK_DKMS_install_tree="+env.InstallTree,
		"KMPACK_DKMS_module="+env.Module,
		"KMPACK_DKMS_module_version="+env.ModuleVersion,
		"KMPACK_DKMS_parallel_jobs="+strconv.Itoa(max(env.Jobs, 1)),
		"KMPACK_DKMS_running_distribution=kmpack",
		"KMPACK_DKMS_VARS="+strings.Join(dkmsConfVariables, " "),
	)
	// What the file prints is kept up to proc.DefaultOutputLimit; the rest is counted.
	var stderr proc.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	waitErr := proc.Run(cmd)
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	if evalCtx.Err() != nil {
		return nil, kmp.InputErrorf(path, "evaluating dkms.conf did not finish within %v", DKMSEvalTimeout)
	}
	if waitErr != nil {
		if _, _, ran := proc.ExitCode(waitErr); !ran {
			return nil, fmt.Errorf("running bash: %w", waitErr)
		}
		return nil, kmp.InputErrorf(path, "evaluating dkms.conf failed: %v: %s", waitErr, kmp.FirstLine(stderr.String()))
	}
	fi, err := outFile.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxDKMSDirectives {
		return nil, kmp.InputErrorf(path, "evaluating dkms.conf: its directives take %d bytes, more than %d", fi.Size(), maxDKMSDirectives)
	}
	var out bytes.Buffer
	if _, err := out.ReadFrom(io.NewSectionReader(outFile, 0, maxDKMSDirectives)); err != nil {
		return nil, err
	}
	conf = &DKMSConf{Path: path, Vars: map[string]map[int]string{}, Stderr: stderr.String()}
	fields := bytes.Split(out.Bytes(), []byte{0})
	for i := 0; i+2 < len(fields); i += 3 {
		name, idxs, val := string(fields[i]), string(fields[i+1]), string(fields[i+2])
		idx, err := strconv.Atoi(idxs)
		if err != nil {
			continue // an associative array: dkms's numeric loops never see it either
		}
		if conf.Vars[name] == nil {
			conf.Vars[name] = map[int]string{}
		}
		conf.Vars[name][idx] = val
	}
	return conf, nil
}

// CleanBuildEnv drops what dkms unsets at start-up (CC CXX CFLAGS CXXFLAGS LDFLAGS), kmpack's
// own KMPACK_* variables, and any
// dkms.conf directive name, so a caller's environment cannot leak into a build.
func CleanBuildEnv(env []string) []string {
	drop := map[string]bool{"CC": true, "CXX": true, "CFLAGS": true, "CXXFLAGS": true, "LDFLAGS": true,
		"MAKEFLAGS": true, "MFLAGS": true, "MAKELEVEL": true, "KCFLAGS": true,
		// The tree's architecture decides these (kmpack sets them for a cross build): an
		// ARCH=arm64 left in the caller's shell must not turn an x86_64 build into a broken one.
		"ARCH": true, "CROSS_COMPILE": true}
	for _, v := range dkmsConfVariables {
		drop[v] = true
	}
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		// Every KMPACK_* variable is kmpack's own, some secret (KMPACK_SIGN_PASSPHRASE,
		// KMPACK_PKCS11_PIN, a signer command's token): none reaches a build or a dkms.conf.
		if !drop[k] && !strings.HasPrefix(k, "KMPACK_") {
			out = append(out, kv)
		}
	}
	return out
}

// dkmsPlan turns an evaluated dkms.conf into a build plan for tree, applying read_conf's and
// read_conf_strict's rules (dkms 3.4). Problems with the file are *InputErrors naming it.
func dkmsPlan(conf *DKMSConf, tree *kernel.KernelTree, ws *Workspace) (*BuildPlan, error) {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	p := &BuildPlan{
		Name:    conf.Scalar("PACKAGE_NAME"),
		Version: conf.Scalar("PACKAGE_VERSION"),
	}
	// The evaluation's results enter kmpack here: names become paths and package fields.
	if p.Name == "" {
		bad("no PACKAGE_NAME")
	} else if err := ident.PackageName(p.Name); err != nil {
		bad("PACKAGE_NAME: %v", err)
	}
	if p.Version == "" {
		bad("no PACKAGE_VERSION")
	} else if err := ident.Version(p.Version); err != nil {
		bad("PACKAGE_VERSION: %v", err)
	}

	maxIndex := -1
	for _, v := range []string{"BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION"} {
		for _, i := range conf.Indexes(v) {
			maxIndex = max(maxIndex, i)
		}
	}
	n := maxIndex + 1
	strip0 := true
	seenBuilt, seenDest := map[string]bool{}, map[string]bool{}
	for i := 0; i < n; i++ {
		m := PlannedModule{
			BuiltName:     conf.Get("BUILT_MODULE_NAME", i),
			BuiltLocation: conf.Get("BUILT_MODULE_LOCATION", i),
			DestName:      conf.Get("DEST_MODULE_NAME", i),
			DestLocation:  conf.Get("DEST_MODULE_LOCATION", i),
			Strip:         strip0,
		}
		switch s := conf.Get("STRIP", i); {
		case strings.HasPrefix(s, "n") || strings.HasPrefix(s, "N"):
			m.Strip = false
		case strings.HasPrefix(s, "y") || strings.HasPrefix(s, "Y"):
			m.Strip = true
		}
		if i == 0 {
			strip0 = m.Strip
		}
		if m.BuiltName == "" && n == 1 {
			m.BuiltName = p.Name
		}
		if m.DestName == "" {
			m.DestName = m.BuiltName
		}
		if m.BuiltName == "" {
			bad("no BUILT_MODULE_NAME for record #%d", i)
		}
		if strings.HasSuffix(m.BuiltName, ".o") || strings.HasSuffix(m.BuiltName, ".ko") {
			bad("BUILT_MODULE_NAME[%d] %q ends in .o or .ko", i, m.BuiltName)
		}
		if strings.HasSuffix(m.DestName, ".o") || strings.HasSuffix(m.DestName, ".ko") {
			bad("DEST_MODULE_NAME[%d] %q ends in .o or .ko", i, m.DestName)
		}
		if strings.Contains(m.BuiltName, "/") || strings.Contains(m.DestName, "/") {
			bad("module name in record #%d contains a /", i)
		} else {
			for _, n := range []string{m.BuiltName, m.DestName} {
				if err := ident.ModuleName(n); err != nil && n != "" && !strings.HasSuffix(n, ".o") && !strings.HasSuffix(n, ".ko") {
					bad("module record #%d: %v", i, err)
					break
				}
			}
		}
		switch {
		case m.DestLocation == "":
			bad("no DEST_MODULE_LOCATION for record #%d", i)
		case !strings.HasPrefix(m.DestLocation, "/kernel") && !strings.HasPrefix(m.DestLocation, "/updates") &&
			!strings.HasPrefix(m.DestLocation, "/extra"):
			bad("DEST_MODULE_LOCATION[%d] %q does not begin with /kernel, /updates or /extra", i, m.DestLocation)
		case escapes(m.DestLocation):
			bad("DEST_MODULE_LOCATION[%d] %q points outside the kernel's module directory", i, m.DestLocation)
		default:
			for _, c := range strings.Split(strings.Trim(filepath.Clean(m.DestLocation), "/"), "/") {
				if err := ident.PathComponent(c); err != nil {
					bad("DEST_MODULE_LOCATION[%d]: %v", i, err)
					break
				}
			}
		}
		if escapes(m.BuiltLocation) || filepath.IsAbs(m.BuiltLocation) {
			bad("BUILT_MODULE_LOCATION[%d] %q points outside the source tree", i, m.BuiltLocation)
		}
		if key := filepath.Join(m.BuiltLocation, m.BuiltName); seenBuilt[key] && m.BuiltName != "" {
			bad("duplicate module %q in BUILT_MODULE_NAME[%d]", key, i)
		} else {
			seenBuilt[key] = true
		}
		if seenDest[m.DestName] && m.DestName != "" {
			bad("duplicate module %q in DEST_MODULE_NAME[%d]", m.DestName, i)
		} else {
			seenDest[m.DestName] = true
		}
		m.BuiltLocation = filepath.Clean("/" + m.BuiltLocation)[1:]
		m.DestLocation = filepath.Clean(m.DestLocation)
		p.Modules = append(p.Modules, m)
	}
	for _, v := range []string{"AUTOINSTALL", "BUILD_DEPENDS_REBUILD", "NO_WEAK_MODULES"} {
		switch strings.ToLower(conf.Scalar(v)) {
		case "", "yes", "no":
		default:
			bad("unsupported %s value %q (yes or no)", v, conf.Scalar(v))
		}
	}
	for _, v := range []string{"BUILD_EXCLUSIVE_KERNEL", "BUILD_EXCLUSIVE_ARCH", "MAKE_MATCH", "PATCH_MATCH"} {
		for _, i := range conf.Indexes(v) {
			if _, err := regexp.Compile(conf.Get(v, i)); err != nil && conf.Get(v, i) != "" {
				bad("%s[%d] is not a regular expression: %v", v, i, err)
			}
		}
	}

	// MAKE[0] is the default unless MAKE_MATCH[0] is set; of the rest, the last whose
	// MAKE_MATCH matches the kernel wins.
	var makeCmd string
	if conf.Get("MAKE_MATCH", 0) == "" {
		makeCmd = conf.Get("MAKE", 0)
	}
	for _, i := range conf.Indexes("MAKE") {
		if conf.Get("MAKE", i) != "" && conf.Get("MAKE_MATCH", i) != "" && matches(conf.Get("MAKE_MATCH", i), tree.Release) {
			makeCmd = conf.Get("MAKE", i)
		}
	}
	if makeCmd == "" {
		// dkms leaves these unquoted; kmpack's workspace may live under a TMPDIR with spaces.
		makeCmd = "make -C " + kmp.ShellQuote(ws.Kernel(tree)) + " M=" + kmp.ShellQuote(ws.BuildDir)
	}
	if tree.Config.Enabled("CONFIG_CC_IS_CLANG") {
		makeCmd += " LLVM=1"
	}
	p.Commands = []string{makeCmd}

	for _, i := range conf.Indexes("PATCH") {
		pf := conf.Get("PATCH", i)
		if pf == "" {
			continue
		}
		if m := conf.Get("PATCH_MATCH", i); m != "" && !matches(m, tree.Release) {
			continue
		}
		if strings.Contains("/"+pf+"/", "/../") || filepath.IsAbs(pf) {
			bad("PATCH[%d] %q points outside the source tree's patches/ directory", i, pf)
			continue
		}
		p.Patches = append(p.Patches, filepath.Join("patches", pf))
	}
	for _, hook := range []struct {
		name string
		dst  *string
	}{{"PRE_BUILD", &p.PreBuild}, {"POST_BUILD", &p.PostBuild}} {
		v := conf.Scalar(hook.name)
		if strings.TrimSpace(v) == "" {
			continue // dkms runs nothing for a blank hook either
		}
		if f := strings.Fields(v); len(f) > 0 && (filepath.IsAbs(f[0]) || escapes(f[0])) {
			bad("%s %q points outside the source tree", hook.name, v)
		}
		*hook.dst = v
	}
	for _, i := range conf.Indexes("BUILD_DEPENDS") {
		for _, d := range strings.Fields(conf.Get("BUILD_DEPENDS", i)) {
			p.BuildDepends = append(p.BuildDepends, d)
		}
	}
	for _, v := range []string{"CLEAN", "REMAKE_INITRD", "MODULES_CONF", "MODULES_CONF_OBSOLETES",
		"MODULES_CONF_ALIAS_TYPE", "MODULES_CONF_OBSOLETE_ONLY", "OBSOLETE_BY"} {
		if len(conf.Vars[v]) > 0 && !(v == "CLEAN" && isTrueCommand(conf.Scalar(v))) {
			p.Warnings = append(p.Warnings, fmt.Sprintf("%s: %s is deprecated in dkms 3 and has no effect here", conf.Path, v))
		}
	}
	if len(problems) > 0 {
		return nil, kmp.InputErrorf(conf.Path, "%s", strings.Join(problems, "; "))
	}
	if n == 0 {
		p.Warnings = append(p.Warnings, fmt.Sprintf("%s: zero modules specified", conf.Path))
	}

	// BUILD_EXCLUSIVE_*: index 0 (which is what the plain, non-array spelling sets) applies to
	// every module, index i to module i too; the kernel is skipped when no module is buildable.
	global := exclusionFromDKMS(conf, 0)
	maxFromObsolete := conf.Scalar("OBSOLETE_BY")
	hasPerModuleMax := false
	for i := 1; i < n; i++ {
		hasPerModuleMax = hasPerModuleMax || conf.Get("BUILD_EXCLUSIVE_KERNEL_MAX", i) != ""
	}
	if maxFromObsolete != "" && global.KernelMax == "" && !hasPerModuleMax {
		global.KernelMax = maxFromObsolete
	}
	hasRules := !global.empty()
	for i := range p.Modules {
		reason := global.check(tree)
		if reason == "" && i > 0 {
			own := exclusionFromDKMS(conf, i)
			hasRules = hasRules || !own.empty()
			reason = own.check(tree)
		}
		p.Modules[i].Excluded = reason
	}
	if hasRules && n > 0 {
		p.Skip = p.Modules[0].Excluded
		for _, m := range p.Modules {
			if m.Excluded == "" {
				p.Skip = ""
				break
			}
		}
	}
	return p, nil
}

func isTrueCommand(s string) bool {
	return s == "true" || s == "/bin/true" || s == "/usr/bin/true"
}

func exclusionFromDKMS(conf *DKMSConf, i int) Exclusion {
	return Exclusion{
		Kernel:    conf.Get("BUILD_EXCLUSIVE_KERNEL", i),
		KernelMin: conf.Get("BUILD_EXCLUSIVE_KERNEL_MIN", i),
		KernelMax: conf.Get("BUILD_EXCLUSIVE_KERNEL_MAX", i),
		Arch:      conf.Get("BUILD_EXCLUSIVE_ARCH", i),
		Config:    strings.Fields(conf.Get("BUILD_EXCLUSIVE_CONFIG", i)),
	}
}

// matches is bash's [[ s =~ re ]]: an unanchored POSIX ERE search. Go's RE2 syntax accepts
// the EREs dkms.conf files use; one it cannot compile matches nothing.
func matches(re, s string) bool {
	r, err := regexp.Compile(re)
	return err == nil && r.MatchString(s)
}

// escapes reports whether a relative path climbs out of the directory it is relative to.
// A leading / counts as the directory itself (DEST_MODULE_LOCATION's /updates).
func escapes(p string) bool {
	return !kmp.LexicallyInside(strings.TrimLeft(p, "/"))
}
