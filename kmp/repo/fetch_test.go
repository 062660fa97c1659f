package repo_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmpack/kmpack/internal/testenv"
	"github.com/kmpack/kmpack/kmp/repo"
)

// debServer serves one real package file (a Debian header package scripts/testdata.sh
// downloaded) at /pkg.deb with a strong ETag, recording each request's Range and If-Range.
type debServer struct {
	b     []byte
	sum   string
	etag  string
	srv   *httptest.Server
	url   string
	cutAt int           // > 0: the first response is cut off after this many body bytes
	plain bool          // ignore Range: always 200 with the whole file
	gate  chan struct{} // non-nil: the first request waits until it is closed (at most 10 s)
	slow  time.Duration // pause between 64 KiB chunks of a whole-file response

	mu   sync.Mutex
	reqs []http.Header
	full int // whole-file responses completed
}

func newDebServer(t *testing.T, setup func(*debServer)) *debServer {
	t.Helper()
	b := testenv.MustRead(t, testenv.Debs(t, "linux-headers-"+testenv.ReleaseDebOnly)[0])
	s256 := sha256.Sum256(b)
	s := &debServer{b: b, sum: hex.EncodeToString(s256[:]), etag: `"kmpack-test-1"`}
	if setup != nil {
		setup(s)
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	s.url = s.srv.URL + "/pkg.deb"
	return s
}

func (s *debServer) serve(w http.ResponseWriter, req *http.Request) {
	s.mu.Lock()
	n := len(s.reqs)
	s.reqs = append(s.reqs, req.Header.Clone())
	s.mu.Unlock()
	if n == 0 && s.gate != nil {
		select {
		case <-s.gate:
		case <-time.After(10 * time.Second):
		}
	}
	w.Header().Set("ETag", s.etag)
	if n == 0 && s.cutAt > 0 {
		w.Header().Set("Content-Length", strconv.Itoa(len(s.b)))
		w.WriteHeader(http.StatusOK)
		w.Write(s.b[:s.cutAt])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	if req.Header.Get("Range") != "" && !s.plain {
		http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(s.b))
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(s.b)))
	w.WriteHeader(http.StatusOK)
	for off := 0; off < len(s.b); off += 64 << 10 {
		if _, err := w.Write(s.b[off:min(off+64<<10, len(s.b))]); err != nil {
			return
		}
		if s.slow > 0 {
			w.(http.Flusher).Flush()
			time.Sleep(s.slow)
		}
	}
	s.mu.Lock()
	s.full++
	s.mu.Unlock()
}

func (s *debServer) requests() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

func (s *debServer) fullBodies() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.full
}

// syncBuffer is a Progress writer several goroutines (or Fetchers) share; onLine sees each line.
type syncBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	onLine func(string)
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.onLine != nil {
		b.onLine(string(p))
	}
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func checkFetched(t *testing.T, s *debServer, path string) {
	t.Helper()
	got := sha256.Sum256(testenv.MustRead(t, path))
	if hex.EncodeToString(got[:]) != s.sum || filepath.Base(path) != s.sum {
		t.Fatalf("%s: wrong content", path)
	}
	if parts, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".part-*")); len(parts) != 0 {
		t.Fatalf("partial files left: %v", parts)
	}
}

func partOf(f *repo.Fetcher, sum string) string { return filepath.Join(f.ObjectsDir(), ".part-"+sum) }

// interrupted makes a Fetch that the server cuts off after s.cutAt bytes and checks what it keeps.
func interrupted(t *testing.T, f *repo.Fetcher, s *debServer) {
	t.Helper()
	_, err := f.Fetch(context.Background(), s.url, s.sum, int64(len(s.b)))
	if err == nil || !strings.HasPrefix(err.Error(), s.url+": ") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("cut-off download: %v", err)
	}
	t.Log(err)
	fi, err := os.Stat(partOf(f, s.sum))
	if err != nil || fi.Size() != int64(s.cutAt) {
		t.Fatalf("partial file after the cut: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(f.ObjectsDir(), s.sum)); !os.IsNotExist(err) {
		t.Fatalf("partial download under the final name: %v", err)
	}
}

func TestFetchResumes(t *testing.T) {
	s := newDebServer(t, func(s *debServer) { s.cutAt = 700_000 })
	var out syncBuffer
	f := &repo.Fetcher{CacheDir: t.TempDir(), Progress: &out}
	interrupted(t, f, s)
	path, err := f.Fetch(context.Background(), s.url, s.sum, int64(len(s.b)))
	if err != nil {
		t.Fatal(err)
	}
	checkFetched(t, s, path)
	reqs := s.requests()
	if len(reqs) != 2 || reqs[0].Get("Range") != "" || reqs[1].Get("Range") != "bytes=700000-" || reqs[1].Get("If-Range") != s.etag {
		t.Fatalf("requests %v", reqs)
	}
	for _, want := range []string{
		"fetching " + s.url + " (" + strconv.Itoa(len(s.b)) + " bytes)\n",
		"resuming " + s.url + " at 700000 of " + strconv.Itoa(len(s.b)) + " bytes\n",
		"fetched " + s.url + " (" + strconv.Itoa(len(s.b)) + " bytes, " + strconv.Itoa(len(s.b)-700_000) + " of them now)\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("progress lacks %q:\n%s", want, out.String())
		}
	}
}

func TestFetchResumeServerIgnoresRange(t *testing.T) {
	s := newDebServer(t, func(s *debServer) { s.cutAt = 300_000; s.plain = true })
	var out syncBuffer
	f := &repo.Fetcher{CacheDir: t.TempDir(), Progress: &out}
	interrupted(t, f, s)
	path, err := f.Fetch(context.Background(), s.url, s.sum, int64(len(s.b)))
	if err != nil {
		t.Fatal(err)
	}
	checkFetched(t, s, path)
	if reqs := s.requests(); len(reqs) != 2 || reqs[1].Get("Range") != "bytes=300000-" || s.fullBodies() != 1 {
		t.Fatalf("requests %v", reqs)
	}
	if !strings.Contains(out.String(), "restarting "+s.url+" from zero: the server sent the whole file\n") {
		t.Fatal(out.String())
	}
}

func TestFetchResumeCorruptPrefix(t *testing.T) {
	s := newDebServer(t, func(s *debServer) { s.cutAt = 500_000 })
	var out syncBuffer
	f := &repo.Fetcher{CacheDir: t.TempDir(), Progress: &out}
	interrupted(t, f, s)
	// The kept bytes go bad (a disk, another program): the completed file cannot match. The
	// partial file is dropped and the same Fetch starts once more from zero.
	part := partOf(f, s.sum)
	fh, err := os.OpenFile(part, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt([]byte("garbage"), 1000)
	fh.Close()
	path, err := f.Fetch(context.Background(), s.url, s.sum, int64(len(s.b)))
	if err != nil {
		t.Fatal(err)
	}
	checkFetched(t, s, path)
	if reqs := s.requests(); len(reqs) != 3 || reqs[1].Get("Range") != "bytes=500000-" || reqs[2].Get("Range") != "" {
		t.Fatalf("requests %v", reqs)
	}
	if !strings.Contains(out.String(), "SHA-256 mismatch after resuming at 500000 bytes") || !strings.Contains(out.String(), "fetching it again from the start") {
		t.Fatal(out.String())
	}
	if _, err := os.Lstat(part); !os.IsNotExist(err) {
		t.Fatalf("partial file kept: %v", err)
	}
}

// A repository whose file does not match its checksum fails after the retry from zero too:
// one InputError naming the URL, nothing in the cache.
func TestFetchMismatchAfterRetry(t *testing.T) {
	s := newDebServer(t, func(s *debServer) { s.cutAt = 500_000 })
	f := &repo.Fetcher{CacheDir: t.TempDir()}
	interrupted(t, f, s)
	wrong := strings.Repeat("0", 64)
	if err := os.Rename(partOf(f, s.sum), partOf(f, wrong)); err != nil {
		t.Fatal(err)
	}
	_, err := f.Fetch(context.Background(), s.url, wrong, int64(len(s.b)))
	testenv.CheckInputError(t, s.url, err)
	if err == nil || !strings.Contains(err.Error(), "SHA-256 mismatch: got ") {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(f.ObjectsDir(), wrong)); !os.IsNotExist(err) {
		t.Fatalf("mismatching file in the cache: %v", err)
	}
	if _, err := os.Lstat(partOf(f, wrong)); !os.IsNotExist(err) {
		t.Fatalf("partial file kept: %v", err)
	}
}

func TestFetchReverifiesCache(t *testing.T) {
	s := newDebServer(t, nil)
	var out syncBuffer
	f := &repo.Fetcher{CacheDir: t.TempDir(), Progress: &out}
	ctx := context.Background()
	path, err := f.Fetch(ctx, s.url, s.sum, int64(len(s.b)))
	if err != nil {
		t.Fatal(err)
	}
	if p, err := f.Fetch(ctx, s.url, s.sum, int64(len(s.b))); err != nil || p != path || len(s.requests()) != 1 {
		t.Fatalf("cached file fetched again: %v", err)
	}
	// Same size, one byte changed on disk.
	b := testenv.MustRead(t, path)
	b[len(b)/3] ^= 0x01
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := f.Fetch(ctx, s.url, s.sum, int64(len(s.b))); err != nil || p != path {
		t.Fatal(err)
	}
	checkFetched(t, s, path)
	if len(s.requests()) != 2 || !strings.Contains(out.String(), "cached "+s.url+" does not match its SHA-256 "+s.sum+": removed, fetching it again\n") {
		t.Fatalf("%d requests; progress:\n%s", len(s.requests()), out.String())
	}
	// A symbolic link under the final name is replaced, not followed.
	target := filepath.Join(t.TempDir(), "target")
	if err := os.WriteFile(target, s.b, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if p, err := f.Fetch(ctx, s.url, s.sum, int64(len(s.b))); err != nil || p != path {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() || len(s.requests()) != 3 {
		t.Fatalf("symlink kept: %v %v", fi, err)
	}
}

func TestFetchPartialNameNotRegular(t *testing.T) {
	s := newDebServer(t, nil)
	f := &repo.Fetcher{CacheDir: t.TempDir()}
	if err := os.MkdirAll(f.ObjectsDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	part := partOf(f, s.sum)
	// A symbolic link to a file elsewhere: removed, never written through.
	target := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(target, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, part); err != nil {
		t.Fatal(err)
	}
	path, err := f.Fetch(context.Background(), s.url, s.sum, int64(len(s.b)))
	if err != nil {
		t.Fatal(err)
	}
	checkFetched(t, s, path)
	if string(testenv.MustRead(t, target)) != "keep me" {
		t.Fatal("written through the symlink")
	}
	// A FIFO: no blocking open, removed.
	os.Remove(path)
	if err := syscall.Mkfifo(part, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := f.Fetch(context.Background(), s.url, s.sum, int64(len(s.b))); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Fetch blocked on a FIFO")
	}
	checkFetched(t, s, path)
}

func TestFetchConcurrentProcesses(t *testing.T) {
	gate := make(chan struct{})
	s := newDebServer(t, func(s *debServer) { s.gate = gate })
	var once sync.Once
	// Two Fetchers on one cache stand for two kmpack processes (flock locks belong to open file
	// descriptions, so they exclude each other within a process too). The server holds the first
	// download until the other Fetcher says it waits for it.
	out := &syncBuffer{onLine: func(l string) {
		if strings.HasPrefix(l, "waiting for another download of ") {
			once.Do(func() { close(gate) })
		}
	}}
	cache := t.TempDir()
	var wg sync.WaitGroup
	paths := make([]string, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := &repo.Fetcher{CacheDir: cache, Progress: out}
			paths[i], errs[i] = f.Fetch(context.Background(), s.url, s.sum, int64(len(s.b)))
		}()
	}
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		checkFetched(t, s, paths[i])
	}
	if paths[0] != paths[1] || len(s.requests()) != 1 || s.fullBodies() != 1 || !strings.Contains(out.String(), "waiting for another download of "+s.url+"\n") {
		t.Fatalf("%d requests, %d whole bodies; progress:\n%s", len(s.requests()), s.fullBodies(), out.String())
	}

	// Waiting is bounded by the context.
	f := &repo.Fetcher{CacheDir: cache}
	other := strings.Repeat("0", 64)
	lock, err := os.OpenFile(partOf(f, other), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := f.Fetch(ctx, s.srv.URL+"/other.deb", other, 10); err == nil || !strings.Contains(err.Error(), "waiting for another download") {
		t.Fatal(err)
	}
}

func TestFetchStaleSweep(t *testing.T) {
	s := newDebServer(t, nil)
	f := &repo.Fetcher{CacheDir: t.TempDir()}
	if err := os.MkdirAll(f.ObjectsDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-25 * time.Hour)
	locked, unlocked := partOf(f, strings.Repeat("1", 64)), partOf(f, strings.Repeat("2", 64))
	for _, p := range []string{locked, unlocked, unlocked + ".validator"} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old, old)
	}
	lock, err := os.Open(locked)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	path, err := f.Fetch(context.Background(), s.url, s.sum, int64(len(s.b)))
	if err != nil {
		t.Fatal(err)
	}
	parts, _ := filepath.Glob(filepath.Join(f.ObjectsDir(), ".part-*"))
	if len(parts) != 1 || parts[0] != locked {
		t.Fatalf("after the sweep: %v (want only the locked %s)", parts, locked)
	}
	if got := sha256.Sum256(testenv.MustRead(t, path)); hex.EncodeToString(got[:]) != s.sum {
		t.Fatal("wrong content")
	}
}

func TestFetchProgress(t *testing.T) {
	defer repo.SetProgressEvery(10 * time.Millisecond)()
	s := newDebServer(t, func(s *debServer) { s.slow = 5 * time.Millisecond })
	var out syncBuffer
	f := &repo.Fetcher{CacheDir: t.TempDir(), Progress: &out}
	pkgs := []repo.Package{{Name: "pkg", URL: s.url, SHA256: s.sum, Size: int64(len(s.b))}}
	for range 2 {
		files, err := f.FetchAll(context.Background(), pkgs)
		if err != nil {
			t.Fatal(err)
		}
		checkFetched(t, s, files[0])
	}
	text := out.String()
	t.Log("\n" + text)
	n := strconv.Itoa(len(s.b))
	q := regexp.QuoteMeta
	for _, re := range []string{
		`(?m)^fetching ` + q(s.url) + ` \(` + n + ` bytes\)$`,
		`(?m)^` + q(s.url) + `: \d+\.\d of \d+\.\d MiB \(\d+%\), \d+\.\d MiB/s$`,
		`(?m)^fetched ` + q(s.url) + ` \(` + n + ` bytes\)$`,
		`(?m)^fetched 1 file \(` + n + ` bytes\) in \d+\.\d s, 0 from the cache$`,
		`(?m)^fetched 0 files \(0 bytes\) in \d+\.\d s, 1 from the cache$`,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Fatalf("progress lacks %s", re)
		}
	}
	if strings.ContainsAny(text, "\r\x1b") {
		t.Fatal("terminal control codes in the progress output")
	}
}

// TestMain runs this test binary as a kmpack process fetching one file when TestFetchTwoProcesses
// starts it with KMPACK_FETCH_HELPER=URL SHA256 SIZE CACHEDIR: progress on stdout, then the path.
func TestMain(m *testing.M) {
	if args := strings.Fields(os.Getenv("KMPACK_FETCH_HELPER")); len(args) == 4 {
		size, _ := strconv.ParseInt(args[2], 10, 64)
		f := &repo.Fetcher{CacheDir: args[3], Progress: os.Stdout}
		path, err := f.Fetch(context.Background(), args[0], args[1], size)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("path %s\n", path)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestFetchTwoProcesses(t *testing.T) {
	gate := make(chan struct{})
	s := newDebServer(t, func(s *debServer) { s.gate = gate })
	cache := t.TempDir()
	var once sync.Once
	var wg sync.WaitGroup
	outs := make([]string, 2)
	errs := make([]error, 2)
	for i := range 2 {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "KMPACK_FETCH_HELPER="+strings.Join([]string{s.url, s.sum, strconv.Itoa(len(s.b)), cache}, " "))
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b strings.Builder
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				b.WriteString(sc.Text() + "\n")
				// The server holds the first download until the other process waits for it.
				if strings.HasPrefix(sc.Text(), "waiting for another download of ") {
					once.Do(func() { close(gate) })
				}
			}
			outs[i], errs[i] = b.String(), cmd.Wait()
		}()
	}
	wg.Wait()
	final := filepath.Join((&repo.Fetcher{CacheDir: cache}).ObjectsDir(), s.sum)
	for i := range 2 {
		if errs[i] != nil || !strings.Contains(outs[i], "path "+final+"\n") {
			t.Fatalf("process %d: %v\n%s", i, errs[i], outs[i])
		}
	}
	checkFetched(t, s, final)
	all := outs[0] + outs[1]
	if len(s.requests()) != 1 || s.fullBodies() != 1 || !strings.Contains(all, "waiting for another download of "+s.url+"\n") {
		t.Fatalf("%d requests, %d whole bodies; output:\n%s", len(s.requests()), s.fullBodies(), all)
	}
}

func TestFetchResumesAfterCancel(t *testing.T) {
	s := newDebServer(t, func(s *debServer) { s.slow = 20 * time.Millisecond })
	f := &repo.Fetcher{CacheDir: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	if _, err := f.Fetch(ctx, s.url, s.sum, int64(len(s.b))); err == nil || !strings.Contains(err.Error(), "kept to resume from") {
		t.Fatal(err)
	}
	fi, err := os.Stat(partOf(f, s.sum))
	if err != nil || fi.Size() == 0 || fi.Size() >= int64(len(s.b)) {
		t.Fatalf("partial file after cancelling: %v %v", fi, err)
	}
	path, err := f.Fetch(context.Background(), s.url, s.sum, int64(len(s.b)))
	if err != nil {
		t.Fatal(err)
	}
	checkFetched(t, s, path)
	if reqs := s.requests(); len(reqs) != 2 || reqs[1].Get("Range") != "bytes="+strconv.FormatInt(fi.Size(), 10)+"-" {
		t.Fatalf("requests %v", reqs)
	}
}
