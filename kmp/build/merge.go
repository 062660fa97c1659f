package build

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
)

// Bounds on what Merge copies from an output besides modules (module.MaxInputFile bounds
// those): a log is capped at BuildLogLimit plus kmpack's own lines.
const (
	maxMergeLog     = BuildLogLimit + 1<<20
	maxMergeSymvers = maxTreeIdentityFile
	maxMergeCert    = 1 << 20
)

// mergeInput is one output being merged.
type mergeInput struct {
	dir  string
	m    *manifest.Manifest
	root *os.Root
}

// Merge combines build outputs (the shards of one sharded build: kmpack build --shard) into
// one output at out, with one manifest, as a single build of every kernel would have written
// it: the kernels in build order, the summary counted again, the certificates once.
//
// The outputs are input from elsewhere (CI artefacts): each manifest is validated
// (manifest.Read), every file is read through an os.Root on its output (regular files only,
// no link leading out, bounded), and every module must match the sha256 and size its manifest
// records. Outputs of different sources (name, version, kind, sha256) or kmpack build engines,
// outputs that share a kernel, a certificate file that differs between outputs, outputs not
// signed with the same certificates, and shards that are not every shard of one plan (each
// exactly once) are refused as bad input, before anything is written.
// out is written as Build writes it: staged beside it, under its lock, and renamed into place;
// it must not exist, be empty, or be a previous kmpack build output, and not be an input.
func Merge(outputs []string, out string) (*manifest.Manifest, error) {
	if len(outputs) == 0 {
		return nil, errors.New("no build outputs to merge")
	}
	out, err := filepath.Abs(out)
	if err != nil {
		return nil, err
	}
	var ins []*mergeInput
	defer func() {
		for _, in := range ins {
			if in.root != nil {
				in.root.Close()
			}
		}
	}()
	seenDir := map[string]bool{}
	for _, d := range outputs {
		abs, err := filepath.Abs(d)
		if err != nil {
			return nil, err
		}
		if abs == out {
			return nil, kmp.InputErrorf(d, "is the merge's output: merge into a new directory")
		}
		if seenDir[abs] {
			return nil, kmp.InputErrorf(d, "is given twice")
		}
		seenDir[abs] = true
		m, err := manifest.Read(abs)
		if err != nil {
			return nil, err
		}
		root, err := os.OpenRoot(abs)
		if err != nil {
			return nil, kmp.InputErrorf(d, "%v", kmp.UnwrapPathError(err))
		}
		ins = append(ins, &mergeInput{dir: d, m: m, root: root})
	}
	merged, err := mergeManifests(ins)
	if err != nil {
		return nil, err
	}

	// Everything below writes: under the output's lock, into a stage renamed into place.
	if err := checkOutputDir(out); err != nil {
		return nil, err
	}
	stage, err := stageOutput(out)
	if err != nil {
		return nil, err
	}
	defer stage.close()
	for _, in := range ins {
		if err := copyOutput(in, stage.Path()); err != nil {
			return nil, err
		}
	}
	if err := copyCertificates(ins, merged.Certificates, stage.Path()); err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(merged, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(stage.Path(), "manifest.json"), append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := replaceDir(stage.Path(), out); err != nil {
		return nil, err
	}
	return merged, nil
}

// mergeManifests checks that the inputs belong together and returns their merged manifest.
func mergeManifests(ins []*mergeInput) (*manifest.Manifest, error) {
	first := ins[0].m
	merged := &manifest.Manifest{Format: first.Format, FormatVersion: first.FormatVersion, Tool: first.Tool, Source: first.Source,
		Kernels: []*manifest.KernelBuild{}}
	mp := func(in *mergeInput) string { return filepath.Join(in.dir, "manifest.json") }
	where := map[string]string{} // release -> the output that has it
	for _, in := range ins {
		m, s := in.m, in.m.Source
		if s.Kind != first.Source.Kind || s.Name != first.Source.Name || s.Version != first.Source.Version || s.SHA256 != first.Source.SHA256 {
			return nil, kmp.InputErrorf(mp(in), "built from %s %s (%s, sha256 %s), not the %s %s (%s, sha256 %s) of %s: outputs of different sources do not merge",
				s.Name, s.Version, s.Kind, s.SHA256, first.Source.Name, first.Source.Version, first.Source.Kind, first.Source.SHA256, ins[0].dir)
		}
		if m.Tool != first.Tool {
			return nil, kmp.InputErrorf(mp(in), "built by %q, not %q as %s: outputs of different build engines do not merge", m.Tool, first.Tool, ins[0].dir)
		}
		for _, k := range m.Kernels {
			if prev, dup := where[k.Release]; dup {
				return nil, kmp.InputErrorf(mp(in), "kernel %s is also in %s: the outputs to merge must not share a kernel", k.Release, prev)
			}
			where[k.Release] = in.dir
			if k.Log != "" && k.Log != path.Join("logs", k.Release+".log") {
				return nil, kmp.InputErrorf(mp(in), "kernel %s: log %q is not one kmpack writes", k.Release, k.Log)
			}
			bases := map[string]bool{"Module.symvers": true}
			for _, bm := range k.Modules {
				b := path.Base(bm.File)
				if bases[b] {
					return nil, kmp.InputErrorf(mp(in), "kernel %s: module file %q is not one kmpack writes", k.Release, bm.File)
				}
				bases[b] = true
			}
			merged.Kernels = append(merged.Kernels, k)
		}
	}
	order, err := shardOrder(ins)
	if err != nil {
		return nil, err
	}
	if order != nil {
		if len(order) != len(merged.Kernels) {
			return nil, kmp.InputErrorf(ins[0].dir, "the shards hold %d kernels, their plan has %d", len(merged.Kernels), len(order))
		}
		pos := map[string]int{}
		for i, r := range order {
			pos[r] = i
		}
		for _, k := range merged.Kernels {
			if _, ok := pos[k.Release]; !ok {
				return nil, kmp.InputErrorf(where[k.Release], "kernel %s is not in the shards' plan", k.Release)
			}
		}
		sort.SliceStable(merged.Kernels, func(i, j int) bool { return pos[merged.Kernels[i].Release] < pos[merged.Kernels[j].Release] })
	} else {
		// As kmpack build orders the kernels it finds (kernel.SortKernelTrees).
		sort.SliceStable(merged.Kernels, func(i, j int) bool {
			a, b := merged.Kernels[i], merged.Kernels[j]
			if c := kernel.CompareReleases(a.Release, b.Release); c != 0 {
				return c < 0
			}
			return a.Tree < b.Tree
		})
	}
	merged.Summary = summarize(merged.Kernels)
	// A certificate is its file (certs/<serial>.der; two of one serial are told apart by
	// fingerprint): the same file in two outputs must be the same certificate.
	byFile := map[string]manifest.Certificate{}
	for _, in := range ins {
		for _, c := range in.m.Certificates {
			if prev, seen := byFile[c.File]; seen {
				if prev != c {
					return nil, kmp.InputErrorf(mp(in), "certificate %s (key id %s, sha256 %s) differs from another output's (key id %s, sha256 %s): the shards were signed with different keys",
						c.File, c.KeyID, c.SHA256, prev.KeyID, prev.SHA256)
				}
				continue
			}
			byFile[c.File] = c
			merged.Certificates = append(merged.Certificates, c)
		}
	}
	for _, in := range ins {
		// One build signs every kernel's modules with the same keys: so must its shards.
		if len(in.m.Certificates) != len(merged.Certificates) {
			return nil, kmp.InputErrorf(mp(in), "its modules are signed with %d certificates, the outputs' together with %d: every shard must be signed with the same keys",
				len(in.m.Certificates), len(merged.Certificates))
		}
	}
	return merged, nil
}

// shardOrder checks the inputs' shard records: none has one (nil order: independent outputs
// of one source), or every one is a distinct shard of one plan and together they are all of
// its shards; then the plan's kernels, in build order, are returned.
func shardOrder(ins []*mergeInput) ([]string, error) {
	var ref *manifest.ShardInfo
	for _, in := range ins {
		if in.m.Shard != nil {
			ref = in.m.Shard
			break
		}
	}
	if ref == nil {
		return nil, nil
	}
	seen := map[int]string{}
	for _, in := range ins {
		p := filepath.Join(in.dir, "manifest.json")
		s := in.m.Shard
		switch {
		case s == nil:
			return nil, kmp.InputErrorf(p, "is not a shard's output (no \"shard\" record), and others are")
		case s.Count != ref.Count || s.Plan != ref.Plan || !slices.Equal(s.Kernels, ref.Kernels):
			return nil, kmp.InputErrorf(p, "shard %d/%d of plan %.12s, not of the plan of the other shards (%d shards, plan %.12s): every shard must be built with the same kernels and --costs",
				s.Index, s.Count, s.Plan, ref.Count, ref.Plan)
		case s.Index < 1 || s.Index > s.Count || s.Count > len(s.Kernels):
			return nil, kmp.InputErrorf(p, "shard %d/%d of %d kernels is not one kmpack build --shard makes", s.Index, s.Count, len(s.Kernels))
		}
		if prev, dup := seen[s.Index]; dup {
			return nil, kmp.InputErrorf(p, "shard %d/%d again (also %s)", s.Index, s.Count, prev)
		}
		seen[s.Index] = in.dir
		for _, r := range in.m.Kernels {
			if !slices.Contains(s.Kernels, r.Release) {
				return nil, kmp.InputErrorf(p, "kernel %s is not in its shard plan", r.Release)
			}
		}
	}
	for i := 1; i <= ref.Count; i++ {
		if _, ok := seen[i]; !ok {
			return nil, kmp.InputErrorf(ins[0].dir, "shard %d/%d is missing: merge every shard's output", i, ref.Count)
		}
	}
	for _, r := range ref.Kernels {
		if err := ident.KernelRelease(r); err != nil {
			return nil, kmp.InputErrorf(ins[0].dir, "shard plan: %v", err)
		}
	}
	return ref.Kernels, nil
}

// summarize counts kernels by outcome, as Build does.
func summarize(kernels []*manifest.KernelBuild) manifest.BuildSummary {
	var s manifest.BuildSummary
	for _, k := range kernels {
		switch k.Status {
		case manifest.StatusBuilt:
			s.Built++
			if k.Cached {
				s.Cached++
			}
		case manifest.StatusSkipped:
			s.Skipped++
		case manifest.StatusServed:
			s.Served++
		case manifest.StatusFailed:
			s.Failed++
		}
	}
	return s
}

// copyOutput copies an input's kernels' files into the stage: modules checked against their
// recorded sha256 and size, Module.symvers and logs as they are (bounded).
func copyOutput(in *mergeInput, stage string) error {
	for _, k := range in.m.Kernels {
		dir := filepath.Join(stage, "modules", k.Release)
		if len(k.Modules) > 0 || k.Symvers != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
		for _, bm := range k.Modules {
			p := filepath.Join(in.dir, filepath.FromSlash(bm.File))
			body, err := manifest.ReadOutputFile(in.root, bm.File, p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(body)
			if int64(len(body)) != bm.Size || hex.EncodeToString(sum[:]) != bm.SHA256 {
				return kmp.InputErrorf(p, "does not match the sha256 and size its manifest records (altered or truncated)")
			}
			if err := writeNew(filepath.Join(stage, filepath.FromSlash(bm.File)), body); err != nil {
				return err
			}
		}
		if k.Symvers != "" {
			if err := copyBounded(in, k.Symvers, stage, maxMergeSymvers); err != nil {
				return err
			}
		}
		if k.Log != "" {
			if err := os.MkdirAll(filepath.Join(stage, "logs"), 0o755); err != nil {
				return err
			}
			if err := copyBounded(in, k.Log, stage, maxMergeLog); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyCertificates writes each certificate once, from the first output that lists it, after
// checking its bytes against its recorded fingerprint.
func copyCertificates(ins []*mergeInput, certs []manifest.Certificate, stage string) error {
	for _, c := range certs {
		var from *mergeInput
		for _, in := range ins {
			if slices.Contains(in.m.Certificates, c) {
				from = in
				break
			}
		}
		p := filepath.Join(from.dir, filepath.FromSlash(c.File))
		data, _, err := kmp.ReadRootFile(from.root, filepath.FromSlash(c.File), maxMergeCert)
		if err != nil {
			return kmp.InputErrorf(p, "%v", kmp.UnwrapPathError(err))
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != c.SHA256 {
			return kmp.InputErrorf(p, "does not match the sha256 its manifest records")
		}
		if err := os.MkdirAll(filepath.Join(stage, "certs"), 0o755); err != nil {
			return err
		}
		if err := writeNew(filepath.Join(stage, filepath.FromSlash(c.File)), data); err != nil {
			return err
		}
	}
	return nil
}

// copyBounded copies rel (a regular file, inside the input) to the same name in the stage,
// refusing one larger than limit.
func copyBounded(in *mergeInput, rel, stage string, limit int64) error {
	p := filepath.Join(in.dir, filepath.FromSlash(rel))
	f, fi, err := kmp.OpenRootFile(in.root, filepath.FromSlash(rel), true)
	if err != nil {
		return kmp.InputErrorf(p, "%v", kmp.UnwrapPathError(err))
	}
	defer f.Close()
	if fi.Size() > limit {
		return kmp.InputErrorf(p, "larger than %d bytes: not one kmpack writes", limit)
	}
	dst, err := os.OpenFile(filepath.Join(stage, filepath.FromSlash(rel)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	n, err := io.Copy(dst, io.LimitReader(f, limit+1))
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil && n > limit {
		err = kmp.InputErrorf(p, "larger than %d bytes: not one kmpack writes", limit)
	}
	return err
}

// writeNew writes a file that must not exist yet (two records naming one file are refused).
func writeNew(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
