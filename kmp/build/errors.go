package build

import (
	"os"

	"github.com/kmpack/kmpack/kmp"
)

func inputErrorf(path, format string, args ...any) error {
	return kmp.InputErrorf(path, format, args...)
}

// guard, deferred, turns a panic of a parser of untrusted bytes into an *kmp.InputError.
func guard(path string, err *error) {
	if r := recover(); r != nil {
		*err = kmp.PanicError(path, r)
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
