package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/proc"
	"github.com/kmpack/kmpack/kmp/source"
	"golang.org/x/sys/unix"
)

// Every command of a kernel's build runs in a mount namespace of its own, set up by kmpack
// itself re-executed as a small helper (privateHelperArg0): the kernel gives the namespace, the
// helper mounts the build's private copies at dkms's paths and then executes the command. Go
// cannot mount between fork and exec, and a mount namespace made by one thread of a Go
// process cannot be entered by another, hence the re-exec. The namespace, and every mount in
// it, dies with the last process in it: a killed build leaves no mount behind on the host.
//
// What a command sees (source.Workspace): its own copy of the source at
// /usr/src/<name>-<version> and its build directory at /var/lib/dkms/<name>/<version>/build,
// both writable; the rest of the host's /usr/src, /var/lib/dkms and /lib/modules read-only;
// /lib/modules/<release>/build resolving to the kernel tree it builds against, which is
// read-only. Nothing of it is visible to, or written on, the host.
const (
	privateHelperArg0 = "kmpack-private-mounts"
	privateHelperEnv  = "KMPACK_PRIVATE_MOUNTS"
	// privateHelperFailed is the helper's exit status when it could not set up the mounts
	// (it also says why on its status pipe, which tells this apart from a command's own 125).
	privateHelperFailed = 125
)

func init() {
	// The helper half: runs before main (or the test binary's TestMain) when kmpack
	// re-executes itself for a build command, and never returns.
	if len(os.Args) > 0 && os.Args[0] == privateHelperArg0 {
		if spec, ok := os.LookupEnv(privateHelperEnv); ok {
			runPrivateHelper(spec, os.Args[1:])
		}
	}
}

// mountPlan is what the helper mounts, in order, before it executes the command.
type mountPlan struct {
	// Views are read-only overlays: Stub (holding empty directories for the mount points
	// below that the host lacks) over the host's Target, mounted on Target.
	Views []overlayView `json:"views"`
	// Binds are bind mounts, recursive; read-only ones are read-only in every submount.
	Binds []bindMount `json:"binds"`
	// Dir is where the command starts (mounted paths exist only after the mounts).
	Dir string `json:"dir"`
	// StatusFD is the pipe on which the helper reports a failure (it is closed on exec).
	StatusFD int `json:"status_fd"`
}

type overlayView struct {
	Target string `json:"target"`
	Stub   string `json:"stub"`
}

type bindMount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// Writable clears read-only (a bind mount keeps its source mount's flags: a directory
	// below a read-only bind is read-only where it is bound again).
	Writable bool `json:"writable,omitempty"`
}

// runPrivateHelper sets up plan's mounts in the (new) mount namespace it runs in and executes
// argv. A failure is reported on the status pipe and ends the helper with privateHelperFailed.
func runPrivateHelper(spec string, argv []string) {
	var plan mountPlan
	status := os.Stderr
	fail := func(err error) {
		fmt.Fprintf(status, "private build mounts: %v\n", err)
		os.Exit(privateHelperFailed)
	}
	if err := json.Unmarshal([]byte(spec), &plan); err != nil {
		fail(err)
	}
	if plan.StatusFD > 2 {
		status = os.NewFile(uintptr(plan.StatusFD), "status")
		unix.CloseOnExec(plan.StatusFD)
	}
	if len(argv) == 0 {
		fail(errors.New("no command"))
	}
	if err := plan.mount(); err != nil {
		fail(err)
	}
	if err := os.Chdir(plan.Dir); err != nil {
		fail(err)
	}
	os.Unsetenv(privateHelperEnv)
	fail(syscall.Exec(argv[0], argv, os.Environ()))
}

func (p *mountPlan) mount() error {
	// The namespace starts as a copy of the host's, sharing its mount events: make it private
	// first, so that nothing mounted here appears on the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	for _, v := range p.Views {
		opts := "lowerdir=" + overlayEscape(v.Stub) + ":" + overlayEscape(v.Target)
		if err := unix.Mount("overlay", v.Target, "overlay", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
			return fmt.Errorf("overlay on %s: %w", v.Target, err)
		}
	}
	for _, b := range p.Binds {
		if err := unix.Mount(b.Source, b.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", b.Source, b.Target, err)
		}
		if b.ReadOnly {
			attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
			if err := unix.MountSetattr(unix.AT_FDCWD, b.Target, unix.AT_RECURSIVE, attr); err != nil {
				return fmt.Errorf("making %s read-only: %w", b.Target, err)
			}
		}
		if b.Writable {
			attr := &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY}
			if err := unix.MountSetattr(unix.AT_FDCWD, b.Target, 0, attr); err != nil {
				return fmt.Errorf("making %s writable: %w", b.Target, err)
			}
		}
	}
	return nil
}

// overlayEscape escapes the characters overlayfs's option parser splits on.
func overlayEscape(p string) string {
	return strings.NewReplacer(`\`, `\\`, `,`, `\,`, `:`, `\:`).Replace(p)
}

// privateMounts lays out, under ws.Root, the stubs that make ws's mount points exist, and
// returns the mounts that show the workspace's host directories at its private paths. The
// protect directories (the build cache, the output being staged) are read-only in the
// namespace, so a build cannot plant modules that a later build, or this one's signing, would
// take as kmpack's (the writable directories below them excepted); the hide files (signing
// keys, passphrase files) read as empty there.
func privateMounts(ws *source.Workspace, tree *kernel.KernelTree, protect, writable, hide []string) (*mountPlan, error) {
	plan := &mountPlan{Dir: ws.BuildDir}
	// Every mount point is a directory in a read-only view of the host directory above it;
	// when the host lacks that directory (no /var/lib/dkms without dkms), the view is of its
	// nearest existing ancestor. Views are mounted parents first.
	needs := []string{filepath.Dir(ws.SourceDir), ws.DKMSTree, source.ModulesDir}
	type stubEntry struct{ rel, link string } // a directory, or a symlink to link
	points := map[string][]stubEntry{}
	var order []string
	viewOf := func(dir string) (string, error) {
		for d := dir; ; d = filepath.Dir(d) {
			fi, err := os.Stat(d)
			if err == nil && fi.IsDir() {
				if d == "/" {
					// A read-only overlay on / would hide /proc, /dev and /tmp.
					return "", fmt.Errorf("%s: no such directory, nor any parent below /", dir)
				}
				return d, nil
			}
			if err != nil && !errors.Is(err, os.ErrNotExist) || d == "/" {
				return "", fmt.Errorf("%s: %w", dir, err)
			}
		}
	}
	for _, n := range needs {
		base, err := viewOf(n)
		if err != nil {
			return nil, err
		}
		if _, ok := points[base]; !ok {
			order = append(order, base)
			points[base] = nil
		}
	}
	// stub puts p (a directory, or a symlink to link) into the deepest view holding it.
	stub := func(p, link string) error {
		best := ""
		for _, base := range order {
			if rel, err := filepath.Rel(base, p); err == nil && kmp.LexicallyInside(rel) && len(base) > len(best) {
				best = base
			}
		}
		if best == "" {
			return fmt.Errorf("%s is under none of %v", p, order)
		}
		rel, _ := filepath.Rel(best, p)
		points[best] = append(points[best], stubEntry{rel, link})
		return nil
	}
	if err := stub(ws.SourceDir, ""); err != nil {
		return nil, err
	}
	dkmsVersionDir := filepath.Dir(ws.BuildDir)
	if err := stub(dkmsVersionDir, ""); err != nil {
		return nil, err
	}
	plan.Binds = append(plan.Binds,
		bindMount{Source: ws.HostSourceDir, Target: ws.SourceDir},
		bindMount{Source: filepath.Dir(ws.HostBuildDir), Target: dkmsVersionDir},
		// The tree is read-only where it is.
		bindMount{Source: tree.Dir, Target: tree.Dir, ReadOnly: true})
	// /lib/modules/<release>/build leads to the tree, as dkms expects: through the host's own
	// link when that is where it leads, else through a link in the view (a link, as Debian's
	// is, not a mount: a headers tree's relative links to its -common tree resolve from the
	// tree's real place).
	kbuild := filepath.Join(source.ModulesDir, tree.Release, "build")
	if real, err := filepath.EvalSymlinks(kbuild); err != nil || real != tree.Dir {
		if err := stub(kbuild, tree.Dir); err != nil {
			return nil, err
		}
	}
	for _, d := range protect {
		if d == "" {
			continue
		}
		if rel, err := filepath.Rel(d, ws.Root); err == nil && kmp.LexicallyInside(rel) {
			continue // the workspace itself lives there: the build must write it
		}
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			plan.Binds = append(plan.Binds, bindMount{Source: d, Target: d, ReadOnly: true})
		}
	}
	for _, d := range writable {
		// A directory below a protected one that the build writes (the compile cache's
		// partition of this source): bound onto itself again, writable, after the protection.
		plan.Binds = append(plan.Binds, bindMount{Source: d, Target: d, Writable: true})
	}
	if len(hide) > 0 {
		empty := filepath.Join(ws.Root, "mounts", "empty")
		if err := os.MkdirAll(filepath.Dir(empty), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(empty, nil, 0o444); err != nil {
			return nil, err
		}
		for _, f := range hide {
			if fi, err := os.Stat(f); err == nil && fi.Mode().IsRegular() {
				plan.Binds = append(plan.Binds, bindMount{Source: empty, Target: f, ReadOnly: true})
			}
		}
	}
	sort.Slice(order, func(a, b int) bool { return len(order[a]) < len(order[b]) }) // parents first
	for i, base := range order {
		dir := filepath.Join(ws.Root, "mounts", fmt.Sprint(i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		for _, e := range points[base] {
			p := filepath.Join(dir, e.rel)
			if e.link == "" {
				if err := os.MkdirAll(p, 0o755); err != nil {
					return nil, err
				}
				continue
			}
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return nil, err
			}
			if err := os.Symlink(e.link, p); err != nil {
				return nil, err
			}
		}
		plan.Views = append(plan.Views, overlayView{Target: base, Stub: dir})
	}
	return plan, nil
}

// privateCommand is command (bash -c script) run through the helper with plan's mounts, in a
// new mount namespace (and, for a user other than root, a user namespace mapping it to root,
// so that it may mount). The returned pipe reports the helper's failure, if any.
func privateCommand(ctx context.Context, plan *mountPlan, extra []*os.File, env []string, bash string, args ...string) (*exec.Cmd, *os.File, *os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	p := *plan
	p.StatusFD = 3 + len(extra)
	spec, err := json.Marshal(&p)
	if err != nil {
		r.Close()
		w.Close()
		return nil, nil, nil, err
	}
	cmd := proc.Command(ctx, "/proc/self/exe", append([]string{bash}, args...)...)
	cmd.Args[0] = privateHelperArg0
	cmd.Dir = "/"
	cmd.ExtraFiles = append(append([]*os.File{}, extra...), w)
	cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNS
	if uid, gid := os.Geteuid(), os.Getegid(); uid != 0 {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = false
	}
	cmd.Env = append(append([]string{}, env...), privateHelperEnv+"="+string(spec))
	return cmd, r, w, nil
}

// runPrivate starts cmd (from privateCommand), and waits for it; a failure of the helper
// itself comes back as an error, a command's exit as proc.Run's result.
func runPrivate(cmd *exec.Cmd, status, statusW *os.File) error {
	defer status.Close()
	err := cmd.Start()
	statusW.Close()
	if err != nil {
		return err
	}
	msg, _ := io.ReadAll(io.LimitReader(status, 4096))
	werr := proc.Wait(cmd)
	if len(msg) > 0 {
		return &privateMountError{msg: kmp.FirstLine(string(msg))}
	}
	return werr
}

type privateMountError struct{ msg string }

func (e *privateMountError) Error() string { return e.msg }

// probePrivateMounts sets up a private workspace's mounts for tree once, running nothing in
// them: the answer to whether this host gives kmpack private mount namespaces (root, or user
// namespaces; overlayfs; mount_setattr).
func probePrivateMounts(ctx context.Context, root string, tree *kernel.KernelTree) error {
	ws := source.NewPrivateWorkspace(root, tree, "kmpack-probe", "0")
	defer os.RemoveAll(root)
	for _, d := range []string{ws.HostSourceDir, ws.HostBuildDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	plan, err := privateMounts(ws, tree, nil, nil, nil)
	if err != nil {
		return err
	}
	cmd, status, w, err := privateCommand(ctx, plan, nil, os.Environ(), "/bin/sh", "-c", "test -w . && test -d "+kmp.ShellQuote(ws.KernelDir+"/"))
	if err != nil {
		return err
	}
	var out proc.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := runPrivate(cmd, status, w); err != nil {
		if m := strings.TrimSpace(out.String()); m != "" {
			return fmt.Errorf("%v: %s", err, kmp.FirstLine(m))
		}
		return err
	}
	return nil
}
