package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/retry"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/manifest"
)

// The shared build cache (kmpack build --cache-url): successful entries of the local build
// cache, pushed as OCI artifacts to one registry repository, tagged with their cache key (64
// hex digits, a valid tag), and pulled on a local miss. The local cache stays the first level:
// a pulled entry is installed into it and used from there.
//
// A pulled entry is untrusted input. Its manifest and blobs are checked against their OCI
// digests, its shape is bounded (file count, names, sizes), and it is then checked exactly as a
// local entry is (result.json for this key and kernel, every file's sha256 and size); only a
// successful build is taken. A registry that cannot be reached or refuses is warned about once
// and left alone for the rest of the run: the builds go on locally.
const (
	remoteArtifactType = "application/vnd.kmpack.build-cache.v1"
	remoteFileType     = "application/vnd.kmpack.build-cache.file.v1"
	// remoteOpTimeout bounds each registry operation (a resolve, one blob, one manifest).
	remoteOpTimeout   = 60 * time.Second
	maxRemoteManifest = 4 << 20
	maxRemoteEntry    = 1 << 30 // all of an entry's files
	maxRemoteFiles    = 1024
	// remoteParallel bounds the entries pulled or pushed at once (kernels start together).
	remoteParallel = 4
	// pulledMarker, in a local entry, says it came from a shared cache (its content: the URL).
	// It is not one of the entry's files and is never pushed.
	pulledMarker = "pulled-from"
	// remoteCreated is the manifests' creation time: the same entry gives the same manifest.
	remoteCreated = "1970-01-01T00:00:00Z"
)

var cacheKeyTag = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ParseCacheURL checks a shared cache URL, oci://HOST[:PORT]/REPOSITORY (HTTPS) or
// oci+http://HOST[:PORT]/REPOSITORY (plain HTTP, for a registry on this machine or a trusted
// network), and returns the repository reference (HOST[:PORT]/REPOSITORY).
func ParseCacheURL(s string) (repo string, plainHTTP bool, err error) {
	rest, ok := strings.CutPrefix(s, "oci://")
	if !ok {
		if rest, ok = strings.CutPrefix(s, "oci+http://"); !ok {
			return "", false, fmt.Errorf("cache URL %q is not oci://HOST/REPOSITORY or oci+http://HOST/REPOSITORY", s)
		}
		plainHTTP = true
	}
	ref, err := registry.ParseReference(rest)
	if err != nil {
		return "", false, fmt.Errorf("cache URL %q: %v", s, err)
	}
	if ref.Reference != "" {
		return "", false, fmt.Errorf("cache URL %q names a tag or digest: name only the repository (kmpack tags entries with their cache keys)", s)
	}
	return ref.Registry + "/" + ref.Repository, plainHTTP, nil
}

type remoteCache struct {
	url   string
	repo  *remote.Repository
	slots chan struct{}

	mu                 sync.Mutex
	pullDown, pushDown bool
}

// badEntryError is an entry that the registry served but kmpack does not accept (as opposed to
// a registry that cannot be reached or refuses).
type badEntryError struct{ err error }

func (e *badEntryError) Error() string { return e.err.Error() }

func badEntry(format string, args ...any) error {
	return &badEntryError{fmt.Errorf(format, args...)}
}

func newRemoteCache(url string, warn func(string)) (*remoteCache, error) {
	ref, plain, err := ParseCacheURL(url)
	if err != nil {
		return nil, err
	}
	repo, err := remote.NewRepository(ref)
	if err != nil {
		return nil, fmt.Errorf("cache URL %q: %v", url, err)
	}
	repo.PlainHTTP = plain
	repo.MaxMetadataBytes = maxRemoteManifest
	client := &auth.Client{Client: retry.DefaultClient, Cache: auth.NewCache(), Header: http.Header{"User-Agent": {"kmpack"}}}
	if store, err := credentialStore(); err != nil {
		warn(fmt.Sprintf("shared cache %s: cannot read registry credentials (%v): asking the registry anonymously", url, err))
	} else {
		client.Credential = credentials.Credential(store)
	}
	repo.Client = client
	return &remoteCache{url: url, repo: repo, slots: make(chan struct{}, remoteParallel)}, nil
}

// credentialStore finds credentials where docker and podman keep them: docker's config.json
// ($DOCKER_CONFIG or ~/.docker, with its credential helpers), then podman's auth.json
// ($REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers, ~/.config/containers).
func credentialStore() (credentials.Store, error) {
	docker, err := credentials.NewStoreFromDocker(credentials.StoreOptions{})
	if err != nil {
		return nil, err
	}
	var fallbacks []credentials.Store
	var podman []string
	if f := os.Getenv("REGISTRY_AUTH_FILE"); f != "" {
		podman = append(podman, f)
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		podman = append(podman, filepath.Join(d, "containers", "auth.json"))
	}
	if home, err := os.UserHomeDir(); err == nil {
		podman = append(podman, filepath.Join(home, ".config", "containers", "auth.json"))
	}
	for _, f := range podman {
		if _, err := os.Stat(f); err != nil {
			continue
		}
		s, err := credentials.NewStore(f, credentials.StoreOptions{})
		if err != nil {
			return nil, err
		}
		fallbacks = append(fallbacks, s)
	}
	return credentials.NewStoreWithFallbacks(docker, fallbacks...), nil
}

func (rc *remoteCache) acquire(ctx context.Context) error {
	select {
	case rc.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (rc *remoteCache) release() { <-rc.slots }

func (rc *remoteCache) canPull() bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return !rc.pullDown
}

func (rc *remoteCache) canPush() bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return !rc.pushDown
}

// failed leaves the registry alone for the rest of the run after its first failure, with one
// warning: a failed pull stops pulls and pushes, a failed push (read-only credentials) pushes.
func (rc *remoteCache) failed(warn func(string), pulling bool, err error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.pushDown && (!pulling || rc.pullDown) {
		return
	}
	what := "pushing to"
	if pulling {
		what = "pulling from"
		rc.pullDown = true
	}
	rc.pushDown = true
	warn(fmt.Sprintf("shared cache %s: %s it failed (%v): building without it for the rest of this run", rc.url, what, err))
}

// verifyError says whether err is content that does not match its descriptor.
func verifyError(err error) bool {
	return errors.Is(err, content.ErrMismatchedDigest) || errors.Is(err, content.ErrTrailingData) ||
		errors.Is(err, content.ErrInvalidDescriptorSize) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, errdef.ErrSizeExceedsLimit)
}

// pull fetches key's entry into dst (an empty directory). found is false when the registry
// has no entry for key; a *badEntryError is an entry not accepted; any other error is the
// registry's.
func (rc *remoteCache) pull(ctx context.Context, key string, dst *os.Root) (found bool, err error) {
	if !cacheKeyTag.MatchString(key) {
		return false, nil
	}
	if err := rc.acquire(ctx); err != nil {
		return false, err
	}
	defer rc.release()
	octx, cancel := context.WithTimeout(ctx, remoteOpTimeout)
	defer cancel()
	desc, err := rc.repo.Resolve(octx, key)
	if errors.Is(err, errdef.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if desc.MediaType != ocispec.MediaTypeImageManifest || desc.Size < 0 || desc.Size > maxRemoteManifest {
		return true, badEntry("manifest %s of type %q, %d bytes", desc.Digest, desc.MediaType, desc.Size)
	}
	r, err := rc.repo.Fetch(octx, desc)
	if err != nil {
		return true, err
	}
	data, err := content.ReadAll(r, desc)
	r.Close()
	if err != nil {
		if verifyError(err) {
			return true, badEntry("manifest %s: %v", desc.Digest, err)
		}
		return true, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return true, badEntry("manifest %s: %v", desc.Digest, err)
	}
	if m.ArtifactType != remoteArtifactType {
		return true, badEntry("artifact type %q, not %s", m.ArtifactType, remoteArtifactType)
	}
	if err := checkRemoteLayers(m.Layers); err != nil {
		return true, &badEntryError{err}
	}
	if err := dst.Mkdir("files", 0o755); err != nil {
		return true, err
	}
	for _, l := range m.Layers {
		if err := rc.fetchFile(ctx, l, dst); err != nil {
			return true, err
		}
	}
	return true, nil
}

// checkRemoteLayers bounds an entry's shape: only names kmpack writes in an entry, each once,
// each within the local cache's size limits, at most maxRemoteFiles and maxRemoteEntry bytes.
func checkRemoteLayers(layers []ocispec.Descriptor) error {
	if len(layers) > maxRemoteFiles {
		return fmt.Errorf("%d files, more than %d", len(layers), maxRemoteFiles)
	}
	seen := map[string]bool{}
	var total int64
	for _, l := range layers {
		name := l.Annotations[ocispec.AnnotationTitle]
		if err := remoteEntryName(name); err != nil {
			return err
		}
		if seen[name] {
			return fmt.Errorf("file %q twice", name)
		}
		seen[name] = true
		limit := int64(maxCacheFile)
		if name == "result.json" {
			limit = maxCacheResult
		}
		if l.MediaType != remoteFileType || l.Size < 0 || l.Size > limit || l.Digest.Algorithm() != digest.SHA256 || l.Digest.Validate() != nil {
			return fmt.Errorf("file %q: type %q, %d bytes, digest %q", name, l.MediaType, l.Size, l.Digest)
		}
		if total += l.Size; total > maxRemoteEntry {
			return fmt.Errorf("more than %d bytes", maxRemoteEntry)
		}
	}
	if !seen["result.json"] {
		return errors.New("no result.json")
	}
	return nil
}

// remoteEntryName accepts the names of an entry's files: result.json, build.log, files/<name>.
func remoteEntryName(name string) error {
	if name == "result.json" || name == "build.log" {
		return nil
	}
	base, ok := strings.CutPrefix(name, "files/")
	if !ok || ident.PathComponent(base) != nil {
		return fmt.Errorf("file name %q", name)
	}
	return nil
}

func (rc *remoteCache) fetchFile(ctx context.Context, l ocispec.Descriptor, dst *os.Root) error {
	ctx, cancel := context.WithTimeout(ctx, remoteOpTimeout)
	defer cancel()
	name := l.Annotations[ocispec.AnnotationTitle]
	r, err := rc.repo.Fetch(ctx, l)
	if err != nil {
		return err
	}
	defer r.Close()
	out, err := dst.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	vr := content.NewVerifyReader(r, l)
	_, err = io.Copy(out, vr)
	if err == nil {
		err = vr.Verify()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil && verifyError(err) {
		return badEntry("%s (blob %s): %v", name, l.Digest, err)
	}
	return err
}

// push sends the local entry src (key's, just written) as key's artifact. Every file is checked
// against the digest result.json records for it, and none may hold a line of a secret file.
func (rc *remoteCache) push(ctx context.Context, key, release string, src *os.Root, secrets []secretNeedle) error {
	if !cacheKeyTag.MatchString(key) {
		return badEntry("cache key %q is not a tag", key)
	}
	if err := rc.acquire(ctx); err != nil {
		return err
	}
	defer rc.release()
	result, err := readRootFile(src, "result.json", maxCacheResult)
	if err != nil {
		return badEntry("%v", err)
	}
	var c cacheEntry
	if err := json.Unmarshal(result, &c); err != nil || c.Key != key {
		return badEntry("result.json is not key %s's", key)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range c.Files {
			if !yield(n) {
				return
			}
		}
	})
	if len(names)+1 > maxRemoteFiles {
		return badEntry("%d files", len(names))
	}
	var layers []ocispec.Descriptor
	var total int64
	for _, name := range append(names, "result.json") {
		if err := remoteEntryName(name); err != nil {
			return badEntry("%v", err)
		}
		data := result
		if name != "result.json" {
			want := c.Files[name]
			if data, err = readRootFile(src, name, maxCacheFile); err != nil {
				return badEntry("%v", err)
			}
			sum := sha256.Sum256(data)
			if int64(len(data)) != want.Size || hex.EncodeToString(sum[:]) != want.SHA256 {
				return badEntry("%s does not match its recorded sha256 and size", name)
			}
		}
		for _, s := range secrets {
			if bytes.Contains(data, s.line) {
				return badEntry("%s holds a line of the secret file %s", name, s.file)
			}
		}
		if total += int64(len(data)); total > maxRemoteEntry {
			return badEntry("more than %d bytes", maxRemoteEntry)
		}
		desc := content.NewDescriptorFromBytes(remoteFileType, data)
		desc.Annotations = map[string]string{ocispec.AnnotationTitle: name}
		if err := rc.pushBlob(ctx, desc, data); err != nil {
			return err
		}
		layers = append(layers, desc)
	}
	octx, cancel := context.WithTimeout(ctx, remoteOpTimeout)
	defer cancel()
	m, err := oras.PackManifest(octx, rc.repo, oras.PackManifestVersion1_1, remoteArtifactType, oras.PackManifestOptions{
		Layers: layers,
		ManifestAnnotations: map[string]string{
			ocispec.AnnotationCreated: remoteCreated,
			"dev.kmpack.cache-key":    key,
			"dev.kmpack.kernel":       release,
		},
	})
	if err != nil {
		return err
	}
	return rc.repo.Tag(octx, m, key)
}

func (rc *remoteCache) pushBlob(ctx context.Context, desc ocispec.Descriptor, data []byte) error {
	ctx, cancel := context.WithTimeout(ctx, remoteOpTimeout)
	defer cancel()
	if ok, err := rc.repo.Exists(ctx, desc); err == nil && ok {
		return nil
	}
	err := rc.repo.Push(ctx, desc, bytes.NewReader(data))
	if errors.Is(err, errdef.ErrAlreadyExists) {
		return nil // another runner's push of the same content
	}
	return err
}

// readRootFile reads a regular file (never through a link) of at most limit bytes.
func readRootFile(r *os.Root, name string, limit int64) ([]byte, error) {
	f, _, err := kmp.OpenRootFile(r, name, true)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(data)) > limit {
		err = fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return data, err
}

// A secretNeedle is one line of a secret file (a signing key, a passphrase or PIN file): no
// pushed file may contain it. The PEM armour lines are not secret and not needles.
type secretNeedle struct {
	file string
	line []byte
}

// minSecretLine is the shortest line searched for: shorter ones would match by chance.
const minSecretLine = 8

func secretNeedles(files []string) []secretNeedle {
	var out []secretNeedle
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil || len(data) > 1<<20 {
			continue
		}
		for line := range bytes.SplitSeq(data, []byte("\n")) {
			line = bytes.TrimSpace(line)
			if len(line) >= minSecretLine && !bytes.HasPrefix(line, []byte("-----")) {
				out = append(out, secretNeedle{file: f, line: line})
			}
		}
	}
	return out
}

// distrustsPulled says whether this build must not use entries pulled from a shared cache:
// it signs, and --trust-cache-url was not given.
func (b *builder) distrustsPulled() bool {
	return len(b.opts.Signers) > 0 && !b.opts.TrustCacheURL
}

// fromRemote takes j's result from the shared cache (after a local miss): pulled into a
// temporary entry, checked as a local entry is, then installed in the local cache. An entry
// that fails a check is reported, and the fresh build is pushed over it.
func (b *builder) fromRemote(ctx context.Context, j *kernelJob) bool {
	rc := b.remote
	if rc == nil || b.opts.Refresh || !rc.canPull() {
		return false
	}
	if b.distrustsPulled() {
		b.warn(fmt.Sprintf("signing: the entries of the shared cache %s are not used (--trust-cache-url uses them); fresh builds are still pushed to it", rc.url))
		return false
	}
	key := j.result.CacheKey
	tmp, err := b.newCacheTemp()
	if err != nil {
		b.warn(fmt.Sprintf("shared cache %s: cannot write the local cache %s: %v", rc.url, b.opts.CacheDir, err))
		return false
	}
	defer b.cache.RemoveAll(tmp)
	e, err := b.cache.OpenRoot(tmp)
	if err != nil {
		b.warn(fmt.Sprintf("shared cache %s: cannot write the local cache %s: %v", rc.url, b.opts.CacheDir, err))
		return false
	}
	defer e.Close()
	found, err := rc.pull(ctx, key, e)
	var bad *badEntryError
	switch {
	case ctx.Err() != nil || (err == nil && !found):
		return false
	case err != nil && !errors.As(err, &bad):
		rc.failed(b.warn, true, err)
		return false
	}
	if err == nil {
		var c *cacheEntry
		if c, err = readEntry(e, j); err == nil && c.Result.Status != manifest.StatusBuilt {
			err = fmt.Errorf("a result of status %q (only successful builds are taken from a shared cache)", c.Result.Status)
		}
	}
	if err == nil {
		err = b.loadEntry(e, j)
	}
	if err != nil {
		b.warn(fmt.Sprintf("shared cache %s: the entry for key %s is unusable (%v): discarded; rebuilding %s and pushing the fresh build over it", rc.url, key, err, j.tree.Release))
		b.unstage(j)
		return false
	}
	if err := e.WriteFile(pulledMarker, []byte(rc.url+"\n"), 0o644); err == nil {
		err = b.installEntry(tmp, key)
	}
	if err != nil {
		b.warn(fmt.Sprintf("shared cache %s: cannot keep %s's entry in the local cache %s: %v", rc.url, j.tree.Release, b.opts.CacheDir, err))
	}
	return true
}

// pushRemote pushes j's fresh successful build (its local entry) to the shared cache.
// Failed builds are never pushed: a failure taken from a shared cache would let whoever can
// push deny builds, and a failure is cheap to reproduce locally.
func (b *builder) pushRemote(ctx context.Context, j *kernelJob) {
	rc, r := b.remote, j.result
	if rc == nil || r.Status != manifest.StatusBuilt || !rc.canPush() {
		return
	}
	e, err := b.cache.OpenRoot(cacheEntryPath(r.CacheKey))
	if err != nil {
		return // not in the local cache: storeCache said why
	}
	defer e.Close()
	err = rc.push(ctx, r.CacheKey, r.Release, e, b.secrets)
	var bad *badEntryError
	switch {
	case err == nil || ctx.Err() != nil:
	case errors.As(err, &bad):
		b.warn(fmt.Sprintf("shared cache %s: %s's build (key %s) is not pushed: %v", rc.url, r.Release, r.CacheKey, err))
	default:
		rc.failed(b.warn, false, err)
	}
}

// unstage removes what a half-taken cache entry left in the output.
func (b *builder) unstage(j *kernelJob) {
	os.RemoveAll(b.stagePath(path.Join("modules", j.tree.Release)))
	os.Remove(b.stagePath(path.Join("logs", j.tree.Release+".log")))
}
