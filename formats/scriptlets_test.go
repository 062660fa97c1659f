package formats

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Every scriptlet template quotes every value it interpolates: with values no identifier check
// would let through (quotes, command substitutions, a line break), each renders to a script
// that sh and bash parse, and running it never runs the injected command (only builtins are
// used, so it would work with PATH empty).
func TestScriptletsQuoteEveryValue(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "pwned")
	inject := "echo pwned >" + marker
	hostile := `x'y"z$(` + inject + ")`" + inject + "`;" + inject + ";\n" + inject + " # $HOME * \\"
	data := map[string]any{"Op": "post", "Why": "a reason", "NeedsInitrd": true}
	for _, k := range []string{"Kernel", "Name", "Package", "Version", "Runtime", "Binary", "Command", "Release",
		"KernelVersion", "Flavor", "UsrMerged", "Arch", "ModuleDir", "StateDir", "CertDir", "CertIDList"} {
		data[k] = hostile
	}
	data["Certs"], data["CertIDs"] = []string{hostile, hostile + "2"}, []string{hostile}
	n := 0
	for _, tmpl := range scriptTemplates.Templates() {
		name := tmpl.Name()
		if name == "scriptlets" || strings.HasSuffix(name, ".tmpl") {
			continue
		}
		n++
		var s scriptlets
		script := s.render(name, data)
		if s.err != nil {
			t.Errorf("%s: %v", name, s.err)
			continue
		}
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, shell := range []string{"sh", "bash"} {
			if out, err := exec.Command(shell, "-n", f).CombinedOutput(); err != nil {
				t.Errorf("%s -n %s: %v\n%s\n%s", shell, name, err, out, script)
			}
		}
		cmd := exec.Command("sh", f, "none")
		cmd.Dir, cmd.Env = dir, []string{"PATH=/nonexistent", "DPKG_ROOT=" + dir}
		cmd.Run()
		if _, err := os.Stat(marker); err == nil {
			t.Errorf("%s ran the injected command:\n%s", name, script)
			os.Remove(marker)
		}
	}
	if n < 15 {
		t.Errorf("checked %d scriptlets", n)
	}
	// What cannot be quoted is refused: the rendering fails, and with it the package.
	for name, bad := range map[string]map[string]any{
		"suse": {"Op": "post; " + inject},
	} {
		var s scriptlets
		s.render(name, bad)
		if s.err == nil {
			t.Errorf("%s rendered %v", name, bad)
		}
	}
}
