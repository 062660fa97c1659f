package build

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
)

// ClassJudge decides whether the modules built for one kernel load in another (the compat
// check: CRCs, namespaces, vermagic, struct module size, dependencies), with the verdicts that
// say so. kmp/build cannot judge by itself: the check lives in weakupdates, above the engine.
type ClassJudge func(built *kernel.KernelTree, modules []*module.ModuleInfo, target *kernel.KernelTree) (ok bool, verdicts []manifest.SiblingVerdict)

var seriesRE = regexp.MustCompile(`^([0-9]+\.[0-9]+)`)

// classKey groups the kernels one build might serve: one flavor and architecture, one kernel
// series (a 6.1 build never loads in 6.12), and the same plan once the kernel is abstracted
// away (a patch or a MAKE line that only some kernels get makes other modules).
func (b *builder) classKey(j *kernelJob) string {
	plan, _ := json.Marshal(j.plan)
	for _, r := range []struct{ from, to string }{
		{j.ws.Root, "@WORKSPACE@"}, {j.ws.Kernel(j.tree), "@KERNEL@"}, {j.tree.Dir, "@KERNEL@"}, {j.tree.Release, "@RELEASE@"},
	} {
		if r.from != "" {
			plan = bytes.ReplaceAll(plan, []byte(r.from), []byte(r.to))
		}
	}
	h := sha256.New()
	h.Write(plan)
	// Options that change how every object is compiled (mitigations, instrumentation, call
	// conventions) without changing a symbol's CRC or the vermagic: kernels that differ in one
	// are never served by each other's builds.
	for _, name := range slices.Sorted(maps.Keys(j.tree.Config)) {
		if codegenOption(name) {
			fmt.Fprintf(h, "%s=%s\n", name, j.tree.Config[name])
		}
	}
	return strings.Join([]string{j.tree.Flavor, j.tree.Arch, seriesRE.FindString(j.tree.Release), hex.EncodeToString(h.Sum(nil)[:8])}, " ")
}

var (
	codegenRE = regexp.MustCompile(`^CONFIG_(CC_|X86_KERNEL_IBT|.*RETPOLINE|RETHUNK|SLS$|MITIGATION_|CALL_DEPTH_TRACKING|CALL_PADDING|.*STACKPROTECTOR|FRAME_POINTER|UNWINDER_|FUNCTION_TRACER|DYNAMIC_FTRACE|FTRACE_MCOUNT|HAVE_FENTRY|KASAN|KCSAN|KMSAN|UBSAN|KCOV|GCOV|GCC_PLUGIN|RANDSTRUCT|ZERO_CALL_USED_REGS|INIT_STACK_|CFI_|SHADOW_CALL_STACK|MODVERSIONS|MODULE_REL_CRCS|64BIT|X86_32|X86_64|SMP|PAGE_TABLE_ISOLATION|ARM64_BTI|ARM64_PTR_AUTH|LTO|DEBUG_INFO_BTF_MODULES)`)
	// Versions and salts differ between every two builds of a kernel, whatever they compile.
	codegenExcludeRE = regexp.MustCompile(`_VERSION(_TEXT)?$|^CONFIG_BUILD_SALT$`)
)

func codegenOption(name string) bool {
	return codegenRE.MatchString(name) && !codegenExcludeRE.MatchString(name)
}

// buildClasses builds few kernels: in each class the oldest kernel is built first, and every
// other kernel of the class its modules load in is served by that build instead of built. The
// kernels left are grouped by why that build could not serve them (the same symbols with the
// same CRCs in the kernel, the same other reasons): one build per group is likely to serve its
// whole group, so the oldest kernel of each group is built next, side by side, and the rest
// judged again; and so on until every kernel is built or served. Classes are built side by side.
// A kernel that fails or is skipped serves none.
func (b *builder) buildClasses(run func([]*kernelJob)) {
	classes := map[string][]*kernelJob{}
	var keys []string
	var round []*kernelJob
	for _, j := range b.jobs {
		if j.plan.Skip != "" {
			round = append(round, j) // skipped at once: neither built nor served
			continue
		}
		k := b.classKey(j)
		if _, ok := classes[k]; !ok {
			keys = append(keys, k)
		}
		classes[k] = append(classes[k], j)
	}
	sort.Strings(keys)
	for _, k := range keys {
		c := classes[k]
		sort.SliceStable(c, func(x, y int) bool { return kernel.CompareReleases(c[x].tree.Release, c[y].tree.Release) < 0 })
	}
	// miss[j] says why the builds judged against j so far could not serve it.
	miss := map[*kernelJob]string{}
	for {
		built := map[string][]*kernelJob{} // class -> its kernels built this round, oldest first
		for _, k := range keys {
			var left []*kernelJob
			picked := map[string]bool{}
			for _, j := range classes[k] {
				if !picked[miss[j]] {
					picked[miss[j]] = true
					round = append(round, j)
					built[k] = append(built[k], j)
					continue
				}
				left = append(left, j)
			}
			classes[k] = left
		}
		if len(round) == 0 {
			return
		}
		run(round)
		round = nil
		if b.fatalErr() != nil {
			return
		}
		for _, k := range keys {
			for _, j := range built[k] {
				if len(classes[k]) == 0 {
					break
				}
				if !b.serveFrom(j, classes[k], miss) {
					return
				}
				var left []*kernelJob
				for _, p := range classes[k] {
					if p.result.Status != manifest.StatusServed {
						left = append(left, p)
					}
				}
				classes[k] = left
			}
		}
	}
}

// serveFrom judges j's build against the kernels rest (side by side: judging may build a probe
// module), marks those it serves, and adds its reasons to miss for the others. It returns false
// after a fatal error.
func (b *builder) serveFrom(j *kernelJob, rest []*kernelJob, miss map[*kernelJob]string) bool {
	r := j.result
	if r.Status != manifest.StatusBuilt || len(r.Modules) == 0 {
		return true
	}
	mods, err := b.stagedModules(r)
	if err != nil {
		b.setFatal(err)
		return false
	}
	why := make([]string, len(rest))
	var wg sync.WaitGroup
	for i, p := range rest {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil {
					b.setFatal(fmt.Errorf("internal error judging %s for %s: %v", p.tree.Release, j.tree.Release, r))
				}
			}()
			ok, verdicts := b.opts.Classes(j.tree, mods, p.tree)
			if !ok {
				var reasons []string
				for _, v := range verdicts {
					reasons = append(reasons, v.Module+": "+strings.Join(v.Reasons, "; "))
				}
				why[i] = strings.Join(reasons, "\n")
				return
			}
			p.result.Status, p.result.ServedBy, p.result.Serving = manifest.StatusServed, j.tree.Release, verdicts
			b.progress(ProgressEvent{Release: p.tree.Release, Status: manifest.StatusServed, Detail: "by the build for " + j.tree.Release})
		}()
	}
	wg.Wait()
	for i, p := range rest {
		if p.result.Status != manifest.StatusServed {
			miss[p] += j.tree.Release + "\x00" + why[i] + "\x00"
		}
	}
	return b.fatalErr() == nil
}

// stagedModules reads the modules of one kernel's build from the stage.
func (b *builder) stagedModules(r *manifest.KernelBuild) ([]*module.ModuleInfo, error) {
	var mods []*module.ModuleInfo
	for _, bm := range r.Modules {
		mi, err := module.ReadModule(filepath.Join(b.stage, bm.File))
		if err != nil {
			return nil, err
		}
		mods = append(mods, mi)
	}
	return mods, nil
}
