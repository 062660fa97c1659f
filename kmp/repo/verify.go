package repo

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"

	"github.com/kmpack/kmpack/kmp"
)

// MaxKeyringBytes bounds a keyring file.
const MaxKeyringBytes = 16 << 20

// ReadKeyring reads an OpenPGP keyring file, binary (as /usr/share/keyrings/*.gpg) or armored
// (as gpg --armor --export writes, or repomd.xml.key).
func ReadKeyring(path string) (openpgp.EntityList, error) {
	data, err := kmp.ReadRegularFile(path, MaxKeyringBytes)
	if err != nil {
		return nil, kmp.InputErrorf(path, "%v", err)
	}
	return ParseKeyring(path, data)
}

// readKeyringIn reads a keyring that a file (kmpack.yaml) names, relative to dir and beneath it.
func readKeyringIn(dir, rel string) (openpgp.EntityList, error) {
	name := filepath.Join(dir, rel)
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, kmp.InputErrorf(name, "%v", kmp.UnwrapPathError(err))
	}
	defer root.Close()
	data, _, err := kmp.ReadRootFile(root, rel, MaxKeyringBytes)
	if err != nil {
		return nil, kmp.InputErrorf(name, "%v", kmp.UnwrapPathError(err))
	}
	return ParseKeyring(name, data)
}

// ParseKeyring parses keyring bytes, binary or armored; name is used in errors.
func ParseKeyring(name string, data []byte) (kr openpgp.EntityList, err error) {
	defer kmp.Guard(name, &err)
	if bytes.Contains(data, []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----")) {
		kr, err = openpgp.ReadArmoredKeyRing(bytes.NewReader(data))
	} else {
		kr, err = openpgp.ReadKeyRing(bytes.NewReader(data))
	}
	if err != nil {
		return nil, kmp.InputErrorf(name, "not an OpenPGP keyring: %v", err)
	}
	if len(kr) == 0 {
		return nil, kmp.InputErrorf(name, "no keys")
	}
	return kr, nil
}

// keyring loads s's keyring; nil when it has none.
func (s *Source) keyring() (openpgp.EntityList, error) {
	switch {
	case s.Keyring == "":
		return nil, nil
	case s.KeyringDir != "":
		return readKeyringIn(s.KeyringDir, s.Keyring)
	}
	return ReadKeyring(s.Keyring)
}

// verifyClearsigned checks an InRelease against kr and returns the text that was signed.
func verifyClearsigned(name string, data []byte, kr openpgp.KeyRing) (text []byte, err error) {
	defer kmp.Guard(name, &err)
	// Our own reader first: clearsign.Decode panics on some malformed input (see clearsignedText).
	if _, err := clearsignedText(data); err != nil {
		return nil, kmp.InputErrorf(name, "malformed clearsigned InRelease: %v", err)
	}
	b, _ := clearsign.Decode(data)
	if b == nil || b.ArmoredSignature == nil {
		return nil, kmp.InputErrorf(name, "malformed clearsigned InRelease")
	}
	if _, err := openpgp.CheckDetachedSignature(kr, bytes.NewReader(b.Bytes), b.ArmoredSignature.Body, nil); err != nil {
		return nil, kmp.InputErrorf(name, "signature not valid with the keyring given: %v", err)
	}
	return b.Plaintext, nil
}

// verifyDetached checks a detached signature (Release.gpg, repomd.xml.asc; armored or binary).
func verifyDetached(name string, data, sig []byte, kr openpgp.KeyRing) (err error) {
	defer kmp.Guard(name, &err)
	if bytes.Contains(sig, []byte("-----BEGIN PGP SIGNATURE-----")) {
		_, err = openpgp.CheckArmoredDetachedSignature(kr, bytes.NewReader(data), bytes.NewReader(sig), nil)
	} else {
		_, err = openpgp.CheckDetachedSignature(kr, bytes.NewReader(data), bytes.NewReader(sig), nil)
	}
	if err != nil {
		return kmp.InputErrorf(name, "signature not valid with the keyring given: %v", err)
	}
	return nil
}

func unverifiedNote(u string) string {
	return fmt.Sprintf("%s: signature not verified (no keyring given)", u)
}
