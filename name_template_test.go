package heron

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// A random call that cannot reach the name does not make names unique
// (a role whose names repeat lists Heron before creating, see createUnderWAL).
func TestUniqueNames_DecidedByWhatReachesTheName(t *testing.T) {
	for tmpl, want := range map[string]bool{
		"vault-{{.RoleName}}-{{random 8}}":                   true,
		"vault-{{.RoleName}}-{{uuid}}":                       true,
		"vault-{{.RoleName}}":                                false,
		"vault-{{.RoleName}}{{if false}}{{random 8}}{{end}}": false,
		"vault-{{.RoleName}}-{{random 8 | truncate 0}}":      false,
	} {
		r := &heronRole{Name: "app", Environment: "development", NameTemplate: tmpl}
		require.Equal(t, want, r.uniqueNames(), tmpl)
	}
}
