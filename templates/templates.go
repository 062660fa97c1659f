// Package templates holds the scripts and file templates kmpack embeds in its binary, so that
// an installed kmpack needs nothing beside it.
package templates

import "embed"

// DKMSEval is the bash harness that evaluates a dkms.conf the way dkms's read_conf does: sourced
// in a subshell with dkms's variables and its VER function, stdout discarded, and every index of
// every dkms.conf directive written out NUL-separated on file descriptor 3.
//
//go:embed dkms-eval.bash
var DKMSEval string

// Scriptlets are the package scriptlet templates of the packaging profiles (text/template,
// one {{define}} per scriptlet).
//
//go:embed scriptlets/*.tmpl
var Scriptlets embed.FS

// Probe is a minimal module source (Kbuild, kmpack_probe.c) that kmpack builds against a devel
// tree to measure the kernel's struct module, which devel trees do not record anywhere.
//
//go:embed probe/Kbuild probe/kmpack_probe.c
var Probe embed.FS
