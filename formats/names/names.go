// Package names holds the package names and kernel tags the rpm profiles give a module's
// package for a kernel. The emitters (formats) write them; a target machine's autoinstall
// (target) looks them up in the repositories and the rpm database: one definition, so the two
// never disagree.
package names

import (
	"fmt"
	"strings"
)

// RHEL is the rhel profile's package name of module source name: kmodtool's kmod-<name>,
// the same for every kernel.
func RHEL(name string) string { return "kmod-" + name }

// RHELKernelTag is what the rhel profile appends to a kmod's release ("." + tag) for kernel
// release krel of architecture arch (uname -m spelling): the release without its ".arch"
// suffix, "-" as "_" (rpm forbids "-" in a release). kmodtool builds for one kernel; kmpack
// may build for several, so each kernel's package has its own NEVRA.
func RHELKernelTag(krel, arch string) string {
	return strings.ReplaceAll(strings.TrimSuffix(krel, "."+arch), "-", "_")
}

// SUSEKernel splits a release the way SUSE's tools do (weak-modules2, find-provides.ksyms):
// the flavor is the last dash component, the kernel version what precedes it.
func SUSEKernel(krel string) (kver, flavor string, err error) {
	i := strings.LastIndex(krel, "-")
	if i <= 0 || i == len(krel)-1 {
		return "", "", fmt.Errorf("kernel release %q has no -<flavor> suffix, and SUSE KMPs are made per flavor", krel)
	}
	return krel[:i], krel[i+1:], nil
}

// SUSE is the suse profile's package name of module source name for kernel release krel:
// <name>-kmp-<flavor>, the same for every kernel of the flavor.
func SUSE(name, krel string) (string, error) {
	_, flavor, err := SUSEKernel(krel)
	if err != nil {
		return "", err
	}
	return name + "-kmp-" + flavor, nil
}

// SUSEKernelTag is what the suse profile appends to a KMP's version ("_" + tag) for kernel
// release krel: "k" and the kernel version, "-" as "_" (kernel-module-subpackage's
// %{-v*}_k%(echo %kernel_version | tr - _)).
func SUSEKernelTag(krel string) (string, error) {
	kver, _, err := SUSEKernel(krel)
	if err != nil {
		return "", err
	}
	return "k" + strings.ReplaceAll(kver, "-", "_"), nil
}
