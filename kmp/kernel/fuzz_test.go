package kernel_test

import (
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
)

// checkErr is what every parser of untrusted bytes promises: an error is an *InputError on one
// line naming the input, and it never comes from a recovered panic.
func checkErr(t *testing.T, name string, err error) {
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

func FuzzParseKernelConfig(f *testing.F) {
	f.Add([]byte("CONFIG_MODVERSIONS=y\n# CONFIG_X is not set\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian) 12.2.0\"\nCONFIG_GCC_VERSION=120200\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := kernel.ParseKernelConfig("fuzz.config", data)
		checkErr(t, "fuzz.config", err)
		if err == nil {
			_ = cfg.ModuleCompression()
			_ = cfg.Arch()
		}
	})
}
