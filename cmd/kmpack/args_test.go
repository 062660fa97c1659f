package main

import (
	"slices"
	"testing"
)

func TestOptionsAfterOperands(t *testing.T) {
	app := newApp()
	cases := []struct{ in, want []string }{
		{[]string{"kmpack", "build", "SRC", "-k", "TREE"}, []string{"kmpack", "build", "-k", "TREE", "SRC"}},
		{[]string{"kmpack", "--cache-dir", "C", "build", "SRC", "--json", "-o=OUT", "-k", "T1", "X"}, []string{"kmpack", "--cache-dir", "C", "build", "--json", "-o=OUT", "-k", "T1", "SRC", "X"}},
		{[]string{"kmpack", "inspect", "a.ko", "--", "-b.ko"}, []string{"kmpack", "inspect", "a.ko", "--", "-b.ko"}},
		{[]string{"kmpack", "weak-updates", "add-kmp", "PKG", "--root", "R"}, []string{"kmpack", "weak-updates", "--root", "R", "add-kmp", "PKG"}},
		{[]string{"kmpack", "build", "SRC", "--bogus"}, []string{"kmpack", "build", "--bogus", "SRC"}},
		{[]string{"kmpack", "kernels"}, []string{"kmpack", "kernels"}},
		{[]string{"kmpack", "weak-updates", "status", "--root", "R"}, []string{"kmpack", "weak-updates", "--root", "R", "status"}},
		{[]string{"kmpack", "build", "--help"}, []string{"kmpack", "build", "--help"}},
	}
	for _, c := range cases {
		if got := intersperse(app, c.in); !slices.Equal(got, c.want) {
			t.Errorf("%q: got %q, want %q", c.in, got, c.want)
		}
	}
}
