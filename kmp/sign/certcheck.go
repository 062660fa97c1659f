package sign

import (
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/kmpack/kmpack/kmp"
)

// MinRSABits is the smallest RSA key CheckCertificate accepts without a warning: kernels in FIPS
// mode (RHEL's) refuse smaller keys, and NIST has disallowed them for signatures since 2013.
const MinRSABits = 2048

// CheckCertificate looks at a signing certificate the way the kernels kmpack targets will, before
// any module is signed with it, and sorts what it finds into refusals and warnings:
//
//   - refused (an *kmp.InputError naming name): a key that is not RSA. sign-file's signature says
//     rsaEncryption, and Debian 6.1 cannot even load an ECDSA certificate
//     (shared/reference/secure-boot.md §1.3); every module signed with it would be rejected.
//   - warned: a certificate that has expired or is not yet valid. The kernel loads certificates
//     without looking at their dates (x509_key_preparse only logs them) and a module signature
//     carries no signing time to compare them with (pkcs7_verify_one compares dates only with a
//     signed signingTime attribute, which the kernel refuses in module signatures), so such a
//     module loads; but expiry usually means a key that was meant to be retired.
//   - warned: no extendedKeyUsage codeSigning (no EKU at all, or an EKU without it). Mainline,
//     Debian, Fedora and RHEL kernels ignore EKU, and the kernel's own build key has none; SUSE's
//     CONFIG_CHECK_CODESIGN_EKU kernels treat a key without codeSigning as unavailable (the
//     module is "signed with an unavailable key").
//   - warned: an RSA key smaller than MinRSABits.
//
// A CA:TRUE certificate is accepted without a word: kernels do not look at basicConstraints for
// module signatures, and dkms's own `openssl req -x509` certificates are CA:TRUE (accepted by
// Debian 6.1, secure-boot.md §6). Neither is keyUsage checked for module signatures.
func CheckCertificate(name string, cert *x509.Certificate, now time.Time) (warnings []string, err error) {
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, kmp.InputErrorf(name, "the certificate %q has an %s key, not RSA: kernels verify module signatures made with RSA keys (Debian 6.1 cannot even load another kind)", cert.Subject.CommonName, keyKind(cert))
	}
	cn := cert.Subject.CommonName
	switch {
	case now.After(cert.NotAfter):
		warnings = append(warnings, fmt.Sprintf("%s: the certificate %q expired on %s; kernels do not check certificate dates for module signatures, so modules signed with it still load, but it may be a key meant to be retired", name, cn, cert.NotAfter.UTC().Format("2006-01-02")))
	case now.Before(cert.NotBefore):
		warnings = append(warnings, fmt.Sprintf("%s: the certificate %q is not valid before %s; kernels do not check certificate dates for module signatures, so modules signed with it still load", name, cn, cert.NotBefore.UTC().Format("2006-01-02 15:04 MST")))
	}
	if !hasCodeSigning(cert) {
		what := "no extendedKeyUsage"
		if len(cert.ExtKeyUsage) > 0 || len(cert.UnknownExtKeyUsage) > 0 {
			what = "an extendedKeyUsage without codeSigning"
		}
		warnings = append(warnings, fmt.Sprintf("%s: the certificate %q has %s: SUSE kernels built with CONFIG_CHECK_CODESIGN_EKU reject modules signed with it (others ignore EKU); kmpack keygen makes codeSigning certificates", name, cn, what))
	}
	if bits := pub.N.BitLen(); bits < MinRSABits {
		warnings = append(warnings, fmt.Sprintf("%s: the certificate %q has a %d-bit RSA key: kernels in FIPS mode refuse keys under %d bits", name, cn, bits, MinRSABits))
	}
	return warnings, nil
}

func hasCodeSigning(cert *x509.Certificate) bool {
	for _, u := range cert.ExtKeyUsage {
		if u == x509.ExtKeyUsageCodeSigning {
			return true
		}
	}
	return false
}

func keyKind(cert *x509.Certificate) string {
	switch cert.PublicKeyAlgorithm {
	case x509.ECDSA:
		return "ECDSA"
	case x509.Ed25519:
		return "Ed25519"
	case x509.DSA:
		return "old DSA"
	}
	return fmt.Sprintf("unknown (%T)", cert.PublicKey)
}
