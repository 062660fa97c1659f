// Package kmp is kmpack's domain model: kernel devel trees, symbol version tables (Module.symvers)
// and built kernel modules. Everything here reads untrusted bytes defensively: a malformed input
// yields an *InputError naming the file and the problem, never a panic.
package kmp

import (
	"errors"
	"fmt"
)

// InputError reports input that kmpack cannot use: a malformed module, symvers file, package or
// kernel tree. Its message is one line, "FILE: problem", so a caller can print it as it is.
type InputError struct {
	Path string
	Err  error
}

func (e *InputError) Error() string {
	if e.Path == "" {
		return e.Err.Error()
	}
	return e.Path + ": " + e.Err.Error()
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
		*err = inputErrorf(path, "malformed input (parser failed: %v)", r)
	}
}
