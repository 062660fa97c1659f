package build

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/kmpack/kmpack/kmp/kernel"
)

var (
	clangVersionRE    = regexp.MustCompile(`version (\d+\.\d+\.\d+)`)
	hostCompilerMu    sync.Mutex
	hostCompilerCache = map[string]string{}
)

// ProbeCompiler runs the compiler kernel.OpenKernelTree found (a checked name on PATH, never a path from the tree)
// to learn its full version: HostVersion, and Exact when it equals the kernel's. Build calls it
// before building; describing a tree does not. Results are kept per compiler.
func ProbeCompiler(ci *kernel.CompilerInfo) {
	if !ci.Available || ci.HostVersion != "" {
		return
	}
	ci.HostVersion = hostCompilerVersion(ci.Path, ci.Kind)
	ci.Exact = ci.HostVersion != "" && ci.HostVersion == ci.Version
}

// hostCompilerVersion runs `cmd -dumpfullversion` (gcc) or parses `cmd --version` (clang), once per command.
func hostCompilerVersion(path, kind string) string {
	hostCompilerMu.Lock()
	defer hostCompilerMu.Unlock()
	if v, ok := hostCompilerCache[path]; ok {
		return v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var v string
	if kind == "gcc" {
		if out, err := exec.CommandContext(ctx, path, "-dumpfullversion", "-dumpversion").Output(); err == nil {
			v = strings.TrimSpace(string(out))
		}
	} else if out, err := exec.CommandContext(ctx, path, "--version").Output(); err == nil {
		if m := clangVersionRE.FindSubmatch(out); m != nil {
			v = string(m[1])
		}
	}
	hostCompilerCache[path] = v
	return v
}
