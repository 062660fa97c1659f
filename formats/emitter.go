package formats

import (
	"fmt"
	"io"
	"maps"
	"slices"
)

// Emitter writes packages of one format.
type Emitter interface {
	Format() string
	// FileName is the package file's conventional name.
	FileName(p *Package) string
	Write(p *Package, w io.Writer) error
}

var emitters = map[string]Emitter{}

// RegisterEmitter makes a format available to profiles; formats register themselves in init.
func RegisterEmitter(e Emitter) { emitters[e.Format()] = e }

// EmitterFor returns the emitter of a format.
func EmitterFor(format string) (Emitter, error) {
	e, ok := emitters[format]
	if !ok {
		return nil, fmt.Errorf("unknown package format %q (known: %v)", format, Formats())
	}
	return e, nil
}

// Formats lists the registered formats.
func Formats() []string { return slices.Sorted(maps.Keys(emitters)) }

func init() {
	RegisterEmitter(rpmEmitter{})
	RegisterEmitter(ociEmitter{})
	for _, f := range []string{"deb", "apk", "archlinux"} {
		RegisterEmitter(nfpmEmitter{format: f})
	}
}
