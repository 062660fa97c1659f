// Package kmp is the root of kmpack's domain, split into packages by the pipeline stage each
// owns: module (parsing modules, symvers, signatures: pure, no exec), kernel (kernel devel
// trees: discovery, kconfig, flavors), unpack (package files into a contained cache), source
// (dkms.conf, kmpack.yaml and Kbuild sources into build plans), build (the build engine:
// jobserver, cache, manifest) and ident (the identifier validator). This package holds what
// they share: InputError, the error every stage returns for input it cannot use.
package kmp

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode"
)

// InputError reports input that kmpack cannot use: a malformed module, symvers file, package or
// kernel tree. Its message is one line, "FILE: problem", so a caller can print it as it is.
type InputError struct {
	Path string
	Err  error
}

func (e *InputError) Error() string {
	msg := e.Err.Error()
	if e.Path != "" {
		msg = e.Path + ": " + msg
	}
	return OneLine(msg)
}

// OneLine escapes control characters, which hostile inputs put into names we quote, so the
// message stays one line on a terminal and in logs.
func OneLine(s string) string {
	if !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (e *InputError) Unwrap() error { return e.Err }

// InputErrorf makes an *InputError for path.
func InputErrorf(path, format string, args ...any) error {
	return &InputError{Path: path, Err: fmt.Errorf(format, args...)}
}

// IsInputError tells whether err (or anything it wraps) is an *InputError: the input is at fault,
// not the machine.
func IsInputError(err error) bool {
	var ie *InputError
	return errors.As(err, &ie)
}

// Guard, deferred directly (`defer kmp.Guard(path, &err)`), turns a panic of a parser of
// untrusted bytes (ours or a library's) into an InputError: a crash on a hostile file would lose
// the user's other results. With KMPACK_PANIC set (the fuzz targets set it) it panics again, so
// that fuzzing finds the bug instead of an error message.
func Guard(path string, err *error) {
	r := recover()
	if r == nil {
		return
	}
	if os.Getenv("KMPACK_PANIC") != "" {
		panic(r)
	}
	*err = InputErrorf(path, "malformed input (parser failed: %v)", r)
}

// UnwrapPathError drops the *os.PathError around err: the caller's message names the file.
func UnwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// FirstLine is the first line of s, trimmed: a tool's one-line complaint from its output.
func FirstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
