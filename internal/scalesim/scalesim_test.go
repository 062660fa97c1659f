package scalesim_test

import (
	"math"
	"testing"

	"github.com/kmpack/kmpack/internal/scalesim"
)

// The model's arithmetic on a case worked by hand, and the properties any prediction must
// have: more runners are never slower here, warm never slower than cold.
func TestPredict(t *testing.T) {
	m := scalesim.Model{Costs: []float64{40, 20, 10, 10}, Kernels: 8, Parallelism: 2, JobSetup: 60, Fetch: 1, Pull: 0.5, Plan: 3, Release: 0.25}
	ps, err := scalesim.Predict(m, 1, 2, 4, 8)
	if err != nil {
		t.Fatal(err)
	}
	// One runner: 160 compile-s / 2 + 8 fetches; plus plan and release jobs (2×60 + 3 + 8×0.25).
	if want := 60 + 8 + 80 + 125.0; math.Abs(ps[0].Cold-want) > 1e-9 {
		t.Errorf("1 runner cold: %v, want %v", ps[0].Cold, want)
	}
	if want := 60 + 8 + 4 + 125.0; math.Abs(ps[0].Warm-want) > 1e-9 {
		t.Errorf("1 runner warm: %v, want %v", ps[0].Warm, want)
	}
	// Two runners: LPT puts 40+20+10+10 on each (80 compile-s, 4 kernels).
	if want := 60 + 4 + 40 + 125.0; math.Abs(ps[1].Cold-want) > 1e-9 || ps[1].Critical != 80 {
		t.Errorf("2 runners cold: %v (critical %v), want %v", ps[1].Cold, ps[1].Critical, want)
	}
	for i, p := range ps {
		if p.Warm > p.Cold {
			t.Errorf("%d runners: warm %v > cold %v", p.Runners, p.Warm, p.Cold)
		}
		if i > 0 && p.Cold > ps[i-1].Cold {
			t.Errorf("%d runners slower than %d: %v > %v", p.Runners, ps[i-1].Runners, p.Cold, ps[i-1].Cold)
		}
	}
	// Eight runners: one kernel each, the 40 s kernels set the pace.
	if ps[3].Critical != 40 {
		t.Errorf("8 runners: critical shard %v", ps[3].Critical)
	}
	for _, bad := range []scalesim.Model{{}, {Costs: []float64{1}, Kernels: 1}, {Costs: []float64{-1}, Kernels: 1, Parallelism: 1}} {
		if _, err := scalesim.Predict(bad, 1); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
	if _, err := scalesim.Predict(m, 9); err == nil {
		t.Error("9 runners for 8 kernels: no error")
	}
}
