package target_test

import (
	"encoding/json"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/target"
)

// The state file and source registrations are read by a root process from a directory that
// anything running as root may have written: their parsers must reject, never crash, and
// whatever they accept must be safe to act on (autoinstall removes the files a state lists).
func FuzzParseState(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	f.Add([]byte(`{"schema":"kmpack-autoinstall-state/1","kernels":{"6.1.0-53-amd64":{"hello":{"state":"built-locally","version":"1.0","files":["/lib/modules/6.1.0-53-amd64/updates/kmpack-built/hello/hello.ko"],"log":"/var/lib/kmpack/autoinstall/builds/6.1.0-53-amd64/hello/logs/6.1.0-53-amd64.log"}}}}`))
	f.Add([]byte(`{"schema":"kmpack-autoinstall-state/1","kernels":{"k":{"m":{"state":"failed","reason":"x"}}}}`))
	f.Add([]byte(`{"schema":"kmpack-autoinstall-state/1","kernels":{"k":{"m":{"state":"built-locally","files":["/lib/modules/k/updates/kmpack-built/m/../../../../etc/shadow.ko"]}}}}`))
	f.Add([]byte(`{"schema":"kmpack-autoinstall-state/1","kernels":{"k":{"m":null}}}`))
	f.Add([]byte(`{"schema":"kmpack-autoinstall-state/1","kernels":{"6.1.0-54-amd64":{"hello":{"state":"installed-from-repo","package":"hello-modules-6.1.0-54-amd64","version":"1:1.0-1"}}}}`))
	f.Add([]byte(`{"schema":"kmpack-autoinstall-state/1","kernels":{"k":{"m":{"state":"missing","repo_package":"m-modules-k","repo_version":"1.0","repo_pending":true,"repo_reason":"waiting"}}}}`))
	f.Add([]byte(`{"schema":"kmpack-autoinstall-state/1","kernels":{"k":{"m":{"state":"failed","repo_package":"-o Dir=/","repo_reason":"a\nb"}}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "/root/state.json"
		st, err := target.ParseState(name, data)
		testenv.CheckInputError(t, name, err)
		if err != nil {
			return
		}
		// What was accepted round-trips and is accepted again.
		b, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := target.ParseState(name, b); err != nil {
			t.Fatalf("accepted state not accepted again: %v", err)
		}
	})
}

func FuzzParseSourceRecord(f *testing.F) {
	testenv.PanicsAreCrashes(f)
	f.Add([]byte(`{"name":"hello","version":"1.0","kind":"kmpack.yaml","dir":"/usr/src/hello-1.0","owned":true}`))
	f.Add([]byte(`{"name":"../x","version":"1.0","kind":"kbuild","dir":"/usr/src/../x-1.0"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "/root/var/lib/kmpack/sources/hello/1.0.json"
		rec, err := target.ParseSourceRecord(name, data)
		testenv.CheckInputError(t, name, err)
		if err == nil && (rec.Name != "hello" || rec.Version != "1.0" || rec.Dir != "/usr/src/hello-1.0") {
			t.Fatalf("accepted a record of another file: %+v", rec)
		}
	})
}
