package kernel

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	"github.com/kmpack/kmpack/kmp"
)

// HostMachine is this machine's architecture in uname -m spelling, the spelling of
// KernelTree.Arch.
func HostMachine() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	case "386":
		return "i386"
	case "loong64":
		return "loongarch64"
	}
	return runtime.GOARCH // arm, ppc64le, ppc64, s390x, riscv64
}

// KernelArch is Kbuild's ARCH= for a machine (uname -m spelling): the name of the kernel's
// arch/ directory, which is not the machine's (aarch64 is arm64, ppc64le is powerpc).
func KernelArch(machine string) string {
	switch machine {
	case "x86_64", "i386", "i686":
		return "x86"
	case "aarch64":
		return "arm64"
	case "ppc64", "ppc64le":
		return "powerpc"
	case "s390x":
		return "s390"
	case "riscv64":
		return "riscv"
	case "loongarch64":
		return "loongarch"
	}
	return machine
}

// gnuTriplet is Debian's GNU triplet for a machine: what its cross toolchains' commands start
// with (aarch64-linux-gnu-gcc-12) and their package names end with (gcc-12-aarch64-linux-gnu).
func gnuTriplet(machine string) string {
	switch machine {
	case "x86_64":
		return "x86_64-linux-gnu"
	case "i386", "i686":
		return "i686-linux-gnu"
	case "aarch64":
		return "aarch64-linux-gnu"
	case "arm":
		return "arm-linux-gnueabihf"
	case "ppc64le":
		return "powerpc64le-linux-gnu"
	case "ppc64":
		return "powerpc64-linux-gnu"
	case "s390x":
		return "s390x-linux-gnu"
	case "riscv64":
		return "riscv64-linux-gnu"
	case "loongarch64":
		return "loongarch64-linux-gnu"
	}
	return ""
}

// Cross tells whether the tree's modules are for another kernel architecture than this host's,
// so that its build needs ARCH= and a cross toolchain. An i386 tree on x86_64 is not: Kbuild's
// x86 builds both with the host's compiler. A tree whose architecture kmpack cannot tell is
// built as the host's, as before kmpack knew of architectures.
func (t *KernelTree) Cross() bool {
	return t.Arch != "" && KernelArch(t.Arch) != KernelArch(HostMachine())
}

// CrossCompile is Kbuild's CROSS_COMPILE= for the tree ("aarch64-linux-gnu-"), "" when the
// tree is the host's architecture.
func (t *KernelTree) CrossCompile() string {
	if !t.Cross() {
		return ""
	}
	if tr := gnuTriplet(t.Arch); tr != "" {
		return tr + "-"
	}
	return ""
}

// elfMachines are the ELF e_machine values of the machines kmpack names, and how file(1)
// calls them, for the host tools check's message.
var elfMachines = map[uint16]struct{ machine, name string }{
	3: {"i386", "Intel 80386"}, 40: {"arm", "ARM"}, 62: {"x86_64", "x86-64"}, 183: {"aarch64", "AArch64"},
	21: {"ppc64", "64-bit PowerPC"}, 22: {"s390x", "IBM S/390"}, 243: {"riscv64", "RISC-V"}, 258: {"loongarch64", "LoongArch"},
}

// hostToolDirs are where a tree keeps the programs its module build runs on the build host:
// fixdep, modpost, genksyms, sign-file, recordmcount (scripts/) and objtool (tools/).
var hostToolDirs = []string{"scripts", "tools"}

// maxHostToolFiles bounds the walk over a tree's host tool directories (Debian's kbuild has
// ~300 files, a RHEL kernel-devel's scripts/ ~1,500).
const maxHostToolFiles = 20000

// CheckHostTools fails, with an error naming the tree, when a program among the tree's host
// tools is built for a machine this host cannot run: a distro headers package for another
// architecture ships fixdep and modpost for that architecture (an arm64 linux-kbuild-6.1), and
// make would run them. It resolves the tree's scripts and tools links as make does (Debian's
// lead into the kbuild package's directory), then reads only ELF headers, through an os.Root
// at the directory they lead to. A tool of an unknown machine is refused too: it runs nowhere
// here.
func CheckHostTools(t *KernelTree) error {
	host := HostMachine()
	files := 0
	for _, d := range hostToolDirs {
		real, err := filepath.EvalSymlinks(filepath.Join(t.Dir, d))
		if err != nil {
			// Debian's headers without their kbuild package: make would only say that
			// scripts/Makefile.build is missing. (A tree with no tools at all fails in make.)
			if link, lerr := os.Readlink(filepath.Join(t.Dir, d)); lerr == nil && d == "scripts" {
				msg := fmt.Sprintf("no host tools: its scripts link leads to %s, which is not there", link)
				if pkg := kbuildPackage(link); pkg != "" {
					msg += ": unpack the tree with this host's " + pkg
				}
				return kmp.InputErrorf(t.Dir, "%s", msg)
			}
			continue
		}
		root, err := os.OpenRoot(real)
		if err != nil {
			continue
		}
		err = fs.WalkDir(root.FS(), ".", func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if files++; files > maxHostToolFiles {
				return fmt.Errorf("more than %d files in its host tool directories", maxHostToolFiles)
			}
			if !e.Type().IsRegular() {
				return nil
			}
			fi, err := e.Info()
			if err != nil || fi.Mode()&0o111 == 0 {
				return nil
			}
			name, foreign := foreignProgram(root, p, host)
			if foreign {
				return &ForeignToolError{fmt.Sprintf("host tool %s is built for %s, which this %s machine cannot run%s", filepath.Join(d, p), name, host, hostToolsHint(t))}
			}
			return nil
		})
		root.Close()
		if err != nil {
			return kmp.InputErrorf(t.Dir, "%w", err)
		}
	}
	return nil
}

// ForeignToolError is CheckHostTools' error for a host tool built for another machine (as
// opposed to a tree without tools): a tree that has the tools' sources can have them rebuilt.
type ForeignToolError struct{ msg string }

func (e *ForeignToolError) Error() string { return e.msg }

// foreignProgram tells whether rel under root is an ELF program this host cannot run, and
// names its machine as file(1) does.
func foreignProgram(root *os.Root, rel, host string) (name string, foreign bool) {
	m, little, ok, err := elfProgramMachine(root, rel)
	if err != nil || !ok {
		return "", false
	}
	got, known := elfMachines[m]
	if m == 21 && little { // EM_PPC64 is both: the byte order tells ppc64le
		got.machine = "ppc64le"
	}
	if known && (got.machine == host || host == "x86_64" && got.machine == "i386") {
		return "", false
	}
	if !known {
		return fmt.Sprintf("ELF machine %d", m), true
	}
	return got.name, true
}

// ForeignPrograms lists the ELF programs under dir/sub (a real directory, walked through an
// os.Root without following links) that this host cannot run, as paths relative to dir.
func ForeignPrograms(dir, sub string) ([]string, error) {
	root, err := os.OpenRoot(filepath.Join(dir, sub))
	if err != nil {
		return nil, err
	}
	defer root.Close()
	host := HostMachine()
	var out []string
	files := 0
	err = fs.WalkDir(root.FS(), ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if files++; files > maxHostToolFiles {
			return fmt.Errorf("more than %d files in %s", maxHostToolFiles, sub)
		}
		if !e.Type().IsRegular() {
			return nil
		}
		if _, foreign := foreignProgram(root, p, host); foreign {
			out = append(out, filepath.Join(sub, p))
		}
		return nil
	})
	return out, err
}

// hostToolsHint says how to get host tools that run here. Debian's linux-kbuild-<series> is
// Multi-Arch: foreign, the same scripts with programs built for the machine that installs it
// (modpost picks its ELF class and byte order from the module), and it holds no sources to
// rebuild them from: the host's own kbuild package is Debian's answer.
// The package's name is read from the tree's scripts link (../../lib/linux-kbuild-6.1/scripts).
func hostToolsHint(t *KernelTree) string {
	link, err := os.Readlink(filepath.Join(t.Dir, "scripts"))
	if err != nil {
		return ""
	}
	if pkg := kbuildPackage(link); pkg != "" {
		return ": unpack the tree with this host's " + pkg + ", not the one for the tree's architecture"
	}
	return ""
}

// kbuildPackage names the Debian kbuild package a scripts link leads into, for this host's
// architecture ("linux-kbuild-6.1 package (amd64)"), or "".
func kbuildPackage(link string) string {
	for _, c := range strings.Split(link, "/") {
		if strings.HasPrefix(c, "linux-kbuild-") {
			return fmt.Sprintf("%s package (%s)", c, DebianArch(HostMachine()))
		}
	}
	return ""
}

// elfProgramMachine reads an executable ELF file's e_machine and byte order: ok is false for
// anything else (a shell script, a relocatable object).
func elfProgramMachine(root *os.Root, rel string) (machine uint16, little, ok bool, err error) {
	f, _, err := kmp.OpenRootFile(root, rel, true)
	if err != nil {
		return 0, false, false, err
	}
	defer f.Close()
	var h [20]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return 0, false, false, nil
	}
	if string(h[:4]) != "\x7fELF" {
		return 0, false, false, nil
	}
	little = h[5] != 2 // EI_DATA: ELFDATA2MSB is 2
	var bo binary.ByteOrder = binary.LittleEndian
	if !little {
		bo = binary.BigEndian
	}
	if typ := bo.Uint16(h[16:18]); typ != 2 && typ != 3 { // ET_EXEC, ET_DYN
		return 0, false, false, nil
	}
	return bo.Uint16(h[18:20]), little, true, nil
}

// machineNames are the architecture names kmpack takes from a user (--arch): uname -m's and
// the Debian and Go spellings of the same machines.
var machineNames = map[string]string{
	"x86_64": "x86_64", "amd64": "x86_64", "x86-64": "x86_64",
	"aarch64": "aarch64", "arm64": "aarch64",
	"i386": "i386", "i686": "i386",
	"arm": "arm", "armhf": "arm", "armv7l": "arm",
	"ppc64le": "ppc64le", "ppc64el": "ppc64le", "powerpc64le": "ppc64le", "ppc64": "ppc64",
	"s390x": "s390x", "riscv64": "riscv64", "loongarch64": "loongarch64", "loong64": "loongarch64",
}

// ParseMachine takes an architecture as a user may spell it (aarch64, arm64, amd64, ppc64el)
// to uname -m's spelling, the spelling of KernelTree.Arch.
func ParseMachine(name string) (string, error) {
	if m, ok := machineNames[strings.ToLower(name)]; ok {
		return m, nil
	}
	return "", fmt.Errorf("unknown architecture %q (x86_64, aarch64, ppc64le, s390x, riscv64, i386, arm, loongarch64, or their Debian names)", name)
}

// DebianArch is Debian's name of a machine (uname -m spelling): an apt source's architecture.
func DebianArch(machine string) string {
	switch machine {
	case "x86_64":
		return "amd64"
	case "aarch64":
		return "arm64"
	case "arm":
		return "armhf"
	case "ppc64le":
		return "ppc64el"
	case "loongarch64":
		return "loong64"
	}
	return machine
}

// FilterArch keeps the trees of the given machines (uname -m spellings, from ParseMachine);
// none given keeps every tree.
func FilterArch(trees []*KernelTree, machines []string) []*KernelTree {
	if len(machines) == 0 {
		return trees
	}
	var out []*KernelTree
	for _, t := range trees {
		for _, m := range machines {
			if t.Arch == m {
				out = append(out, t)
				break
			}
		}
	}
	return out
}

// MachineFromRelease is the architecture a kernel release names, for a kernel known only by
// its release and a symvers file: RHEL's and Fedora's end in it ("5.14.0-362.el9.aarch64"),
// Debian's flavor ends in the Debian name ("6.1.0-53-arm64", "6.1.0-53-cloud-arm64"). ok is
// false when the release names none.
func MachineFromRelease(release string) (machine string, ok bool) {
	if i := strings.LastIndex(release, "."); i >= 0 {
		if m, err := ParseMachine(release[i+1:]); err == nil && release[i+1:] == m {
			return m, true
		}
	}
	flavor := FlavorFromRelease(release)
	if m, err := ParseMachine(flavor[strings.LastIndex(flavor, "-")+1:]); err == nil {
		return m, true
	}
	return "", false
}

// GNUTriplet is Debian's GNU triplet for a machine (uname -m spelling), the prefix of its
// cross binutils' commands (aarch64-linux-gnu-strip), or "" for one kmpack does not know.
func GNUTriplet(machine string) string { return gnuTriplet(machine) }

// GoArch is Go's GOARCH for a machine (uname -m spelling): what building kmpack for it takes.
func GoArch(machine string) string {
	switch machine {
	case "x86_64":
		return "amd64"
	case "aarch64":
		return "arm64"
	case "i386", "i686":
		return "386"
	case "loongarch64":
		return "loong64"
	}
	return machine // arm, ppc64le, ppc64, s390x, riscv64
}

// IncludeRE is the one line of a SUSE -obj tree's generated Makefile (scripts/mkmakefile):
// "include /usr/src/linux-<ver>/Makefile", or relative, "include ../../../linux-<ver>/Makefile".
var IncludeRE = regexp.MustCompile(`(?m)^(\s*-?include\s+)(\S+)/Makefile\s*$`)

// ToolSources is the directory holding the sources of the tree's host programs: the tree
// itself (RHEL's kernel-devel, a build tree), or the source tree its Makefile includes (SUSE's
// -obj tree: "include /usr/src/linux-<ver>/Makefile"). "" when there is none.
func ToolSources(dir string) string {
	has := func(d string) bool {
		fi, err := os.Stat(filepath.Join(d, "scripts/basic/fixdep.c"))
		return err == nil && fi.Mode().IsRegular()
	}
	if has(dir) {
		return dir
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return ""
	}
	defer root.Close()
	b, _, err := kmp.ReadRootFile(root, "Makefile", maxSmallFile*16)
	if err != nil {
		return ""
	}
	if m := IncludeRE.FindSubmatch(b); m != nil {
		src := string(m[2])
		if !filepath.IsAbs(src) {
			src = filepath.Join(dir, src)
		}
		if src, err = filepath.EvalSymlinks(src); err == nil && has(src) {
			return src
		}
	}
	return ""
}
