package repo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kmpack/kmpack/kmp"
)

// Fetcher downloads repository files into a content-addressed cache: <CacheDir>/repo/sha256/<hex>,
// written to a temporary name in the same directory and renamed into place once its size and
// SHA-256 match what the repository's metadata says, so a file is fetched once, ever, and a
// failed or interrupted download leaves nothing under its final name.
type Fetcher struct {
	CacheDir string
	Client   *http.Client // nil: a client with a 30 s connect/header timeout
	Parallel int          // concurrent downloads; 0 means 4
	Progress io.Writer    // nil: silent
	mu       sync.Mutex
	sweep    sync.Once
}

// staleAfter is the age after which a temporary download is a crash's leftover, not another
// kmpack's download in progress.
const staleAfter = 24 * time.Hour

// removeStale deletes temporary downloads a killed kmpack left behind.
func (f *Fetcher) removeStale() {
	m, _ := filepath.Glob(filepath.Join(f.ObjectsDir(), ".part-*"))
	for _, p := range m {
		if fi, err := os.Lstat(p); err == nil && time.Since(fi.ModTime()) > staleAfter {
			os.Remove(p)
		}
	}
}

// ObjectsDir is where fetched files live.
func (f *Fetcher) ObjectsDir() string { return filepath.Join(f.CacheDir, "repo", "sha256") }

func (f *Fetcher) client() *http.Client {
	if f.Client != nil {
		return f.Client
	}
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		ResponseHeaderTimeout: 30 * time.Second,
		TLSHandshakeTimeout:   30 * time.Second,
	}}
}

func (f *Fetcher) progress(format string, args ...any) {
	if f.Progress == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fmt.Fprintf(f.Progress, format+"\n", args...)
}

// open starts reading u (http, https or file), refusing more than limit bytes.
func (f *Fetcher) open(ctx context.Context, u string) (io.ReadCloser, error) {
	pu, err := url.Parse(u)
	if err != nil {
		return nil, kmp.InputErrorf(u, "not a URL: %v", err)
	}
	switch pu.Scheme {
	case "file":
		fh, err := os.Open(pu.Path)
		if err != nil {
			return nil, kmp.InputErrorf(u, "%v", kmp.UnwrapPathError(err))
		}
		if fi, err := fh.Stat(); err != nil || !fi.Mode().IsRegular() {
			fh.Close()
			return nil, kmp.InputErrorf(u, "not a regular file")
		}
		return fh, nil
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, kmp.InputErrorf(u, "%v", err)
		}
		req.Header.Set("User-Agent", "kmpack")
		resp, err := f.client().Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, fmt.Errorf("%s: %s", u, kmp.OneLine(err.Error()))
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, &HTTPError{URL: u, Status: resp.Status, Code: resp.StatusCode}
		}
		return resp.Body, nil
	}
	return nil, kmp.InputErrorf(u, "unsupported URL scheme %q (http, https, file)", pu.Scheme)
}

// HTTPError is a response other than 200 OK.
type HTTPError struct {
	URL, Status string
	Code        int
}

func (e *HTTPError) Error() string { return kmp.OneLine(e.URL + ": HTTP " + e.Status) }

// IsNotFound tells whether err is an HTTP 404/410 or a missing file: URL.
func IsNotFound(err error) bool {
	var he *HTTPError
	if errors.As(err, &he) {
		return he.Code == http.StatusNotFound || he.Code == http.StatusGone
	}
	return errors.Is(err, os.ErrNotExist)
}

// GetSmall reads a whole file of at most limit bytes (unverified metadata: Release, repomd.xml).
func (f *Fetcher) GetSmall(ctx context.Context, u string, limit int64) ([]byte, error) {
	r, err := f.open(ctx, u)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %s", u, kmp.OneLine(err.Error()))
	}
	if int64(len(b)) > limit {
		return nil, kmp.InputErrorf(u, "larger than %d bytes", limit)
	}
	return b, nil
}

// Fetch returns the cached path of the file at u whose SHA-256 and size (size < 0: unknown) the
// repository's metadata gives, downloading it if the cache lacks it. A mismatch or a truncated
// download is an InputError naming u, and nothing is left in the cache.
func (f *Fetcher) Fetch(ctx context.Context, u, sum string, size int64) (string, error) {
	if err := checkSHA256(sum); err != nil {
		return "", kmp.InputErrorf(u, "%v", err)
	}
	dir := f.ObjectsDir()
	final := filepath.Join(dir, sum)
	if fi, err := os.Stat(final); err == nil && fi.Mode().IsRegular() && (size < 0 || fi.Size() == size) {
		return final, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	f.sweep.Do(f.removeStale)
	r, err := f.open(ctx, u)
	if err != nil {
		return "", err
	}
	defer r.Close()
	tmp, err := os.CreateTemp(dir, ".part-")
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	limit := int64(MaxPackageBytes)
	if size >= 0 {
		limit = size
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, limit+1))
	if err != nil {
		return "", fmt.Errorf("%s: %s (after %d bytes)", u, kmp.OneLine(err.Error()), n)
	}
	switch {
	case size >= 0 && n < size:
		return "", kmp.InputErrorf(u, "truncated: %d of %d bytes", n, size)
	case n > limit:
		return "", kmp.InputErrorf(u, "larger than the %d bytes the repository says", limit)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return "", kmp.InputErrorf(u, "SHA-256 mismatch: got %s, the repository says %s", got, sum)
	}
	if err := tmp.Sync(); err != nil {
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", err
	}
	ok = true
	f.progress("fetched %s (%d bytes)", u, n)
	return final, nil
}

// FetchAll downloads pkgs (their URL set) in parallel, each distinct checksum once, and returns
// the cached paths in the order of pkgs. The first error is returned after the other downloads
// stopped; files already verified stay in the cache.
func (f *Fetcher) FetchAll(ctx context.Context, pkgs []Package) ([]string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := f.Parallel
	if n <= 0 {
		n = 4
	}
	type result struct {
		path string
		err  error
	}
	bySum := map[string]*result{}
	var order []string
	for _, p := range pkgs {
		if _, ok := bySum[p.SHA256]; !ok {
			bySum[p.SHA256] = &result{}
			order = append(order, p.SHA256)
		}
	}
	urlOf := map[string]Package{}
	for _, p := range pkgs {
		urlOf[p.SHA256] = p
	}
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	var firstErr error
	var once sync.Once
	for _, sum := range order {
		wg.Add(1)
		sem <- struct{}{}
		go func(sum string) {
			defer wg.Done()
			defer func() { <-sem }()
			p := urlOf[sum]
			path, err := f.Fetch(ctx, p.URL, p.SHA256, p.Size)
			bySum[sum].path = path
			if err != nil {
				once.Do(func() { firstErr = err; cancel() })
			}
		}(sum)
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	out := make([]string, len(pkgs))
	for i, p := range pkgs {
		out[i] = bySum[p.SHA256].path
	}
	return out, nil
}

// joinURL appends a checked repository-relative path to a base URL.
func joinURL(base, rel string) string {
	return strings.TrimRight(base, "/") + "/" + rel
}
