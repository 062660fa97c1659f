package formats

import "testing"

// Versions dkms accepts become apk versions as Alpine packagers write them, each valid by
// apk's grammar; what has no such form is returned unchanged, and Validate refuses it.
func TestAPKVersion(t *testing.T) {
	apk := formatRules["apk"].version
	for _, c := range []struct{ in, want string }{
		{"1.0", "1.0"},
		{"20240101", "20240101"},
		{"0.3.0-1", "0.3.0_p1"},
		{"1.9.1-5", "1.9.1_p5"},
		{"0.0.1+git20190320.5ae3a3e-3.2", "0.0.1_git20190320_p3_p2"},
		{"1.0~rc1", "1.0_rc1"},
		{"2.4.1~rc1", "2.4.1_rc1"},
		{"1.0.beta", "1.0_beta"},
		{"1.0beta2", "1.0_beta2"},
		{"1.0-alpha.3", "1.0_alpha_p3"},
		{"1.0RC1", "1.0_rc1"},
		{"1.0+git", "1.0_git"},
		{"1.0+svn1234-hg5", "1.0_svn1234_hg5"},
		{"1.0-pre1_cvs2", "1.0_pre1_cvs2"},
		{"1.0b", "1.0b"},
		{"1.0B", "1.0b"},
		{"1.0b-2", "1.0b_p2"},
		{"1.0a1", "1.0a_p1"},
		{"1.0_p1", "1.0_p1"},
		{"1.2.3_rc1_p2", "1.2.3_rc1_p2"},
		{"1.0+deadbeef1", "1.0"},        // a hash: hex with a letter, 9 long
		{"1.0-1234567", "1.0_p1234567"}, // all digits: a number, not a hash
	} {
		if got := apkVersion(c.in); got != c.want || !apk.MatchString(got) {
			t.Errorf("apkVersion(%q) = %q (valid for apk: %v), want %q", c.in, got, apk.MatchString(got), c.want)
		}
	}
	for _, v := range []string{
		"v1.0",
		"1.0.foo",
		"20230101+git.abc", // abc: no apk suffix, too short for a hash
		"1.0-r1",
		"1.0-rc1a",
		"1.0--1",
		"1.0-",
		"1.0.",
		"1.0ab",
		"1.0 2",
	} {
		if got := apkVersion(v); got != v || apk.MatchString(got) {
			t.Errorf("apkVersion(%q) = %q (valid for apk: %v), want it unchanged and invalid", v, got, apk.MatchString(got))
		}
	}
}
