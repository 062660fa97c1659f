package kernel_test

import (
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/kernel"
)

// FuzzParseKernelConfig: .config text. Invariant: no panic; every accepted key is a CONFIG_
// name without '='; the config written back (values quoted) parses to the same map.
func FuzzParseKernelConfig(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	f.Add([]byte("CONFIG_MODVERSIONS=y\n# CONFIG_X is not set\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian) 12.2.0\"\nCONFIG_GCC_VERSION=120200\n"))
	f.Add([]byte("CONFIG_A=\"q\\\"x\\n\"\n  CONFIG_B = m \r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := kernel.ParseKernelConfig("fuzz.config", data)
		testenv.CheckInputError(t, "fuzz.config", err)
		if err != nil {
			return
		}
		_ = cfg.ModuleCompression()
		_ = cfg.Arch()
		var b strings.Builder
		for k, v := range cfg {
			if !strings.HasPrefix(k, "CONFIG_") || strings.Contains(k, "=") {
				t.Fatalf("accepted key %q", k)
			}
			b.WriteString(k + "=" + strconv.Quote(v) + "\n")
		}
		again, err := kernel.ParseKernelConfig("again", []byte(b.String()))
		if err != nil || !reflect.DeepEqual(map[string]string(again), map[string]string(cfg)) {
			t.Fatalf("written back config reads as %v (%v), want %v", again, err, cfg)
		}
	})
}
