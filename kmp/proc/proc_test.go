package proc_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmpack/kmpack/kmp/proc"
)

func alive(t *testing.T, marker string) string {
	t.Helper()
	time.Sleep(100 * time.Millisecond)
	out, _ := exec.Command("pgrep", "-f", marker).Output()
	return strings.TrimSpace(string(out))
}

// A child that leaves a background job holding its output pipe: Run returns when the child
// exits, and the job dies with it.
func TestRunDoesNotWaitForBackgroundJobs(t *testing.T) {
	marker := "proc-test-bg-" + strconv.Itoa(os.Getpid())
	var out proc.Buffer
	cmd := proc.Command(context.Background(), "bash", "-c", "bash -c 'sleep 300; true' "+marker+" & echo started")
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := proc.Run(cmd); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("Run took %v", el)
	}
	if !strings.Contains(out.String(), "started") {
		t.Errorf("output %q", out.String())
	}
	if p := alive(t, marker); p != "" {
		t.Errorf("background job survived: %s", p)
	}
}

// Cancellation and timeouts kill the whole process group, grandchildren included.
func TestCancelKillsTheGroup(t *testing.T) {
	marker := "proc-test-cancel-" + strconv.Itoa(os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	cmd := proc.Command(ctx, "bash", "-c", "bash -c 'sleep 300; true' "+marker+"; true")
	start := time.Now()
	err := proc.Run(cmd)
	if err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("timed-out Run: %v after %v", err, time.Since(start))
	}
	if code, signaled, ok := proc.ExitCode(err); !ok || !signaled || code != 128+9 {
		t.Errorf("ExitCode: %d %v %v", code, signaled, ok)
	}
	if p := alive(t, marker); p != "" {
		t.Errorf("grandchild survived: %s", p)
	}
}

// Captured output is bounded: 200 MB written keeps 1 MiB and a note.
func TestBufferIsBounded(t *testing.T) {
	var b proc.Buffer
	cmd := proc.Command(context.Background(), "head", "-c", "200000000", "/dev/zero")
	cmd.Stdout = &b
	if err := proc.Run(cmd); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	if len(s) > proc.DefaultOutputLimit+200 || !strings.Contains(s, strconv.Itoa(200000000-proc.DefaultOutputLimit)+" more bytes of output not kept") || !b.Truncated() {
		t.Errorf("kept %d bytes, tail %q", len(s), s[len(s)-80:])
	}
}

// CleanStale removes a dead owner's directory and kills its tagged processes; a live owner's
// directory (its flock held) stays.
func TestCleanStale(t *testing.T) {
	parent := t.TempDir()
	live, err := proc.MkdirOwned(parent, "x-")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Remove(false)
	dead := exec.Command("true")
	dead.Run()
	stale := filepath.Join(parent, "x-"+strconv.Itoa(dead.Process.Pid)+"-1")
	os.Mkdir(stale, 0o755)
	orphan := exec.Command("sleep", "300")
	orphan.Env = append(os.Environ(), proc.OwnerEnv+"="+stale)
	orphan.Start()
	done := make(chan struct{})
	go func() { orphan.Wait(); close(done) }()
	removed := proc.CleanStale(parent, "x-")
	if len(removed) != 1 || removed[0] != stale {
		t.Errorf("removed %v", removed)
	}
	if _, err := os.Stat(live.Path); err != nil {
		t.Error("a live owner's directory was removed")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		orphan.Process.Kill()
		t.Error("the stale directory's process was not killed")
	}
}
