package build

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
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
	sum := sha256.Sum256(plan)
	return strings.Join([]string{j.tree.Flavor, j.tree.Arch, seriesRE.FindString(j.tree.Release), hex.EncodeToString(sum[:8])}, " ")
}

// buildClasses builds the fewest kernels it can: in each class, the oldest kernel not yet
// served is built, and every other kernel of the class its modules load in is served by that
// build instead of built; then the next, until every kernel is built or served. Classes are
// built side by side, one kernel each per round. A kernel that fails or is skipped serves none.
func (b *builder) buildClasses(run func([]*kernelJob)) {
	groups := map[string][]*kernelJob{}
	var keys, order []string
	var now []*kernelJob
	for _, j := range b.jobs {
		if j.plan.Skip != "" {
			now = append(now, j) // skipped at once: neither built nor served
			continue
		}
		k := b.classKey(j)
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], j)
	}
	sort.Strings(keys)
	for _, k := range keys {
		g := groups[k]
		sort.SliceStable(g, func(x, y int) bool { return kernel.CompareReleases(g[x].tree.Release, g[y].tree.Release) < 0 })
	}
	order = keys
	for {
		round := now
		now = nil
		builtBy := map[*kernelJob]string{}
		for _, k := range order {
			if g := groups[k]; len(g) > 0 {
				round = append(round, g[0])
				groups[k] = g[1:]
				builtBy[g[0]] = k
			}
		}
		if len(round) == 0 {
			return
		}
		run(round)
		if b.fatalErr() != nil {
			return
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for j, k := range builtBy {
			r := j.result
			if r.Status != manifest.StatusBuilt || len(r.Modules) == 0 || len(groups[k]) == 0 {
				continue
			}
			var mods []*module.ModuleInfo
			for _, bm := range r.Modules {
				mi, err := module.ReadModule(filepath.Join(b.stage, bm.File))
				if err != nil {
					b.setFatal(err)
					return
				}
				mods = append(mods, mi)
			}
			// Judging one kernel may build a probe module: the rest of the class in parallel.
			rest := groups[k]
			served := make([]bool, len(rest))
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
						return
					}
					mu.Lock()
					served[i] = true
					p.result.Status, p.result.ServedBy, p.result.Serving = manifest.StatusServed, j.tree.Release, verdicts
					mu.Unlock()
					b.progress(ProgressEvent{Release: p.tree.Release, Status: manifest.StatusServed, Detail: "by the build for " + j.tree.Release})
				}()
			}
			wg.Wait()
			var left []*kernelJob
			for i, p := range rest {
				if !served[i] {
					left = append(left, p)
				}
			}
			groups[k] = left
		}
	}
}
