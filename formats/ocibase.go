package formats

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/kmpack/kmpack/kmp"
)

// OCIBase is a base image the kmm profile's kmod images are layered on: KMM's worker Pod runs
// `/bin/sh -c "mkdir -p ...; cp -R ..."` in the kmod image to copy the modules out, so the
// image needs a shell and cp (busybox, ubi-micro...). It is read from an OCI image layout
// directory, as `skopeo copy docker://busybox:stable oci:DIR:stable` writes one; its layers
// are copied into every kmod image as they are (same digests), the modules' layer on top.
type OCIBase struct {
	// Ref is the base as given, DIR or DIR:TAG.
	Ref string
	dir string
	// images are the base's image manifests by OCI architecture.
	images map[string]ociBaseImage
}

type ociBaseImage struct {
	digest string
	config map[string]any
	layers []map[string]any // descriptors as the base's manifest has them
}

var ociDigestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// LoadOCIBase reads the image ref names, DIR[:TAG]: the manifest of the OCI image layout DIR
// whose org.opencontainers.image.ref.name is TAG (or its only manifest), or each platform's of
// an image index there.
func LoadOCIBase(ref string) (*OCIBase, error) {
	dir, tag := ref, ""
	if i := strings.LastIndexByte(ref, ':'); i >= 0 && !strings.Contains(ref[i+1:], "/") {
		dir, tag = ref[:i], ref[i+1:]
	}
	b := &OCIBase{Ref: ref, dir: dir, images: map[string]ociBaseImage{}}
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		return nil, kmp.InputErrorf(dir, "not an OCI image layout (no oci-layout file; make one with skopeo copy docker://IMAGE oci:%s:TAG): %v", dir, err)
	}
	var index struct {
		Manifests []map[string]any `json:"manifests"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err == nil {
		err = json.Unmarshal(raw, &index)
	}
	if err != nil {
		return nil, kmp.InputErrorf(filepath.Join(dir, "index.json"), "%v", err)
	}
	var picked []map[string]any
	for _, d := range index.Manifests {
		ann, _ := d["annotations"].(map[string]any)
		if name, _ := ann[ociRefName].(string); tag == "" || name == tag {
			picked = append(picked, d)
		}
	}
	if len(picked) != 1 {
		return nil, kmp.InputErrorf(dir, "%d manifests are tagged %q in the base image layout: name one (DIR:TAG)", len(picked), tag)
	}
	if err := b.add(picked[0], 0); err != nil {
		return nil, err
	}
	if len(b.images) == 0 {
		return nil, kmp.InputErrorf(dir, "no linux image in %s", ref)
	}
	return b, nil
}

// add reads the image (or each image of the index) d describes.
func (b *OCIBase) add(d map[string]any, depth int) error {
	digest, _ := d["digest"].(string)
	mt, _ := d["mediaType"].(string)
	raw, err := b.blob(digest)
	if err != nil {
		return err
	}
	switch mt {
	case ociIndexType:
		var idx struct {
			Manifests []map[string]any `json:"manifests"`
		}
		if err := json.Unmarshal(raw, &idx); err != nil || depth > 0 {
			return kmp.InputErrorf(b.Ref, "image index %s: nested too deep or unreadable: %v", digest, err)
		}
		for _, m := range idx.Manifests {
			if p, _ := m["platform"].(map[string]any); p != nil && p["os"] != "linux" {
				continue
			}
			if err := b.add(m, depth+1); err != nil {
				return err
			}
		}
		return nil
	case ociManifestType:
	default:
		return kmp.InputErrorf(b.Ref, "%s is a %q, not an OCI image manifest or index", digest, mt)
	}
	var man struct {
		Config map[string]any   `json:"config"`
		Layers []map[string]any `json:"layers"`
	}
	if err := json.Unmarshal(raw, &man); err != nil {
		return kmp.InputErrorf(b.Ref, "manifest %s: %v", digest, err)
	}
	cd, _ := man.Config["digest"].(string)
	craw, err := b.blob(cd)
	if err != nil {
		return err
	}
	var config map[string]any
	if err := json.Unmarshal(craw, &config); err != nil {
		return kmp.InputErrorf(b.Ref, "config %s: %v", cd, err)
	}
	arch, _ := config["architecture"].(string)
	if config["os"] != "linux" || arch == "" {
		return nil
	}
	rootfs, _ := config["rootfs"].(map[string]any)
	if ids, _ := rootfs["diff_ids"].([]any); len(ids) != len(man.Layers) {
		return kmp.InputErrorf(b.Ref, "config %s: %d diff_ids for %d layers", cd, len(ids), len(man.Layers))
	}
	for _, l := range man.Layers {
		if ld, _ := l["digest"].(string); !ociDigestRE.MatchString(ld) {
			return kmp.InputErrorf(b.Ref, "manifest %s: layer digest %q", digest, ld)
		}
	}
	b.images[arch] = ociBaseImage{digest: digest, config: config, layers: man.Layers}
	return nil
}

// blob reads a blob of the layout, checking its digest.
func (b *OCIBase) blob(digest string) ([]byte, error) {
	if !ociDigestRE.MatchString(digest) {
		return nil, kmp.InputErrorf(b.Ref, "digest %q is not a sha256 digest", digest)
	}
	name := filepath.Join(b.dir, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"))
	f, err := os.Open(name)
	if err != nil {
		return nil, kmp.InputErrorf(name, "%v", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	if "sha256:"+sha256Hex(raw) != digest {
		return nil, kmp.InputErrorf(name, "content does not match its digest")
	}
	return raw, nil
}

// id identifies the base for the package cache key: the reference and every image's digest.
func (b *OCIBase) id() string {
	if b == nil {
		return ""
	}
	var ids []string
	for arch, img := range b.images {
		ids = append(ids, arch+"="+img.digest)
	}
	slices.Sort(ids)
	return b.Ref + " " + strings.Join(ids, " ")
}

// forArch returns the base image of an OCI architecture.
func (b *OCIBase) forArch(arch string) (ociBaseImage, error) {
	img, ok := b.images[arch]
	if !ok {
		have := make([]string, 0, len(b.images))
		for a := range b.images {
			have = append(have, a)
		}
		slices.Sort(have)
		return img, fmt.Errorf("base image %s has no %s image (it has %s)", b.Ref, arch, strings.Join(have, ", "))
	}
	return img, nil
}
