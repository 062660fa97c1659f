package formats_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
)

// The runtime packages (their payload is a binary of many MB; the debian profile's deb and
// the suse profile's rpm, each in a slot of its own) are kept in the package cache: a run
// that takes them from the cache writes the same bytes as a run without a cache; an entry is
// used only when it matches its recorded digest, and a corrupted, replaced or linked one is
// reported, not used, and made anew.
func TestPackageCache(t *testing.T) {
	b := buildModule(t, "abi", testenv.Release53)
	// A small ELF executable made larger than the cache's threshold (trailing bytes do not
	// change what debug/elf reads), so that the test does not gzip a whole Go binary each run.
	exe, err := exec.LookPath("true")
	if err != nil {
		t.Skip(err)
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	pad := make([]byte, 2<<20)
	rand.NewChaCha8([32]byte{1}).Read(pad)
	bin = append(bin, pad...)
	rt := &formats.Runtime{Binary: bin, Version: "1.0", Arch: "x86_64"}
	var mu sync.Mutex
	var warnings []string
	cache := &formats.PackageCache{Dir: t.TempDir(), Salt: "test", Secret: []byte("this host's secret"), Warn: func(s string) {
		mu.Lock()
		defer mu.Unlock()
		warnings = append(warnings, s)
	}}
	run := func(c *formats.PackageCache) (runtimeDeb []byte, all map[string][32]byte) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "out")
		testenv.CopyTree(t, b.out, out)
		written, err := formats.PackageBuild(formats.Request{Source: b.src, Manifest: b.manifest, OutputDir: out,
			Trees: b.trees, Profiles: []string{"debian", "suse"}, Options: formats.Options{Runtimes: []*formats.Runtime{rt}, Cache: c}})
		if err != nil {
			t.Fatal(err)
		}
		all = map[string][32]byte{}
		for _, w := range written {
			data, err := os.ReadFile(filepath.Join(out, formats.PackagesDir, w.File))
			if err != nil {
				t.Fatal(err)
			}
			all[w.File] = sha256.Sum256(data)
			if w.Name == formats.RuntimePackageName && w.Format == "deb" {
				runtimeDeb = data
			}
		}
		if runtimeDeb == nil {
			t.Fatal("no runtime package written")
		}
		return runtimeDeb, all
	}
	same := func(what string, a, b map[string][32]byte) {
		t.Helper()
		if len(a) != len(b) {
			t.Fatalf("%s: %d packages, want %d", what, len(b), len(a))
		}
		for f, sum := range a {
			if b[f] != sum {
				t.Errorf("%s: %s differs from the uncached run's", what, f)
			}
		}
	}
	warned := func(what, want string) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if want == "" && len(warnings) > 0 {
			t.Errorf("%s: warnings %q, want none", what, warnings)
		}
		if want != "" && (len(warnings) != 1 || !strings.Contains(warnings[0], want)) {
			t.Errorf("%s: warnings %q, want one saying %q", what, warnings, want)
		}
		warnings = nil
	}

	uncachedDeb, uncached := run(nil)
	_, cold := run(cache)
	same("first run with a cache", uncached, cold)
	slots, _ := filepath.Glob(filepath.Join(cache.Dir, "packages", "*"))
	if len(slots) != 2 { // only the runtime packages' payloads are large enough
		t.Fatalf("cache holds %v, want two entries (the runtime deb and rpm)", slots)
	}
	// The deb's slot is the one tested below; the other holds the runtime rpm.
	var slot string
	for _, sl := range slots {
		e, _ := os.ReadFile(sl)
		_, d, _ := bytes.Cut(e, []byte("\n"))
		switch sum := sha256.Sum256(d); {
		case bytes.Equal(d, uncachedDeb):
			slot = sl
		case sum != uncached["kmpack-1.0-1.x86_64.rpm"]:
			t.Errorf("cache entry %s holds neither runtime package", sl)
		}
	}
	if slot == "" {
		t.Fatalf("no cache entry holds the runtime deb")
	}
	_, warm := run(cache)
	same("run from the cache", uncached, warm)
	warned("warm run", "")

	// A consistent entry (digest recomputed) with other bytes, planted by someone without this
	// host's secret, is refused: its MAC is not this host's.
	entry, _ := os.ReadFile(slot)
	header, data, _ := bytes.Cut(entry, []byte("\n"))
	if !bytes.Equal(data, uncachedDeb) {
		t.Fatalf("the entry does not hold the runtime package")
	}
	var h map[string]any
	if err := json.Unmarshal(header, &h); err != nil {
		t.Fatal(err)
	}
	forged := append(bytes.Clone(data), "x"...)
	sum := sha256.Sum256(forged)
	h["sha256"], h["size"] = hex.EncodeToString(sum[:]), len(forged)
	hb, _ := json.Marshal(h)
	os.WriteFile(slot, append(append(hb, '\n'), forged...), 0o644)
	if deb, _ := run(cache); !bytes.Equal(deb, uncachedDeb) {
		t.Fatalf("a planted entry without this host's MAC was used")
	}
	warned("planted entry", "MAC is not this host's")
	// With the MAC made with the secret, the package comes from the entry: proof that the
	// cache is read at all.
	m := hmac.New(sha256.New, cache.Secret)
	fmt.Fprintf(m, "kmpack-package-cache\x00%s\x00%v\x00%s\x00%s\x00%d", "package deb "+formats.RuntimePackageName+"_1.0-1_amd64.deb", h["formatVersion"], h["key"], h["sha256"], len(forged))
	h["mac"] = hex.EncodeToString(m.Sum(nil))
	hb, _ = json.Marshal(h)
	os.WriteFile(slot, append(append(hb, '\n'), forged...), 0o644)
	if deb, _ := run(cache); !bytes.Equal(deb, forged) {
		t.Fatalf("a run with a valid entry did not take the package from it")
	}
	warned("consistent entry", "")
	os.WriteFile(slot, entry, 0o644)
	// Refresh (kmpack build --no-cache) makes the package anew and replaces the entry.
	refresh := *cache
	refresh.Refresh = true
	if deb, _ := run(&refresh); !bytes.Equal(deb, uncachedDeb) {
		t.Errorf("Refresh took the package from the cache")
	}
	if got, _ := os.ReadFile(slot); !bytes.Equal(got, entry) {
		t.Errorf("Refresh did not replace the entry")
	}
	warned("refresh", "")

	// Corrupted bytes (the recorded digest no longer matches), a truncated file, a header
	// that is not one, a symlink in the entry's place: each is reported, not used, and the
	// entry is made anew.
	for _, c := range []struct {
		name, want string
		corrupt    func()
	}{
		{"flipped byte", "do not match their recorded sha256", func() {
			e := bytes.Clone(entry)
			e[len(e)-100] ^= 0xff
			os.WriteFile(slot, e, 0o644)
		}},
		{"truncated", "do not match their recorded sha256", func() { os.WriteFile(slot, entry[:len(entry)/2], 0o644) }},
		{"no header", "header", func() { os.WriteFile(slot, append([]byte("garbage\n"), data...), 0o644) }},
		{"symlink", "unusable", func() {
			other := filepath.Join(t.TempDir(), "other")
			os.WriteFile(other, entry, 0o644)
			os.Remove(slot)
			os.Symlink(other, slot)
		}},
	} {
		c.corrupt()
		deb, all := run(cache)
		same(c.name, uncached, all)
		if !bytes.Equal(deb, uncachedDeb) {
			t.Errorf("%s: runtime package differs", c.name)
		}
		warned(c.name, c.want)
		if got, _ := os.ReadFile(slot); !bytes.Equal(got, entry) {
			t.Errorf("%s: the entry was not made anew", c.name)
		}
		if fi, err := os.Lstat(slot); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s: the entry is not a regular file: %v", c.name, err)
		}
	}

	// Another kmpack binary (salt) misses, and its package replaces the entry.
	other := *cache
	other.Salt = "another kmpack"
	_, all := run(&other)
	same("another salt", uncached, all)
	if got, _ := os.ReadFile(slot); bytes.Equal(got, entry) {
		t.Errorf("the entry was not replaced for another salt")
	}
	if slots, _ := filepath.Glob(filepath.Join(cache.Dir, "packages", "*")); len(slots) != 2 {
		t.Errorf("cache holds %v, want the two entries", slots)
	}
}
