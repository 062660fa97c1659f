package formats

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/kmpack/kmpack/formats/internal/rpmpack"
)

// rpmEmitter writes RPMs with rpmpack directly: nfpm hides the *rpmpack.RPM, so it cannot add
// Supplements, Enhances or Requires(pre/preun/postun), which SUSE's KMPs carry.
type rpmEmitter struct{}

func (rpmEmitter) Format() string { return "rpm" }

func (rpmEmitter) FileName(p *Package) string {
	return fmt.Sprintf("%s-%s-%s.%s.rpm", p.Name, p.Version, p.Release, p.Arch)
}

// Header tags rpmpack has no field for (rpm's include/rpm/rpmtag.h).
const (
	tagSupplementName    = 5052
	tagSupplementVersion = 5053
	tagSupplementFlags   = 5054
	tagEnhanceName       = 5055
	tagEnhanceVersion    = 5056
	tagEnhanceFlags      = 5057
	tagChangelogTime     = 1080
	tagChangelogName     = 1081
	tagChangelogText     = 1082
	tagProvideName       = 1047
	tagProvideFlags      = 1112
	tagProvideVersion    = 1113
	tagRequireFlags      = 1048
	tagRequireName       = 1049
	tagRequireVersion    = 1050
	tagConflictFlags     = 1053
	tagConflictName      = 1054
	tagConflictVersion   = 1055
	tagObsoleteName      = 1090
	tagObsoleteFlags     = 1114
	tagObsoleteVersion   = 1115
	tagRecommendName     = 5046
	tagRecommendVersion  = 5047
	tagRecommendFlags    = 5048
)

// RPMSENSE bits (rpm's include/rpm/rpmds.h).
const (
	senseLess      = 1 << 1
	senseGreater   = 1 << 2
	senseEqual     = 1 << 3
	sensePosttrans = 1 << 5
	senseScriptPre = 1 << 9
	sensePost      = 1 << 10
	sensePreun     = 1 << 11
	sensePostun    = 1 << 12
	senseRPMLib    = 1 << 24
)

func senseBits(r Relation) uint32 {
	var f uint32
	switch r.Sense {
	case Equal:
		f = senseEqual
	case Less:
		f = senseLess
	case Greater:
		f = senseGreater
	case LessEq:
		f = senseLess | senseEqual
	case GreatEq:
		f = senseGreater | senseEqual
	}
	for _, ph := range r.Phases {
		switch ph {
		case "pre":
			f |= senseScriptPre
		case "post":
			f |= sensePost
		case "preun":
			f |= sensePreun
		case "postun":
			f |= sensePostun
		case "posttrans":
			f |= sensePosttrans
		}
	}
	return f
}

// rpmlibRequires are the rpmlib() features the package uses, as rpmbuild records them, so an
// rpm too old to install it says so instead of misreading it.
func rpmlibRequires(p *Package) []Relation {
	rel := func(feature, ver string) Relation {
		return Relation{Name: "rpmlib(" + feature + ")", Sense: LessEq, Version: ver}
	}
	out := []Relation{
		rel("CompressedFileNames", "3.0.4-1"),
		rel("FileDigests", "4.6.0-1"),
		rel("PayloadFilesHavePrefix", "4.0-1"),
	}
	if rpmCompressor(p) == "xz" {
		out = append(out, rel("PayloadIsXz", "5.2-1"))
	}
	rich, tilde, caret := false, strings.Contains(p.Version+p.Release, "~"), strings.Contains(p.Version+p.Release, "^")
	for _, lists := range [][]Relation{p.Requires, p.Supplements, p.Enhances, p.Provides, p.Conflicts, p.Obsoletes, p.Recommends} {
		for _, r := range lists {
			rich = rich || strings.HasPrefix(r.Name, "(")
			// A rich dependency's versions are inside its name, as rpmbuild reads them.
			v := r.Version
			if strings.HasPrefix(r.Name, "(") {
				v += r.Name
			}
			tilde = tilde || strings.Contains(v, "~")
			caret = caret || strings.Contains(v, "^")
		}
	}
	if rich {
		out = append(out, rel("RichDependencies", "4.12.0-1"))
	}
	if tilde {
		out = append(out, rel("TildeInVersions", "4.10.0-1"))
	}
	if caret {
		out = append(out, rel("CaretInVersions", "4.15.0-1"))
	}
	return out
}

// rpmCompressor is the payload's compression: xz, as rpmbuild's default, except for the
// runtime package, whose payload is the kmpack binary (pure Go xz takes some 15 s over it;
// gzip is fast, and every rpm reads it).
func rpmCompressor(p *Package) string {
	if p.runtime {
		return "gzip"
	}
	return "xz"
}

func (e rpmEmitter) Write(p *Package, w io.Writer) error {
	if err := checkMetadata(p, "rpm"); err != nil {
		return err
	}
	md := rpmpack.RPMMetaData{
		Name: p.Name, Version: p.Version, Release: p.Release, Arch: p.Arch,
		Summary: p.Summary, Description: p.Description, Licence: p.License,
		Vendor: p.Vendor, URL: p.URL, Packager: p.Maintainer, Group: p.Group,
		Compressor: rpmCompressor(p), Epoch: rpmpack.NoEpoch,
		BuildTime: p.MTime, BuildHost: "kmpack",
	}
	r, err := rpmpack.NewRPM(md)
	if err != nil {
		return err
	}
	mtime := uint32(p.MTime.Unix())
	for _, f := range p.Files {
		rf := rpmpack.RPMFile{Name: f.Path, Owner: "root", Group: "root", MTime: mtime, Mode: uint(f.Mode)}
		switch f.Kind {
		case Directory:
			rf.Mode |= 0o40000
		case Symlink:
			rf.Mode = 0o120777
			rf.Body = []byte(f.Target)
		default:
			rf.Mode |= 0o100000
			rf.Body = f.Body
			if f.Config {
				rf.Type = rpmpack.ConfigFile
			}
			// rpmbuild flags what lies under %__docdir_path as %doc (rpm --excludedocs).
			for _, d := range []string{"/usr/share/man/", "/usr/share/doc/", "/usr/share/info/"} {
				if strings.HasPrefix(f.Path, d) {
					rf.Type |= rpmpack.DocFile
				}
			}
		}
		r.AddFile(rf)
	}
	s := p.Scripts
	if s.PreInstall != "" {
		r.AddPrein(s.PreInstall)
	}
	if s.PostInstall != "" {
		r.AddPostin(s.PostInstall)
	}
	if s.PreRemove != "" {
		r.AddPreun(s.PreRemove)
	}
	if s.PostRemove != "" {
		r.AddPostun(s.PostRemove)
	}
	if s.PostTrans != "" {
		r.AddPosttrans(s.PostTrans)
	}
	// Every dependency goes in as raw tags: rpmpack's Relations cannot carry the scriptlet
	// bits (Requires(post)) and it has no Supplements or Enhances. Custom tags replace
	// whatever rpmpack would write, so the self-provide is added here.
	provides := append([]Relation{RelEq(p.Name, p.Version+"-"+p.Release)}, p.Provides...)
	reqs := append(append([]Relation{}, p.Requires...), rpmlibRequires(p)...)
	for _, d := range []struct {
		rels                 []Relation
		name, version, flags int
	}{
		{provides, tagProvideName, tagProvideVersion, tagProvideFlags},
		{reqs, tagRequireName, tagRequireVersion, tagRequireFlags},
		{p.Conflicts, tagConflictName, tagConflictVersion, tagConflictFlags},
		{p.Obsoletes, tagObsoleteName, tagObsoleteVersion, tagObsoleteFlags},
		{p.Recommends, tagRecommendName, tagRecommendVersion, tagRecommendFlags},
		{p.Supplements, tagSupplementName, tagSupplementVersion, tagSupplementFlags},
		{p.Enhances, tagEnhanceName, tagEnhanceVersion, tagEnhanceFlags},
	} {
		addDepTags(r, d.rels, d.name, d.version, d.flags)
	}
	// One changelog entry, as rpmbuild writes from %changelog: who built which version, when.
	r.AddCustomTag(tagChangelogTime, rpmpack.EntryInt32([]int32{int32(p.MTime.Unix())}))
	r.AddCustomTag(tagChangelogName, rpmpack.EntryStringSlice([]string{fmt.Sprintf("%s - %s-%s", p.Maintainer, p.Version, p.Release)}))
	r.AddCustomTag(tagChangelogText, rpmpack.EntryStringSlice([]string{"- Built by kmpack."}))
	if p.signing != nil && p.signing.RPM != nil {
		r.SetPGPSigner(p.signing.RPM.signer(p.MTime))
	}
	return r.Write(w)
}

func addDepTags(r *rpmpack.RPM, rels []Relation, nameTag, verTag, flagTag int) {
	if len(rels) == 0 {
		return
	}
	// rpm wants dependency arrays sorted by name like rpmbuild writes them; keep duplicates out.
	sorted := append([]Relation{}, rels...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var names, vers []string
	var flags []uint32
	seen := map[string]bool{}
	for _, rel := range sorted {
		f := senseBits(rel)
		if strings.HasPrefix(rel.Name, "rpmlib(") {
			f |= senseRPMLib
		}
		key := fmt.Sprintf("%s\x00%s\x00%d", rel.Name, rel.Version, f)
		if seen[key] {
			continue
		}
		seen[key] = true
		names = append(names, rel.Name)
		vers = append(vers, rel.Version)
		flags = append(flags, f)
	}
	r.AddCustomTag(nameTag, rpmpack.EntryStringSlice(names))
	r.AddCustomTag(verTag, rpmpack.EntryStringSlice(vers))
	r.AddCustomTag(flagTag, rpmpack.EntryUint32(flags))
}
