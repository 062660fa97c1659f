package kmp_test

import (
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp"
)

func parse(path string) (err error) {
	defer kmp.Guard(path, &err)
	var b []byte
	_ = b[len(path)] // out of range: a parser bug on hostile input
	return nil
}

// TestGuard: deferred directly, Guard turns a parser's panic into a one-line InputError naming
// the file; with KMPACK_PANIC set it lets the panic through, as the fuzz targets need.
func TestGuard(t *testing.T) {
	err := parse("x.ko")
	if !kmp.IsInputError(err) || !strings.HasPrefix(err.Error(), "x.ko: malformed input (parser failed: ") {
		t.Fatalf("got %v", err)
	}
	t.Setenv("KMPACK_PANIC", "1")
	defer func() {
		if recover() == nil {
			t.Error("KMPACK_PANIC=1: the panic was swallowed")
		}
	}()
	parse("x.ko")
}
