// Package scalesim predicts the wall time of a sharded kmpack pipeline (plan, N runners each
// building its shard, one release job merging, packaging and publishing) on a matrix larger
// than any test machine, from costs measured on a real one (scripts/bench-scale.sh). The
// shards are kmpack's own (build.NewSharding), so the prediction inherits its balance.
package scalesim

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/kmpack/kmpack/kmp/build"
	"github.com/kmpack/kmpack/kmp/manifest"
)

// Model is what one pipeline run costs, per part. Seconds throughout.
type Model struct {
	// Costs are measured per-kernel compile times (manifest build_seconds); the matrix's
	// kernels take them in turn.
	Costs []float64
	// Kernels is the matrix's size (3 distros × 40 kernels × 2 architectures: 240).
	Kernels int
	// Parallelism is how many seconds of compile time a runner does per second of wall time:
	// measured as the sum of a build's build_seconds over its wall time (kmpack builds a
	// shard's kernels at once under one jobserver).
	Parallelism float64
	// JobSetup is what every job spends before its kmpack command (runner start, checkout,
	// installing kmpack and the compilers): a property of the CI system, not measurable here.
	JobSetup float64
	// Fetch is getting one kernel's headers: download and unpack (every runner needs its
	// kernels' trees, warm or cold: the cache keys hash them).
	Fetch float64
	// Push is storing one fresh build in the registry; Pull taking one from it (a warm run).
	Push, Pull float64
	// Plan is the plan command; Release is merging, packaging and publishing, per kernel.
	Plan, Release float64
}

// Prediction is one matrix on one number of runners.
type Prediction struct {
	Runners int
	// Cold: an empty registry, every kernel compiled; Warm: every kernel in the registry.
	Cold, Warm float64
	// Critical is the costliest shard's compile seconds; Mean the shards' mean.
	Critical, Mean float64
}

// Predict runs the model for each number of runners.
func Predict(m Model, runners ...int) ([]Prediction, error) {
	if len(m.Costs) == 0 || m.Kernels < 1 || !(m.Parallelism > 0) {
		return nil, errors.New("scalesim: no costs, no kernels or no parallelism")
	}
	for _, v := range append(slices.Clone(m.Costs), m.Parallelism, m.JobSetup, m.Fetch, m.Push, m.Pull, m.Plan, m.Release) {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("scalesim: a cost of %v", v)
		}
	}
	// The matrix as a costs manifest, which is how kmpack plan --costs sees it.
	releases := make([]string, m.Kernels)
	costs := &manifest.Manifest{}
	for i := range releases {
		releases[i] = fmt.Sprintf("6.1.0-%d-sim", i+1)
		costs.Kernels = append(costs.Kernels, &manifest.KernelBuild{Release: releases[i], Status: manifest.StatusBuilt,
			BuildSeconds: m.Costs[i%len(m.Costs)]})
	}
	var out []Prediction
	for _, n := range runners {
		sh, err := build.NewSharding(releases, costs, n)
		if err != nil {
			return nil, err
		}
		compile := make([]float64, n)
		count := make([]int, n)
		for i := range releases {
			compile[sh.Shard[i]-1] += sh.Costs[i]
			count[sh.Shard[i]-1]++
		}
		p := Prediction{Runners: n}
		total := 0.0
		for g := range n {
			total += compile[g]
			k := float64(count[g])
			cold := m.JobSetup + k*m.Fetch + compile[g]/m.Parallelism + k*m.Push
			warm := m.JobSetup + k*m.Fetch + k*m.Pull
			p.Cold, p.Warm = max(p.Cold, cold), max(p.Warm, warm)
			p.Critical = max(p.Critical, compile[g])
		}
		p.Mean = total / float64(n)
		// The plan job before the shards, the release job after them.
		edges := 2*m.JobSetup + m.Plan + float64(m.Kernels)*m.Release
		p.Cold += edges
		p.Warm += edges
		out = append(out, p)
	}
	return out, nil
}
