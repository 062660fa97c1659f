package target

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/proc"
)

// LoadOptions describe kmpack load (izmod's load).
type LoadOptions struct {
	Options
	// Name is the registered module package's or source's name; Kernel the release to make it
	// loadable in ("": the running kernel).
	Name, Kernel string
	// Rebuild builds the source again even where a local build exists or failed (izmod -R).
	Rebuild      bool
	BuildTimeout time.Duration
	// Sign is the signing policy of a local build (AutoinstallOptions.Sign).
	Sign string
}

// LoadResult says how the module became available and whether it was loaded.
type LoadResult struct {
	Kernel  string
	Result  *Result
	Modules []string // the kernel module names, in load order of their files
	// Loaded is false when Kernel is not the running kernel (or the root is not "/"): the
	// module is available there, for its next boot.
	Loaded bool
}

// ErrRefused is returned (wrapped) by Load when modprobe fails: the kernel refused the module
// (or modprobe could not run).
var ErrRefused = errors.New("the kernel refused the module")

// DefaultModprobeTimeout bounds modprobe (a module's init can hang).
const DefaultModprobeTimeout = 2 * time.Minute

// RunningKernel is this machine's kernel release.
func RunningKernel() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// Load makes Name loadable in the kernel by autoinstall's steps (for that module only) and,
// in the running kernel of this machine, loads it with modprobe. Errors say what to do: no
// such module registered (InputError), headers missing or the build failed (ErrFailures, with
// the reason and log), the kernel refused it (its modprobe and kernel-log lines).
func Load(ctx context.Context, o LoadOptions) (*LoadResult, error) {
	running, err := RunningKernel()
	if err != nil {
		return nil, err
	}
	k := o.Kernel
	if k == "" {
		k = running
	}
	if err := ident.KernelRelease(k); err != nil {
		return nil, kmp.InputErrorf(k, "%v", err)
	}
	st, err := Autoinstall(ctx, AutoinstallOptions{Options: o.Options, Kernels: []string{k}, Only: o.Name, Rebuild: o.Rebuild,
		BuildTimeout: o.BuildTimeout, Sign: o.Sign})
	if err != nil && !errors.Is(err, ErrFailures) {
		return nil, err
	}
	res := st.get(k, o.Name)
	if res == nil {
		return nil, fmt.Errorf("%s: autoinstall recorded nothing for %s", o.Name, k)
	}
	lr := &LoadResult{Kernel: k, Result: res}
	switch res.State {
	case StateSkipped:
		return lr, fmt.Errorf("%w: %s is not for %s: %s", ErrFailures, o.Name, k, res.Reason)
	case StateFailed:
		log := ""
		if res.Log != "" {
			log = " (log: " + res.Log + ")"
		}
		return lr, fmt.Errorf("%w: %s in %s: %s%s", ErrFailures, o.Name, k, res.Reason, log)
	}
	if lr.Modules, err = o.moduleNames(k, res); err != nil {
		return lr, err
	}
	if o.root() != "/" || k != running {
		return lr, nil
	}
	lr.Loaded = true
	return lr, modprobe(ctx, lr.Modules)
}

// moduleNames are the kernel modules that serve Name in k: the files autoinstall built, the
// package's own, or those of the package linked from another kernel.
func (o *LoadOptions) moduleNames(k string, res *Result) ([]string, error) {
	files := res.Files
	if res.State != StateBuiltLocally {
		kmps, err := o.engine().Registrations()
		if err != nil {
			return nil, err
		}
		for _, kp := range kmps {
			if kp.Package == res.Package {
				files = kp.Modules
			}
		}
	}
	var names []string
	for _, f := range files {
		n := module.ModuleNameFromPath(path.Base(f))
		if err := ident.ModuleName(n); err != nil {
			return nil, kmp.InputErrorf(f, "%v", err)
		}
		names = append(names, n)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s: no module files known for %s", o.Name, k)
	}
	return names, nil
}

// modprobe loads the modules (and what they depend on) into the running kernel. When the
// kernel refuses one, the error carries modprobe's words and what the kernel logged meanwhile
// (its reason: an unknown symbol, a rejected key), whatever name the module calls itself.
func modprobe(ctx context.Context, names []string) error {
	klog := openKernelLog()
	defer klog.close()
	ctx, cancel := context.WithTimeout(ctx, DefaultModprobeTimeout)
	defer cancel()
	bin, err := modprobePath()
	if err != nil {
		return fmt.Errorf("%w (%s): %v", ErrRefused, strings.Join(names, " "), err)
	}
	cmd := proc.Command(ctx, bin, append([]string{"-a", "--"}, names...)...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	kernelSays := ""
	if lines := klog.newLines(); len(lines) > 0 {
		kernelSays = "; kernel: " + strings.Join(lines, "; ")
	}
	return fmt.Errorf("%w (%s): modprobe: %v: %s%s", ErrRefused, strings.Join(names, " "), err, kmp.OneLine(strings.TrimSpace(string(out))), kernelSays)
}

// modprobePaths are where systems keep modprobe (kmod's, or busybox's in an initramfs): kmpack
// runs as root, so it takes the system's own from a fixed place, never from $PATH.
var modprobePaths = []string{"/usr/sbin/modprobe", "/sbin/modprobe", "/usr/bin/modprobe", "/bin/modprobe"}

func modprobePath() (string, error) {
	for _, p := range modprobePaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("no modprobe in %s", strings.Join(modprobePaths, ", "))
}

// kernelLog reads the kernel log's records from where it was opened, without waiting. The
// descriptor is used with raw system calls: through an *os.File, Go's poller would wait for
// more log instead of returning at its end.
type kernelLog struct{ fd int }

func openKernelLog() *kernelLog {
	fd, err := syscall.Open("/dev/kmsg", syscall.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return &kernelLog{fd: -1}
	}
	if _, err := syscall.Seek(fd, 0, 2); err != nil { // SEEK_END: only what comes next
		syscall.Close(fd)
		return &kernelLog{fd: -1}
	}
	return &kernelLog{fd: fd}
}

func (l *kernelLog) close() {
	if l.fd >= 0 {
		syscall.Close(l.fd)
	}
}

// newLines are the texts of the records logged since open, the last 8 at most.
func (l *kernelLog) newLines() []string {
	if l.fd < 0 {
		return nil
	}
	var lines []string
	buf := make([]byte, 8192)
	for n := 0; n < 10_000; n++ {
		c, err := syscall.Read(l.fd, buf)
		if errors.Is(err, syscall.EPIPE) {
			continue // records overwritten while reading: go on with the next
		}
		if err != nil || c <= 0 {
			break // EAGAIN: the end of the log
		}
		_, text, _ := strings.Cut(string(buf[:c]), ";")
		if text = strings.TrimSpace(strings.SplitN(text, "\n", 2)[0]); text != "" {
			lines = append(lines, kmp.OneLine(text))
		}
	}
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return lines
}
