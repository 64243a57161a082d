// Package sqltmpl renders SQL statements kept as named text/template
// blocks ({{define "name"}}...{{end}}) in embedded files, once per table
// configuration, into the final texts the code runs.
package sqltmpl

import (
	"errors"
	"strings"
	"text/template"
)

// Render executes each named template of t with data into its
// destination string and returns every template's error, joined.
func Render(t *template.Template, data any, dst map[string]*string) error {
	var errs []error
	for name, p := range dst {
		var b strings.Builder
		if err := t.ExecuteTemplate(&b, name, data); err != nil {
			errs = append(errs, err)
			continue
		}
		*p = b.String()
	}
	return errors.Join(errs...)
}
