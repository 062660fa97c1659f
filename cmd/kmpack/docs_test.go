package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestManPage renders the page with man itself (man-db's groff), which must not warn, and
// checks that every command is documented and nothing machine-specific is in it.
func TestManPage(t *testing.T) {
	page, err := manPage(newApp())
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "kmpack.1")
	os.WriteFile(p, []byte(page), 0o644)
	cmd := exec.Command("man", "--warnings", "-l", p)
	cmd.Env = append(os.Environ(), "MANWIDTH=100")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("man -l: %v %s", err, stderr.String())
	}
	// Headings come as overstrike (x\bx) when man writes to a pipe: keep the last of each pair.
	text := regexp.MustCompile(".\x08").ReplaceAllString(string(out), "")
	for _, c := range newApp().Commands {
		if !strings.Contains(text, c.Name) {
			t.Errorf("command %s is not in the page", c.Name)
		}
	}
	home, _ := os.UserHomeDir()
	if strings.Contains(page, home+"/") || !strings.Contains(text, "~/.cache/kmpack") {
		t.Errorf("the page has a machine-specific default or lacks the described one")
	}
}

// TestBashCompletion loads the script into a real bash and asks it to complete, as bash does
// on TAB, against the kmpack binary built from this tree.
func TestBashCompletion(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "kmpack")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	script, err := completion(newApp(), "bash")
	if err != nil {
		t.Fatal(err)
	}
	sp := filepath.Join(t.TempDir(), "kmpack.bash")
	os.WriteFile(sp, []byte(script), 0o644)
	for words, want := range map[string]string{"bu": "build", "weak-updates add-k": "add-kernel add-kmp", "build --no-c": "--no-cache"} {
		cmd := exec.Command("bash", "-c", `source "$1"; COMP_WORDS=(kmpack $2); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _kmpack_complete; echo "${COMPREPLY[*]}"`, "-", sp, words)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", words, err)
		}
		got := strings.Fields(string(out))
		sort.Strings(got)
		if strings.Join(got, " ") != want {
			t.Errorf("completing %q: got %q, want %q", words, got, want)
		}
	}
	if _, err := completion(newApp(), "tcsh"); err == nil {
		t.Error("unknown shell accepted")
	}
}
