package build_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/sign"
)

type remoteRun struct {
	m        *manifest.Manifest
	out      string
	warnings []string
}

// runRemote builds the example module into a fresh output with opts (its cache directory and
// URL), collecting the warnings.
func runRemote(t *testing.T, opts build.BuildOptions) remoteRun {
	t.Helper()
	var r remoteRun
	var mu sync.Mutex
	opts.Warn = func(s string) { mu.Lock(); r.warnings = append(r.warnings, s); mu.Unlock() }
	r.out = filepath.Join(t.TempDir(), "out")
	opts.OutputDir = r.out
	m, err := runBuild(t, testenv.ExampleSource(t, true), testenv.KernelTrees(t, testenv.Release53), opts)
	if err != nil {
		t.Fatalf("build: %v (warnings %q)", err, r.warnings)
	}
	r.m = m
	t.Logf("cached %v, warnings %q", len(m.Kernels) > 0 && m.Kernels[0].Cached, r.warnings)
	return r
}

func (r remoteRun) kernel(t *testing.T) *manifest.KernelBuild {
	t.Helper()
	if len(r.m.Kernels) != 1 || r.m.Kernels[0].Status != manifest.StatusBuilt {
		t.Fatalf("kernels %+v", r.m.Kernels)
	}
	return r.m.Kernels[0]
}

// warned returns the warnings that mention the shared cache.
func (r remoteRun) warned() []string {
	var out []string
	for _, w := range r.warnings {
		if strings.Contains(w, "shared cache") {
			out = append(out, w)
		}
	}
	return out
}

// entryFiles pulls key's artifact with the library: its files by title.
func entryFiles(t *testing.T, repo *remote.Repository, key string) (ocispec.Manifest, map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	desc, data, err := oras.FetchBytes(ctx, repo, key, oras.DefaultFetchBytesOptions)
	if err != nil {
		t.Fatalf("fetching %s: %v", key, err)
	}
	_ = desc
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, l := range m.Layers {
		rc, err := repo.Fetch(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		b, err := content.ReadAll(rc, l)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		files[l.Annotations[ocispec.AnnotationTitle]] = b
	}
	return m, files
}

// checkEntry checks that key's artifact is the entry kmpack would accept: every file's sha256
// and size are the ones its result.json records.
func checkEntry(t *testing.T, repo *remote.Repository, key string) map[string][]byte {
	t.Helper()
	_, files := entryFiles(t, repo, key)
	var entry struct {
		Key   string `json:"key"`
		Files map[string]struct {
			SHA256 string `json:"sha256"`
			Size   int64  `json:"size"`
		} `json:"files"`
	}
	if err := json.Unmarshal(files["result.json"], &entry); err != nil || entry.Key != key {
		t.Fatalf("result.json of %s: %v, key %q", key, err, entry.Key)
	}
	if len(entry.Files)+1 != len(files) {
		t.Errorf("entry %s: files %d, result.json records %d", key, len(files), len(entry.Files))
	}
	for name, want := range entry.Files {
		if got := fileSum(files[name]); got != want.SHA256 || int64(len(files[name])) != want.Size {
			t.Errorf("entry %s: %s is %s (%d bytes), result.json says %s (%d)", key, name, got, len(files[name]), want.SHA256, want.Size)
		}
	}
	return files
}

func fileSum(b []byte) string {
	d := content.NewDescriptorFromBytes("", b).Digest
	return d.Encoded()
}

// The shared cache against a real registry (distribution, on 127.0.0.1): one runner's build is
// pushed and another's empty cache pulls it; an unreachable registry is one warning; a
// tampered entry is discarded, rebuilt and replaced; signing material never leaves; two
// runners pushing one key leave a valid entry; an entry holding a line of a secret file is not pushed,
// nor any build with secret files but no private mount namespace. Eight builds of the
// example module, 14-35 s here.
func TestBuildSharedCache(t *testing.T) {
	testenv.Need(t, "make", "strip")
	addr := testenv.Registry(t)
	url := "oci+http://" + addr + "/kmpack/cache"
	repo, err := remote.NewRepository(addr + "/kmpack/cache")
	if err != nil {
		t.Fatal(err)
	}
	repo.PlainHTTP = true
	ctx := context.Background()

	// (1) Runner A builds and pushes; runner B, with an empty local cache, pulls: no build.
	a := runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: url})
	ka := a.kernel(t)
	if ka.Cached || len(a.warned()) > 0 {
		t.Fatalf("runner A: cached %v, warnings %q", ka.Cached, a.warnings)
	}
	key := ka.CacheKey
	checkEntry(t, repo, key)
	cacheB := t.TempDir()
	b := runRemote(t, build.BuildOptions{CacheDir: cacheB, CacheURL: url})
	kb := b.kernel(t)
	if !kb.Cached || kb.CacheKey != key || len(b.warned()) > 0 {
		t.Fatalf("runner B: cached %v, key %s (A's %s), warnings %q", kb.Cached, kb.CacheKey, key, b.warnings)
	}
	for i, mod := range ka.Modules {
		if !bytes.Equal(testenv.MustRead(t, filepath.Join(a.out, mod.File)), testenv.MustRead(t, filepath.Join(b.out, kb.Modules[i].File))) {
			t.Errorf("runner B's %s is not runner A's", mod.File)
		}
	}
	// No compiler ran for B: its log is A's, byte for byte (a build would have written its own).
	if !bytes.Equal(testenv.MustRead(t, filepath.Join(a.out, ka.Log)), testenv.MustRead(t, filepath.Join(b.out, kb.Log))) {
		t.Error("runner B's build log is not runner A's: B built")
	}
	if _, err := os.Stat(filepath.Join(cacheB, "builds", key, "result.json")); err != nil {
		t.Errorf("the pulled entry is not in B's local cache: %v", err)
	}

	// (2) An unreachable registry: one warning, a local build, success.
	down := fmt.Sprintf("oci+http://127.0.0.1:%d/kmpack/cache", testenv.FreePort(t))
	g := runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: down})
	if kg := g.kernel(t); kg.Cached || len(g.warned()) != 1 || !strings.Contains(g.warned()[0], "building without it") {
		t.Errorf("unreachable registry: cached %v, warnings %q", kg.Cached, g.warnings)
	}

	// (3) A tampered entry (a module byte flipped, result.json unchanged, valid OCI digests):
	// discarded with a warning naming the key, rebuilt, and the good entry pushed over it.
	m, files := entryFiles(t, repo, key)
	modName := "files/" + filepath.Base(ka.Modules[0].File)
	for i, l := range m.Layers {
		if l.Annotations[ocispec.AnnotationTitle] != modName {
			continue
		}
		bad := bytes.Clone(files[modName])
		bad[len(bad)/2] ^= 0xff
		nd := content.NewDescriptorFromBytes(l.MediaType, bad)
		nd.Annotations = l.Annotations
		if err := repo.Push(ctx, nd, bytes.NewReader(bad)); err != nil {
			t.Fatal(err)
		}
		m.Layers[i] = nd
	}
	md, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, m.ArtifactType, oras.PackManifestOptions{Layers: m.Layers, ManifestAnnotations: map[string]string{"tampered": "yes"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Tag(ctx, md, key); err != nil {
		t.Fatal(err)
	}
	c := runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: url})
	if kc := c.kernel(t); kc.Cached || len(c.warned()) != 1 || !strings.Contains(c.warned()[0], key) || !strings.Contains(c.warned()[0], "unusable") {
		t.Errorf("tampered entry: cached %v, warnings %q", kc.Cached, c.warnings)
	}
	if m, _ := entryFiles(t, repo, key); m.Annotations["tampered"] != "" {
		t.Error("the tampered entry was not replaced")
	}
	checkEntry(t, repo, key)

	// (4) Signing: B's cache holds a pulled entry and the registry one: without
	// --trust-cache-url neither is signed (a rebuild); the fresh build is pushed, unsigned,
	// without a byte of the key. With it, a pulled entry is signed.
	signer, kp := signerFor(t, "kmpack shared cache test")
	e := runRemote(t, build.BuildOptions{CacheDir: cacheB, CacheURL: url, Signers: []sign.Signer{*signer}, Secrets: []string{kp.Key}})
	ke := e.kernel(t)
	if ke.Cached || ke.Modules[0].Signature == nil {
		t.Errorf("signing without --trust-cache-url: cached %v, signature %+v (warnings %q)", ke.Cached, ke.Modules[0].Signature, e.warnings)
	}
	pem := testenv.MustRead(t, kp.Key)
	var secretLines [][]byte
	for _, l := range bytes.Split(pem, []byte("\n")) {
		if len(l) > 16 && !bytes.HasPrefix(l, []byte("-----")) {
			secretLines = append(secretLines, l)
		}
	}
	if len(secretLines) == 0 {
		t.Fatal("no key lines to look for")
	}
	pushed := checkEntry(t, repo, key)
	for name, data := range pushed {
		for _, l := range secretLines {
			if bytes.Contains(data, l) {
				t.Errorf("the pushed %s holds a line of the signing key", name)
			}
		}
		if strings.HasPrefix(name, "files/") && strings.Contains(name, ".ko") && bytes.Contains(data, []byte("~Module signature appended~\n")) {
			t.Errorf("the pushed %s is signed", name)
		}
	}
	if !strings.HasSuffix(ke.Modules[0].File, ".ko") {
		t.Fatalf("module %s: this test expects an uncompressed module", ke.Modules[0].File)
	}
	if !bytes.HasSuffix(testenv.MustRead(t, filepath.Join(e.out, ke.Modules[0].File)), []byte("~Module signature appended~\n")) {
		t.Error("the signed build's module has no signature")
	}
	f := runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: url, TrustCacheURL: true, Signers: []sign.Signer{*signer}, Secrets: []string{kp.Key}})
	if kf := f.kernel(t); !kf.Cached || kf.Modules[0].Signature == nil {
		t.Errorf("signing with --trust-cache-url: cached %v, signature %+v", kf.Cached, kf.Modules[0].Signature)
	}

	// (5) Two runners building (--no-cache) and pushing the same key at once: both succeed,
	// and the entry then verifies and is pulled.
	var wg sync.WaitGroup
	runs := make([]remoteRun, 2)
	for i := range runs {
		wg.Go(func() {
			runs[i] = runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: url, Refresh: true, Jobs: 1})
		})
	}
	wg.Wait()
	for i, r := range runs {
		if k := r.kernel(t); k.Cached || len(r.warned()) > 0 {
			t.Errorf("concurrent runner %d: cached %v, warnings %q", i, k.Cached, r.warnings)
		}
	}
	checkEntry(t, repo, key)
	h := runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: url})
	if kh := h.kernel(t); !kh.Cached || len(h.warned()) > 0 {
		t.Errorf("after concurrent pushes: cached %v, warnings %q", kh.Cached, h.warnings)
	}

	// (6) A build whose entry holds a line of a secret file (here the module's name, which
	// its build log prints) is not pushed.
	desc, err := repo.Resolve(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Delete(ctx, desc); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "passphrase")
	if err := os.WriteFile(secret, []byte("kmpack_hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	leak := runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: url, Refresh: true, Secrets: []string{secret}})
	if k := leak.kernel(t); len(leak.warned()) != 1 || !strings.Contains(leak.warned()[0], "is not pushed") || !strings.Contains(leak.warned()[0], secret) {
		t.Errorf("an entry holding a secret line: cached %v, warnings %q", k.Cached, leak.warnings)
	}
	if _, err := repo.Resolve(ctx, key); err == nil {
		t.Error("an entry holding a secret line was pushed")
	}

	// (7) Without private mount namespaces a build could read the secret files: nothing is
	// pushed at all.
	nokey := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(nokey, []byte("not a line of any build\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: url, Refresh: true, NoPrivateMounts: true, Secrets: []string{nokey}})
	ko := open.kernel(t)
	if len(open.warned()) != 1 || !strings.Contains(open.warned()[0], "not pushed") {
		t.Errorf("secrets without private mounts: cached %v, warnings %q", ko.Cached, open.warnings)
	}
	// (Its key is another: the build's paths are not dkms's.)
	if _, err := repo.Resolve(ctx, ko.CacheKey); err == nil {
		t.Error("a build without private mounts, with secret files, was pushed")
	}
}

// A registry that wants credentials: without any it is one warning and a local build; with
// docker's config.json ($DOCKER_CONFIG) runner A pushes, with podman's auth.json
// ($REGISTRY_AUTH_FILE) runner B pulls. (Two builds and a pull.)
func TestBuildSharedCacheCredentials(t *testing.T) {
	testenv.Need(t, "make", "strip")
	addr := testenv.RegistryWithAuth(t, "ci", "kmpack-test-password")
	url := "oci+http://" + addr + "/kmpack/cache"
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	t.Setenv("REGISTRY_AUTH_FILE", "")
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	anon := runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: url})
	if k := anon.kernel(t); k.Cached || len(anon.warned()) != 1 || !strings.Contains(anon.warned()[0], "building without it") {
		t.Errorf("no credentials: cached %v, warnings %q", k.Cached, anon.warnings)
	}

	auth := base64.StdEncoding.EncodeToString([]byte("ci:kmpack-test-password"))
	config := fmt.Appendf(nil, `{"auths": {%q: {"auth": %q}}}`, addr, auth)
	docker := t.TempDir()
	if err := os.WriteFile(filepath.Join(docker, "config.json"), config, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", docker)
	a := runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: url})
	if k := a.kernel(t); k.Cached || len(a.warned()) != 0 {
		t.Errorf("docker credentials: cached %v, warnings %q", k.Cached, a.warnings)
	}

	podman := filepath.Join(t.TempDir(), "auth.json")
	if err := os.WriteFile(podman, config, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	t.Setenv("REGISTRY_AUTH_FILE", podman)
	b := runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: url})
	if k := b.kernel(t); !k.Cached || len(b.warned()) != 0 {
		t.Errorf("podman credentials: cached %v, warnings %q", k.Cached, b.warnings)
	}
}

// A registry answering 503 to everything (after oras-go's retries, about 6 s): one warning, a
// local build, success.
func TestBuildSharedCacheServerErrors(t *testing.T) {
	testenv.Need(t, "make", "strip")
	var mu sync.Mutex
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		mu.Unlock()
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	url := "oci+http://" + strings.TrimPrefix(srv.URL, "http://") + "/kmpack/cache"
	r := runRemote(t, build.BuildOptions{CacheDir: t.TempDir(), CacheURL: url})
	if k := r.kernel(t); k.Cached || len(r.warned()) != 1 || !strings.Contains(r.warned()[0], "503") {
		t.Errorf("503: cached %v, warnings %q", k.Cached, r.warnings)
	}
	mu.Lock()
	defer mu.Unlock()
	if requests > 10 {
		t.Errorf("%d requests to a failing registry: it should be left alone after the first failure", requests)
	}
}
