// Package proc runs kmpack's child processes (builds, dkms.conf evaluation, strip, the probe
// module's build) so that none outlives its purpose: each runs in a process group of its own,
// killed as a whole on cancellation, on timeout, and when the child itself exits (background
// jobs such as `sleep infinity &` die with it); Wait never blocks on pipes a straggler holds
// open; output captured in memory is bounded.
package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// WaitDelay is how long Wait waits for a killed process to exit, or for the I/O pipes of a
// process that exited to close, before giving up on them.
const WaitDelay = 5 * time.Second

// DefaultOutputLimit is how much of a child's output a Buffer keeps by default.
const DefaultOutputLimit = 1 << 20

// Command is exec.CommandContext with the process-group discipline: Setpgid, SIGKILL to the
// whole group when ctx is done, and WaitDelay. Run it with Run.
func Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd) }
	cmd.WaitDelay = WaitDelay
	return cmd
}

func killGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Run starts cmd (made by Command), waits for it, and then kills what is left of its process
// group: a child's background jobs do not survive it. The error is cmd.Wait's, except that
// exec.ErrWaitDelay (a straggler held the output pipes open) is not an error when the child
// itself exited zero.
func Run(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	return Wait(cmd)
}

// Wait is the second half of Run, for a cmd that was started with cmd.Start.
func Wait(cmd *exec.Cmd) error {
	// The group is killed as soon as the leader exits, so stragglers cannot hold pipes for
	// WaitDelay: wait for the leader with waitid(WNOWAIT) first, which leaves it a zombie
	// (its pid, and so the group id, cannot be reused until cmd.Wait reaps it).
	var info unix.Siginfo
	for unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
	}
	killGroup(cmd)
	err := cmd.Wait()
	if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil && cmd.ProcessState.Success() {
		return nil
	}
	return err
}

// ExitCode is the shell's view of how cmd ended: its exit status, or 128+N when signal N
// killed it. ok is false when err says the command did not run at all.
func ExitCode(err error) (code int, signaled bool, ok bool) {
	if err == nil {
		return 0, false, true
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return 0, false, false
	}
	if ws, isWS := ee.Sys().(syscall.WaitStatus); isWS && ws.Signaled() {
		return 128 + int(ws.Signal()), true, true
	}
	return ee.ExitCode(), false, true
}

// Buffer is an io.Writer that keeps the first Limit bytes written to it (DefaultOutputLimit
// when Limit is 0) and counts the rest. It is safe for concurrent writes (stdout and stderr).
type Buffer struct {
	Limit   int
	mu      sync.Mutex
	buf     bytes.Buffer
	dropped int64
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	limit := b.Limit
	if limit <= 0 {
		limit = DefaultOutputLimit
	}
	room := limit - b.buf.Len()
	switch {
	case room <= 0:
		b.dropped += int64(len(p))
	case len(p) > room:
		b.buf.Write(p[:room])
		b.dropped += int64(len(p) - room)
	default:
		b.buf.Write(p)
	}
	return len(p), nil
}

// String is what was kept, followed by a note when output was dropped.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped == 0 {
		return b.buf.String()
	}
	return fmt.Sprintf("%s\n[kmpack: %d more bytes of output not kept]\n", b.buf.String(), b.dropped)
}

// Truncated reports whether output was dropped.
func (b *Buffer) Truncated() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped > 0
}
