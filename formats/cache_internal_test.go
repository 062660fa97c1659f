package formats

import (
	"reflect"
	"slices"
	"testing"
)

// Package.cacheKey covers the exported fields by encoding them; unexported fields it must name
// one by one. A new unexported field fails this test until cacheKey is checked: cached package
// files would otherwise ignore it.
func TestPackageCacheKeyCoversFields(t *testing.T) {
	var unexported []string
	typ := reflect.TypeOf(Package{})
	for i := range typ.NumField() {
		if f := typ.Field(i); !f.IsExported() {
			unexported = append(unexported, f.Name)
		}
	}
	slices.Sort(unexported)
	// In the key: runtime, sourceRoot, certDir, resource, base (its digests). Not: signing
	// (signed packages are not cached) and cache itself.
	if want := []string{"base", "cache", "certDir", "resource", "runtime", "signing", "sourceRoot"}; !slices.Equal(unexported, want) {
		t.Errorf("Package's unexported fields are %v, cacheKey knows %v: add the new one to cacheKey (or say why not here)", unexported, want)
	}
	p := &Package{Name: "a", Version: "1", Files: []File{{Path: "/x", Body: []byte("one")}}}
	k1, _ := p.cacheKey("salt")
	for _, change := range []func(q *Package){
		func(q *Package) { q.Files = []File{{Path: "/x", Body: []byte("two")}} },
		func(q *Package) { q.Files = []File{{Path: "/x", Body: []byte("one"), Mode: 0o755}} },
		func(q *Package) { q.Release = "2" },
		func(q *Package) { q.runtime = true },
		func(q *Package) { q.resource = []byte("kind: Module\n") },
		func(q *Package) { q.Scripts.PostInstall = "true" },
	} {
		q := *p
		change(&q)
		if k2, _ := q.cacheKey("salt"); k2 == k1 {
			t.Errorf("a changed package has the same cache key")
		}
	}
	if k2, _ := p.cacheKey("other"); k2 == k1 {
		t.Errorf("another salt (kmpack binary) gives the same cache key")
	}
}
