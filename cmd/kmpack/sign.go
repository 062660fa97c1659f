package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
	"github.com/kmpack/kmpack/kmp/sign"
	"github.com/kmpack/kmpack/kmp/sign/pkcs11"
	"github.com/kmpack/kmpack/kmp/source"
)

// exitVerifyFailed: verify found a module whose signature does not check out.
const exitVerifyFailed = 6

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Usage: "make an RSA key and X.509 certificate for signing kernel modules",
		Description: `Writes, in --out (default .), ` + sign.KeyFile + ` (PEM PKCS#8 private key, mode 0600),
` + sign.CertPEMFile + ` (PEM certificate) and ` + sign.CertDERFile + ` (DER certificate, for mokutil --import):
an RSA-4096 key, as the kernel's own build-time key, and a self-signed X.509 v3 certificate with
basicConstraints CA:FALSE, keyUsage digitalSignature, extendedKeyUsage codeSigning and a
subjectKeyIdentifier. It never replaces a file: if any of the three exists, nothing is written
and the exit status is 3.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Value: ".", Usage: "directory to write the key and certificates in"},
			&cli.StringFlag{Name: "cn", Value: "kmpack module signing key", Usage: "the certificate's common name (modinfo shows it as signer)"},
			&cli.IntFlag{Name: "days", Value: 3650, Usage: "validity of the certificate in days"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return usagef("keygen: unexpected argument %q", c.Args().First())
			}
			if c.Int("days") <= 0 {
				return usagef("keygen: --days must be positive")
			}
			kp, err := sign.Keygen(sign.KeygenOptions{Dir: c.String("out"), CN: c.String("cn"), Days: c.Int("days")})
			if err != nil {
				return err
			}
			fmt.Printf("key:         %s\ncertificate: %s\n             %s\nserial:      %v\nexpires:     %s\n",
				kp.Key, kp.CertPEM, kp.CertDER, module.HexBytes(kp.Cert.SerialNumber.Bytes()), kp.Cert.NotAfter.Format("2006-01-02"))
			return nil
		},
	}
}

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "check modules' appended signatures against a certificate",
		ArgsUsage: "--cert CERT MODULE.ko[.gz|.xz|.zst] ...",
		Description: `Verifies, in Go, each module's appended PKCS#7 signature over the module's bytes as the
kernel would with only CERT (PEM or DER) trusted, and prints one line per module: "FILE: ok",
or "FILE: REASON: detail", REASON being unsigned, signed by another key (naming the signer and
key id), digest mismatch (changed after signing), signature not made by the certificate's key,
or bad signature structure (what the kernel refuses).

Exit status: 0 every module verifies; 6 at least one does not; 3 the certificate or a module file
cannot be read or is malformed (takes precedence over 6).`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "cert", Required: true, Usage: "the certificate (PEM or DER) the signatures must check out against"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usagef("verify: no module files given")
			}
			cert, err := sign.LoadCertificate(c.String("cert"))
			if err != nil {
				return err
			}
			bad, failed := 0, 0
			for _, f := range c.Args().Slice() {
				data, _, err := module.ReadMaybeCompressed(f)
				if err == nil {
					err = sign.VerifyModule(f, data, cert)
				}
				var vf *sign.VerifyFailure
				switch {
				case err == nil:
					fmt.Printf("%s: ok\n", f)
				case errors.As(err, &vf):
					fmt.Println(vf.Error())
					failed++
				default:
					fmt.Fprintln(os.Stderr, "kmpack:", err)
					bad++
				}
			}
			switch {
			case bad > 0:
				return cli.Exit("", exitInput)
			case failed > 0:
				return cli.Exit("", exitVerifyFailed)
			}
			return nil
		},
	}
}

// Signing options of kmpack build; the environment variables are for CI, where keys arrive
// as files and a passphrase as a secret variable.
func signingFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "sign-key", EnvVars: []string{"KMPACK_SIGN_KEY"}, Usage: "sign modules with this PEM private key or pkcs11: URI (repeatable: a second key signs too, for key rotation)"},
		&cli.StringSliceFlag{Name: "sign-cert", EnvVars: []string{"KMPACK_SIGN_CERT"}, Usage: "the certificate of each --sign-key, then of each --sign-command, in order (PEM or DER)"},
		&cli.StringSliceFlag{Name: "sign-command", EnvVars: []string{"KMPACK_SIGN_COMMAND"}, Usage: "an external signer that gets only digests (see README, Signing); its certificate comes from --sign-cert"},
		&cli.BoolFlag{Name: "sign", EnvVars: []string{"KMPACK_SIGN"}, Usage: "sign with the keys kmpack.yaml's signing.keys names (a source cannot choose a key by itself)"},
		&cli.StringFlag{Name: "pkcs11-module", EnvVars: []string{"KMPACK_PKCS11_MODULE"}, Value: pkcs11.DefaultModule, Usage: "the PKCS#11 module for a pkcs11: --sign-key without module-path (its PIN: pin-source=file:PATH in the URI, or $" + pkcs11.EnvPIN + ")"},
		&cli.StringFlag{Name: "sign-passphrase-file", EnvVars: []string{"KMPACK_SIGN_PASSPHRASE_FILE"}, Usage: "read an encrypted --sign-key's passphrase from this file's first line (or set KMPACK_SIGN_PASSPHRASE)"},
	}
}

// specSigners are the signers kmpack.yaml names, used only with --sign; and a build that would
// sign nothing while the spec says signing.required is an input error.
func specSigners(c *cli.Context, src *source.Source, signers []sign.Signer) ([]sign.Signer, error) {
	if src.Spec == nil {
		if c.Bool("sign") {
			return nil, usagef("--sign uses kmpack.yaml's signing.keys; %s has no kmpack.yaml", src.Dir)
		}
		return signers, nil
	}
	sp := src.Spec.Signing
	if len(signers) == 0 && c.Bool("sign") {
		if len(sp.Keys) == 0 {
			return nil, kmp.InputErrorf(src.Spec.Path(), "--sign: signing.keys names no key")
		}
		var out []sign.Signer
		var names []string
		for _, k := range sp.Keys {
			pass, err := passphrase(c, "KMPACK_SIGN_PASSPHRASE", "sign-passphrase-file")
			if err != nil {
				return nil, err
			}
			s, err := sign.LoadKeyInDir(src.Dir, k.Key, k.Cert, pass)
			if err != nil {
				return nil, err
			}
			out, names = append(out, *s), append(names, filepath.Join(src.Dir, k.Cert))
		}
		return out, checkCertificates(out, names)
	}
	if len(signers) == 0 && sp.Required {
		return nil, kmp.InputErrorf(src.Spec.Path(), "signing.required: no key to sign with (--sign-key/--sign-cert, or --sign to use signing.keys)")
	}
	return signers, nil
}

// signersFromFlags loads build's signers: keys first, then commands, each paired with the
// --sign-cert at its position. A pkcs11: key may go without one, reading its certificate from
// its token: when there are as many --sign-cert as file keys and commands, the pkcs11: keys take
// theirs from their tokens and the others pair in order.
func signersFromFlags(c *cli.Context) ([]sign.Signer, error) {
	keys, certs, cmds := c.StringSlice("sign-key"), c.StringSlice("sign-cert"), c.StringSlice("sign-command")
	if len(keys)+len(cmds) == 0 {
		if len(certs) > 0 {
			return nil, usagef("--sign-cert without --sign-key or --sign-command")
		}
		return nil, nil
	}
	tokenKeys := 0
	for _, k := range keys {
		if pkcs11.IsURI(k) {
			tokenKeys++
		}
	}
	fromToken := tokenKeys > 0 && len(certs) == len(keys)+len(cmds)-tokenKeys
	if len(certs) != len(keys)+len(cmds) && !fromToken {
		return nil, usagef("%d --sign-cert for %d --sign-key and %d --sign-command: give one certificate for each, keys' first (a pkcs11: key may take its certificate from its token)", len(certs), len(keys), len(cmds))
	}
	return loadSigners(c, keys, certs, cmds, fromToken)
}

// loadSigners loads keys (files or pkcs11: URIs) and signer commands, pairing each with the
// certificate at its position; with fromToken, pkcs11: keys take theirs from their tokens.
func loadSigners(c *cli.Context, keys, certs, cmds []string, fromToken bool) ([]sign.Signer, error) {
	next := 0
	certFor := func(tokenKey bool) string {
		if tokenKey && fromToken {
			return ""
		}
		next++
		return certs[next-1]
	}
	var signers []sign.Signer
	var names []string
	for _, k := range keys {
		if pkcs11.IsURI(k) {
			cert := certFor(true)
			s, err := pkcs11.Open(k, pkcs11.Options{Module: c.String("pkcs11-module"), CertPath: cert, Warn: warn})
			if err != nil {
				return nil, err
			}
			signers, names = append(signers, *s), append(names, cert)
			continue
		}
		pass, err := passphrase(c, "KMPACK_SIGN_PASSPHRASE", "sign-passphrase-file")
		if err != nil {
			return nil, err
		}
		cert := certFor(false)
		s, err := sign.LoadKeyFile(k, cert, pass)
		if err != nil {
			return nil, err
		}
		signers, names = append(signers, *s), append(names, cert)
	}
	for _, cmd := range cmds {
		cert := certFor(false)
		s, err := sign.NewCommandSigner(c.Context, cmd, cert, 0)
		if err != nil {
			return nil, err
		}
		signers, names = append(signers, *s), append(names, cert)
	}
	if err := checkCertificates(signers, names); err != nil {
		return nil, err
	}
	return signers, nil
}

func warn(s string) { fmt.Fprintln(os.Stderr, "kmpack: warning:", s) }

// checkCertificates refuses a certificate no kernel accepts module signatures from and warns,
// once per certificate, about what some kernels or policies mind (sign.CheckCertificate).
func checkCertificates(signers []sign.Signer, names []string) error {
	now := time.Now()
	for i, s := range signers {
		name := s.Name
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		warnings, err := sign.CheckCertificate(name, s.Cert, now)
		if err != nil {
			return err
		}
		for _, w := range warnings {
			warn(w)
		}
	}
	return nil
}

// passphrase is an encrypted key's passphrase: the environment variable env when it is set,
// else the first line of the file fileFlag names, else nil (never from the command line).
func passphrase(c *cli.Context, env, fileFlag string) ([]byte, error) {
	if _, ok := os.LookupEnv(env); !ok {
		env = ""
	}
	return sign.ReadPassphrase(env, c.String(fileFlag))
}

// secretFiles are the files a build's commands must not read: signing keys, package signing
// keys and passphrase files (build.BuildOptions.Secrets).
func secretFiles(c *cli.Context, src *source.Source) []string {
	var out []string
	add := func(p string) {
		if p == "" || pkcs11.IsURI(p) {
			return
		}
		if a, err := filepath.Abs(p); err == nil {
			out = append(out, a)
		}
	}
	for _, k := range c.StringSlice("sign-key") {
		if u, err := pkcs11.ParseURI(k); pkcs11.IsURI(k) && err == nil && u.PINSource != "" {
			add(strings.TrimPrefix(u.PINSource, "file:")) // the token's PIN file
		}
		add(k)
	}
	for _, f := range []string{"sign-passphrase-file", "gpg-key", "gpg-passphrase-file", "apk-key", "apk-passphrase-file"} {
		add(c.String(f))
	}
	if src.Spec != nil {
		for _, k := range src.Spec.Signing.Keys {
			if !filepath.IsAbs(k.Key) {
				k.Key = filepath.Join(src.Dir, k.Key)
			}
			add(k.Key)
		}
	}
	return out
}
