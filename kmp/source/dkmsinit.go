package source

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/kernel"
)

// SpecFromDKMS writes the kmpack.yaml equivalent of a dkms.conf source. A dkms.conf is a
// program run per kernel, a spec is data: the conf is evaluated for every tree given, the first
// tree's result becomes the spec, and every way the others' results differ comes back as a
// warning (as does anything a spec cannot say, such as BUILD_DEPENDS).
func SpecFromDKMS(ctx context.Context, src *Source, trees []*kernel.KernelTree) (*Spec, []string, error) {
	if src.Kind != SourceDKMS {
		return nil, nil, kmp.InputErrorf(src.Dir, "no dkms.conf to convert (found %s)", src.Kind)
	}
	if len(trees) == 0 {
		return nil, nil, fmt.Errorf("no kernel tree to evaluate dkms.conf for")
	}
	if err := src.Identify(ctx, trees[0], 1); err != nil {
		return nil, nil, err
	}
	tmp, err := os.MkdirTemp("", "kmpack-init-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(tmp)

	var warnings []string
	var first *Spec
	var firstConf *DKMSConf
	for i, t := range trees {
		// Evaluated with the paths a build sees (dkms's), which portable() writes back as variables.
		ws := NewPrivateWorkspace(filepath.Join(tmp, t.Release), t, src.Name, src.Version)
		conf, err := EvalDKMSConf(ctx, src.File, src.dkmsEnv(t, ws, 1))
		if err != nil {
			return nil, nil, err
		}
		plan, err := dkmsPlan(conf, t, ws)
		if err != nil {
			return nil, nil, err
		}
		s := specFromConf(conf, plan, t, ws)
		if i == 0 {
			first, firstConf = s, conf
			continue
		}
		if !reflect.DeepEqual(first, s) {
			warnings = append(warnings, fmt.Sprintf("dkms.conf evaluates differently for %s than for %s; kmpack.yaml holds the %s result: adjust it (build.commands match, build-exclusive, per-module build-exclusive) by hand",
				t.Release, trees[0].Release, trees[0].Release))
		}
	}
	if deps := firstConf.Vars["BUILD_DEPENDS"]; len(deps) > 0 {
		warnings = append(warnings, "BUILD_DEPENDS has no kmpack.yaml equivalent: build the dependency first")
	}
	for _, v := range []string{"POST_ADD", "PRE_INSTALL", "POST_INSTALL", "POST_REMOVE"} {
		if firstConf.Scalar(v) != "" {
			warnings = append(warnings, v+" runs on the target machine in dkms; kmpack packages do not carry it")
		}
	}
	if shellLogicRE.MatchString(readFileString(src.File)) {
		warnings = append(warnings, fmt.Sprintf("dkms.conf has shell logic; it was evaluated for %d kernel(s), not carried over", len(trees)))
	}
	return first, warnings, nil
}

var shellLogicRE = regexp.MustCompile(`(?m)^\s*(if|case|for|while)\b|\$\(|` + "`")

func readFileString(p string) string {
	b, _ := readInDir(p, MaxSpecSize)
	return string(b)
}

func specFromConf(conf *DKMSConf, plan *BuildPlan, t *kernel.KernelTree, ws *Workspace) *Spec {
	s := &Spec{Name: plan.Name, Version: plan.Version, Release: "1"}
	portable := func(v string) string {
		return strings.NewReplacer(ws.BuildDir, "${build_dir}", ws.DKMSTree, "${dkms_tree}", ws.Kernel(t), "${kernel_source_dir}",
			t.Dir, "${kernel_source_dir}", t.Release, "${kernelver}").Replace(v)
	}
	defaultMake := "make -C " + ws.Kernel(t) + " M=" + ws.BuildDir
	for _, i := range conf.Indexes("MAKE") {
		cmd := conf.Get("MAKE", i)
		if cmd == "" {
			continue
		}
		if i == 0 && conf.Get("MAKE_MATCH", 0) == "" && len(conf.Indexes("MAKE")) == 1 && cmd == defaultMake {
			break // the default command
		}
		s.Build.Commands = append(s.Build.Commands, SpecCommand{Run: portable(cmd), Match: conf.Get("MAKE_MATCH", i)})
	}
	if len(s.Build.Commands) > 1 {
		// dkms runs one MAKE: the last whose MAKE_MATCH matches, MAKE[0] otherwise. Only what this
		// kernel chose can be expressed as an unconditional command list.
		s.Build.Commands = []SpecCommand{{Run: portable(plan.Commands[0])}}
	} else if len(s.Build.Commands) == 1 {
		s.Build.Commands[0].Match = ""
	}
	for _, i := range conf.Indexes("PATCH") {
		if p := conf.Get("PATCH", i); p != "" {
			s.Patches = append(s.Patches, SpecPatch{File: filepath.Join("patches", p), Match: conf.Get("PATCH_MATCH", i)})
		}
	}
	// The hooks' arguments often carry the kernel ($kernelver in dkms.conf): written back
	// portable, kmpack expands them per kernel when it runs the hook.
	if plan.PreBuild != "" {
		s.Build.PreBuild = "./" + strings.TrimPrefix(portable(plan.PreBuild), "./")
	}
	if plan.PostBuild != "" {
		s.Build.PostBuild = "./" + strings.TrimPrefix(portable(plan.PostBuild), "./")
	}
	s.BuildExclusive = exclusionFromDKMS(conf, 0)
	if s.BuildExclusive.KernelMax == "" {
		s.BuildExclusive.KernelMax = conf.Scalar("OBSOLETE_BY")
	}
	for i, m := range plan.Modules {
		sm := SpecModule{Name: m.BuiltName, Location: m.BuiltLocation, InstallDir: strings.TrimPrefix(m.DestLocation, "/")}
		if m.DestName != m.BuiltName {
			sm.DestName = m.DestName
		}
		if !m.Strip {
			f := false
			sm.Strip = &f
		}
		if i > 0 {
			sm.BuildExclusive = exclusionFromDKMS(conf, i)
		}
		s.Modules = append(s.Modules, sm)
	}
	return s
}
