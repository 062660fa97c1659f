// Package kmp is kmpack's domain model: kernel devel trees, symbol version tables (Module.symvers)
// and built kernel modules. Everything here reads untrusted bytes defensively: a malformed input
// yields an *InputError naming the file and the problem, never a panic.
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
	return oneLine(msg)
}

// oneLine escapes control characters, which hostile inputs put into names we quote, so the
// message stays one line on a terminal and in logs.
func oneLine(s string) string {
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

func inputErrorf(path, format string, args ...any) error {
	return &InputError{Path: path, Err: fmt.Errorf(format, args...)}
}

// IsInputError tells whether err (or anything it wraps) is an *InputError: the input is at fault,
// not the machine.
func IsInputError(err error) bool {
	var ie *InputError
	return errors.As(err, &ie)
}

// guard turns a panic from a parser of untrusted bytes (ours or the standard library's) into an
// InputError: a crash on a hostile file would lose the user's other results.
func guard(path string, err *error) {
	if r := recover(); r != nil {
		if os.Getenv("KMPACK_PANIC") != "" {
			panic(r)
		}
		*err = inputErrorf(path, "malformed input (parser failed: %v)", r)
	}
}
