package target

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/weakupdates"
)

// StatusSchema names kmpack status --json's format: scripts check it and never parse text.
// A change that removes or redefines a field makes it kmpack-status/2.
const StatusSchema = "kmpack-status/1"

// Report is kmpack status: one row per installed kernel × registered module.
type Report struct {
	Schema string      `json:"schema"`
	Rows   []StatusRow `json:"rows"`
}

// StatusRow is one kernel × module, from what is on disk now and what autoinstall recorded.
type StatusRow struct {
	Kernel string `json:"kernel"`
	Module string `json:"module"`
	// State is one of built-for-this-kernel, weak-linked, installed-from-repo (Package and
	// Version: the package autoinstall installed from the repositories), built-locally,
	// skipped, failed, missing.
	State   string `json:"state"`
	From    string `json:"from,omitempty"`
	Package string `json:"package,omitempty"`
	Version string `json:"version,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Log     string `json:"log,omitempty"`
	// Linkable is true for a missing module that a build for another kernel (From) provably
	// loads in: the next autoinstall (or weak-updates sync) links it.
	Linkable bool `json:"linkable,omitempty"`
	// RepoPackage and RepoVersion are the package autoinstall's step 3 looked for in the
	// repositories (the build of the module for this kernel) and the version offered;
	// RepoPending is true while it waits for the package manager to finish (the row is
	// missing meanwhile); RepoReason says why step 3 did not serve.
	RepoPackage string `json:"repo_package,omitempty"`
	RepoVersion string `json:"repo_version,omitempty"`
	RepoPending bool   `json:"repo_pending,omitempty"`
	RepoReason  string `json:"repo_reason,omitempty"`
	// Checked is when autoinstall last decided this row ("" when it never has).
	Checked string `json:"checked,omitempty"`
	// Signature is the signature state of the modules that serve the row (absent when none
	// do).
	Signature *SignatureInfo `json:"signature,omitempty"`
}

// Available tells whether the module is (or provably will be, by a link) loadable in the
// kernel, or is not meant for it (skipped by its BUILD_EXCLUSIVE rules).
func (r *StatusRow) Available() bool {
	switch r.State {
	case StateBuiltForKernel, StateWeakLinked, StateFromRepo, StateBuiltLocally, StateSkipped:
		return true
	}
	return r.Linkable
}

// Status reports every installed kernel × registered module. It writes nothing and takes no
// lock of its own: the state file is only ever replaced whole.
func Status(o Options) (*Report, error) {
	r, err := os.OpenRoot(o.root())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	rep := &Report{Schema: StatusSchema, Rows: []StatusRow{}}
	kmps, plans, err := engineFacts(o.engine())
	if err != nil {
		return nil, err
	}
	st := readState(r, &o)
	sources := newestSources(readSources(r, &o))
	ctx, cancel := context.WithTimeout(context.Background(), DefaultRepoTimeout)
	defer cancel()
	kmps = o.rpmRegistrations(ctx, r, kmps, sources)
	key, err := findMachineKey(o, false)
	if err != nil {
		o.warnf("%v", err)
	}
	mok := o.enrolledCerts()
	for _, p := range plans {
		rows := kernelRows(r, p, decide(r, p.Kernel, kmps, p, sources), st)
		for i := range rows {
			rows[i].Signature = signatureOf(r, servingFiles(&rows[i], kmps, st), key, mok)
		}
		rep.Rows = append(rep.Rows, rows...)
	}
	return rep, nil
}

// servingFiles are the module files that serve row: the package's for this kernel, the linked
// build's, or autoinstall's.
func servingFiles(row *StatusRow, kmps []weakupdates.KMP, st *State) []string {
	switch row.State {
	case StateBuiltForKernel, StateFromRepo, StateWeakLinked:
		k := row.Kernel
		if row.State == StateWeakLinked {
			k = row.From
		}
		for _, kp := range kmps {
			if kp.Name == row.Module && kp.Kernel == k && kp.Package == row.Package {
				return kp.Modules
			}
		}
	case StateBuiltLocally:
		if res := st.get(row.Kernel, row.Module); res != nil {
			return res.Files
		}
	}
	return nil
}

// kernelRows reports kernel p.Kernel's modules: what decide finds on disk now, then what
// autoinstall recorded.
func kernelRows(r *os.Root, p *weakupdates.Plan, decided []row, st *State) []StatusRow {
	k := p.Kernel
	var rows []StatusRow
	for _, d := range decided {
		n := d.name
		row := StatusRow{Kernel: k, Module: n}
		res := st.get(k, n)
		if res != nil {
			row.Checked = res.Time
			row.RepoPackage, row.RepoVersion, row.RepoPending, row.RepoReason = res.RepoPackage, res.RepoVersion, res.RepoPending, res.RepoReason
		}
		switch {
		case d.own != nil:
			row.State, row.Package, row.Version = StateBuiltForKernel, d.own.Package, d.own.Version
			if res != nil && res.State == StateFromRepo && res.Package == d.own.Package {
				row.State = StateFromRepo
			}
			row.RepoPending, row.RepoReason = false, ""
		case d.linkFrom != "":
			row.State, row.From, row.Package = StateWeakLinked, d.linkFrom, d.linkPkg
		case res != nil && res.State == StateBuiltLocally:
			row.State, row.Version, row.Log = StateBuiltLocally, res.Version, res.Log
			switch {
			case !filesPresent(r, res.Files):
				row.State, row.Reason = StateMissing, "the modules autoinstall built are gone: run kmpack autoinstall "+k
			case res.Reason != "":
				row.Reason = res.Reason // a newer version could not be built; this one stays
			case d.src != nil && d.src.Version != res.Version:
				row.Reason = fmt.Sprintf("built from %s %s; %s is registered since: run kmpack autoinstall %s", n, res.Version, d.src.Version, k)
			}
		case res != nil && (res.State == StateFailed || res.State == StateSkipped):
			row.State, row.Version, row.Reason, row.Log = res.State, res.Version, res.Reason, res.Log
		case res != nil && res.RepoPending:
			row.State, row.Reason = StateMissing, res.Reason
		case res != nil:
			row.State = StateMissing
			row.Reason = fmt.Sprintf("%s when kmpack autoinstall last ran (%s), not any more: run kmpack autoinstall %s", res.State, res.Time, k)
		default:
			row.State = StateMissing
			row.Reason = "nothing serves it and kmpack autoinstall has not run for " + k + " since " + n + " was registered or its source removed: run kmpack autoinstall " + k
		}
		if row.State == StateMissing || row.State == StateFailed {
			if p.From[n] != "" {
				// The compat check already says a build loads here: only the link is missing.
				row.Linkable, row.From = true, p.From[n]
				row.Reason = "a build for " + p.From[n] + " loads here but is not linked (" + strings.Join(p.Unlinked[n], "; ") + ")"
			}
		}
		rows = append(rows, row)
	}
	return rows
}

// Gate tells whether every registered module is available in kernel k (installed, linked,
// built, or provably linkable by the compat check). The rows returned are the ones that are
// not; an unknown kernel is an InputError.
func Gate(o Options, k string) ([]StatusRow, error) {
	rep, err := Status(o)
	if err != nil {
		return nil, err
	}
	r, err := os.OpenRoot(o.root())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if !slices.Contains(weakupdates.InstalledKernels(r), k) {
		return nil, kmp.InputErrorf(k, "no such kernel installed (%s has no kernel/ directory)", o.display("lib/modules/"+k))
	}
	var bad []StatusRow
	for _, row := range rep.Rows {
		if row.Kernel == k && !row.Available() {
			bad = append(bad, row)
		}
	}
	return bad, nil
}
