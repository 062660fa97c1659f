package formats

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/kmpack/kmpack/kmp/kernel"
	"github.com/kmpack/kmpack/kmp/manifest"
	"github.com/kmpack/kmpack/kmp/source"
)

// PackagesDir is where packages land inside a build's output directory.
const PackagesDir = "packages"

// ResolveProfiles turns --format and --profile (or a spec's formats and profile) into the
// profiles to run. A profile names its format; a format alone implies its only profile (rpm
// has two, so it needs one named). Asking for a format no named profile emits is an error.
func ResolveProfiles(formatNames, profileNames []string) ([]string, error) {
	var out []string
	for _, p := range profileNames {
		prof, err := ProfileFor(p)
		if err != nil {
			return nil, err
		}
		if len(formatNames) > 0 && !slices.Contains(formatNames, prof.Format()) {
			return nil, fmt.Errorf("profile %s makes %s packages, and --format asks only for %v", p, prof.Format(), formatNames)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, f := range formatNames {
		if _, err := EmitterFor(f); err != nil {
			return nil, err
		}
		covered := false
		for _, p := range out {
			covered = covered || profiles[p].Format() == f
		}
		if covered {
			continue
		}
		p, err := DefaultProfile(f)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Request is a build to package.
type Request struct {
	Source   *source.Source
	Manifest *manifest.Manifest
	// OutputDir is the build's output directory; packages go to OutputDir/packages.
	OutputDir string
	// Trees are the kernel trees the build used, for their symvers (the rhel profile needs them).
	Trees    []*kernel.KernelTree
	Profiles []string
	Options  Options
}

// PackageBuild describes, validates and writes every package of a build. Nothing is written
// unless every package is valid; the packages directory is replaced as a whole.
func PackageBuild(req Request) ([]Written, error) {
	mtime, err := SourceDateEpoch()
	if err != nil {
		return nil, err
	}
	trees := map[string]*kernel.KernelTree{}
	// Only the rhel profile reads the kernels' symvers (see Kernel.Symvers).
	if slices.Contains(req.Profiles, "rhel") {
		for _, t := range req.Trees {
			trees[t.Release] = t
		}
	}
	kernels, err := InputFromBuild(req.OutputDir, req.Manifest, trees)
	if err != nil {
		return nil, err
	}
	certs, err := CertsFromBuild(req.OutputDir, req.Manifest)
	if err != nil {
		return nil, err
	}
	in := &Input{Meta: MetadataFor(req.Source, req.Manifest), Kernels: kernels, Certs: certs, MTime: mtime}
	if !req.Options.NoSource {
		files, conf, err := req.Source.Files()
		if err != nil {
			return nil, err
		}
		in.Source = &Source{Files: files, DKMSConf: conf}
	}
	if len(in.Kernels) == 0 && in.Source == nil {
		return nil, fmt.Errorf("nothing to package: no kernel built")
	}
	opts := req.Options
	if os.Getenv("SOURCE_DATE_EPOCH") == "" {
		opts.Cache = nil // the packages are dated now: no two runs share a key
	}
	pkgs, err := Describe(in, req.Profiles, opts)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(req.OutputDir, PackagesDir)
	written, err := Write(pkgs, dir)
	if err != nil {
		return nil, err
	}
	index, err := json.MarshalIndent(written, "", "  ")
	if err != nil {
		return nil, err
	}
	return written, os.WriteFile(filepath.Join(dir, "packages.json"), append(index, '\n'), 0o644)
}
