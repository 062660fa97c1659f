//go:build !cgo

package pkcs11

import (
	"errors"

	"github.com/kmpack/kmpack/kmp/sign"
)

// Available tells whether this kmpack can talk to PKCS#11 tokens (it was built with cgo).
const Available = false

// Open fails: PKCS#11 modules are C libraries loaded with dlopen, which needs cgo.
func Open(uri string, opt Options) (*sign.Signer, error) {
	if _, err := ParseURI(uri); err != nil {
		return nil, err
	}
	return nil, errors.New("this kmpack was built without cgo (CGO_ENABLED=0) and cannot load PKCS#11 modules: build it with cgo to sign with a pkcs11: key")
}
