package build_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/sign"
)

// ccacheStats runs ccache --print-stats (or -z with zero) on a compile cache partition, as
// kmpack's builds configure it.
func ccacheStats(t *testing.T, dir string, zero bool) map[string]int {
	t.Helper()
	arg := "--print-stats"
	if zero {
		arg = "--zero-stats"
	}
	cmd := exec.Command("ccache", arg)
	cmd.Env = append(os.Environ(), "CCACHE_DIR="+dir, "CCACHE_CONFIGPATH=/dev/null")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ccache %s: %v", arg, err)
	}
	stats := map[string]int{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "\t"); ok {
			stats[k], _ = strconv.Atoi(v)
		}
	}
	return stats
}

// builtModules maps each kernel's module files (modules/<release>/<file>) to their bytes.
func builtModules(t *testing.T, out string, m *manifest.Manifest) map[string][]byte {
	t.Helper()
	mods := map[string][]byte{}
	for _, k := range m.Kernels {
		if k.Status != manifest.StatusBuilt || len(k.Modules) == 0 {
			t.Fatalf("%s: %s %s\n%s", k.Release, k.Status, k.Reason, strings.Join(k.LogTail, "\n"))
		}
		for _, bm := range k.Modules {
			mods[bm.File] = testenv.MustRead(t, filepath.Join(out, bm.File))
		}
	}
	return mods
}

// Compile reuse (--compile-cache): a corpus source (gost-crypto: six modules from eight C
// files) built for two kernels without it, then with a cold compile cache one kernel after
// the other, then for the first kernel again. The modules, unstripped (DWARF and the
// build-id over it included), are the same bytes with and without reuse, and so are the
// build cache's keys. The second kernel reuses only Kbuild's compiler probes (hits > 0): its
// compiles name its own tree's paths, which its objects' DWARF holds. The rebuild for the
// first kernel compiles nothing: every compile is a hit. About 60 s on two CPUs (five builds).
func TestBuildCompileCacheByteIdentical(t *testing.T) {
	testenv.Need(t, "ccache", "make", "gcc-12")
	trees := testenv.KernelTrees(t, testenv.Release53, testenv.Release54)
	srcDir := testenv.CorpusSource(t, "gost-crypto-dkms", t.TempDir())
	refOut := filepath.Join(t.TempDir(), "ref")
	ref, err := runBuild(t, srcDir, trees, build.BuildOptions{OutputDir: refOut, NoStrip: true})
	if err != nil {
		t.Fatal(err)
	}
	want := builtModules(t, refOut, ref)
	keys := map[string]string{}
	for _, k := range ref.Kernels {
		keys[k.Release] = k.CacheKey
	}

	cc := filepath.Join(t.TempDir(), "ccache")
	part := build.CompileCachePartition(cc, "gost-crypto")
	check := func(what string, i int) map[string]int {
		t.Helper()
		out := filepath.Join(t.TempDir(), "out")
		m, err := runBuild(t, srcDir, trees[i:i+1], build.BuildOptions{OutputDir: out, NoStrip: true, CompileCache: cc})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		k := m.Kernels[0]
		got := builtModules(t, out, m)
		n := 0
		for f, b := range want {
			if !strings.HasPrefix(f, "modules/"+k.Release+"/") {
				continue
			}
			n++
			if !bytes.Equal(got[f], b) {
				t.Errorf("%s: %s differs from the build without compile reuse", what, f)
			}
		}
		if n != 6 || len(got) != n {
			t.Errorf("%s: %d modules, %d without compile reuse", what, len(got), n)
		}
		if k.CacheKey != keys[k.Release] {
			t.Errorf("%s: cache key %s, %s without compile reuse", what, k.CacheKey, keys[k.Release])
		}
		if log := testenv.MustRead(t, filepath.Join(out, k.Log)); !bytes.Contains(log, []byte("CC='ccache gcc-12'")) {
			t.Errorf("%s: the log shows no make with CC='ccache gcc-12'", what)
		}
		s := ccacheStats(t, part, false)
		t.Logf("%s (%s): %d direct hits, %d misses, %d uncacheable probes", what, k.Release, s["direct_cache_hit"], s["cache_miss"], s["no_input_file"]+s["preprocessor_error"])
		ccacheStats(t, part, true)
		return s
	}
	cold := check("cold, first kernel", 0)
	if cold["cache_miss"] < 14 { // eight C files and six .mod.c at least
		t.Errorf("cold compile cache: %d misses", cold["cache_miss"])
	}
	second := check("second kernel", 1)
	if second["direct_cache_hit"] == 0 {
		t.Error("second kernel: no compile was reused")
	}
	if second["cache_miss"] < 14 {
		t.Errorf("second kernel: %d misses: objects compiled against another tree were reused", second["cache_miss"])
	}
	again := check("first kernel again", 0)
	if again["cache_miss"] != 0 || again["direct_cache_hit"] < cold["cache_miss"] {
		t.Errorf("rebuild: %d hits, %d misses; the cold build missed %d", again["direct_cache_hit"], again["cache_miss"], cold["cache_miss"])
	}
	if e, _ := os.ReadDir(cc); len(e) != 1 {
		t.Errorf("compile cache holds %d partitions, want gost-crypto's alone", len(e))
	}
}

// Without ccache on PATH, --compile-cache is a one-line note and the build goes on without it.
func TestBuildCompileCacheWithoutCcache(t *testing.T) {
	testenv.Need(t, "ccache", "make", "gcc-12")
	trees := testenv.KernelTrees(t, testenv.Release53)
	// A PATH with every command of /usr/bin and /usr/sbin but ccache.
	bin := t.TempDir()
	for _, d := range []string{"/usr/bin", "/usr/sbin"} {
		entries, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Name() != "ccache" {
				os.Symlink(filepath.Join(d, e.Name()), filepath.Join(bin, e.Name())) // the first of both wins
			}
		}
	}
	t.Setenv("PATH", bin)
	var warnings []string
	cc := filepath.Join(t.TempDir(), "ccache")
	out := filepath.Join(t.TempDir(), "out")
	m, err := runBuild(t, testenv.ExampleSource(t, true), trees, build.BuildOptions{OutputDir: out, CompileCache: cc,
		Warn: func(s string) { warnings = append(warnings, s) }})
	if err != nil || m.Summary.Built != 1 {
		t.Fatalf("%v %+v", err, m)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "no ccache on PATH") {
		t.Errorf("warnings %q", warnings)
	}
	if log := testenv.MustRead(t, filepath.Join(out, m.Kernels[0].Log)); bytes.Contains(log, []byte("ccache")) {
		t.Error("the build used ccache")
	}
	if _, err := os.Stat(cc); err == nil {
		t.Error("a compile cache directory was made without ccache")
	}
}

// Signing without private mounts, where a build could write any partition of the compile
// cache: the compile cache is not used, with a warning.
func TestBuildCompileCacheNotWhenSigningWithoutPrivateMounts(t *testing.T) {
	testenv.Need(t, "ccache", "make", "gcc-12", "strip")
	s, _ := signerFor(t, "kmpack compile cache test key")
	var warnings []string
	out := filepath.Join(t.TempDir(), "out")
	m, err := runBuild(t, testenv.ExampleSource(t, true), testenv.KernelTrees(t, testenv.Release53), build.BuildOptions{
		OutputDir: out, CompileCache: filepath.Join(t.TempDir(), "ccache"), NoPrivateMounts: true, Signers: []sign.Signer{*s},
		Warn: func(s string) { warnings = append(warnings, s) }})
	if err != nil || m.Summary.Built != 1 {
		t.Fatalf("%v %+v", err, m)
	}
	found := false
	for _, w := range warnings {
		found = found || strings.Contains(w, "the compile cache is not used")
	}
	if !found {
		t.Errorf("warnings %q", warnings)
	}
	if log := testenv.MustRead(t, filepath.Join(out, m.Kernels[0].Log)); bytes.Contains(log, []byte("ccache")) {
		t.Error("the build used ccache")
	}
}
