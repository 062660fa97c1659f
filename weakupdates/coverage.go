package weakupdates

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/module"
)

// How a kernel is served by existing builds.
const (
	CoverageBuilt = "built" // an output holds a build for this very kernel
	CoverageLoads = "loads" // a build for another kernel loads here (weak-updates serves it)
	CoverageNone  = "none"  // no build loads here: this kernel needs a build of its own
)

// KernelCoverage says whether, and by which build, existing build outputs serve one kernel.
type KernelCoverage struct {
	Release string `json:"release"`
	Flavor  string `json:"flavor"`
	Status  string `json:"status"`
	// Output and Build name the output directory and the kernel release of the build that
	// serves it (built or loads).
	Output string `json:"output,omitempty"`
	Build  string `json:"build,omitempty"`
	// Closest is, when none serves it, the build that came nearest (same flavor first, then
	// the fewest reasons), with the verdicts that stop its modules.
	Closest *ClosestBuild `json:"closest,omitempty"`
	Notes   []string      `json:"notes,omitempty"`
}

// ClosestBuild is the nearest miss of KernelCoverage.
type ClosestBuild struct {
	Output   string    `json:"output"`
	Build    string    `json:"build"`
	Verdicts []Verdict `json:"verdicts"`
}

type outputBuild struct {
	output, release, flavor, arch string
	mods                          []*module.ModuleInfo
}

// Coverage judges, for each target kernel, whether the build outputs (kmpack build's output
// directories, of one source) serve it: a build for its release, else the first build for
// another kernel whose modules all load there (same flavor first, newest release first).
func Coverage(targets []*Target, outputs []string) ([]KernelCoverage, error) {
	var builds []outputBuild
	source := ""
	for _, dir := range outputs {
		m, err := manifest.Read(dir)
		if err != nil {
			return nil, err
		}
		id := m.Source.Name + " " + m.Source.Version + " (source sha256 " + m.Source.SHA256 + ")"
		if source == "" {
			source = id
		} else if id != source {
			return nil, kmp.InputErrorf(dir, "a build of %s, not of %s like the other outputs", id, source)
		}
		root, err := os.OpenRoot(dir)
		if err != nil {
			return nil, kmp.InputErrorf(dir, "%v", kmp.UnwrapPathError(err))
		}
		for _, kb := range m.Kernels {
			if kb.Status != manifest.StatusBuilt || len(kb.Modules) == 0 {
				continue
			}
			files, err := manifest.ReadModules(root, dir, kb)
			if err != nil {
				root.Close()
				return nil, err
			}
			b := outputBuild{output: dir, release: kb.Release, flavor: kb.Flavor, arch: kb.Arch}
			for _, f := range files {
				b.mods = append(b.mods, f.Info)
			}
			builds = append(builds, b)
		}
		root.Close()
	}
	var out []KernelCoverage
	for _, t := range targets {
		kc := KernelCoverage{Release: t.Release, Flavor: t.Flavor, Status: CoverageNone, Notes: t.Notes}
		order := make([]outputBuild, len(builds))
		copy(order, builds)
		sort.SliceStable(order, func(i, j int) bool {
			si, sj := order[i].flavor == t.Flavor, order[j].flavor == t.Flavor
			if si != sj {
				return si
			}
			return kernel.CompareReleases(order[i].release, order[j].release) > 0
		})
		best, closestFlavor := -1, ""
		for _, b := range order {
			if b.release == t.Release && (b.arch == "" || t.Arch == "" || b.arch == t.Arch) {
				kc.Status, kc.Output, kc.Build = CoverageBuilt, b.output, b.release
				break
			}
		}
		if kc.Status == CoverageNone {
			for _, b := range order {
				vs := Check(b.mods, t)
				bad := 0
				for _, v := range vs {
					if !v.Compatible {
						bad += len(v.Reasons)
					}
				}
				if bad == 0 {
					kc.Status, kc.Output, kc.Build, kc.Closest = CoverageLoads, b.output, b.release, nil
					break
				}
				// order has the same flavor first: a build of another flavor is closest only
				// when there is none of this one.
				if kc.Closest == nil || b.flavor == closestFlavor && bad < best {
					best, closestFlavor = bad, b.flavor
					kc.Closest = &ClosestBuild{Output: b.output, Build: b.release, Verdicts: vs}
				}
			}
		}
		out = append(out, kc)
	}
	return out, nil
}

// Describe is a one-line account of a KernelCoverage for a table.
func (kc KernelCoverage) Describe() string {
	switch kc.Status {
	case CoverageBuilt:
		return fmt.Sprintf("built (%s)", filepath.Clean(kc.Output))
	case CoverageLoads:
		return fmt.Sprintf("loads the build for %s (%s)", kc.Build, filepath.Clean(kc.Output))
	}
	if kc.Closest == nil {
		return "no build"
	}
	for _, v := range kc.Closest.Verdicts {
		if !v.Compatible && len(v.Reasons) > 0 {
			r := v.Reasons[0]
			return fmt.Sprintf("no build loads; closest %s: %s %s: %s", kc.Closest.Build, v.Module, r.Kind, r.Detail)
		}
	}
	return "no build loads"
}
