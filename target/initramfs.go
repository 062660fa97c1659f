package target

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/proc"
	"github.com/kmpack/kmpack/weakupdates"
)

// Bounds on an initramfs read for its module list: Debian's with MODULES=most is ~70 MB
// unpacked and ~3,000 entries.
const (
	maxInitramfsBytes   = 4 << 30
	maxInitramfsEntries = 1 << 20
	maxCpioName         = 4096
	maxModuleName       = 55 // MODULE_NAME_LEN (64 - sizeof(unsigned long)) less its NUL
	maxInitramfsModules = 1 << 16
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
			// Longer names are no kernel's modules (MODULE_NAME_LEN); and a bound on distinct
			// names keeps a small hostile image from costing gigabytes.
			if n := module.ModuleNameFromPath(base); len(n) <= maxModuleName && !seen[n] && len(mods) < maxInitramfsModules {
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

// initramfsImages are where distributions keep a kernel's initramfs: initramfs-tools, dracut,
// and the Boot Loader Specification's type 1 layout that kernel-install writes
// ($BOOT/<entry token>/<release>/initrd, $BOOT being /boot, /efi or /boot/efi; the token is
// /etc/kernel/entry-token's, else the machine id).
func initramfsImages(r *os.Root, k string) []string {
	imgs := []string{"boot/initrd.img-" + k, "boot/initramfs-" + k + ".img"}
	for _, tok := range entryTokens(r) {
		for _, b := range []string{"boot", "efi", "boot/efi"} {
			imgs = append(imgs, b+"/"+tok+"/"+k+"/initrd")
		}
	}
	return imgs
}

// entryTokens are the root's boot entry tokens kernel-install may have used: a plain path
// component each (a token read from a file never leads elsewhere).
func entryTokens(r *os.Root) []string {
	var toks []string
	for _, name := range []string{"etc/kernel/entry-token", "etc/machine-id"} {
		f, err := r.Open(name)
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(f, 256))
		f.Close()
		tok := strings.TrimSpace(string(b))
		if tok != "" && ident.PathComponent(tok) == nil && !slices.Contains(toks, tok) {
			toks = append(toks, tok)
		}
	}
	return toks
}

// DefaultInitramfsTimeout bounds one initramfs regeneration.
const DefaultInitramfsTimeout = 10 * time.Minute

// initramfsPendingDir holds one mark per kernel whose initramfs must be regenerated: written
// before the state that makes the need invisible, removed once the tool succeeded, so a run
// killed (or a tool that failed) in between is caught up by the next.
const initramfsPendingDir = autoDir + "/initramfs-pending"

// staleInitramfs says which of k's images holds one of mods (module names whose files changed)
// and why it must be regenerated; "" when none does. An image kmpack cannot read is
// regenerated too: a stale initramfs loads the old module at boot.
func (o *Options) staleInitramfs(r *os.Root, k string, mods []string) (img, why string) {
	if len(mods) == 0 {
		return "", ""
	}
	for _, img := range initramfsImages(r, k) {
		f, err := r.Open(img)
		if err != nil {
			continue
		}
		held, err := InitramfsModules(o.display(img), f)
		f.Close()
		if err != nil {
			return img, "it cannot be read to tell whether it holds " + strings.Join(mods, " ") + ": " + kmp.OneLine(err.Error())
		}
		var in []string
		for _, m := range mods {
			if slices.Contains(held, m) {
				in = append(in, m)
			}
		}
		if len(in) > 0 {
			return img, "it holds " + strings.Join(in, " ")
		}
		return "", ""
	}
	return "", ""
}

// initramfsCommand is the distribution's tool that rebuilds img for k.
func initramfsCommand(img, k string) []string {
	switch {
	case fileExists("/usr/sbin/update-initramfs") && strings.HasPrefix(img, "boot/initrd.img-"):
		return []string{"/usr/sbin/update-initramfs", "-u", "-k", k}
	case fileExists("/usr/bin/dracut"):
		// The image named: dracut's default is initramfs-K.img, or a BLS entry's.
		return []string{"/usr/bin/dracut", "-f", "/" + img, k}
	}
	return nil
}

// initramfsJob is a regeneration decided: which image, why, with what.
type initramfsJob struct {
	k, img, why string
	cmd         []string
}

// planInitramfs decides whether k's initramfs must be regenerated after mods changed
// (staleInitramfs), and marks it pending before the caller records the change: a run killed
// before the tool succeeded leaves the mark for the next. In a root other than "/" it only says
// what to run there (this machine's tool builds this machine's image) and returns nil.
func (o *Options) planInitramfs(r *os.Root, k string, mods []string) *initramfsJob {
	img, why := o.staleInitramfs(r, k, mods)
	if img == "" {
		return nil
	}
	cmd := initramfsCommand(img, k)
	switch {
	case cmd == nil:
		o.warnf("%s must be regenerated (%s): no update-initramfs or dracut here", o.display(img), why)
		return nil
	case o.root() != "/":
		o.warnf("%s must be regenerated (%s): not done in a root; run %s in it", o.display(img), why, strings.Join(cmd, " "))
		return nil
	}
	if err := weakupdates.WriteAtomic(r, initramfsPendingDir+"/"+k, []byte(img+"\n")); err != nil {
		o.warnf("%s: %v", k, err)
	}
	return &initramfsJob{k, img, why, cmd}
}

func (o *Options) runInitramfs(ctx context.Context, r *os.Root, j *initramfsJob) {
	if j != nil {
		o.regenerate(ctx, r, j.k, j.img, j.why, j.cmd)
	}
}

func (o *Options) regenerate(ctx context.Context, r *os.Root, k, img, why string, cmd []string) {
	o.logf("%s: regenerating %s (%s): %s", k, o.display(img), why, strings.Join(cmd, " "))
	cctx, cancel := context.WithTimeout(ctx, DefaultInitramfsTimeout)
	defer cancel()
	c := proc.Command(cctx, cmd[0], cmd[1:]...)
	var out proc.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := proc.Run(c); err != nil {
		o.warnf("%s: %s: %v: %s (the next kmpack autoinstall tries again)", k, strings.Join(cmd, " "), err, lastLines(out.String()))
		return
	}
	weakupdates.RemoveDurably(r, initramfsPendingDir+"/"+k)
}

// pendingInitramfs regenerates the images a killed run or a failed tool left marked.
func (o *Options) pendingInitramfs(ctx context.Context, r *os.Root) {
	images := map[string]string{}
	// A mark whose kernel and image are gone, or that this run cannot act on, goes.
	for _, k := range pendingMarks(r, initramfsPendingDir, func(k string) bool {
		for _, img := range initramfsImages(r, k) {
			if _, err := r.Stat(img); err == nil {
				images[k] = img
				return initramfsCommand(img, k) != nil && o.root() == "/"
			}
		}
		return false
	}) {
		o.regenerate(ctx, r, k, images[k], "an earlier run could not", initramfsCommand(images[k], k))
	}
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}
