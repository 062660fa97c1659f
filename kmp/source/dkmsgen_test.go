package source_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/source"
)

// symlinkSource makes a kmpack.yaml source in a fresh directory with the given symlinks
// (name -> target) and patch files, next to a 0600 secret outside the source.
func symlinkSource(t *testing.T, links [][2]string, patches ...string) (dir, secret string) {
	t.Helper()
	top := t.TempDir()
	secret = filepath.Join(top, "secret")
	if err := os.WriteFile(secret, []byte("host secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(top, "src")
	if err := os.MkdirAll(filepath.Join(dir, "a/b/c"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := "name: linktest\nversion: '1.0'\nmodules:\n  - name: linktest\n"
	if len(patches) > 0 {
		spec += "patches:\n"
		for _, p := range patches {
			spec += "  - file: " + p + "\n"
		}
	}
	for name, body := range map[string]string{"kmpack.yaml": spec, "Kbuild": "obj-m := linktest.o\n", "linktest.c": "", "a/b/c/file.h": ""} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range links {
		if err := os.Symlink(l[1], filepath.Join(dir, l[0])); err != nil {
			t.Fatal(err)
		}
	}
	return dir, secret
}

// A symlink chain that only leaves the source when followed (a/b/c/x -> ../.. is harmless on
// its own; p.patch -> a/b/c/x/../../secret looks inside when read as text) is refused with one
// line naming the link, whether it is shipped as a file of the source or read as a patch.
func TestSourceFilesRefuseEscapingSymlinkChains(t *testing.T) {
	for _, c := range []struct {
		name    string
		links   [][2]string
		patches []string
		want    string
	}{
		{"chain through a patch", [][2]string{{"a/b/c/x", "../.."}, {"p.patch", "a/b/c/x/../../secret"}}, []string{"p.patch"}, "p.patch: symlink to \"a/b/c/x/../../secret\" leads outside the source tree"},
		{"chain as a source file", [][2]string{{"a/b/c/x", "../.."}, {"notes", "a/b/c/x/../../secret"}}, nil, "notes: symlink to \"a/b/c/x/../../secret\" leads outside the source tree"},
		{"absolute", [][2]string{{"abs", "/etc/passwd"}}, nil, "abs: symlink to \"/etc/passwd\" leads outside the source tree"},
		{"dangling", [][2]string{{"gone", "nothing/here"}}, nil, "gone: symlink to \"nothing/here\" leads to nothing, which does not exist"},
		{"loop", [][2]string{{"l1", "l2"}, {"l2", "l1"}}, nil, "is a loop"},
		{"into .git", [][2]string{{"head", ".git/HEAD"}}, nil, "leads to .git/HEAD, which the source package does not ship"},
		{"empty directory", [][2]string{{"e", "a/empty"}}, nil, "leads to a/empty, which the source package does not ship"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, _ := symlinkSource(t, c.links, c.patches...)
			os.Mkdir(filepath.Join(dir, "a/empty"), 0o755)
			if c.name == "into .git" {
				os.Mkdir(filepath.Join(dir, ".git"), 0o755)
				os.WriteFile(filepath.Join(dir, ".git/HEAD"), []byte("ref"), 0o644)
			}
			src, err := source.OpenSource(dir)
			if err != nil {
				t.Fatal(err)
			}
			files, _, err := src.Files()
			if err == nil || !kmp.IsInputError(err) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Files() = %d files, %v; want a one-line input error with %q", len(files), err, c.want)
			}
		})
	}
	// DKMSConfFromSpec reads patches outside patches/ itself: through the root as well.
	dir, _ := symlinkSource(t, [][2]string{{"a/b/c/x", "../.."}, {"p.patch", "a/b/c/x/../../secret"}}, "p.patch")
	spec, err := source.ReadSpec(filepath.Join(dir, "kmpack.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if conf, extra, err := source.DKMSConfFromSpec(spec); err == nil || !kmp.IsInputError(err) {
		t.Fatalf("DKMSConfFromSpec read an escaping patch: %d files %v\n%s", len(extra), err, conf)
	}
}

// Symlinks that resolve inside the source ship as symlinks, with the target rewritten to the
// resolved path: self -> . is not a loop, a chain through a directory link points where it
// pointed, and a link to a link ends at the file.
func TestSourceFilesShipInSourceSymlinks(t *testing.T) {
	dir, _ := symlinkSource(t, [][2]string{{"self", "."}, {"a/b/c/x", "../.."}, {"inc", "a/b/c/x/b/c"},
		{"hdr", "inc/file.h"}, {"a/b/c/hdr2", "../../../hdr"}}, "a/b/c/x/b/c/file.h")
	src, err := source.OpenSource(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, _, err := src.Files()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range files {
		if f.Link {
			got[f.Path] = f.Target
		}
	}
	want := map[string]string{"self": ".", "a/b/c/x": "../..", "inc": "a/b/c", "hdr": "a/b/c/file.h", "a/b/c/hdr2": "file.h"}
	if len(got) != len(want) {
		t.Errorf("links %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s -> %q, want %q", k, got[k], v)
		}
	}
}

// kmpack.yaml's pre-build and post-build commands run with bash in kmpack; in the dkms.conf
// generated for the -dkms package they become #!/bin/bash scripts that the real dkms runs with
// the same variables set.
func TestHookScriptsRunUnderDKMS(t *testing.T) {
	testenv.Need(t, "dkms")
	top := t.TempDir()
	dir := filepath.Join(top, "src")
	testenv.CopyTree(t, testenv.TestModuleSource(t, "hello"), dir)
	hook := func(name string) string {
		return `[[ -n $BASH_VERSION ]] && echo "$kernelver|$arch|$module|$module_version|$kernel_source_dir|${build_dir##*/}|$dkms_tree|${jobs//[0-9]/}" > "$dkms_tree/` + name + `.out"`
	}
	f, err := os.OpenFile(filepath.Join(dir, "kmpack.yaml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "build:\n  pre-build: %s\n  post-build: %s\n", strconv.Quote(hook("pre")), strconv.Quote(hook("post")))
	f.Close()
	src, err := source.OpenSource(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, conf, err := src.Files()
	if err != nil {
		t.Fatal(err)
	}
	srcTree := filepath.Join(top, "usr-src")
	root := filepath.Join(srcTree, "kmpack-hello-1.0")
	for _, sf := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(root, sf.Path)), 0o755)
		if err := os.WriteFile(filepath.Join(root, sf.Path), sf.Body, os.FileMode(sf.Mode)); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(sf.Path, "kmpack-") && strings.HasSuffix(sf.Path, ".sh") && !strings.HasPrefix(string(sf.Body), "#!/bin/bash\n") {
			t.Errorf("%s:\n%s", sf.Path, sf.Body)
		}
	}
	os.WriteFile(filepath.Join(root, "dkms.conf"), conf, 0o644)
	dkmsTree := filepath.Join(top, "dkms")
	os.MkdirAll(dkmsTree, 0o755)
	out, err := exec.Command("dkms", "build", "--dkmstree", dkmsTree, "--sourcetree", srcTree,
		"-m", "kmpack-hello", "-v", "1.0", "-k", testenv.Release53).CombinedOutput()
	if err != nil {
		t.Fatalf("dkms build: %v\n%s\ndkms.conf:\n%s", err, out, conf)
	}
	for _, name := range []string{"pre", "post"} {
		got, err := os.ReadFile(filepath.Join(dkmsTree, name+".out"))
		want := testenv.Release53 + "|x86_64|kmpack-hello|1.0|/lib/modules/" + testenv.Release53 + "/build|build|" + dkmsTree + "|\n"
		if err != nil || string(got) != want {
			t.Errorf("%s-build hook wrote %q (%v), want %q\n%s", name, got, err, want, out)
		}
	}
}
