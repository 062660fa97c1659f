package repo

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/kmpack/kmpack/kmp"
)

// Query is one repository and the kernels wanted from it.
type Query struct {
	Source   *Source
	Selector Selector
}

// Result is what a Query selects from its repository, as `kmpack kernels --repo --json` prints it.
type Result struct {
	Repo     string    `json:"repo"`
	Verified bool      `json:"verified"`
	Notes    []string  `json:"notes,omitempty"`
	Kernels  []Kernel  `json:"kernels"`
	Skipped  []Skipped `json:"skipped,omitempty"`
}

// Resolve reads each query's repository metadata (nothing else is downloaded) and selects its
// kernels.
func Resolve(ctx context.Context, f *Fetcher, qs []Query) ([]Result, error) {
	var out []Result
	for _, q := range qs {
		idx, err := Load(ctx, f, q.Source)
		if err != nil {
			return nil, err
		}
		out = append(out, Result{Repo: q.Source.Spec, Verified: idx.Verified, Notes: idx.Notes,
			Kernels: Select(idx.Kernels, q.Selector), Skipped: idx.Skipped})
	}
	return out, nil
}

// FetchKernels downloads the packages of every selected kernel into f's cache and returns their
// files, each once, sorted (for unpack.FindKernels). A query that selects no kernel is an error
// naming its repository: a build asked for kernels from it.
func FetchKernels(ctx context.Context, f *Fetcher, res []Result) ([]string, error) {
	var pkgs []Package
	for _, r := range res {
		if len(r.Kernels) == 0 {
			return nil, kmp.InputErrorf(r.Repo, "no kernel matches the selection")
		}
		for _, k := range r.Kernels {
			f.progress("%s from %s (%.1f MiB)", k.Release, r.Repo, float64(k.Size)/(1<<20))
			pkgs = append(pkgs, k.Packages...)
		}
	}
	files, err := f.FetchAll(ctx, pkgs)
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	return compact(files), nil
}

func compact(s []string) []string {
	var out []string
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// VersionRange is a conjunction of comparisons against a kernel's package version, in its
// format's order (dpkg's or rpm's): ">=6.1.140, <6.1.160".
type VersionRange struct {
	text    string
	clauses []versionClause
}

type versionClause struct{ op, version string }

// ParseVersionRange parses comma-separated clauses, each an operator (>=, >, <=, <, =) and a
// version.
func ParseVersionRange(s string) (VersionRange, error) {
	r := VersionRange{text: s}
	for _, c := range strings.Split(s, ",") {
		c = strings.TrimSpace(c)
		op := ""
		for _, o := range []string{">=", "<=", "==", ">", "<", "="} {
			if strings.HasPrefix(c, o) {
				op = o
				break
			}
		}
		v := strings.TrimSpace(c[len(op):])
		if op == "" || v == "" || strings.ContainsAny(v, " \t<>=") || len(v) > 128 {
			return VersionRange{}, fmt.Errorf("version range %q: want clauses like >=6.1.140 separated by commas", s)
		}
		if op == "==" {
			op = "="
		}
		r.clauses = append(r.clauses, versionClause{op, v})
	}
	return r, nil
}

func (r VersionRange) String() string { return r.text }

// contains tells whether k's package version satisfies every clause.
func (r VersionRange) contains(k Kernel) bool {
	less := debVersionLess
	if k.Format == "rpm" {
		less = rpmVersionLess
	}
	for _, c := range r.clauses {
		lt, gt := less(k.Version, c.version), less(c.version, k.Version)
		var ok bool
		switch c.op {
		case ">=":
			ok = !lt
		case ">":
			ok = gt
		case "<=":
			ok = !gt
		case "<":
			ok = lt
		case "=":
			ok = !lt && !gt
		}
		if !ok {
			return false
		}
	}
	return true
}
