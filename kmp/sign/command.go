package sign

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"time"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/proc"
)

// DefaultCommandTimeout bounds one run of an external signer command.
const DefaultCommandTimeout = 2 * time.Minute

// The external signer protocol (README "Signing"). kmpack runs `/bin/sh -c CMD` once per
// signature, in a process group of its own, with:
//
//   - stdin: the raw digest of the module (32 bytes for sha256, 64 for sha512), then EOF;
//   - KMPACK_SIGN_HASH: the digest's name (sha256, sha512, ...);
//   - KMPACK_SIGN_DIGEST: the same digest in lower-case hex;
//   - KMPACK_SIGN_CERT: the certificate file kmpack was given (to pick the key, if the signer
//     holds several).
//
// The command prints the raw RSASSA-PKCS1-v1_5 signature (of the DigestInfo of that digest, as
// `openssl pkeyutl -sign -pkeyopt digest:sha256` makes) on stdout, exactly the key's size in
// bytes, and exits 0. Anything else fails the signature with the command's first line of stderr.
// kmpack checks the signature against the certificate before using it.
const (
	EnvSignHash   = "KMPACK_SIGN_HASH"
	EnvSignDigest = "KMPACK_SIGN_DIGEST"
	EnvSignCert   = "KMPACK_SIGN_CERT"
)

// maxSignerOutput bounds what is kept of a signer command's stdout (an RSA-16384 signature is 2 KiB).
const maxSignerOutput = 64 << 10

// commandKey is a crypto.Signer that asks an external command for each signature.
type commandKey struct {
	ctx      context.Context
	command  string
	certPath string
	pub      *rsa.PublicKey
	cn       string
	timeout  time.Duration
}

// NewCommandSigner makes a Signer whose private key never reaches kmpack: each signature is
// made by command (see the protocol above) for the key of the certificate at certPath. ctx
// cancels a running command; timeout (DefaultCommandTimeout if 0) bounds each run.
func NewCommandSigner(ctx context.Context, command, certPath string, timeout time.Duration) (*Signer, error) {
	if command == "" {
		return nil, errors.New("empty signer command")
	}
	cert, err := LoadCertificate(certPath)
	if err != nil {
		return nil, err
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, kmp.InputErrorf(certPath, "the certificate has a %T key; kernels verify module signatures made with RSA keys", cert.PublicKey)
	}
	if timeout <= 0 {
		timeout = DefaultCommandTimeout
	}
	return &Signer{
		Cert: cert,
		Key:  &commandKey{ctx: ctx, command: command, certPath: certPath, pub: pub, cn: cert.Subject.CommonName, timeout: timeout},
		// Named by its certificate, not its text: a command line often carries a token.
		Name: "signer command for " + certPath,
	}, nil
}

func (k *commandKey) Public() crypto.PublicKey { return k.pub }

func (k *commandKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	name := "signer command for " + k.certPath
	ctx, cancel := context.WithTimeout(k.ctx, k.timeout)
	defer cancel()
	cmd := proc.Command(ctx, "/bin/sh", "-c", k.command)
	cmd.Env = append(os.Environ(),
		EnvSignHash+"="+HashName(opts.HashFunc()),
		EnvSignDigest+"="+hex.EncodeToString(digest),
		EnvSignCert+"="+k.certPath)
	cmd.Stdin = bytes.NewReader(digest)
	stdout := &proc.Buffer{Limit: maxSignerOutput}
	stderr := &proc.Buffer{Limit: 4096}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := proc.Run(cmd)
	if k.ctx.Err() != nil {
		return nil, k.ctx.Err()
	}
	if ctx.Err() != nil {
		return nil, kmp.InputErrorf(name, "did not finish within %v", k.timeout)
	}
	if err != nil {
		msg := kmp.FirstLine(stderr.String())
		if msg == "" {
			msg = "no message on stderr"
		}
		return nil, kmp.InputErrorf(name, "failed (%v): %s", err, msg)
	}
	if stdout.Truncated() {
		return nil, kmp.InputErrorf(name, "printed more than %d bytes; want the %d-byte signature", maxSignerOutput, k.pub.Size())
	}
	sig := []byte(stdout.String())
	if len(sig) != k.pub.Size() {
		return nil, kmp.InputErrorf(name, "printed %d bytes; want the raw %d-byte RSA signature", len(sig), k.pub.Size())
	}
	if err := rsa.VerifyPKCS1v15(k.pub, opts.HashFunc(), digest, sig); err != nil {
		return nil, kmp.InputErrorf(name, "printed a signature that does not verify against the certificate %s (%q)", k.certPath, k.cn)
	}
	return sig, nil
}
