package target

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
)

// Bounds on an initramfs read for its module list: Debian's with MODULES=most is ~70 MB
// unpacked and ~3,000 entries.
const (
	maxInitramfsBytes   = 4 << 30
	maxInitramfsEntries = 1 << 20
	maxCpioName         = 4096
)

// InitramfsModules lists the kernel modules (by module name, as the kernel knows them) in an
// initramfs image: concatenated cpio "newc" archives, each plain or compressed (gzip, xz,
// zstd), as initramfs-tools and dracut write them (an uncompressed early archive with CPU
// microcode, then the compressed main one). Only names are read; file data is skipped. Bad
// input is an InputError naming file and offset; a compression kmpack cannot read (lz4,
// bzip2, lzma) is one too.
func InitramfsModules(file string, r io.Reader) (mods []string, err error) {
	defer kmp.Guard(file, &err)
	cr := &countingReader{r: bufio.NewReaderSize(io.LimitReader(r, maxInitramfsBytes), 1<<16)}
	seen := map[string]bool{}
	entries := 0
	add := func(name string) {
		base := name[strings.LastIndexByte(name, '/')+1:]
		if module.IsModuleFileName(base) {
			if n := module.ModuleNameFromPath(base); !seen[n] {
				seen[n] = true
				mods = append(mods, n)
			}
		}
	}
	for {
		// Archives are padded to 4 bytes, segments often to 512: skip zeros between them.
		head, err := cr.r.Peek(6)
		if len(head) == 0 && errors.Is(err, io.EOF) {
			return mods, nil
		}
		if len(head) > 0 && head[0] == 0 {
			cr.r.ReadByte()
			cr.n++
			continue
		}
		if bytes.HasPrefix(head, []byte("07070")) {
			if err := readCpio(file, "", cr, add, &entries); err != nil {
				return nil, err
			}
			continue
		}
		c := module.DetectCompression(head)
		if c == module.CompressNone {
			return nil, kmp.InputErrorf(file, "offset %d: neither a cpio archive nor gzip, xz or zstd (% x)", cr.n, head)
		}
		dr, closeFn, err := module.DecompressReader(cr, c)
		if err != nil {
			return nil, kmp.InputErrorf(file, "offset %d: %s: %v", cr.n, c, err)
		}
		inner := &countingReader{r: bufio.NewReaderSize(io.LimitReader(dr, maxInitramfsBytes), 1<<16)}
		for {
			head, err := inner.r.Peek(6)
			if len(head) == 0 && errors.Is(err, io.EOF) {
				break
			}
			if err != nil && !errors.Is(err, io.EOF) {
				closeFn()
				return nil, kmp.InputErrorf(file, "%s stream at offset %d: %v", c, inner.n, err)
			}
			if head[0] == 0 {
				inner.r.ReadByte()
				inner.n++
				continue
			}
			if err := readCpio(file, string(c)+" stream ", inner, add, &entries); err != nil {
				closeFn()
				return nil, err
			}
		}
		closeFn()
		// A compressed segment is the last: what the kernel would find after it (more
		// segments) is rare enough to ignore, and the decompressor may have read ahead.
		return mods, nil
	}
}

type countingReader struct {
	r *bufio.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// readCpio reads one newc/crc archive up to its TRAILER!!!, calling add for each name.
func readCpio(file, where string, cr *countingReader, add func(string), entries *int) error {
	var hdr [110]byte
	for {
		off := cr.n
		if _, err := io.ReadFull(cr, hdr[:]); err != nil {
			return kmp.InputErrorf(file, "%soffset %d: truncated cpio header", where, off)
		}
		if string(hdr[:6]) != "070701" && string(hdr[:6]) != "070702" {
			return kmp.InputErrorf(file, "%soffset %d: not a cpio newc header", where, off)
		}
		field := func(i int) (int64, error) {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			return int64(v), err
		}
		size, err1 := field(6)
		nameSize, err2 := field(11)
		if err1 != nil || err2 != nil || nameSize < 1 || nameSize > maxCpioName {
			return kmp.InputErrorf(file, "%soffset %d: bad cpio header fields", where, off)
		}
		name := make([]byte, nameSize)
		if _, err := io.ReadFull(cr, name); err != nil {
			return kmp.InputErrorf(file, "%soffset %d: truncated cpio name", where, off)
		}
		if name[nameSize-1] != 0 {
			return kmp.InputErrorf(file, "%soffset %d: cpio name not NUL-terminated", where, off)
		}
		// Name and data are each padded to 4 bytes from the header's start.
		if err := skip(cr, (4-(110+nameSize)%4)%4+size+(4-size%4)%4); err != nil {
			return kmp.InputErrorf(file, "%soffset %d: truncated cpio entry %q", where, off, name[:nameSize-1])
		}
		n := string(name[:nameSize-1])
		if n == "TRAILER!!!" {
			return nil
		}
		if *entries++; *entries > maxInitramfsEntries {
			return kmp.InputErrorf(file, "more than %d entries", maxInitramfsEntries)
		}
		add(n)
	}
}

func skip(r io.Reader, n int64) error {
	got, err := io.CopyN(io.Discard, r, n)
	if got == n {
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// initramfsImages are where distributions keep a kernel's initramfs: initramfs-tools, dracut.
func initramfsImages(k string) []string {
	return []string{"boot/initrd.img-" + k, "boot/initramfs-" + k + ".img"}
}

// DefaultInitramfsTimeout bounds one initramfs regeneration.
const DefaultInitramfsTimeout = 10 * time.Minute

// refreshInitramfs regenerates k's initramfs when it holds one of mods (module names whose
// files autoinstall just changed), with the distribution's own tool: update-initramfs
// (initramfs-tools) or dracut. Nothing else is ever regenerated: an initramfs without them
// does not change, and a kernel that has none yet gets one from its own hooks (which run after
// kmpack's). In a root other than "/", it says what to run instead.
func (o *AutoinstallOptions) refreshInitramfs(ctx context.Context, r *os.Root, k string, mods []string) {
	if len(mods) == 0 || o.NoInitramfs {
		return
	}
	for _, img := range initramfsImages(k) {
		f, err := r.Open(img)
		if err != nil {
			continue
		}
		held, err := InitramfsModules(o.display(img), f)
		f.Close()
		if err != nil {
			o.warnf("%v: not regenerated; regenerate it if it holds %s", err, strings.Join(mods, " "))
			return
		}
		var in []string
		for _, m := range mods {
			if containsModule(held, m) {
				in = append(in, m)
			}
		}
		if len(in) == 0 {
			return
		}
		var cmd []string
		switch {
		case fileExists("/usr/sbin/update-initramfs") && strings.HasPrefix(img, "boot/initrd.img-"):
			cmd = []string{"/usr/sbin/update-initramfs", "-u", "-k", k}
		case fileExists("/usr/bin/dracut"):
			cmd = []string{"/usr/bin/dracut", "-f", "--kver", k}
		default:
			o.warnf("%s holds %s, which changed: regenerate it (no update-initramfs or dracut here)", o.display(img), strings.Join(in, " "))
			return
		}
		if o.root() != "/" {
			o.warnf("%s holds %s, which changed: not regenerated in a root; run %s in it", o.display(img), strings.Join(in, " "), strings.Join(cmd, " "))
			return
		}
		o.logf("%s: regenerating %s (it holds %s): %s", k, o.display(img), strings.Join(in, " "), strings.Join(cmd, " "))
		cctx, cancel := context.WithTimeout(ctx, DefaultInitramfsTimeout)
		out, err := exec.CommandContext(cctx, cmd[0], cmd[1:]...).CombinedOutput()
		cancel()
		if err != nil {
			o.warnf("%s: %s: %v: %s", k, strings.Join(cmd, " "), err, kmp.OneLine(lastLines(string(out), 3)))
		}
		return
	}
}

func containsModule(list []string, m string) bool {
	for _, l := range list {
		if l == m {
			return true
		}
	}
	return false
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return fmt.Sprint(strings.Join(l, "; "))
}
