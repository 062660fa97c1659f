package source

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/kmpack/kmpack/kmp"
	"github.com/kmpack/kmpack/kmp/ident"
	"github.com/kmpack/kmpack/kmp/repo"
)

// SpecKernel is one entry of kmpack.yaml's kernels: a tree directory, glob or package file (a
// plain string), or a repository with a selection of its kernels:
//
//	kernels:
//	  - /usr/src/linux-headers-*
//	  - repo: deb https://deb.debian.org/debian bookworm main
//	    flavor: amd64
//	    latest: 2
//	    keyring: keys/debian-archive.gpg
type SpecKernel struct {
	Path string `yaml:"path,omitempty" json:"path,omitempty"`
	// Repo is an apt source in sources.list one-line form or an rpm-md base URL; from a file
	// only http and https, and no signed-by= (the keyring is a file of the source: Keyring).
	Repo     string   `yaml:"repo,omitempty" json:"repo,omitempty"`
	Flavor   []string `yaml:"flavor,omitempty" json:"flavor,omitempty"`
	Release  string   `yaml:"release,omitempty" json:"release,omitempty"`
	Versions string   `yaml:"versions,omitempty" json:"versions,omitempty"`
	Latest   int      `yaml:"latest,omitempty" json:"latest,omitempty"`
	Keyring  string   `yaml:"keyring,omitempty" json:"keyring,omitempty"`

	query *repo.Query
}

var specKernelKeys = map[string]bool{"path": true, "repo": true, "flavor": true, "release": true, "versions": true, "latest": true, "keyring": true}

// UnmarshalYAML takes a string (a path) or a mapping; flavor may be a string or a list.
func (k *SpecKernel) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		return n.Decode(&k.Path)
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a kernels entry is a path or a mapping with repo:", n.Line)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, v := n.Content[i], n.Content[i+1]
		if seen[key.Value] {
			return fmt.Errorf("line %d: %s given twice in a kernels entry", key.Line, strconv.QuoteToASCII(key.Value))
		}
		seen[key.Value] = true
		if v.Kind == yaml.AliasNode {
			return fmt.Errorf("line %d: no YAML aliases in a kernels entry", key.Line)
		}
		if !specKernelKeys[key.Value] {
			return fmt.Errorf("line %d: field %s not found in a kernels entry (path, repo, flavor, release, versions, latest, keyring)", key.Line, strconv.QuoteToASCII(key.Value))
		}
		if key.Value == "flavor" && v.Kind == yaml.ScalarNode {
			if v.Tag == "!!null" || v.Value == "" {
				return fmt.Errorf("line %d: flavor is empty", key.Line)
			}
			k.Flavor = []string{v.Value}
			continue
		}
		var err error
		switch key.Value {
		case "path":
			err = v.Decode(&k.Path)
		case "repo":
			err = v.Decode(&k.Repo)
		case "flavor":
			err = v.Decode(&k.Flavor)
		case "release":
			err = v.Decode(&k.Release)
		case "versions":
			err = v.Decode(&k.Versions)
		case "latest":
			err = v.Decode(&k.Latest)
		case "keyring":
			err = v.Decode(&k.Keyring)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// MarshalYAML writes a path-only entry as the plain string it usually is.
func (k SpecKernel) MarshalYAML() (any, error) {
	if k.Repo == "" && k.Path != "" {
		return k.Path, nil
	}
	type plain SpecKernel
	return plain(k), nil
}

// validate checks the entry and, for a repository, parses it into the query the build uses.
func (k *SpecKernel) validate(where string) error {
	selection := len(k.Flavor) > 0 || k.Release != "" || k.Versions != "" || k.Latest != 0 || k.Keyring != ""
	switch {
	case k.Path != "" && k.Repo != "":
		return fmt.Errorf("%s: path and repo are two entries", where)
	case k.Path == "" && k.Repo == "":
		return fmt.Errorf("%s: a path or a repo", where)
	case k.Path != "":
		if selection {
			return fmt.Errorf("%s: flavor, release, versions, latest and keyring select from a repo:", where)
		}
		return CheckText(where, k.Path, 4096, false)
	}
	if err := CheckText(where+".repo", k.Repo, 4096, false); err != nil {
		return err
	}
	src, err := repo.ParseSource(k.Repo)
	if err == nil {
		err = src.CheckFromFile()
	}
	if err != nil {
		return fmt.Errorf("%s.repo: %s", where, strings.TrimPrefix(err.Error(), k.Repo+": "))
	}
	q := &repo.Query{Source: src, Selector: repo.Selector{Flavors: k.Flavor, Latest: k.Latest}}
	if len(k.Flavor) > 64 {
		return fmt.Errorf("%s.flavor: more than 64", where)
	}
	for _, f := range k.Flavor {
		if err := ident.Flavor(f); err != nil {
			return fmt.Errorf("%s.flavor: %v", where, err)
		}
	}
	if k.Latest < 0 {
		return fmt.Errorf("%s.latest: at least 1", where)
	}
	if k.Release != "" {
		re, err := regexp.Compile(k.Release)
		if err != nil {
			return fmt.Errorf("%s.release: %v", where, err)
		}
		q.Selector.Release = re
	}
	if k.Versions != "" {
		vr, err := repo.ParseVersionRange(k.Versions)
		if err != nil {
			return fmt.Errorf("%s.versions: %v", where, err)
		}
		q.Selector.Versions = &vr
	}
	if k.Keyring != "" {
		if err := CheckText(where+".keyring", k.Keyring, 4096, false); err != nil {
			return err
		}
		if filepath.IsAbs(k.Keyring) || !kmp.LexicallyInside(filepath.ToSlash(k.Keyring)) {
			return fmt.Errorf("%s.keyring: %s is not a path inside the source (kmpack.yaml cannot name a file of the host; give such keyrings with --keyring)", where, strconv.QuoteToASCII(k.Keyring))
		}
		src.Keyring = k.Keyring
	}
	k.query = q
	return nil
}

// KernelSources returns the spec's kernels: paths (relative ones resolved against the spec's
// directory) and repository queries (their keyrings read beneath that directory).
func (s *Spec) KernelSources() (paths []string, queries []repo.Query) {
	dir := filepath.Dir(s.path)
	for _, k := range s.Kernels {
		if k.query != nil {
			q := *k.query
			src := *q.Source
			if src.Keyring != "" {
				src.KeyringDir = dir
			}
			q.Source = &src
			queries = append(queries, q)
			continue
		}
		p := k.Path
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		paths = append(paths, p)
	}
	return paths, queries
}
