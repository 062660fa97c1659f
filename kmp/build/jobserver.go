package build

import (
	"context"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// jobServer is a GNU make jobserver shared by every make that kmpack starts, so that builds for
// many kernels run under one job budget: n tokens in total, each running kernel build holding
// one (its make's implicit slot) and its makes taking the rest for parallel jobs.
type jobServer struct {
	r, w *os.File
	n    int
	ctx  context.Context
	stop func() bool
}

// newJobServer makes a jobserver of n tokens (at most MaxJobs: they must fit in the pipe).
// When ctx is done, acquire fails instead of waiting for a token.
func newJobServer(ctx context.Context, n int) (*jobServer, error) {
	if n < 1 || n > MaxJobs {
		return nil, fmt.Errorf("jobserver: %d jobs (1 to %d)", n, MaxJobs)
	}
	var fds [2]int
	// A blocking pipe: make 4.3 reads tokens with blocking reads and fails on EAGAIN, so the
	// pipe must not be O_NONBLOCK (which os.Pipe would make it for Go's poller).
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC); err != nil {
		return nil, err
	}
	js := &jobServer{r: os.NewFile(uintptr(fds[0]), "jobserver-r"), w: os.NewFile(uintptr(fds[1]), "jobserver-w"), n: n}
	tokens := make([]byte, n)
	for i := range tokens {
		tokens[i] = '+'
	}
	if _, err := js.w.Write(tokens); err != nil {
		js.r.Close()
		js.w.Close()
		return nil, err
	}
	js.ctx = ctx
	// A blocked read cannot watch ctx: on cancellation, wake every waiter with spare tokens
	// (acquire then sees ctx done and fails).
	js.stop = context.AfterFunc(ctx, func() { js.w.Write(tokens) })
	return js, nil
}

// acquire blocks until a token is free and returns it. make 4.3 switches the (shared) read
// side to O_NONBLOCK once it runs, so a read can find the pipe empty: wait with poll then.
func (js *jobServer) acquire() (byte, error) {
	var b [1]byte
	fd := int(js.r.Fd())
	for {
		n, err := unix.Read(fd, b[:])
		switch {
		case n == 1:
			if err := js.ctx.Err(); err != nil {
				js.release(b[0])
				return 0, context.Cause(js.ctx)
			}
			return b[0], nil
		case err == unix.EAGAIN:
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
				return 0, fmt.Errorf("jobserver: %w", err)
			}
		case err == unix.EINTR:
		case err != nil:
			return 0, fmt.Errorf("jobserver: %w", err)
		default:
			return 0, fmt.Errorf("jobserver: pipe closed")
		}
	}
}

func (js *jobServer) release(t byte) { js.w.Write([]byte{t}) }

// makeflags is what a child sees in MAKEFLAGS: the jobserver on fds 3 and 4 (the first two
// ExtraFiles), in the form make 4.3 passes to its own sub-makes.
func (js *jobServer) makeflags() string {
	return fmt.Sprintf("-j%d --jobserver-auth=3,4", js.n)
}

func (js *jobServer) files() []*os.File { return []*os.File{js.r, js.w} }

func (js *jobServer) close() {
	js.stop()
	js.r.Close()
	js.w.Close()
}
