package kernel

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/module"
)

// KernelConfig is a kernel .config: CONFIG_ symbols to their values ("y", "m", a number, or a
// string with its quotes removed). Symbols that are "not set" are absent.
type KernelConfig map[string]string

// ReadKernelConfig reads a .config (or include/config/auto.conf).
func ReadKernelConfig(path string) (KernelConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseKernelConfig(path, data)
}

// ParseKernelConfig parses .config syntax: CONFIG_X=value lines, comments and blanks.
func ParseKernelConfig(path string, data []byte) (KernelConfig, error) {
	cfg := KernelConfig{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(text, "=")
		if !ok || !strings.HasPrefix(k, "CONFIG_") {
			return nil, kmp.InputErrorf(path, "line %d: not a CONFIG_ assignment", line)
		}
		if strings.HasPrefix(v, `"`) {
			s, err := strconv.Unquote(v)
			if err != nil {
				return nil, kmp.InputErrorf(path, "line %d: bad string value for %s", line, k)
			}
			v = s
		}
		cfg[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, kmp.InputErrorf(path, "line %d: %v", line+1, err)
	}
	return cfg, nil
}

// Enabled tells whether a bool/tristate option is y or m.
func (c KernelConfig) Enabled(name string) bool {
	v := c[name]
	return v == "y" || v == "m"
}

// ModuleCompression is how the kernel's own build compresses modules (CONFIG_MODULE_COMPRESS_*).
func (c KernelConfig) ModuleCompression() module.Compression {
	switch {
	case c.Enabled("CONFIG_MODULE_COMPRESS_ZSTD"):
		return module.CompressZstd
	case c.Enabled("CONFIG_MODULE_COMPRESS_XZ"):
		return module.CompressXZ
	case c.Enabled("CONFIG_MODULE_COMPRESS_GZIP"):
		return module.CompressGzip
	}
	return module.CompressNone
}

// Arch is the machine name uname -m reports for this configuration.
func (c KernelConfig) Arch() string {
	switch {
	case c.Enabled("CONFIG_X86_64"):
		return "x86_64"
	case c.Enabled("CONFIG_X86_32"):
		return "i386"
	case c.Enabled("CONFIG_ARM64"):
		return "aarch64"
	case c.Enabled("CONFIG_ARM"):
		return "arm"
	case c.Enabled("CONFIG_PPC64"):
		if c.Enabled("CONFIG_CPU_LITTLE_ENDIAN") {
			return "ppc64le"
		}
		return "ppc64"
	case c.Enabled("CONFIG_S390"):
		return "s390x"
	case c.Enabled("CONFIG_RISCV"):
		return "riscv64"
	case c.Enabled("CONFIG_LOONGARCH"):
		return "loongarch64"
	}
	return ""
}
