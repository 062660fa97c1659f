package weakupdates

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
)

// Reason kinds: why a module cannot load in a kernel.
const (
	ReasonMissing    = "missing-symbol"   // no provider of an imported symbol
	ReasonCRC        = "crc"              // the provider's CRC differs from the one built against
	ReasonNamespace  = "namespace"        // the symbol is in a namespace the module does not import
	ReasonVermagic   = "vermagic"         // SMP, preempt model, mod_unload or modversions differ
	ReasonThisModule = "this-module-size" // struct module differs: the kernel refuses the module
	ReasonFlavor     = "flavor"           // another flavor of kernel (weak-updates never cross flavors)
	ReasonNoVersions = "no-modversions"   // built without CRCs: only its own release can load it
	ReasonDependency = "dependency"       // needs a module of the same package that cannot load
	ReasonSignature  = "signature"        // the kernel enforces signatures and trusts no key that signed it
	ReasonArch       = "arch"             // built for another architecture (ELF machine)
)

// Reason is one thing that stops a module from loading in a kernel.
type Reason struct {
	Kind   string `json:"kind"`
	Symbol string `json:"symbol,omitempty"`
	Want   string `json:"want,omitempty"` // what the module was built against
	Have   string `json:"have,omitempty"` // what the kernel has
	Detail string `json:"detail"`
}

// Verdict is one module against one kernel.
type Verdict struct {
	Module     string   `json:"module"`
	Kernel     string   `json:"kernel"`
	Compatible bool     `json:"compatible"`
	Reasons    []Reason `json:"reasons,omitempty"`
}

// Sibling is v as the manifest records it (build --siblings, build --classes).
func (v Verdict) Sibling() manifest.SiblingVerdict {
	sv := manifest.SiblingVerdict{Module: v.Module, Kernel: v.Kernel, Compatible: v.Compatible}
	for _, r := range v.Reasons {
		sv.Reasons = append(sv.Reasons, r.Kind+": "+r.Detail)
	}
	return sv
}

// Check decides, for each of one package's modules, whether kernel t can load it. Imports are
// resolved the way depmod resolves them: another module of the package first, then the kernel
// (vmlinux and its own modules, as its symvers lists them). A module that needs a package
// module which cannot load cannot load either; that is resolved to a fixpoint.
func Check(mods []*module.ModuleInfo, t *Target) []Verdict {
	type provider struct {
		module int
		sym    module.ExportedSymbol
	}
	pkgExports := map[string]provider{}
	for i, m := range mods {
		for _, e := range m.Exports {
			if _, dup := pkgExports[e.Name]; !dup {
				pkgExports[e.Name] = provider{i, e}
			}
		}
	}
	verdicts := make([]Verdict, len(mods))
	needs := make([][]int, len(mods)) // package modules each module imports from
	for i, m := range mods {
		v := Verdict{Module: m.Name, Kernel: t.Release}
		add := func(r Reason) { v.Reasons = append(v.Reasons, r) }
		words := strings.Fields(m.Vermagic)
		if len(words) == 0 {
			add(Reason{Kind: ReasonVermagic, Detail: "the module has no vermagic"})
		} else {
			modRelease, modFlags := words[0], words[1:]
			if f := kernel.FlavorFromRelease(modRelease); f != t.Flavor {
				add(Reason{Kind: ReasonFlavor, Want: f, Have: t.Flavor,
					Detail: fmt.Sprintf("built for flavor %s (%s), the kernel is %s", f, modRelease, t.Flavor)})
			}
			if t.VermagicFlags != nil && !slices.Equal(modFlags, t.VermagicFlags) {
				add(Reason{Kind: ReasonVermagic, Want: strings.Join(modFlags, " "), Have: strings.Join(t.VermagicFlags, " "),
					Detail: fmt.Sprintf("vermagic %q, the kernel's modules have %q", strings.Join(modFlags, " "), strings.Join(t.VermagicFlags, " "))})
			}
			if m.ImportsSource == "" && len(m.Imports) == 0 && modRelease != t.Release {
				add(Reason{Kind: ReasonNoVersions, Want: modRelease, Have: t.Release,
					Detail: "built without symbol versions, so only kernel " + modRelease + " accepts its vermagic"})
			}
		}
		if t.Arch != "" && m.Machine != "" && !sameArch(m.Machine, t.Arch) {
			add(Reason{Kind: ReasonArch, Want: m.Machine, Have: t.Arch, Detail: fmt.Sprintf("built for %s, the kernel is %s", m.Machine, t.Arch)})
		}
		if t.ThisModuleSize != 0 && m.ThisModuleSize != 0 && m.ThisModuleSize != t.ThisModuleSize {
			add(Reason{Kind: ReasonThisModule, Want: fmt.Sprint(m.ThisModuleSize), Have: fmt.Sprint(t.ThisModuleSize),
				Detail: fmt.Sprintf("struct module is %d bytes in the module and %d in the kernel", m.ThisModuleSize, t.ThisModuleSize)})
		}
		for _, imp := range m.Imports {
			if p, ok := pkgExports[imp.Name]; ok && p.module != i {
				if p.sym.HasCRC && p.sym.CRC != imp.CRC {
					add(crcReason(imp, p.sym.CRC, "module "+mods[p.module].Name))
				}
				if !slices.Contains(needs[i], p.module) {
					needs[i] = append(needs[i], p.module)
				}
				checkNamespace(m, imp.Name, p.sym.Namespace, add)
				continue
			}
			s, ok := t.lookup(imp.Name)
			if !ok {
				add(Reason{Kind: ReasonMissing, Symbol: imp.Name, Want: fmt.Sprintf("0x%08x", imp.CRC),
					Detail: "the kernel does not export " + imp.Name})
				continue
			}
			if s.CRC != imp.CRC {
				add(crcReason(imp, s.CRC, s.Module))
			}
			checkNamespace(m, imp.Name, s.Namespace, add)
		}
		checkSignature(m, t, add)
		v.Compatible = len(v.Reasons) == 0
		verdicts[i] = v
	}
	for changed := true; changed; {
		changed = false
		for i := range verdicts {
			if !verdicts[i].Compatible {
				continue
			}
			for _, j := range needs[i] {
				if !verdicts[j].Compatible {
					verdicts[i].Compatible = false
					verdicts[i].Reasons = append(verdicts[i].Reasons, Reason{Kind: ReasonDependency, Want: mods[j].Name,
						Detail: "needs " + mods[j].Name + " of the same package, which cannot load"})
					changed = true
					break
				}
			}
		}
	}
	return verdicts
}

// checkSignature: a kernel that enforces module signatures (CONFIG_MODULE_SIG_FORCE) loads a
// module only when one of its signers is a key the kernel trusts, looked up as the kernel
// looks it up (issuer and serial, or subject key id). Which keys the kernel trusts is what the
// user says (Target.Trusted); without that, or when enforcement is unknown, nothing is judged.
func checkSignature(m *module.ModuleInfo, t *Target, add func(Reason)) {
	if t.SigEnforced != "yes" || t.Trusted == nil {
		return
	}
	if m.Signature == nil {
		add(Reason{Kind: ReasonSignature, Want: "signed", Have: "unsigned",
			Detail: "the kernel enforces module signatures (CONFIG_MODULE_SIG_FORCE) and the module is unsigned"})
		return
	}
	signers := m.Signature.Signers
	if len(signers) == 0 {
		signers = []module.SignerID{{Signer: m.Signature.Signer, KeyID: m.Signature.KeyID}}
	}
	var names []string
	for _, s := range signers {
		for _, c := range t.Trusted {
			if s.Signer != "" && s.Signer == c.Issuer.CommonName && bytes.Equal(s.KeyID, c.SerialNumber.Bytes()) ||
				s.Signer == "" && len(c.SubjectKeyId) > 0 && bytes.Equal(s.KeyID, c.SubjectKeyId) {
				return
			}
		}
		names = append(names, fmt.Sprintf("%q key id %s", s.Signer, s.KeyID))
	}
	add(Reason{Kind: ReasonSignature, Have: strings.Join(names, ", "),
		Detail: "the kernel enforces module signatures (CONFIG_MODULE_SIG_FORCE) and trusts none of the module's signers: " + strings.Join(names, ", ")})
}

func crcReason(imp module.SymbolCRC, have uint64, provider string) Reason {
	return Reason{Kind: ReasonCRC, Symbol: imp.Name, Want: fmt.Sprintf("0x%08x", imp.CRC), Have: fmt.Sprintf("0x%08x", have),
		Detail: fmt.Sprintf("%s: built against CRC 0x%08x, %s has 0x%08x", imp.Name, imp.CRC, provider, have)}
}

func checkNamespace(m *module.ModuleInfo, sym, ns string, add func(Reason)) {
	if ns != "" && !slices.Contains(m.ImportNS, ns) {
		add(Reason{Kind: ReasonNamespace, Symbol: sym, Want: ns,
			Detail: fmt.Sprintf("%s is in namespace %s, which the module does not import", sym, ns)})
	}
}

// Matrix is the module x kernel table of verdicts.
type Matrix struct {
	Modules []string    `json:"modules"`
	Kernels []*Target   `json:"kernels"`
	Cells   [][]Verdict `json:"cells"` // [module][kernel]
}

// CheckMatrix checks one package's modules against every target.
func CheckMatrix(mods []*module.ModuleInfo, targets []*Target) *Matrix {
	mx := &Matrix{Kernels: targets, Cells: make([][]Verdict, len(mods))}
	for _, m := range mods {
		mx.Modules = append(mx.Modules, m.Name)
	}
	for _, t := range targets {
		for i, v := range Check(mods, t) {
			mx.Cells[i] = append(mx.Cells[i], v)
		}
	}
	return mx
}

// Siblings judges modules built for release against every target that is another kernel, in
// the form kmpack build records in its manifest.
func Siblings(release string, mods []*module.ModuleInfo, targets []*Target) []manifest.SiblingVerdict {
	var out []manifest.SiblingVerdict
	for _, t := range targets {
		if t.Release == release {
			continue
		}
		for _, v := range Check(mods, t) {
			out = append(out, v.Sibling())
		}
	}
	return out
}

// lookup finds a symbol in the kernel's symvers, then among the exports of other module
// packages installed for it (Target.Extra).
func (t *Target) lookup(name string) (module.Symbol, bool) {
	if s, ok := t.Symvers.Lookup(name); ok {
		return s, true
	}
	s, ok := t.Extra[name]
	return s, ok
}

// ClassJudge is build --classes' judge: a kernel is served by another's build when every module
// of that build loads there (Check). Each target kernel is opened at most twice: without the
// probe module first, which is enough when every module imports module_layout (kernels before
// 6.4 with modversions: its CRC covers struct module, so equal CRCs mean an equal struct), and
// with the probe (built once, cached under opts.CacheDir) otherwise. Safe for concurrent use.
func ClassJudge(ctx context.Context, opts TargetOptions) build.ClassJudge {
	type opened struct {
		once sync.Once
		t    *Target
		err  error
	}
	var mu sync.Mutex
	targets := map[string]*opened{}
	open := func(dir string, probe bool) (*Target, error) {
		key := fmt.Sprintf("%v %s", probe, dir)
		mu.Lock()
		o := targets[key]
		if o == nil {
			o = &opened{}
			targets[key] = o
		}
		mu.Unlock()
		o.once.Do(func() {
			topts := opts
			topts.NoProbe = !probe
			o.t, o.err = OpenTarget(ctx, dir, topts)
		})
		return o.t, o.err
	}
	return func(built *kernel.KernelTree, mods []*module.ModuleInfo, target *kernel.KernelTree) (bool, []manifest.SiblingVerdict) {
		layout := len(mods) > 0
		for _, m := range mods {
			_, ok := m.Import("module_layout")
			layout = layout && ok
		}
		t, err := open(target.Dir, !layout)
		if err == nil && !layout && t.ThisModuleSize == 0 {
			err = fmt.Errorf("the size of its struct module is unknown (%s)", strings.Join(t.Notes, "; "))
		}
		if err != nil {
			// A kernel that cannot be judged is built: never served on a guess.
			return false, []manifest.SiblingVerdict{{Kernel: target.Release, Reasons: []string{"not judged: " + kmp.OneLine(err.Error())}}}
		}
		ok := true
		var out []manifest.SiblingVerdict
		for _, v := range Check(mods, t) {
			ok = ok && v.Compatible
			out = append(out, v.Sibling())
		}
		return ok && len(out) > 0, out
	}
}

// sameArch tells whether a module's ELF machine (module.ModuleInfo.Machine: x86_64, aarch64,
// ppc64, s390, i386, ...) is a kernel's architecture (uname -m: x86_64, aarch64, ppc64le, s390x,
// i686, ...).
func sameArch(machine, arch string) bool {
	switch {
	case machine == arch, machine == "ppc64" && arch == "ppc64le", machine == "s390" && arch == "s390x":
		return true
	case machine == "i386":
		return arch == "i386" || arch == "i486" || arch == "i586" || arch == "i686" || arch == "x86"
	}
	return false
}
