package build

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"unicode"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/manifest"
)

// The build cache keeps one entry per cache key: CacheDir/builds/<key>/ holding result.json,
// build.log and files/ (the modules and Module.symvers). A cache directory may come from
// anywhere (CI restores them), so an entry is read through an os.Root (no symlink leads out
// of it), every name in it is validated, and every file is checked against the digest
// result.json records for it. An entry that fails any check is a miss: it is removed and the
// build's fresh result takes its place.
const (
	buildCacheFormat        = "kmpack-build-cache"
	buildCacheFormatVersion = 1
	maxCacheResult          = 16 << 20  // result.json
	maxCacheFile            = 512 << 20 // one module, Module.symvers or log
)

// Failure kinds: a build failure that the same inputs reproduce (a command's exit status, a
// missing module) is cached; a temporary one (a signal, no space left, an I/O error) is not.
const (
	FailureBuild     = "build"
	FailureTemporary = "temporary"
)

type cacheEntry struct {
	Format        string                `json:"format"`
	FormatVersion int                   `json:"formatVersion"`
	Key           string                `json:"key"`
	Result        *manifest.KernelBuild `json:"result"`
	Files         map[string]cachedFile `json:"files"` // by name in the entry: "build.log", "files/<name>"
}

type cachedFile struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// openCache opens the cache directory (creating it) as an os.Root.
func openCache(dir string) (*os.Root, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cache directory: %w", err)
	}
	return os.OpenRoot(dir)
}

func cacheEntryPath(key string) string { return path.Join("builds", key) }

// fromCache takes j's result from the cache. A missing entry is a miss; an unusable one is
// reported, removed, and a miss.
func (b *builder) fromCache(j *kernelJob) bool {
	if b.cache == nil || b.opts.Refresh {
		return false
	}
	rel := cacheEntryPath(j.result.CacheKey)
	e, err := b.cache.OpenRoot(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err == nil && b.distrustsPulled() {
		if _, serr := e.Lstat(pulledMarker); serr == nil {
			// Taken from the shared cache by an earlier run: not signed without --trust-cache-url.
			e.Close()
			b.warn("signing: build cache entries pulled from a shared cache are rebuilt, not signed (--trust-cache-url signs them)")
			return false
		}
	}
	if err == nil {
		err = b.loadEntry(e, j)
		e.Close()
	}
	if err == nil {
		return true
	}
	b.warn(fmt.Sprintf("build cache entry %s is unusable (%v): rebuilding %s and replacing it",
		path.Join(b.opts.CacheDir, rel), err, j.tree.Release))
	b.cache.RemoveAll(rel)
	// Leave nothing of the half-taken entry in the output.
	b.unstage(j)
	return false
}

func (b *builder) stagePath(rel string) string { return b.stage + "/" + rel }

// readEntry reads an entry's result.json and checks it for j.
func readEntry(e *os.Root, j *kernelJob) (*cacheEntry, error) {
	// Regular file only, never through a link, without blocking on a FIFO, bounded.
	f, _, err := kmp.OpenRootFile(e, "result.json", true)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCacheResult+1))
	f.Close()
	if err != nil {
		return nil, err
	}
	if len(data) > maxCacheResult {
		return nil, errors.New("result.json is too large")
	}
	var c cacheEntry
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("result.json: %v", err)
	}
	if err := c.check(j); err != nil {
		return nil, fmt.Errorf("result.json: %v", err)
	}
	return &c, nil
}

// loadEntry checks an entry and copies its files into the stage, checking each digest.
func (b *builder) loadEntry(e *os.Root, j *kernelJob) error {
	c, err := readEntry(e, j)
	if err != nil {
		return err
	}
	r := c.Result
	copies := map[string]string{path.Join("files", "Module.symvers"): r.Symvers, "build.log": r.Log}
	if r.Symvers == "" {
		delete(copies, path.Join("files", "Module.symvers"))
	}
	for _, m := range r.Modules {
		copies[path.Join("files", path.Base(m.File))] = m.File
	}
	if err := os.MkdirAll(b.stagePath(path.Join("modules", j.tree.Release)), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(b.stagePath("logs"), 0o755); err != nil {
		return err
	}
	for from, to := range copies {
		want, ok := c.Files[from]
		if !ok {
			return fmt.Errorf("no digest recorded for %s", from)
		}
		if err := copyChecked(e, from, b.stagePath(to), want); err != nil {
			return err
		}
	}
	res := j.result
	res.Modules, res.Symvers, res.Log, res.Compiler, res.Warnings = r.Modules, r.Symvers, r.Log, r.Compiler, r.Warnings
	res.Status, res.Reason, res.LogTail, res.FailureKind = r.Status, r.Reason, r.LogTail, r.FailureKind
	res.BuildSeconds = r.BuildSeconds
	res.Cached = true
	return nil
}

// check validates everything in an entry that becomes a path or a name: only the names kmpack
// itself would have written for this kernel pass.
// maxCacheText bounds each text field of a cached result (a reason, a log line, a warning).
const maxCacheText = 4096

// maxBuildSeconds bounds a cached build's recorded cost (a week): a plan sums them.
const maxBuildSeconds = 7 * 24 * 3600

func (c *cacheEntry) check(j *kernelJob) error {
	rel := j.tree.Release
	r := c.Result
	switch {
	case c.Format != buildCacheFormat || c.FormatVersion != buildCacheFormatVersion:
		return fmt.Errorf("format %q version %d, not %s version %d", c.Format, c.FormatVersion, buildCacheFormat, buildCacheFormatVersion)
	case c.Key != j.result.CacheKey:
		return fmt.Errorf("recorded for key %q", c.Key)
	case r == nil:
		return errors.New("no result")
	case r.Release != rel:
		return fmt.Errorf("recorded for kernel %q", r.Release)
	case r.Status == manifest.StatusFailed && r.FailureKind != FailureBuild:
		return fmt.Errorf("a failure of kind %q is not reusable", r.FailureKind)
	case r.Status != manifest.StatusBuilt && r.Status != manifest.StatusFailed:
		return fmt.Errorf("status %q", r.Status)
	case r.Status == manifest.StatusBuilt && len(r.Modules) == 0:
		return errors.New("a successful build with no module")
	case r.Log != path.Join("logs", rel+".log"):
		return fmt.Errorf("log %q", r.Log)
	case r.Symvers != "" && r.Symvers != path.Join("modules", rel, "Module.symvers"):
		return fmt.Errorf("symvers %q", r.Symvers)
	case !(r.BuildSeconds >= 0 && r.BuildSeconds <= maxBuildSeconds): // NaN fails too
		return fmt.Errorf("build_seconds %v", r.BuildSeconds)
	}
	// Text that reaches the terminal and the manifest: one printable line each, bounded.
	if len(r.LogTail) > 25 || len(r.Warnings) > 100 {
		return errors.New("too many log tail or warning lines")
	}
	for _, t := range append(append([]string{r.Reason, r.Compiler, string(r.FailureKind)}, r.LogTail...), r.Warnings...) {
		if len(t) > maxCacheText || strings.ContainsFunc(t, unicode.IsControl) {
			return fmt.Errorf("text %.40q is not one printable line of at most %d bytes", t, maxCacheText)
		}
	}
	seen := map[string]bool{"Module.symvers": true}
	for _, m := range r.Modules {
		if m == nil {
			return errors.New("an empty module record")
		}
		base := path.Base(m.File)
		if err := ident.PathComponent(base); err != nil || m.File != path.Join("modules", rel, base) || seen[base] {
			return fmt.Errorf("module file %q", m.File)
		}
		seen[base] = true
		if err := ident.ModuleName(m.Name); err != nil {
			return err
		}
		if !strings.HasSuffix(base, ".ko"+m.Compression.Extension()) {
			return fmt.Errorf("module file %q does not match its compression %q", m.File, m.Compression)
		}
		if path.Base(m.InstallPath) != base {
			return fmt.Errorf("install path %q", m.InstallPath)
		}
		dir, ok := strings.CutPrefix(path.Dir(m.InstallPath), "/lib/modules/"+rel+"/")
		if !ok || path.Clean(m.InstallPath) != m.InstallPath {
			return fmt.Errorf("install path %q", m.InstallPath)
		}
		for _, comp := range strings.Split(dir, "/") {
			if err := ident.PathComponent(comp); err != nil {
				return fmt.Errorf("install path %q: %v", m.InstallPath, err)
			}
		}
		if f, ok := c.Files[path.Join("files", base)]; !ok || f.SHA256 != m.SHA256 || f.Size != m.Size {
			return fmt.Errorf("module %s: its digest is not the recorded one", base)
		}
	}
	return nil
}

// copyChecked copies name from the entry to dst (which must not exist) and fails unless its
// size and sha256 are want's.
func copyChecked(e *os.Root, name, dst string, want cachedFile) error {
	if want.Size < 0 || want.Size > maxCacheFile {
		return fmt.Errorf("%s: recorded size %d", name, want.Size)
	}
	in, _, err := kmp.OpenRootFile(e, name, true)
	if err != nil {
		return err
	}
	defer in.Close()
	if fi, err := in.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", name)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(in, want.Size+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && (n != want.Size || hex.EncodeToString(h.Sum(nil)) != want.SHA256) {
		err = fmt.Errorf("%s does not match its recorded sha256 and size (truncated or altered)", name)
	}
	if err != nil {
		os.Remove(dst)
	}
	return err
}

// storeCache keeps j's result: a success, or a failure the same inputs reproduce. It replaces
// what the entry held (a --no-cache success replaces a cached failure). A cache that cannot be
// written only costs a rebuild.
func (b *builder) storeCache(j *kernelJob) {
	r := j.result
	if b.cache == nil || (r.Status == manifest.StatusFailed && r.FailureKind != FailureBuild) {
		return
	}
	if err := b.writeEntry(j); err != nil {
		b.warn(fmt.Sprintf("cannot store %s's build in the cache %s: %v", r.Release, b.opts.CacheDir, err))
	}
}

func (b *builder) writeEntry(j *kernelJob) error {
	r := j.result
	tmp, err := b.newCacheTemp()
	if err != nil {
		return err
	}
	defer b.cache.RemoveAll(tmp)
	if err := b.cache.Mkdir(path.Join(tmp, "files"), 0o755); err != nil {
		return err
	}
	c := cacheEntry{Format: buildCacheFormat, FormatVersion: buildCacheFormatVersion, Key: r.CacheKey, Result: r, Files: map[string]cachedFile{}}
	copies := map[string]string{"build.log": r.Log}
	for _, m := range r.Modules {
		copies[path.Join("files", path.Base(m.File))] = m.File
	}
	if r.Symvers != "" {
		copies[path.Join("files", "Module.symvers")] = r.Symvers
	}
	for to, from := range copies {
		in, err := os.Open(b.stagePath(from))
		if err != nil {
			return err
		}
		out, err := b.cache.OpenFile(path.Join(tmp, to), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			in.Close()
			return err
		}
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(out, h), in)
		in.Close()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		c.Files[to] = cachedFile{SHA256: hexSum(h), Size: n}
	}
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if err := b.cache.WriteFile(path.Join(tmp, "result.json"), data, 0o644); err != nil {
		return err
	}
	return b.installEntry(tmp, r.CacheKey)
}

// installEntry puts the complete entry tmp (under builds/) in key's place, replacing what was
// there.
func (b *builder) installEntry(tmp, key string) error {
	final := cacheEntryPath(key)
	old := path.Join("builds", fmt.Sprintf(".old-%d-%s", os.Getpid(), randomSuffix()))
	if err := b.cache.Rename(final, old); err == nil {
		defer b.cache.RemoveAll(old)
	}
	return b.cache.Rename(tmp, final)
}

// newCacheTemp makes an empty directory under builds/ for an entry being written.
func (b *builder) newCacheTemp() (string, error) {
	if err := b.cache.MkdirAll("builds", 0o755); err != nil {
		return "", err
	}
	kmp.RemoveDeadTemps(b.cache, "builds", ".tmp-", ".old-")
	tmp := path.Join("builds", fmt.Sprintf(".tmp-%d-%s", os.Getpid(), randomSuffix()))
	return tmp, b.cache.Mkdir(tmp, 0o755)
}

func randomSuffix() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }
