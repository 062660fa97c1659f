package weakupdates

import (
	"html/template"
	"io"
)

// The page is self-contained (inline style, no script): a coloured matrix whose cells open,
// as <details>, the reasons of that module in that kernel.
var matrixPage = template.Must(template.New("compat").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kmpack compat</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em}
table{border-collapse:collapse}th,td{border:1px solid #bbb;padding:.3em .6em;vertical-align:top}
td.yes{background:#d8f5d0}td.no{background:#f8d4d0}
summary{cursor:pointer;font-weight:600}ul{margin:.3em 0;padding-left:1.2em}
code{font-size:12px}.note{color:#555}
</style></head><body>
<h1>Module compatibility</h1>
<table><tr><th>module</th>{{range .Kernels}}<th>{{.Release}}<br><span class="note">{{.Source}}</span></th>{{end}}</tr>
{{range $i, $m := .Modules}}<tr><th>{{$m}}</th>{{range index $.Cells $i}}{{if .Compatible}}<td class="yes">loads</td>{{else}}<td class="no"><details><summary>cannot load ({{len .Reasons}})</summary><ul>{{range .Reasons}}<li><code>{{.Kind}}</code> {{.Detail}}</li>{{end}}</ul></details></td>{{end}}{{end}}</tr>
{{end}}</table>
{{range .Kernels}}{{$r := .Release}}{{range .Notes}}<p class="note">{{$r}}: {{.}}</p>{{end}}{{end}}
</body></html>
`))

// WriteHTML writes the matrix as one HTML page.
func WriteHTML(w io.Writer, mx *Matrix) error {
	return matrixPage.Execute(w, mx)
}
