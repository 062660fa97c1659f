// Command scalesim predicts a sharded kmpack pipeline's wall time on a large matrix from the
// costs scripts/bench-scale.sh measures here (see internal/scalesim for the model).
//
//	go run ./internal/scalesim/cmd/scalesim -manifest OUT/manifest.json -wall 42.1 -pull 0.3 \
//	    -fetch 1.5 -release 0.2 -plan 3 -setup 90 -kernels 240 -runners 1,5,10,20
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/kmpack/kmpack/internal/scalesim"
	"github.com/kmpack/kmpack/kmp/manifest"
)

func main() {
	var (
		dir     = flag.String("manifest", "", "a cold build's output directory (its manifest's build_seconds are the per-kernel costs)")
		wall    = flag.Float64("wall", 0, "that build's wall seconds (with its pushes to the registry)")
		m       scalesim.Model
		runners = flag.String("runners", "1,5,10,20", "numbers of runners, comma-separated")
	)
	flag.IntVar(&m.Kernels, "kernels", 240, "kernels in the matrix")
	flag.Float64Var(&m.JobSetup, "setup", 90, "seconds each CI job spends before kmpack runs (runner start, checkout, installing kmpack and compilers)")
	flag.Float64Var(&m.Fetch, "fetch", 0, "seconds to download and unpack one kernel's headers")
	flag.Float64Var(&m.Pull, "pull", 0, "seconds to take one kernel's build from the registry")
	flag.Float64Var(&m.Plan, "plan", 0, "seconds of the plan command (repository metadata only)")
	flag.Float64Var(&m.Release, "release", 0, "seconds per kernel of merge, package and publish")
	flag.Parse()
	if err := run(*dir, *wall, *runners, m); err != nil {
		fmt.Fprintln(os.Stderr, "scalesim:", err)
		os.Exit(1)
	}
}

func run(dir string, wall float64, runners string, m scalesim.Model) error {
	man, err := manifest.Read(dir)
	if err != nil {
		return err
	}
	sum := 0.0
	for _, k := range man.Kernels {
		if k.Status == manifest.StatusBuilt && k.BuildSeconds > 0 {
			m.Costs = append(m.Costs, k.BuildSeconds)
			sum += k.BuildSeconds
		}
	}
	if len(m.Costs) == 0 || wall <= 0 {
		return fmt.Errorf("%s: no built kernel with build_seconds, or no -wall", dir)
	}
	m.Parallelism = sum / wall
	var ns []int
	for _, f := range strings.Split(runners, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-runners: %q", f)
		}
		ns = append(ns, n)
	}
	ps, err := scalesim.Predict(m, ns...)
	if err != nil {
		return err
	}
	fmt.Printf("measured: %d kernels of %s %s, %.1f compile-seconds in %.1f s (parallelism %.2f); per kernel fetch %.2f s, pull %.2f s, release %.2f s; plan %.1f s; job setup %.0f s (assumed)\n",
		len(m.Costs), man.Source.Name, man.Source.Version, sum, wall, m.Parallelism, m.Fetch, m.Pull, m.Release, m.Plan, m.JobSetup)
	fmt.Printf("%-8s %-10s %-12s %-12s %-14s\n", "runners", "kernels", "cold", "warm", "critical shard")
	for _, p := range ps {
		fmt.Printf("%-8d %-10d %-12s %-12s %.0f compile-s (mean %.0f)\n", p.Runners, m.Kernels, minutes(p.Cold), minutes(p.Warm), p.Critical, p.Mean)
	}
	return nil
}

func minutes(s float64) string { return fmt.Sprintf("%dm%02.0fs", int(s)/60, s-float64(int(s)/60*60)) }
