package testenv

import (
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp"
)

// CheckInputError checks what every parser of untrusted bytes promises: an error is an *InputError on one
// line naming the input, and it never comes from a recovered panic.
func CheckInputError(t *testing.T, name string, err error) {
	if err == nil {
		return
	}
	msg := err.Error()
	if strings.Contains(msg, "parser failed") {
		t.Fatalf("panic in parser: %s", msg)
	}
	if !kmp.IsInputError(err) || !strings.HasPrefix(msg, name+": ") || strings.Contains(msg, "\n") {
		t.Fatalf("not a one-line input error naming %s: %q", name, msg)
	}
}

// PanicsAreCrashes makes kmp.Guard re-panic in this test process and in the fuzzing workers (which
// run the Fuzz function again), so a parser indexing out of bounds is a crash the fuzzer records
// with its stack, not an error it would accept as a rejected input.
func PanicsAreCrashes(f *testing.F) {
	f.Setenv("KMPACK_PANIC", "1")
}

// Truncate shortens s for a failure message.
func Truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
