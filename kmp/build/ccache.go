package build

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Compile reuse (BuildOptions.CompileCache) is Debian's ccache, run by its bare name from PATH
// as the compiler's wrapper: CC="ccache gcc-12". Its configuration is kmpack's alone (every
// CCACHE_* variable of the caller is dropped, no configuration file is read) and is chosen so
// that a hit gives the very bytes the compiler would have written:
//
//   - depend mode (hits looked up from the include files' contents, recorded from the
//     compiler's own -MD output): a miss runs the compiler once, not the preprocessor and then
//     the compiler as ccache's preprocessor mode does (which made cold builds ~80% slower);
//   - no base_dir, hash_dir on, no sloppiness, compiler_check mtime: the compiler's name, size
//     and mtime, every argument, the working directory and every include file's path and
//     contents are in the key. Kbuild passes the kernel tree's paths (-I, -include,
//     -fmacro-prefix-map) and, with CONFIG_DEBUG_INFO, the object's DWARF holds them (comp_dir,
//     the line table's directories), and a module's --build-id=sha1 covers the DWARF: an object
//     compiled against another tree cannot be reused without changing the module's bytes. So
//     kernel trees do not share objects; what is reused is every compile whose tree and input
//     did not change (a --no-cache rebuild, a new build engine, a source whose other files
//     changed) and Kbuild's compiler probes, which are the same for every tree;
//   - copies, never hard links: objtool rewrites the object in place after the compile.
//
// Objects are kept per source name (compileCachePartition): a build can write only its own
// source's partition (in a private mount namespace the rest of the cache is read-only), so it
// cannot plant an object in another source's build.

// CompileCacheMaxSize is ccache's max_size for one source's partition of the compile cache.
const CompileCacheMaxSize = "2G"

// compileCacheUnused is how long a partition of the compile cache may go unused before a build
// with the compile cache removes it.
const compileCacheUnused = 30 * 24 * time.Hour

// compileCachePartition is the directory under root that holds the compile results of the
// source called name.
func compileCachePartition(root, name string) string {
	sum := sha256.Sum256([]byte(name))
	return filepath.Join(root, hex.EncodeToString(sum[:8]))
}

// CompileCachePartition is the ccache directory (CCACHE_DIR) a build of the source called name
// uses under BuildOptions.CompileCache root.
func CompileCachePartition(root, name string) string {
	return compileCachePartition(root, name)
}

// openCompileCache makes name's partition under root, marks it used and removes partitions
// unused for compileCacheUnused. It returns "" (and why) when ccache is not on PATH.
func openCompileCache(root, name string) (string, string, error) {
	if _, err := exec.LookPath("ccache"); err != nil {
		return "", "no ccache on PATH: compile reuse (--compile-cache) is off, building without it (apt-get install ccache)", nil
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return "", "", err
	}
	dir := compileCachePartition(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	now := time.Now()
	if err := os.Chtimes(dir, now, now); err != nil {
		return "", "", err
	}
	if entries, err := os.ReadDir(root); err == nil {
		for _, e := range entries {
			p := filepath.Join(root, e.Name())
			if !e.IsDir() || p == dir || len(e.Name()) != 16 {
				continue
			}
			if fi, err := e.Info(); err == nil && now.Sub(fi.ModTime()) > compileCacheUnused {
				os.RemoveAll(p) // a partition in use was touched when its build started
			}
		}
	}
	return dir, "", nil
}

// ccacheEnv replaces env's CCACHE_* variables with kmpack's configuration of ccache for dir.
func ccacheEnv(env []string, dir string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "CCACHE_") {
			out = append(out, kv)
		}
	}
	return append(out,
		"CCACHE_DIR="+dir,
		// No configuration file: neither the user's, nor one a build wrote into the partition.
		"CCACHE_CONFIGPATH=/dev/null", "CCACHE_CONFIGPATH2=/dev/null",
		"CCACHE_MAXSIZE="+CompileCacheMaxSize,
		"CCACHE_DIRECT=1", "CCACHE_DEPEND=1",
		"CCACHE_BASEDIR=", "CCACHE_HASHDIR=1", "CCACHE_SLOPPINESS=", "CCACHE_COMPILERCHECK=mtime",
		"CCACHE_NOHARDLINK=1", "CCACHE_REMOTE_STORAGE=", "CCACHE_SECONDARY_STORAGE=", "CCACHE_NOREADONLY=1", "CCACHE_NORECACHE=1",
		"CCACHE_NODISABLE=1")
}
