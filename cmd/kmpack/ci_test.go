package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/kmpack/kmpack/internal/testenv"
)

// The CI recipes of examples/ci are checked with the tools their platforms' users check them
// with (actionlint at the version internal/tools/actionlint.mod pins, with shellcheck), the
// GitLab pipelines (the parent and the child kmpack plan --ci gitlab writes, with the release
// jobs appended as the parent does) by the rules of GitLab's CI/CD YAML reference, and every
// kmpack command in them against kmpack's own flags. The sequence they run is run locally by
// TestShardMergePackagesAsOneBuild.
func TestCIExamples(t *testing.T) {
	testenv.Need(t, "shellcheck")
	examples := filepath.Join("..", "..", "examples", "ci")
	workflow := filepath.Join(examples, "github-actions.yml")

	actionlint := filepath.Join(t.TempDir(), "actionlint")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	build := exec.Command(gobin, "build", "-modfile=internal/tools/actionlint.mod", "-o", actionlint, "github.com/rhysd/actionlint/cmd/actionlint")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building actionlint: %v\n%s", err, out)
	}
	if out, err := exec.Command(actionlint, "-no-color", workflow).CombinedOutput(); err != nil {
		t.Errorf("actionlint %s: %v\n%s", workflow, err, out)
	}
	// The check can fail: an unquoted expansion in a run: script is shellcheck's SC2086.
	data, err := os.ReadFile(workflow)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yml")
	os.WriteFile(bad, []byte(strings.Replace(string(data), "kmpack merge -o out", "kmpack merge -o $OUT", 1)), 0o644)
	if out, err := exec.Command(actionlint, "-no-color", bad).CombinedOutput(); err == nil || !strings.Contains(string(out), "SC2086") {
		t.Errorf("actionlint passed a workflow with an unquoted expansion: %v\n%s", err, out)
	}
	var wf struct {
		Jobs map[string]struct {
			Steps []struct{ Run string }
		}
	}
	if err := yaml.Unmarshal(data, &wf); err != nil {
		t.Fatal(err)
	}
	var ghScripts []string // actionlint ran shellcheck on them (with ${{ }} replaced)
	for _, j := range wf.Jobs {
		for _, s := range j.Steps {
			ghScripts = append(ghScripts, s.Run)
		}
	}
	var scripts []string

	// GitLab: the parent pipeline, then the child its plan job writes.
	parent := readGitLab(t, filepath.Join(examples, "gitlab-ci.yml"))
	scripts = append(scripts, checkGitLab(t, "gitlab-ci.yml", parent)...)
	plan, ok := parent["kmpack-plan"].(map[string]any)
	if !ok {
		t.Fatal("gitlab-ci.yml: no kmpack-plan job")
	}
	var paths []string
	for _, p := range plan["artifacts"].(map[string]any)["paths"].([]any) {
		paths = append(paths, p.(string))
	}
	trig := parent["kmpack-release"].(map[string]any)["trigger"].(map[string]any)
	for _, inc := range trig["include"].([]any) {
		inc := inc.(map[string]any)
		if inc["job"] != "kmpack-plan" || !slices.Contains(paths, inc["artifact"].(string)) {
			t.Errorf("gitlab-ci.yml: the trigger includes %v, not an artifact of kmpack-plan (%v)", inc, paths)
		}
	}
	child, _, code := kmpack(t, "plan", "--shards", "2", "--ci", "gitlab", "-k", testenv.HeadersDir(t, testenv.Release53),
		"-k", testenv.HeadersDir(t, testenv.Release54), testenv.ExampleSource(t, true))
	if code != 0 {
		t.Fatalf("plan --ci gitlab: exit %d", code)
	}
	release, err := os.ReadFile(filepath.Join(examples, "gitlab-kmpack-release.yml"))
	if err != nil {
		t.Fatal(err)
	}
	childFile := filepath.Join(t.TempDir(), "kmpack-child.yml")
	os.WriteFile(childFile, append([]byte(child), release...), 0o644) // as the plan job's cat >> does
	scripts = append(scripts, checkGitLab(t, "the child pipeline", readGitLab(t, childFile))...)

	// Every script passes shellcheck, and every kmpack command in them uses flags kmpack has.
	sh := filepath.Join(t.TempDir(), "scripts.sh")
	os.WriteFile(sh, []byte("#!/bin/bash\nset -e\n"+strings.Join(scripts, "\n")+"\n"), 0o644)
	if out, err := exec.Command("shellcheck", "-s", "bash", "-e", "SC2154", sh).CombinedOutput(); err != nil {
		t.Errorf("shellcheck of the recipes' scripts: %v\n%s", err, out)
	}
	cmdRE := regexp.MustCompile(`(?m)\bkmpack ([a-z]+)((?: [^|>;\n]*)?)`)
	checked := 0
	helps := map[string]string{}
	for _, s := range append(ghScripts, scripts...) {
		s = regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(s, "") // comments
		for _, m := range cmdRE.FindAllStringSubmatch(s, -1) {
			sub := m[1]
			if helps[sub] == "" {
				out, _, code := kmpack(t, sub, "--help")
				if code != 0 {
					t.Errorf("kmpack %s in a recipe: no such command", sub)
					continue
				}
				helps[sub] = out
			}
			for _, f := range regexp.MustCompile(`(^|\s)(--?[a-z][a-z-]*)`).FindAllStringSubmatch(m[2], -1) {
				if !strings.Contains(helps[sub], "   "+f[2]+" ") && !strings.Contains(helps[sub], ", "+f[2]+" ") {
					t.Errorf("kmpack %s %s in a recipe: kmpack %s has no such flag", sub, f[2], sub)
				}
				checked++
			}
		}
	}
	if checked < 10 || len(helps) < 5 {
		t.Errorf("only %d flags of %d kmpack commands found in the recipes", checked, len(helps))
	}
}

func readGitLab(t *testing.T, file string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	// yaml.v3 refuses a key twice, as GitLab does (the appended release jobs must not clash).
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return doc
}

// checkGitLab applies the rules of GitLab's CI/CD YAML reference that a recipe can break:
// stages are declared, a job's stage is one of them, a job runs a script or triggers a
// pipeline, needs name jobs of the same pipeline in the same or an earlier stage,
// parallel:matrix is a list of variable maps (at most 200 jobs), artifacts name paths. It
// returns the pipeline's scripts (default before_script, then the jobs'), one line each.
func checkGitLab(t *testing.T, name string, doc map[string]any) []string {
	t.Helper()
	reserved := map[string]bool{"default": true, "include": true, "stages": true, "variables": true, "workflow": true}
	var stages []string
	for _, s := range doc["stages"].([]any) {
		stages = append(stages, s.(string))
	}
	var scripts []string
	lines := func(where string, v any) {
		if v == nil {
			return
		}
		l, ok := v.([]any)
		if !ok || len(l) == 0 {
			t.Errorf("%s: %s is not a list of commands", name, where)
			return
		}
		for _, c := range l {
			s, ok := c.(string)
			if !ok {
				t.Errorf("%s: %s: %v is not a command", name, where, c)
			}
			scripts = append(scripts, s)
		}
	}
	if d, ok := doc["default"].(map[string]any); ok {
		lines("default:before_script", d["before_script"])
	}
	stageOf := map[string]int{}
	for job, v := range doc {
		if reserved[job] || strings.HasPrefix(job, ".") {
			continue
		}
		j, ok := v.(map[string]any)
		if !ok {
			t.Errorf("%s: job %s is not a map", name, job)
			continue
		}
		stage, _ := j["stage"].(string)
		stageOf[job] = slices.Index(stages, stage)
		if stageOf[job] < 0 {
			t.Errorf("%s: job %s: stage %q is not one of %v", name, job, stage, stages)
		}
	}
	if len(stageOf) == 0 {
		t.Errorf("%s: no jobs", name)
	}
	for job := range stageOf {
		j := doc[job].(map[string]any)
		if j["script"] == nil && j["trigger"] == nil {
			t.Errorf("%s: job %s has neither script nor trigger", name, job)
		}
		lines(job+":script", j["script"])
		if needs, ok := j["needs"]; ok {
			for _, n := range needs.([]any) {
				s, ok := stageOf[fmt.Sprint(n)]
				if !ok || s > stageOf[job] {
					t.Errorf("%s: job %s needs %v, not a job of an earlier or the same stage", name, job, n)
				}
			}
		}
		if p, ok := j["parallel"].(map[string]any); ok {
			combos := 0
			for _, entry := range p["matrix"].([]any) {
				n := 1
				for k, vals := range entry.(map[string]any) {
					l, ok := vals.([]any)
					if !ok || !regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`).MatchString(k) {
						t.Errorf("%s: job %s: parallel:matrix variable %s = %v", name, job, k, vals)
						continue
					}
					n *= len(l)
				}
				combos += n
			}
			if combos < 1 || combos > 200 {
				t.Errorf("%s: job %s: parallel:matrix makes %d jobs", name, job, combos)
			}
		}
		if a, ok := j["artifacts"].(map[string]any); ok {
			if p, ok := a["paths"].([]any); !ok || len(p) == 0 {
				t.Errorf("%s: job %s: artifacts without paths", name, job)
			}
		}
	}
	return scripts
}
