package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/kmpack/kmpack/formats"
	"github.com/kmpack/kmpack/internal/testenv"
)

// build --profile kmm makes one kmod image per kernel and a KMM Module resource. The images are
// read with the real skopeo and umoci: labels and architecture as written, the modules (the
// build's own bytes) and depmod's modules.dep under /opt/lib/modules/<kernel>/, where KMM's
// documentation (kmod_image.md) puts them. The Module is checked against what KMM's documented
// schema requires (deploy_kmod.md, api/v1beta1/module_types.go, the CRD and its webhook), and
// packaging again with the same SOURCE_DATE_EPOCH writes the same bytes. The build signs its
// modules: the images carry them signed.
func TestKMMImagesAndModule(t *testing.T) {
	testenv.Need(t, "skopeo", "umoci", "depmod", "docker-registry")
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	registry := startRegistry(t)
	kernels := []string{testenv.Release53, testenv.Release54}
	cache := t.TempDir()
	keys := t.TempDir()
	if _, stderr, code := kmpack(t, "keygen", "--out", keys, "--cn", "kmm test key"); code != 0 {
		t.Fatalf("keygen: exit %d: %s", code, stderr)
	}
	src := testenv.ExampleSource(t, true)
	out := filepath.Join(t.TempDir(), "out")
	image := registry + "/kmm/kmpack-hello"
	args := []string{"build", "-q", "-o", out, "--profile", "kmm", "--kmm-image", image,
		"--sign-key", filepath.Join(keys, "kmpack-signing.key"), "--sign-cert", filepath.Join(keys, "kmpack-signing.crt")}
	for _, k := range kernels {
		args = append(args, "-k", testenv.HeadersDir(t, k))
	}
	if _, stderr, code := kmpackIn(t, cache, append(args, src)...); code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	pkgDir := filepath.Join(out, formats.PackagesDir)
	var written []formats.Written
	b, err := os.ReadFile(filepath.Join(pkgDir, "packages.json"))
	if err != nil || json.Unmarshal(b, &written) != nil {
		t.Fatalf("packages.json: %v %s", err, b)
	}

	tags := map[string]string{} // kernel release -> "image:tag" the archive holds
	var moduleYAML string
	for _, w := range written {
		if w.Format != "oci" || w.Profile != "kmm" {
			t.Errorf("%s: format %s profile %s", w.File, w.Format, w.Profile)
		}
		file := filepath.Join(pkgDir, w.File)
		if w.Kernel == "" {
			moduleYAML = file
			continue
		}
		// The archive is an OCI image layout whose one manifest is tagged with the release.
		layout := filepath.Join(t.TempDir(), "layout")
		os.Mkdir(layout, 0o755)
		if msg, err := exec.Command("tar", "-xf", file, "-C", layout).CombinedOutput(); err != nil {
			t.Fatalf("tar -xf %s: %v %s", file, err, msg)
		}
		var index struct {
			Manifests []struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"manifests"`
		}
		b, _ := os.ReadFile(filepath.Join(layout, "index.json"))
		if err := json.Unmarshal(b, &index); err != nil || len(index.Manifests) != 1 {
			t.Fatalf("%s: index.json: %v %s", w.File, err, b)
		}
		tag := index.Manifests[0].Annotations["org.opencontainers.image.ref.name"]
		tags[w.Kernel] = image + ":" + tag

		// skopeo reads the archive as it would push it.
		var info struct {
			Architecture, Os string
			Labels           map[string]string
		}
		ref := "oci-archive:" + file + ":" + tag
		b, err = exec.Command("skopeo", "inspect", ref).Output()
		if err != nil || json.Unmarshal(b, &info) != nil {
			t.Fatalf("skopeo inspect %s: %v %s", ref, err, b)
		}
		if info.Architecture != "amd64" || info.Os != "linux" || info.Labels["io.kmpack.kernel"] != w.Kernel ||
			info.Labels["org.opencontainers.image.title"] != "kmpack-hello" || info.Labels["org.opencontainers.image.version"] != "1.0-1" ||
			info.Labels["org.opencontainers.image.source"] == "" || info.Labels["io.kmpack.modules"] != "kmpack_hello.ko" ||
			info.Labels["io.kmpack.signed"] != "true" {
			t.Errorf("skopeo inspect %s: %+v", ref, info)
		}

		// umoci unpacks the image's root filesystem: the modules are where KMM's worker copies
		// them from, and depmod's modules.dep lists them.
		bundle := filepath.Join(t.TempDir(), "bundle")
		if msg, err := exec.Command("umoci", "unpack", "--rootless", "--image", layout+":"+tag, bundle).CombinedOutput(); err != nil {
			t.Fatalf("umoci unpack %s: %v %s", tag, err, msg)
		}
		dir := filepath.Join(bundle, "rootfs", "opt", "lib", "modules", w.Kernel)
		got, err := os.ReadFile(filepath.Join(dir, "kmpack_hello.ko"))
		if err != nil {
			t.Fatalf("%s: %v", tag, err)
		}
		built, err := os.ReadFile(filepath.Join(out, "modules", w.Kernel, "kmpack_hello.ko"))
		if err != nil || !bytes.Equal(got, built) || !bytes.HasSuffix(got, []byte("~Module signature appended~\n")) {
			t.Errorf("%s: the image's kmpack_hello.ko is not the build's signed module (%v)", tag, err)
		}
		dep, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
		if err != nil || !strings.Contains(string(dep), "kmpack_hello.ko:") {
			t.Errorf("%s: modules.dep %q %v", tag, dep, err)
		}
		for _, f := range []string{"modules.dep.bin", "modules.alias"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("%s: no %s from depmod: %v", tag, f, err)
			}
		}
	}
	if len(tags) != len(kernels) || moduleYAML == "" {
		t.Fatalf("packages: %+v", written)
	}
	checkKMMModule(t, moduleYAML, tags)

	// Pushed as the README says, every containerImage of the Module is, in the registry, the
	// image of its kernel.
	for _, w := range written {
		if w.Kernel == "" {
			continue
		}
		ref := tags[w.Kernel]
		tag := ref[strings.LastIndexByte(ref, ':')+1:]
		src := "oci-archive:" + filepath.Join(pkgDir, w.File) + ":" + tag
		if msg, err := exec.Command("skopeo", "copy", "--dest-tls-verify=false", src, "docker://"+ref).CombinedOutput(); err != nil {
			t.Fatalf("skopeo copy %s: %v %s", src, err, msg)
		}
		var info struct{ Labels map[string]string }
		b, err := exec.Command("skopeo", "inspect", "--tls-verify=false", "docker://"+ref).Output()
		if err != nil || json.Unmarshal(b, &info) != nil || info.Labels["io.kmpack.kernel"] != w.Kernel {
			t.Errorf("skopeo inspect docker://%s: %v %s", ref, err, b)
		}
	}

	// Packaging the build again writes every file byte for byte.
	before := map[string][]byte{}
	for _, w := range written {
		before[w.File], _ = os.ReadFile(filepath.Join(pkgDir, w.File))
	}
	if _, stderr, code := kmpackIn(t, cache, "package", "--profile", "kmm", "--kmm-image", image, out); code != 0 {
		t.Fatalf("package: exit %d: %s", code, stderr)
	}
	for name, b := range before {
		if again, err := os.ReadFile(filepath.Join(pkgDir, name)); err != nil || !bytes.Equal(b, again) {
			t.Errorf("%s differs when packaged again (%v)", name, err)
		}
	}

	if _, stderr, code := kmpackIn(t, cache, "package", "--profile", "kmm", "--kmm-image", "Example.org/Hello:latest", out); code != exitUsage {
		t.Errorf("--kmm-image with a tag: exit %d, want %d: %s", code, exitUsage, stderr)
	}
	testKMMBase(t, cache, out)
}

// testKMMBase layers the kmod images on a base image made with umoci (busybox-static as sh,
// mkdir and cp): the base's layer is kept as it is, its environment too, and as root the copy
// KMM's worker Pod runs in the kmod image's init container (internal/pod/workerpodmanager.go:
// /bin/sh -c "mkdir -p /tmp/opt/lib/modules; cp -R /opt/lib/modules/<kernel> /tmp/opt/lib/modules")
// is run in the unpacked image with chroot.
func testKMMBase(t *testing.T, cache, out string) {
	testenv.Need(t, "busybox")
	busybox, _ := exec.LookPath("busybox")
	base := filepath.Join(t.TempDir(), "base")
	bb := filepath.Join(t.TempDir(), "bundle")
	run := func(name string, args ...string) {
		t.Helper()
		if msg, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v %s", name, args, err, msg)
		}
	}
	run("umoci", "init", "--layout", base)
	run("umoci", "new", "--image", base+":stable")
	run("umoci", "unpack", "--rootless", "--image", base+":stable", bb)
	os.MkdirAll(filepath.Join(bb, "rootfs", "bin"), 0o755)
	run("cp", busybox, filepath.Join(bb, "rootfs", "bin", "busybox"))
	for _, c := range []string{"sh", "mkdir", "cp"} {
		os.Symlink("busybox", filepath.Join(bb, "rootfs", "bin", c))
	}
	run("umoci", "repack", "--image", base+":stable", bb)
	run("umoci", "config", "--image", base+":stable", "--config.env", "PATH=/bin")
	var baseIndex struct {
		Manifests []struct{ Digest string } `json:"manifests"`
	}
	b, _ := os.ReadFile(filepath.Join(base, "index.json"))
	json.Unmarshal(b, &baseIndex)
	var baseManifest struct {
		Layers []struct{ Digest string } `json:"layers"`
	}
	b, _ = os.ReadFile(filepath.Join(base, "blobs", "sha256", strings.TrimPrefix(baseIndex.Manifests[0].Digest, "sha256:")))
	if err := json.Unmarshal(b, &baseManifest); err != nil || len(baseManifest.Layers) != 1 {
		t.Fatalf("base manifest: %v %s", err, b)
	}

	if _, stderr, code := kmpackIn(t, cache, "package", "--profile", "kmm", "--kmm-base", base+":stable", out); code != 0 {
		t.Fatalf("package --kmm-base: exit %d: %s", code, stderr)
	}
	k := testenv.Release53
	file := filepath.Join(out, formats.PackagesDir, "kmpack-hello_1.0-1_"+k+".oci.tar")
	var info struct {
		Layers []string
		Env    []string
		Labels map[string]string
	}
	b, err := exec.Command("skopeo", "inspect", "oci-archive:"+file+":"+k).Output()
	if err != nil || json.Unmarshal(b, &info) != nil {
		t.Fatalf("skopeo inspect: %v %s", err, b)
	}
	if len(info.Layers) != 2 || info.Layers[0] != baseManifest.Layers[0].Digest || !slices.Contains(info.Env, "PATH=/bin") || info.Labels["io.kmpack.kernel"] != k {
		t.Errorf("image on the base: %+v", info)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	os.Mkdir(layout, 0o755)
	run("tar", "-xf", file, "-C", layout)
	img := filepath.Join(t.TempDir(), "img")
	run("umoci", "unpack", "--rootless", "--image", layout+":"+k, img)
	rootfs := filepath.Join(img, "rootfs")
	if _, err := os.Stat(filepath.Join(rootfs, "opt", "lib", "modules", k, "kmpack_hello.ko")); err != nil {
		t.Fatalf("module not in the image on the base: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Logf("not root: KMM's copy command is not run in the image")
		return
	}
	run("chroot", rootfs, "/bin/sh", "-c", "\nmkdir -p /tmp/opt/lib/modules;\ncp -R /opt/lib/modules/"+k+" /tmp/opt/lib/modules;\n")
	for _, f := range []string{"kmpack_hello.ko", "modules.dep"} {
		if _, err := os.Stat(filepath.Join(rootfs, "tmp", "opt", "lib", "modules", k, f)); err != nil {
			t.Errorf("KMM's copy command did not copy %s: %v", f, err)
		}
	}
}

// checkKMMModule checks a Module resource against what KMM documents as required
// (docs/mkdocs/documentation/deploy_kmod.md, "Example resource"; the CRD's required lists:
// spec.selector, spec.moduleLoader.container, container.kernelMappings (at least one) and
// modprobe, each mapping's containerImage; the webhook: literal or regexp, not both, and an
// image with a tag or digest). tags maps each kernel release to the image it must get.
func checkKMMModule(t *testing.T, file string, tags map[string]string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	get := func(v any, keys ...string) any {
		for _, k := range keys {
			mm, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = mm[k]
		}
		return v
	}
	if m["apiVersion"] != "kmm.sigs.x-k8s.io/v1beta1" || m["kind"] != "Module" {
		t.Errorf("apiVersion %v kind %v", m["apiVersion"], m["kind"])
	}
	if n, _ := get(m, "metadata", "name").(string); !regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`).MatchString(n) {
		t.Errorf("metadata.name %q is not a DNS-1123 subdomain", n)
	}
	if _, ok := get(m, "spec", "selector").(map[string]any); !ok {
		t.Errorf("spec.selector (required) is missing or not a map")
	}
	container := get(m, "spec", "moduleLoader", "container")
	if name, _ := get(container, "modprobe", "moduleName").(string); name != "kmpack_hello" {
		t.Errorf("modprobe.moduleName %q", name)
	}
	if d := get(container, "modprobe", "dirName"); d != nil && d != "/opt" {
		t.Errorf("modprobe.dirName %v: the images hold /opt/lib/modules", d)
	}
	mappings, _ := get(container, "kernelMappings").([]any)
	if len(mappings) == 0 {
		t.Fatalf("no kernelMappings in %s", b)
	}
	seen := map[string]bool{}
	for i, km := range mappings {
		lit, _ := get(km, "literal").(string)
		re, _ := get(km, "regexp").(string)
		img, _ := get(km, "containerImage").(string)
		if (lit == "") == (re == "") {
			t.Errorf("kernelMappings[%d]: want exactly one of literal and regexp: %v", i, km)
		}
		if !strings.Contains(img, ":") && !strings.Contains(img, "@") {
			t.Errorf("kernelMappings[%d]: containerImage %q has no tag or digest", i, img)
		}
		if lit != "" {
			if tags[lit] != img {
				t.Errorf("kernelMappings[%d]: %s maps to %q, the image written for it is %q", i, lit, img, tags[lit])
			}
			seen[lit] = true
		}
	}
	for k := range tags {
		if !seen[k] {
			t.Errorf("no kernel mapping for %s", k)
		}
	}
}

// A source of two modules, kmpack_pair_b using kmpack_pair_a's export: the image's modules.dep
// (the real depmod's) has b depend on a, and the Module loads b, which brings a.
func TestKMMModuleDependencies(t *testing.T) {
	testenv.Need(t, "skopeo", "umoci", "depmod")
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	k := testenv.Release53
	out := filepath.Join(t.TempDir(), "out")
	if _, stderr, code := kmpackIn(t, t.TempDir(), "build", "-q", "-k", testenv.HeadersDir(t, k), "-o", out, "--profile", "kmm", testenv.TestModuleSource(t, "pair")); code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	pkgDir := filepath.Join(out, formats.PackagesDir)
	layout := filepath.Join(t.TempDir(), "layout")
	os.Mkdir(layout, 0o755)
	if msg, err := exec.Command("tar", "-xf", filepath.Join(pkgDir, "kmpack-pair_1.0-1_"+k+".oci.tar"), "-C", layout).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, msg)
	}
	bundle := filepath.Join(t.TempDir(), "bundle")
	if msg, err := exec.Command("umoci", "unpack", "--rootless", "--image", layout+":"+k, bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v %s", err, msg)
	}
	dep, err := os.ReadFile(filepath.Join(bundle, "rootfs", "opt", "lib", "modules", k, "modules.dep"))
	if err != nil || !strings.Contains(string(dep), "kmpack_pair_b.ko: kmpack_pair_a.ko\n") {
		t.Errorf("modules.dep: %q %v", dep, err)
	}
	b, err := os.ReadFile(filepath.Join(pkgDir, "kmpack-pair-kmm-module.yaml"))
	if err != nil || !strings.Contains(string(b), "moduleName: kmpack_pair_b\n") {
		t.Errorf("the Module does not load kmpack_pair_b: %v\n%s", err, b)
	}
}

// startRegistry runs a Docker distribution registry (Debian's docker-registry) on a free
// local port until the test ends, and returns its host:port.
func startRegistry(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "config.yml")
	os.WriteFile(conf, []byte("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: "+
		filepath.Join(dir, "data")+"\nhttp:\n  addr: "+addr+"\n"), 0o644)
	cmd := exec.Command("docker-registry", "serve", conf)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for range 100 {
		if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("docker-registry on %s did not start: %s", addr, logs.String())
	return ""
}
