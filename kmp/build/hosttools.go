package build

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/proc"
	"github.com/kmpack/kmpack/kmp/source"
)

// A RHEL or SUSE devel package of another architecture ships the tree's host programs (fixdep,
// modpost, genksyms, ...) built for that architecture, and their sources beside them: RHEL's
// kernel-devel copies the build's whole scripts/ directory, SUSE's noarch kernel-devel holds
// the source tree's scripts/ and its kernel-<flavor>-devel the built programs in the -obj tree.
// kmpack rebuilds those programs for this host with the tree's own make rules, in a copy of
// the tree kept in the cache (CacheDir/hosttools/<key>/tree): the tree it was given, a
// directory of the user's or an unpacked package set, is never changed.

// hostToolsFormat changes whenever a rebuilt tree would differ for the same inputs.
const hostToolsFormat = "kmpack-hosttools-v1"

// hostToolsTimeout bounds one rebuild when the build has no --timeout (a 6.1 scripts/ builds
// in well under a minute).
const hostToolsTimeout = 15 * time.Minute

// hostToolsMakefile is the goal kmpack adds to the tree's own Makefile (read after it, so the
// top Makefile's variables and exports are all there): `scripts` builds the host programs
// of scripts/ (fixdep first), and scripts/mod (modpost) is built on its own as prepare0 does
// (since 5.x `scripts` no longer descends into it); prepare itself would regenerate the
// tree's headers, which a devel tree must keep as they are.
const hostToolsMakefile = `kmpack-host-programs: scripts
	$(Q)$(MAKE) $(build)=scripts/mod
`

// hostToolsArgs keep make from touching the tree's configuration: may-sync-config= takes the
// branch external module builds take (auto.conf is only checked to exist, never synced from
// .config), and -o marks the generated files as up to date whatever their timestamps (an
// unpacked package's files all carry the time of the unpack). SELinux's genheaders needs
// security/ headers that not every devel package has (RHEL 9's has them, SUSE's not), and a
// module build never runs it.
var hostToolsArgs = []string{"may-sync-config=", "CONFIG_SECURITY_SELINUX=",
	"-o", ".config", "-o", "include/config/auto.conf", "-o", "include/config/auto.conf.cmd",
	"-o", "include/generated/autoconf.h", "-o", "include/config/kernel.release",
	"-o", "include/generated/utsrelease.h"}

// prepareHostTools makes a tree whose host programs are built for another machine usable
// here, when it has their sources: it points t.Dir at a cached copy of the tree whose programs
// were rebuilt with this host's gcc. foreign is CheckHostTools' error for the tree, returned
// unchanged (with a word on why nothing was rebuilt) when there is nothing to rebuild from.
func prepareHostTools(ctx context.Context, t *kernel.KernelTree, opts BuildOptions, foreign error) error {
	var fe *kernel.ForeignToolError
	if !errors.As(foreign, &fe) {
		return foreign
	}
	srcDir := kernel.ToolSources(t.Dir)
	if fi, err := os.Lstat(filepath.Join(t.Dir, "scripts")); srcDir == "" || err != nil || !fi.IsDir() {
		return foreign // Debian's trees: the hint names the kbuild package to use instead
	}
	if opts.CacheDir == "" {
		return fmt.Errorf("%w (kmpack rebuilds them from the tree's scripts/ sources into its cache: give a cache directory)", foreign)
	}
	if t.Cross() && !t.Compiler.Available {
		// scripts/mod compiles a file with the kernel's compiler (devicetable-offsets.s).
		return kmp.InputErrorf(t.Dir, "its host tools are built for %s and rebuilding them needs the kernel's compiler: %s", t.Arch, t.Compiler.Missing(t.Arch))
	}
	hostcc, err := exec.LookPath("gcc")
	if err != nil {
		return kmp.InputErrorf(t.Dir, "its host tools are built for another machine and this host has no gcc to rebuild them with")
	}
	hostVer := hostCompilerVersion(hostcc, "gcc")
	args := []string{"ARCH=" + kernel.KernelArch(t.Arch), "HOSTCC=gcc"}
	if t.Cross() {
		args = append(args, "CROSS_COMPILE="+t.CrossCompile())
	}
	if t.Compiler.Available && t.Compiler.Kind == "gcc" {
		args = append(args, "CC="+t.Compiler.Command)
	}
	// The key: what the copy is made from (the tree, and a separate source tree's scripts/),
	// what builds it (this host's gcc, the make arguments) and how.
	digest, err := dirDigest(t.Dir, "")
	if err != nil {
		return fmt.Errorf("%s: reading the tree: %w", t.Dir, err)
	}
	srcKey := ""
	if srcDir != t.Dir {
		srcKey = srcDir
		d, err := dirDigest(filepath.Join(srcDir, "scripts"), "")
		if err != nil {
			return fmt.Errorf("%s: reading its sources: %w", srcDir, err)
		}
		srcKey += "\n" + d
	}
	k := sha256.Sum256([]byte(strings.Join([]string{hostToolsFormat, digest, srcKey, hostcc, hostVer, strings.Join(args, " ")}, "\n")))
	base, err := filepath.Abs(filepath.Join(opts.CacheDir, "hosttools"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return err
	}
	proc.CleanStale(base, ".rebuild-")
	final := filepath.Join(base, hex.EncodeToString(k[:16]))
	tree := filepath.Join(final, "tree")
	switch verifyHostTools(final) {
	case nil:
		t.Dir = tree
		dropHostToolsWarning(t)
		return nil
	case errNoHostTools:
	default:
		if err := os.RemoveAll(final); err != nil {
			return fmt.Errorf("replacing the altered cache entry %s: %w", final, err)
		}
	}
	work, err := proc.MkdirOwned(base, ".rebuild-")
	if err != nil {
		return err
	}
	defer work.Remove(false)
	if err := rebuildHostTools(ctx, t, opts, work.Path, srcDir, args); err != nil {
		return err
	}
	got, err := dirDigest(filepath.Join(work.Path, "tree"), "")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(work.Path, ".complete"), []byte(got+"\n"), 0o644); err != nil {
		return err
	}
	// The entry is the directory: the owned directory's lock and name go with the rename.
	if err := os.Rename(work.Path, final); err != nil && verifyHostTools(final) != nil {
		return err
	}
	t.Dir = tree
	dropHostToolsWarning(t)
	return nil
}

// rebuildHostTools copies the tree into work/tree, removes the programs built for another
// machine (and the object files they were linked from), and runs the tree's make for this
// host's programs, bounded by the build's timeout and killed with its process group.
func rebuildHostTools(ctx context.Context, t *kernel.KernelTree, opts BuildOptions, work, srcDir string, args []string) error {
	tree := filepath.Join(work, "tree")
	if out, err := exec.CommandContext(ctx, "cp", "-a", "--", t.Dir, tree).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: copying the tree to rebuild its host tools: %v: %s", t.Dir, err, strings.TrimSpace(string(out)))
	}
	if srcDir != t.Dir {
		// The copy lives elsewhere: its Makefile names the source tree by absolute path.
		mk := filepath.Join(tree, "Makefile")
		b, err := os.ReadFile(mk)
		if err != nil {
			return err
		}
		b = kernel.IncludeRE.ReplaceAll(b, []byte("${1}"+strings.ReplaceAll(srcDir, "$", "$$$$")+"/Makefile"))
		if err := os.Remove(mk); err != nil {
			return err
		}
		if err := os.WriteFile(mk, b, 0o644); err != nil {
			return err
		}
	}
	for _, sub := range []string{"scripts", "tools"} {
		if fi, err := os.Lstat(filepath.Join(tree, sub)); err != nil || !fi.IsDir() {
			continue
		}
		progs, err := kernel.ForeignPrograms(tree, sub)
		if err != nil {
			return fmt.Errorf("%s: %v", t.Dir, err)
		}
		for _, p := range progs {
			if err := os.Remove(filepath.Join(tree, p)); err != nil {
				return err
			}
		}
	}
	err := filepath.WalkDir(filepath.Join(tree, "scripts"), func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() && strings.HasSuffix(p, ".o") {
			return os.Remove(p)
		}
		return err
	})
	if err != nil {
		return err
	}
	before, err := dirDigest(tree, "scripts")
	if err != nil {
		return err
	}
	mk := filepath.Join(work, "kmpack-host-programs.mk")
	if err := os.WriteFile(mk, []byte(hostToolsMakefile), 0o644); err != nil {
		return err
	}
	timeout := hostToolsTimeout
	if opts.Timeout > 0 {
		timeout = opts.Timeout
	}
	mctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	argv := append([]string{"-C", tree, "-f", "Makefile", "-f", mk, "-j" + strconv.Itoa(max(opts.Jobs, 1))}, args...)
	argv = append(append(argv, hostToolsArgs...), "kmpack-host-programs")
	makePath, err := exec.LookPath("make")
	if err != nil {
		return kmp.InputErrorf(t.Dir, "its host tools are built for another machine and this host has no make to rebuild them with")
	}
	env := append(source.CleanBuildEnv(os.Environ()), "LC_ALL=C")
	var log *proc.Buffer
	run := func(private bool) error {
		log = &proc.Buffer{}
		if !private {
			cmd := proc.Command(mctx, makePath, argv...)
			cmd.Env = env
			cmd.Stdout, cmd.Stderr = log, log
			return proc.Run(cmd)
		}
		// As a module build's commands do, make runs in a mount namespace of its own in
		// which the tree it was given, the source tree its Makefile includes and the cache
		// are read-only, all but the copy it rebuilds in.
		plan := &mountPlan{Dir: tree, Binds: []bindMount{{Source: t.Dir, Target: t.Dir, ReadOnly: true}}}
		if srcDir != t.Dir {
			plan.Binds = append(plan.Binds, bindMount{Source: srcDir, Target: srcDir, ReadOnly: true})
		}
		base := filepath.Dir(work)
		plan.Binds = append(plan.Binds, bindMount{Source: base, Target: base, ReadOnly: true},
			bindMount{Source: work, Target: work, Writable: true})
		cmd, status, statusW, err := privateCommand(mctx, plan, nil, env, makePath, argv...)
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = log, log
		return runPrivate(cmd, status, statusW)
	}
	err = run(!opts.NoPrivateMounts)
	var pme *privateMountError
	if errors.As(err, &pme) {
		// No private mount namespaces here (the build says so once): as a build then does,
		// run without them.
		err = run(false)
	}
	if err != nil {
		why := tellingLine(log.String())
		if mctx.Err() != nil {
			why = fmt.Sprintf("did not finish within %v", timeout)
		}
		return kmp.InputErrorf(t.Dir, "rebuilding its host tools (built for %s) for this machine failed: make %s: %s", t.Arch, strings.Join(args, " "), why)
	}
	after, err := dirDigest(tree, "scripts")
	if err != nil {
		return err
	}
	if after != before {
		return kmp.InputErrorf(t.Dir, "rebuilding its host tools changed files outside scripts/ and tools/ (its make rules regenerated the tree's headers): not used")
	}
	copyTree := *t
	copyTree.Dir = tree
	if err := kernel.CheckHostTools(&copyTree); err != nil {
		return fmt.Errorf("%w (after rebuilding its scripts/ for this machine)", err)
	}
	return nil
}

// tellingLine picks the line of a failed make's log that says why: the first error a
// compiler, a tool or make itself reported.
func tellingLine(log string) string {
	var last string
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" {
			continue
		}
		last = l
		low := strings.ToLower(l)
		if strings.Contains(low, "error:") || strings.Contains(low, "not found") || strings.Contains(low, "no such file") ||
			strings.Contains(l, "No rule to make target") || strings.Contains(l, "command not found") {
			return l
		}
	}
	return last
}

var errNoHostTools = errors.New("no cache entry")

// verifyHostTools checks a cache entry: its .complete holds the digest of the rebuilt tree,
// which the tree must still have.
func verifyHostTools(final string) error {
	b, err := os.ReadFile(filepath.Join(final, ".complete"))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Lstat(final); errors.Is(serr, fs.ErrNotExist) {
			return errNoHostTools
		}
	}
	if err != nil {
		return err
	}
	got, err := dirDigest(filepath.Join(final, "tree"), "")
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(b)) != got {
		return fmt.Errorf("%s: the tree differs from what was rebuilt", final)
	}
	return nil
}

// dirDigest is a sha256 over every entry below dir (paths, types, permissions, contents, link
// targets; read through an os.Root, following no link), leaving out the top-level
// directories skip and "tools" when skip is set: what a host tools rebuild may change.
func dirDigest(dir, skip string) (string, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", err
	}
	defer root.Close()
	h := sha256.New()
	err = kmp.WalkRoot(root, func(d *os.Root, name, p string, fi fs.FileInfo) error {
		if skip != "" && (p == skip || p == "tools" || strings.HasPrefix(p, skip+"/") || strings.HasPrefix(p, "tools/")) {
			return nil
		}
		if t := fi.Mode().Type(); t != 0 && t != fs.ModeDir && t != fs.ModeSymlink {
			return fmt.Errorf("%s: %s", p, kmp.FileKind(fi.Mode()))
		}
		return kmp.HashEntryAt(h, d, name, p, fi)
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// dropHostToolsWarning removes OpenKernelTree's warning about the host tools: they now run.
func dropHostToolsWarning(t *kernel.KernelTree) {
	var keep []string
	for _, w := range t.Warnings {
		if !strings.HasPrefix(w, "host tool ") {
			keep = append(keep, w)
		}
	}
	t.Warnings = keep
}
