package formats

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// The OCI media types (opencontainers/image-spec media-types.md) of what ociEmitter writes.
const (
	ociIndexType    = "application/vnd.oci.image.index.v1+json"
	ociManifestType = "application/vnd.oci.image.manifest.v1+json"
	ociConfigType   = "application/vnd.oci.image.config.v1+json"
	ociLayerType    = "application/vnd.oci.image.layer.v1.tar+gzip"
	// ociRefName is the index annotation that names (tags) a manifest in an image layout.
	ociRefName = "org.opencontainers.image.ref.name"
)

// ociEmitter writes one kernel's modules as an OCI image (KMM's kmod image, see kmmProfile),
// stored as an OCI image layout (image-spec image-layout.md) in a tar file: skopeo and podman
// read it as oci-archive:FILE:TAG, and `skopeo copy` pushes it to a registry. The package
// directory keeps only regular files (publish checks each against packages.json), hence one
// tar per kernel rather than a layout directory. A package with a resource (the KMM Module
// YAML) is written as that resource.
//
// Everything is deterministic: one gzip'd layer (no name, no mtime in the gzip header) whose
// entries are sorted, owned by 0:0 and dated p.MTime, a config whose created time is p.MTime,
// and JSON with sorted keys; the same package gives the same digests.
type ociEmitter struct{}

func (ociEmitter) Format() string { return "oci" }

func (ociEmitter) FileName(p *Package) string {
	if p.resource != nil {
		return p.Name + "-kmm-module.yaml"
	}
	// "_" separates name, version-release and kernel, as in a deb's file name.
	return fmt.Sprintf("%s_%s-%s_%s.oci.tar", p.Name, p.Version, p.Release, ociTag(p.Kernel))
}

func (ociEmitter) Write(p *Package, w io.Writer) error {
	if err := checkMetadata(p, "oci"); err != nil {
		return err
	}
	if p.resource != nil {
		_, err := w.Write(p.resource)
		return err
	}
	files, err := withDepmod(p)
	if err != nil {
		return err
	}
	layer, diffID, err := ociLayer(files, p.MTime)
	if err != nil {
		return err
	}
	created := p.MTime.UTC().Format(time.RFC3339)
	// Without a base the image holds the modules only; with one (see OCIBase) its config is
	// the base's (environment, entrypoint...) with the labels, layer and history added.
	cfg := map[string]any{}
	diffIDs := []any{}
	history := []any{}
	layers := []any{}
	blobs := [][]byte{layer}
	if p.base != nil {
		img, err := p.base.forArch(p.Arch)
		if err != nil {
			return err
		}
		base, err := json.Marshal(img.config) // a copy, the base is shared by the packages
		if err != nil {
			return err
		}
		var bc map[string]any
		if err := json.Unmarshal(base, &bc); err != nil {
			return err
		}
		if c, ok := bc["config"].(map[string]any); ok {
			cfg = c
		}
		rootfs, _ := bc["rootfs"].(map[string]any)
		diffIDs, _ = rootfs["diff_ids"].([]any)
		if h, ok := bc["history"].([]any); ok {
			history = h
		}
		for _, l := range img.layers {
			d := l["digest"].(string)
			b, err := p.base.blob(d)
			if err != nil {
				return err
			}
			blobs = append(blobs, b)
			layers = append(layers, map[string]any{"mediaType": l["mediaType"], "digest": d, "size": len(b)})
		}
	}
	labels := map[string]any{}
	if l, ok := cfg["Labels"].(map[string]any); ok {
		labels = l
	}
	for k, v := range ociLabels(p) {
		labels[k] = v
	}
	cfg["Labels"] = labels
	config, err := json.Marshal(map[string]any{
		"created":      created,
		"architecture": p.Arch,
		"os":           "linux",
		"config":       cfg,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": append(diffIDs, diffID)},
		"history":      append(history, map[string]string{"created": created, "created_by": "kmpack", "comment": "kernel modules of " + p.Name + " " + p.Version + " for " + p.Kernel}),
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     ociManifestType,
		"config":        ociDescriptor(ociConfigType, config),
		"layers":        append(layers, ociDescriptor(ociLayerType, layer)),
		"annotations":   map[string]string{"org.opencontainers.image.created": created},
	})
	if err != nil {
		return err
	}
	md := ociDescriptor(ociManifestType, manifest)
	md["platform"] = map[string]string{"architecture": p.Arch, "os": "linux"}
	md["annotations"] = map[string]string{ociRefName: ociTag(p.Kernel)}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": ociIndexType, "manifests": []any{md}})
	if err != nil {
		return err
	}
	entries := map[string][]byte{
		"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`),
		"index.json": index,
	}
	for _, blob := range append(blobs, config, manifest) {
		entries["blobs/sha256/"+sha256Hex(blob)] = blob
	}
	return writeTar(w, entries, []string{"blobs", "blobs/sha256"}, p.MTime)
}

// ociLabels are the image config's labels: the OCI annotation keys (image-spec
// annotations.md) for what the image is, and kmpack's own for the kernel and modules.
func ociLabels(p *Package) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       p.Name,
		"org.opencontainers.image.version":     p.Version + "-" + p.Release,
		"org.opencontainers.image.description": p.Summary,
		"org.opencontainers.image.licenses":    p.License,
		"org.opencontainers.image.vendor":      p.Vendor,
		"org.opencontainers.image.created":     p.MTime.UTC().Format(time.RFC3339),
		"io.kmpack.kernel":                     p.Kernel,
		"io.kmpack.module-dir":                 kmmModuleDir(p.Kernel),
	}
	if p.URL != "" {
		l["org.opencontainers.image.url"] = p.URL
		l["org.opencontainers.image.source"] = p.URL
	}
	var mods []string
	signed := map[bool]int{}
	for _, f := range p.Files {
		if f.Kind == RegularFile && strings.Contains(path.Base(f.Path), ".ko") {
			mods = append(mods, path.Base(f.Path))
			if strings.HasSuffix(f.Path, ".ko") {
				signed[bytes.HasSuffix(f.Body, []byte("~Module signature appended~\n"))]++
			}
		}
	}
	l["io.kmpack.modules"] = strings.Join(mods, ",")
	var deps []string
	for _, r := range p.Requires {
		deps = append(deps, r.Name)
	}
	l["io.kmpack.depends"] = strings.Join(deps, ",") // deleted below when empty
	// Whether the modules carry a signature (the build's --sign-key): said only when all
	// modules are uncompressed and all or none are signed.
	if signed[true] == len(mods) {
		l["io.kmpack.signed"] = "true"
	} else if signed[false] == len(mods) {
		l["io.kmpack.signed"] = "false"
	}
	for k, v := range l {
		if v == "" {
			delete(l, k)
		}
	}
	return l
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func ociDescriptor(mediaType string, blob []byte) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": "sha256:" + sha256Hex(blob), "size": len(blob)}
}

// ociTagRE is the OCI distribution spec's tag grammar.
var ociTagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// ociTag is a kernel release as an image tag: the release itself when the tag grammar allows
// it (it does for the releases of every major distribution), else with each other character
// replaced by "_" and cut to 128 characters.
func ociTag(release string) string {
	if ociTagRE.MatchString(release) {
		return release
	}
	t := []byte(release)
	for i, c := range t {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || (c == '.' || c == '-') && i > 0) {
			t[i] = '_'
		}
	}
	if len(t) > 128 {
		t = t[:128]
	}
	return string(t)
}

// withDepmod returns p's files plus what depmod generates for them: the modules are staged
// under <tmp>/lib/modules/<kernel>/ as they lie under /opt/lib/modules/<kernel>/ and
// `depmod -b <tmp> <kernel>` is run, as KMM's documentation asks of a kmod image (`depmod -b
// /opt ${KERNEL_FULL_VERSION}`): the worker runs `modprobe -d /opt`, which reads modules.dep.
func withDepmod(p *Package) ([]File, error) {
	depmod, err := exec.LookPath("depmod")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/depmod"); serr != nil {
			return nil, fmt.Errorf("%s: depmod (kmod) is needed to write a kmod image: %v", p.Name, err)
		}
		depmod = "/usr/sbin/depmod"
	}
	top := kmmModuleDir(p.Kernel)
	tmp, err := os.MkdirTemp("", "kmpack-depmod-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	stage := filepath.Join(tmp, "lib", "modules", p.Kernel)
	out := slices.Clone(p.Files)
	have := map[string]bool{}
	for _, f := range p.Files {
		have[f.Path] = true
		rel, ok := strings.CutPrefix(f.Path, top+"/")
		if !ok || f.Kind != RegularFile {
			continue
		}
		dst := filepath.Join(stage, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(dst, f.Body, 0o644); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(depmod, "-b", tmp, p.Kernel)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s: depmod -b %s %s: %v: %s", p.Name, tmp, p.Kernel, err, bytes.TrimSpace(msg))
	}
	err = filepath.WalkDir(stage, func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(stage, name)
		if err != nil {
			return err
		}
		dst := path.Join(top, filepath.ToSlash(rel))
		if have[dst] {
			return nil
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return err
		}
		out = append(out, File{Path: dst, Body: b, Mode: 0o644})
		return nil
	})
	return out, err
}

// ociLayer is the gzip'd layer tar of files (and of every directory above them), with the
// layer's digest and its diff ID (the uncompressed tar's digest).
func ociLayer(files []File, mtime time.Time) (layer []byte, diffID string, err error) {
	entries := map[string][]byte{}
	var dirs []string
	for _, f := range files {
		name := strings.TrimPrefix(f.Path, "/")
		if f.Kind == Directory {
			dirs = append(dirs, name)
			continue
		}
		if f.Kind != RegularFile {
			return nil, "", fmt.Errorf("%s: only files and directories go into an image layer", f.Path)
		}
		entries[name] = f.Body
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			dirs = append(dirs, d)
		}
	}
	var raw bytes.Buffer
	if err := writeTar(&raw, entries, dirs, mtime); err != nil {
		return nil, "", err
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return nil, "", err
	}
	// The header keeps its zero ModTime and empty Name: nothing of the run goes into it.
	zw.OS = 255 // unknown, as `gzip -n` leaves no trace of the host either
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), "sha256:" + sha256Hex(raw.Bytes()), nil
}

// writeTar writes files (0644) and dirs (0755), sorted by name, owned by 0:0, dated mtime.
func writeTar(w io.Writer, files map[string][]byte, dirs []string, mtime time.Time) error {
	type entry struct {
		name string
		body []byte
		dir  bool
	}
	var all []entry
	seen := map[string]bool{}
	for _, d := range dirs {
		if !seen[d] {
			seen[d] = true
			all = append(all, entry{name: d, dir: true})
		}
	}
	for n, b := range files {
		all = append(all, entry{name: n, body: b})
	}
	slices.SortFunc(all, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	tw := tar.NewWriter(w)
	for _, e := range all {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), ModTime: mtime, Typeflag: tar.TypeReg, Uname: "root", Gname: "root"}
		if e.dir {
			h = &tar.Header{Name: e.name + "/", Mode: 0o755, ModTime: mtime, Typeflag: tar.TypeDir, Uname: "root", Gname: "root"}
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := tw.Write(e.body); err != nil {
			return err
		}
	}
	return tw.Close()
}
