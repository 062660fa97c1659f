package source_test

import (
	"strings"
	"testing"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/source"
)

func FuzzParseSpec(f *testing.F) {
	f.Add([]byte(readmeSpec))
	f.Add([]byte("name: a\nversion: '1'\n"))
	f.Add([]byte("name: a\nversion: 1\nmodules: [{name: m, build-exclusive: {config: [CONFIG_X]}}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := source.ParseSpec("kmpack.yaml", data)
		if err != nil {
			if !kmp.IsInputError(err) || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "parser failed") {
				t.Fatalf("bad error: %q", err)
			}
			return
		}
		if s.Name == "" || s.Version == "" {
			t.Fatalf("accepted a spec without name or version: %+v", s)
		}
	})
}
