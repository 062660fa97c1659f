package source_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/source"
)

// FuzzDKMSEvalOutput feeds arbitrary bytes as what the bash harness prints on fd 3 (NAME NUL
// INDEX NUL VALUE NUL triples), through EvalDKMSConf with a dkms.conf that copies them there.
// Invariant: no panic; the result holds exactly the last value of every triple with a numeric
// index, and nothing else.
func FuzzDKMSEvalOutput(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	if _, err := exec.LookPath("bash"); err != nil {
		f.Skip("no bash")
	}
	f.Add([]byte("PACKAGE_NAME\x000\x00foo\x00BUILT_MODULE_NAME\x003\x00bar\r\x00MAKE\x00x\x00y\x00"))
	f.Add([]byte("A\x00-1\x00\x00A\x00+1\x00v\x00A\x001\x00w\x00trailing\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out")
		os.WriteFile(out, data, 0o644)
		conf := filepath.Join(dir, "dkms.conf")
		os.WriteFile(conf, []byte("cat '"+out+"' >&3\nexit 0\n"), 0o644)
		c, err := source.EvalDKMSConf(context.Background(), conf, source.DKMSEnv{Dir: dir})
		if err != nil {
			t.Fatalf("evaluating a dkms.conf that only prints: %v", err)
		}
		want := map[string]map[int]string{}
		fields := bytes.Split(data, []byte{0})
		for i := 0; i+2 < len(fields); i += 3 {
			idx, err := strconv.Atoi(string(fields[i+1]))
			if err != nil {
				continue
			}
			name := string(fields[i])
			if want[name] == nil {
				want[name] = map[int]string{}
			}
			want[name][idx] = string(fields[i+2])
		}
		if !reflect.DeepEqual(c.Vars, want) {
			t.Fatalf("got %v, want %v", c.Vars, want)
		}
		for name := range c.Vars {
			idx := c.Indexes(name)
			for i, n := range idx {
				if i > 0 && idx[i-1] >= n {
					t.Fatalf("Indexes(%q) = %v", name, idx)
				}
				_ = c.Get(name, n)
			}
		}
	})
}

// FuzzParseSpec: kmpack.yaml. Invariant: no panic; an accepted spec has a name and version and
// reads back unchanged from what WriteSpec writes.
func FuzzParseSpec(f *testing.F) {
	testenv.PanicsAreCrashes(f)
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
		var b bytes.Buffer
		if err := source.WriteSpec(&b, s); err != nil {
			t.Fatalf("WriteSpec: %v", err)
		}
		again, err := source.ParseSpec("kmpack.yaml", b.Bytes())
		if err != nil {
			t.Fatalf("written spec does not read back: %v\n%s", err, b.String())
		}
		// Compared as JSON (every field, nil and empty lists alike: "kernels: [null]" reads
		// as an empty list, which WriteSpec omits) and as the text WriteSpec writes again.
		j1, _ := json.Marshal(s)
		j2, _ := json.Marshal(again)
		var b2 bytes.Buffer
		source.WriteSpec(&b2, again)
		if !bytes.Equal(j1, j2) || !bytes.Equal(b.Bytes(), b2.Bytes()) {
			t.Fatalf("round trip changed the spec:\n%s\n%s", j1, j2)
		}
	})
}
