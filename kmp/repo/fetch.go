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
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmpack/kmpack/kmp"
)

// Fetcher downloads repository files into a content-addressed cache: <CacheDir>/repo/sha256/<hex>.
// A download goes to <hex>'s partial file, .part-<hex> in the same directory, and is renamed into
// place once its size and SHA-256 match what the repository's metadata says, so a file is fetched
// once, ever, and nothing partial appears under the final name. An interrupted download (network
// error, cancelled context, killed kmpack) keeps its partial file, and the next Fetch of the same
// checksum over http(s) asks for the rest (Range, with If-Range when the server gave a strong
// ETag or a Last-Modified, kept in .part-<hex>.validator); a partial whose completed file does not
// match is removed. A downloader holds an flock on the partial file, so kmpack processes sharing
// the cache take turns and the later one finds the file in place. A cached file is hashed again
// each time it is reused; one that no longer matches is removed and downloaded again.
type Fetcher struct {
	CacheDir string
	Client   *http.Client // nil: a client with a 30 s connect/header timeout
	Parallel int          // concurrent downloads; 0 means 4
	Progress io.Writer    // nil: silent; otherwise one plain line per event
	mu       sync.Mutex
	sweep    sync.Once
}

// staleAfter is the age (since its last write) after which an unlocked partial download is a
// crash's leftover, not worth resuming.
const staleAfter = 24 * time.Hour

// progressEvery is the least interval between two progress lines of one download.
var progressEvery = 2 * time.Second

// lockPoll is how often a Fetch waiting for another process's download tries the lock again.
const lockPoll = 100 * time.Millisecond

// maxValidatorBytes bounds the ETag / Last-Modified kept beside a partial download.
const maxValidatorBytes = 512

func (f *Fetcher) partPath(sum string) string { return filepath.Join(f.ObjectsDir(), ".part-"+sum) }

func validatorPath(part string) string { return part + ".validator" }

// removeStale deletes partial downloads older than staleAfter that no one holds locked, and
// their validators, and temporary files of older kmpacks (random .part-* names).
func (f *Fetcher) removeStale() {
	m, _ := filepath.Glob(filepath.Join(f.ObjectsDir(), ".part-*"))
	for _, p := range m {
		fi, err := os.Lstat(p)
		if err != nil || time.Since(fi.ModTime()) <= staleAfter {
			continue
		}
		name := strings.TrimPrefix(filepath.Base(p), ".part-")
		switch {
		case checkSHA256(name) == nil && fi.Mode().IsRegular():
			removeUnlocked(p)
		case strings.HasSuffix(name, ".validator") && checkSHA256(strings.TrimSuffix(name, ".validator")) == nil:
			if _, err := os.Lstat(strings.TrimSuffix(p, ".validator")); errors.Is(err, os.ErrNotExist) {
				os.Remove(p)
			}
		default:
			os.Remove(p)
		}
	}
}

// removeUnlocked removes the partial download p (and its validator) unless a download holds it.
func removeUnlocked(p string) {
	fh, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer fh.Close()
	if unix.Flock(int(fh.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return
	}
	if sameFile(fh, p) {
		os.Remove(p)
		os.Remove(validatorPath(p))
	}
}

// sameFile tells whether the open file fh is still the file named p (not renamed or replaced).
func sameFile(fh *os.File, p string) bool {
	a, err := fh.Stat()
	if err != nil {
		return false
	}
	b, err := os.Lstat(p)
	return err == nil && os.SameFile(a, b)
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
	fmt.Fprintln(f.Progress, kmp.OneLine(fmt.Sprintf(format, args...)))
}

// open starts reading u (http, https or file).
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
		resp, err := f.get(ctx, u, nil)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, &HTTPError{URL: u, Status: resp.Status, Code: resp.StatusCode}
		}
		return resp.Body, nil
	}
	return nil, kmp.InputErrorf(u, "unsupported URL scheme %q (http, https, file)", pu.Scheme)
}

// get sends a GET for u with the extra headers hdr (name, value pairs).
func (f *Fetcher) get(ctx context.Context, u string, hdr []string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, kmp.InputErrorf(u, "%v", err)
	}
	req.Header.Set("User-Agent", "kmpack")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := f.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %s", u, kmp.OneLine(unwrapURLError(err).Error()))
	}
	return resp, nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
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

// openRegular opens p with flag, never following a symbolic link and never blocking on a FIFO; a
// name that is not a regular file is removed (not followed) and, with O_CREATE, made anew.
func openRegular(p string, flag int, perm os.FileMode) (*os.File, error) {
	for try := 0; ; try++ {
		fh, err := os.OpenFile(p, flag|unix.O_NOFOLLOW|unix.O_NONBLOCK, perm)
		if err == nil {
			fi, err := fh.Stat()
			if err != nil {
				fh.Close()
				return nil, err
			}
			if fi.Mode().IsRegular() {
				return fh, nil
			}
			fh.Close()
		} else if !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.ENXIO) && !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, err
		}
		if flag&os.O_CREATE == 0 || try > 0 {
			return nil, fmt.Errorf("%s: not a regular file", p)
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		flag |= os.O_EXCL
	}
}

// cacheState is what verifyCached found under a final name.
type cacheState int

const (
	cacheMissing cacheState = iota
	cacheGood
	cacheBad
)

// verifyCached hashes the cached file final; anything there that is not a regular file of the
// given size (size < 0: any) and SHA-256 is bad.
func verifyCached(final, sum string, size int64) (cacheState, error) {
	fh, err := os.OpenFile(final, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return cacheMissing, nil
	}
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENXIO) {
			return cacheBad, nil
		}
		return cacheMissing, err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return cacheMissing, err
	}
	if !fi.Mode().IsRegular() || size >= 0 && fi.Size() != size {
		return cacheBad, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return cacheMissing, err
	}
	if hex.EncodeToString(h.Sum(nil)) != sum {
		return cacheBad, nil
	}
	return cacheGood, nil
}

// Fetch returns the cached path of the file at u whose SHA-256 and size (size < 0: unknown) the
// repository's metadata gives, downloading it (or the rest of it) if the cache lacks it. A
// mismatch, a truncated or an oversized download is an InputError naming u, and its partial file
// is removed; any other failure keeps the partial file for the next Fetch to resume.
func (f *Fetcher) Fetch(ctx context.Context, u, sum string, size int64) (string, error) {
	path, _, err := f.fetch(ctx, u, sum, size)
	return path, err
}

// resumedMismatch is a checksum mismatch of a resumed download (its partial file removed).
type resumedMismatch struct{ error }

func (e *resumedMismatch) Unwrap() error { return e.error }

// fetch is Fetch, also returning the bytes it downloaded (-1: the file was in the cache).
func (f *Fetcher) fetch(ctx context.Context, u, sum string, size int64) (string, int64, error) {
	path, n, err := f.fetchOnce(ctx, u, sum, size)
	var rm *resumedMismatch
	if errors.As(err, &rm) {
		f.progress("%v: fetching it again from the start", err)
		var m int64
		path, m, err = f.fetchOnce(ctx, u, sum, size)
		n += m
	}
	return path, n, err
}

func (f *Fetcher) fetchOnce(ctx context.Context, u, sum string, size int64) (string, int64, error) {
	if err := checkSHA256(sum); err != nil {
		return "", 0, kmp.InputErrorf(u, "%v", err)
	}
	dir := f.ObjectsDir()
	final := filepath.Join(dir, sum)
	if st, err := verifyCached(final, sum, size); err != nil {
		return "", 0, err
	} else if st == cacheGood {
		return final, -1, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", 0, err
	}
	// The cache directory may be shared: its repo/ and repo/sha256/ must be directories, not
	// links to somewhere else that downloads (and the stale sweep) would then write.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if fi, err := os.Lstat(d); err != nil || !fi.IsDir() {
			return "", 0, fmt.Errorf("%s: not a directory (a link?): refusing to download into it", d)
		}
	}
	f.sweep.Do(f.removeStale)
	part, err := f.lockPart(ctx, u, f.partPath(sum))
	if err != nil {
		return "", 0, err
	}
	defer part.Close() // and unlocks
	// Under the lock: another process may have put the file in place meanwhile, or the file in
	// place may be the bad one seen above.
	st, err := verifyCached(final, sum, size)
	if err != nil {
		return "", 0, err
	}
	switch st {
	case cacheGood:
		os.Remove(part.Name()) // ours while locked, and of no more use
		os.Remove(validatorPath(part.Name()))
		return final, -1, nil
	case cacheBad:
		f.progress("cached %s does not match its SHA-256 %s: removed, fetching it again", u, sum)
		if err := os.Remove(final); err != nil {
			return "", 0, err
		}
	}
	n, err := f.download(ctx, u, sum, size, part)
	if err != nil {
		// Nothing worth resuming: an empty partial file goes (unless a mismatch removed it).
		if fi, serr := part.Stat(); serr == nil && fi.Size() == 0 && sameFile(part, part.Name()) {
			os.Remove(part.Name())
			os.Remove(validatorPath(part.Name()))
		}
		return "", n, err
	}
	if err := os.Rename(part.Name(), final); err != nil {
		return "", n, err
	}
	os.Remove(validatorPath(part.Name()))
	return final, n, nil
}

// lockPart opens (creating it if need be) the partial file p and locks it, waiting (bounded by
// ctx) while another download holds it.
func (f *Fetcher) lockPart(ctx context.Context, u, p string) (*os.File, error) {
	said := false
	for {
		fh, err := openRegular(p, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, err
		}
		for {
			err = unix.Flock(int(fh.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
				break
			}
			if !said {
				f.progress("waiting for another download of %s", u)
				said = true
			}
			select {
			case <-ctx.Done():
				fh.Close()
				return nil, fmt.Errorf("%s: %s (waiting for another download of it)", u, kmp.OneLine(context.Cause(ctx).Error()))
			case <-time.After(lockPoll):
			}
		}
		if err != nil {
			fh.Close()
			return nil, fmt.Errorf("%s: locking %s: %v", u, p, err)
		}
		// The holder we waited for may have renamed it into place or removed it.
		if sameFile(fh, p) {
			return fh, nil
		}
		fh.Close()
	}
}

// download completes the locked partial file part: it hashes the bytes part already holds, asks
// an http(s) server for the rest, and checks size and SHA-256. It returns the bytes downloaded.
func (f *Fetcher) download(ctx context.Context, u, sum string, size int64, part *os.File) (int64, error) {
	limit := int64(MaxPackageBytes)
	if size >= 0 {
		limit = size
	}
	poisoned := func(err error) error {
		os.Remove(part.Name())
		os.Remove(validatorPath(part.Name()))
		return err
	}
	fi, err := part.Stat()
	if err != nil {
		return 0, err
	}
	have := fi.Size()
	if have > limit || !isHTTP(u) {
		have = 0
	}
	h := sha256.New()
	if have > 0 {
		if _, err := io.CopyN(h, io.NewSectionReader(part, 0, have), have); err != nil {
			return 0, err
		}
	}
	var body io.ReadCloser
	if size < 0 || have < size {
		body, have, err = f.request(ctx, u, part, have, size)
		if err != nil {
			return 0, err
		}
		defer body.Close()
	}
	if have == 0 {
		h.Reset()
		if err := part.Truncate(0); err != nil {
			return 0, err
		}
	}
	start := have
	var n int64
	if body != nil {
		if _, err := part.Seek(have, io.SeekStart); err != nil {
			return 0, err
		}
		m := &meter{f: f, u: u, done: have, total: size, from: have, start: time.Now()}
		m.last = m.start
		n, err = io.Copy(io.MultiWriter(part, h, m), io.LimitReader(body, limit-have+1))
		if err != nil {
			kept := have + n
			if fi, serr := part.Stat(); serr == nil {
				kept = fi.Size()
			}
			if kept == 0 {
				return n, fmt.Errorf("%s: %s (after %d bytes)", u, kmp.OneLine(err.Error()), n)
			}
			return n, fmt.Errorf("%s: %s (after %d bytes; %d kept to resume from)", u, kmp.OneLine(err.Error()), n, kept)
		}
	}
	total := have + n
	resumed := ""
	if start > 0 {
		resumed = fmt.Sprintf(" after resuming at %d bytes", start)
	}
	switch {
	case size >= 0 && total < size:
		return n, poisoned(kmp.InputErrorf(u, "truncated: %d of %d bytes%s", total, size, resumed))
	case total > limit:
		return n, poisoned(kmp.InputErrorf(u, "larger than the %d bytes the repository says", limit))
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		err := kmp.InputErrorf(u, "SHA-256 mismatch%s: got %s, the repository says %s", resumed, got, sum)
		if start > 0 {
			// The kept prefix may be what is wrong (a partial file from an older mirror state):
			// the caller tries once more from zero.
			err = &resumedMismatch{err}
		}
		return n, poisoned(err)
	}
	if err := part.Sync(); err != nil {
		return n, err
	}
	if start > 0 {
		f.progress("fetched %s (%d bytes, %d of them now)", u, total, n)
	} else {
		f.progress("fetched %s (%d bytes)", u, total)
	}
	return n, nil
}

// request opens u for the rest of a partial file holding have bytes: from have on with a Range
// request when have > 0 and the server honours it, else from the beginning (have 0).
func (f *Fetcher) request(ctx context.Context, u string, part *os.File, have, size int64) (io.ReadCloser, int64, error) {
	sizeText := ""
	if size >= 0 {
		sizeText = fmt.Sprintf(" (%d bytes)", size)
	}
	if have > 0 {
		hdr := []string{"Range", fmt.Sprintf("bytes=%d-", have)}
		if v := readValidator(part.Name()); v != "" {
			hdr = append(hdr, "If-Range", v)
		}
		of := ""
		if size >= 0 {
			of = fmt.Sprintf(" of %d", size)
		}
		f.progress("resuming %s at %d%s bytes", u, have, of)
		resp, err := f.get(ctx, u, hdr)
		if err != nil {
			return nil, 0, err
		}
		switch resp.StatusCode {
		case http.StatusPartialContent:
			if rangeStart(resp.Header.Get("Content-Range")) == have {
				return resp.Body, have, nil
			}
			f.progress("restarting %s from zero: the server sent another range (%s)", u, truncate(resp.Header.Get("Content-Range"), 80))
		case http.StatusOK:
			f.progress("restarting %s from zero: the server sent the whole file", u)
			writeValidator(part.Name(), resp)
			return resp.Body, 0, nil
		case http.StatusRequestedRangeNotSatisfiable:
			f.progress("restarting %s from zero: the server refused the range", u)
		default:
			resp.Body.Close()
			return nil, 0, &HTTPError{URL: u, Status: resp.Status, Code: resp.StatusCode}
		}
		resp.Body.Close()
	} else {
		f.progress("fetching %s%s", u, sizeText)
	}
	if !isHTTP(u) {
		r, err := f.open(ctx, u)
		return r, 0, err
	}
	resp, err := f.get(ctx, u, nil)
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, 0, &HTTPError{URL: u, Status: resp.Status, Code: resp.StatusCode}
	}
	writeValidator(part.Name(), resp)
	return resp.Body, 0, nil
}

// isHTTP tells whether u is an http or https URL (which Range requests can resume).
func isHTTP(u string) bool {
	pu, err := url.Parse(u)
	return err == nil && (pu.Scheme == "http" || pu.Scheme == "https")
}

// rangeStart is the first byte position of a Content-Range "bytes FIRST-LAST/LENGTH", or -1.
func rangeStart(cr string) int64 {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return -1
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(first, 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// writeValidator keeps, beside the partial file, what identifies the version of the file the
// server is sending from its beginning: a strong ETag, else Last-Modified (none: no file).
func writeValidator(part string, resp *http.Response) {
	vp := validatorPath(part)
	v := resp.Header.Get("ETag")
	if v == "" || strings.HasPrefix(v, "W/") {
		v = resp.Header.Get("Last-Modified")
	}
	if !validValidator(v) {
		os.Remove(vp)
		return
	}
	fh, err := openRegular(vp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return
	}
	if _, err := fh.WriteString(v); err != nil {
		fh.Close()
		os.Remove(vp)
		return
	}
	fh.Close()
}

// readValidator is the validator writeValidator kept for part, or "".
func readValidator(part string) string {
	fh, err := openRegular(validatorPath(part), os.O_RDONLY, 0)
	if err != nil {
		return ""
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxValidatorBytes+1))
	if err != nil || !validValidator(string(b)) {
		return ""
	}
	return string(b)
}

// validValidator accepts a header value of printable ASCII, at most maxValidatorBytes.
func validValidator(v string) bool {
	if v == "" || len(v) > maxValidatorBytes {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

// meter writes a progress line at most every progressEvery while a download runs.
type meter struct {
	f                 *Fetcher
	u                 string
	done, total, from int64
	start, last       time.Time
}

func (m *meter) Write(p []byte) (int, error) {
	m.done += int64(len(p))
	if m.f.Progress == nil {
		return len(p), nil
	}
	now := time.Now()
	if now.Sub(m.last) < progressEvery {
		return len(p), nil
	}
	m.last = now
	rate := float64(m.done-m.from) / now.Sub(m.start).Seconds() / (1 << 20)
	if m.total > 0 {
		m.f.progress("%s: %.1f of %.1f MiB (%d%%), %.1f MiB/s", m.u, mebi(m.done), mebi(m.total), m.done*100/m.total, rate)
	} else {
		m.f.progress("%s: %.1f MiB, %.1f MiB/s", m.u, mebi(m.done), rate)
	}
	return len(p), nil
}

func mebi(n int64) float64 { return float64(n) / (1 << 20) }

// FetchAll downloads pkgs (their URL set) in parallel, each distinct checksum once, and returns
// the cached paths in the order of pkgs. The first error is returned after the other downloads
// stopped; files already verified stay in the cache and interrupted ones keep their partial
// files. With Progress, a summary line ends a successful FetchAll.
func (f *Fetcher) FetchAll(ctx context.Context, pkgs []Package) ([]string, error) {
	began := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := f.Parallel
	if n <= 0 {
		n = 4
	}
	type result struct {
		path       string
		downloaded int64 // -1: from the cache
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
			path, n, err := f.fetch(ctx, p.URL, p.SHA256, p.Size)
			bySum[sum].path, bySum[sum].downloaded = path, n
			if err != nil {
				once.Do(func() { firstErr = err; cancel() })
			}
		}(sum)
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	var files, cached, bytes int64
	for _, r := range bySum {
		if r.downloaded < 0 {
			cached++
		} else {
			files++
			bytes += r.downloaded
		}
	}
	if len(bySum) > 0 {
		plural := "s"
		if files == 1 {
			plural = ""
		}
		f.progress("fetched %d file%s (%d bytes) in %.1f s, %d from the cache", files, plural, bytes, time.Since(began).Seconds(), cached)
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
