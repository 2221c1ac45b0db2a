package heron

import (
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/assert"
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

// Spec invariant 5: a name_template that grows a string exponentially is
// refused (400) quickly, having allocated little.
//
// Each ~1 KB template doubles a value 30 times (2^30 x 16 bytes = 16 GiB if
// unbounded) through one function that can grow a string (printf,
// printf with explicit indexes, replace, base64, uppercase, timestamp, a
// pipeline); the test requires a 400 that allocated less than 64 MiB. The
// print/println/html/js/urlquery variants and uppercase-literal are refused
// earlier by the shape check or the name length: they guard those routes.
func TestNameTemplate_GrowingTemplateRefusedWithBoundedMemory(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")

	const seed = `{{$x := "aaaaaaaaaaaaaaaa"}}`
	grow := func(step string, n int) string {
		return "vault-" + seed + strings.Repeat(step, n) + `{{$x | truncate 8}}`
	}
	// The bounded sdk functions (and printf) must refuse by their bound: the
	// message names the byte limit. text/template's own builtins (print,
	// println, html, js, urlquery) are refused earlier by the shape check as
	// "not defined" (see TestNameTemplate_TextTemplateBuiltinsAccepted): still a
	// cheap 400, which is all this test asks of them.
	type variant struct{ tmpl, want string }
	variants := map[string]variant{
		"printf":                {grow(`{{$x = printf "%s%s" $x $x}}`, 30), "bytes"},
		"printf-explicit-index": {grow(`{{$x = printf "%[1]s%[1]s" $x}}`, 30), "argument indexes"},
		"replace":               {grow(`{{$x = replace "a" "aa" $x}}`, 30), "bytes"},
		"base64":                {grow(`{{$x = base64 $x}}`, 80), "bytes"}, // x4/3 a step: 16 B * (4/3)^80 ~ 160 TB
		"uppercase":             {grow(`{{$x = uppercase (printf "%s%s" $x $x)}}`, 30), "bytes"},
		"uppercase-literal":     {"vault-" + `{{uppercase "` + strings.Repeat("a", 2000) + `"}}`, "bytes"},
		"timestamp":             {grow(`{{$x = timestamp (printf "%s%s" $x $x)}}`, 30), "bytes"}, // "a" is no layout element
		"pipeline":              {grow(`{{$x = printf "%s%s" $x $x | uppercase | lowercase | replace "a" "a"}}`, 30), "bytes"},
		"print":                 {grow(`{{$x = print $x $x}}`, 30), "name_template"},
		"println":               {grow(`{{$x = println $x $x}}`, 30), "name_template"},
		"html":                  {grow(`{{$x = html $x $x}}`, 30), "name_template"},
		"js":                    {grow(`{{$x = js $x $x}}`, 30), "name_template"},
		"urlquery":              {grow(`{{$x = urlquery $x $x}}`, 30), "name_template"},
	}
	names := make([]string, 0, len(variants))
	for n := range variants {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		v := variants[name]
		t.Run(name, func(t *testing.T) {
			require.Less(t, len(v.tmpl), maxNameTemplateLength, "the attack fits the template length limit")
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			e.badRequest(logical.CreateOperation, "roles/doubling", map[string]interface{}{
				"environment": "development", "name_template": v.tmpl,
			}, v.want)
			elapsed := time.Since(start)
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%s: %d-byte template refused in %s, %d KiB allocated", name, len(v.tmpl), elapsed, alloc/1024)
			require.Less(t, alloc, uint64(64<<20), "refusing the template must not allocate much")
			require.Less(t, elapsed, 5*time.Second, "refused quickly")
			resp := e.ok(logical.ReadOperation, "roles/doubling", nil)
			require.Nil(t, resp, "a refused role is not stored")
		})
	}

	t.Run("a template that renders fine stays accepted", func(t *testing.T) {
		tmpl := `vault-{{.RoleName | uppercase | lowercase}}-{{$x := "ab"}}{{$x = printf "%s%s" $x $x}}{{$x = replace "a" "c" $x}}{{$x}}-{{printf "%s%s" "p" "q"}}-{{base64 "bb" | truncate 4}}-{{timestamp "2006"}}-{{random 4}}`
		e.role("fine", map[string]interface{}{"name_template": tmpl})
		read := e.ok(logical.ReadOperation, "roles/fine", nil)
		require.Equal(t, tmpl, read.Data["name_template"])
		lease := e.issue("fine")
		require.Regexp(t, regexp.MustCompile(`^vault-fine-cbcb-pq-YmI=-\d{4}-[0-9A-Za-z]{4}$`), lease.Data["key_name"])
		require.NoError(t, e.revoke(lease))
	})
}

// Spec "Names" and invariant 5: name_template is Vault's sdk helper/template
// syntax (text/template), so templates using its builtins (eq, len, print,
// html, ...) are accepted; the bounded versions of print, println, html, js
// and urlquery are what they run.
func TestNameTemplate_TextTemplateBuiltinsAccepted(t *testing.T) {
	e := getTestBackend(t)
	e.configure("development")
	for name, tmpl := range map[string]string{
		"eq":    `vault-{{if eq .Environment "development"}}dev{{else}}other{{end}}-{{random 8}}`,
		"print": `vault-{{print .RoleName "-x"}}-{{random 8}}`,
		"html":  `vault-{{html .RoleName}}-{{random 8}}`,
		"len":   `vault-{{len .RoleName}}-{{random 8}}`,
	} {
		resp, err := e.do(logical.CreateOperation, "roles/builtin-"+name, map[string]interface{}{"environment": "development", "name_template": tmpl})
		require.NoError(t, err)
		require.False(t, resp != nil && resp.IsError(), "%s: a template using the text/template builtin %q must be accepted: %v", name, name, resp)
	}
}

// Spec, Invariant 5 (bounded CPU and memory for user input): a role's
// template is checked and parsed once, not at every issuance, renders the
// same from many issuances at once, and the cache of parsed templates stays
// bounded however many distinct templates are written.
func TestNameTemplate_ParsedOnceSharedAndBounded(t *testing.T) {
	text := `vault-{{.RoleName}}-{{random 8}}`
	_, err := compileNameTemplate(text)
	require.NoError(t, err)
	compiledTemplates.Lock()
	_, kept := compiledTemplates.m[text]
	compiledTemplates.Unlock()
	require.True(t, kept, "the parsed template is kept for the next issuance")

	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &heronRole{Name: "app", NameTemplate: text}
			name, err := r.renderKeyName(nameTemplateData{RoleName: "app"})
			assert.NoError(t, err)
			assert.Regexp(t, `^vault-app-[A-Za-z0-9]{8}$`, name)
		}()
	}
	wg.Wait()

	for i := range maxCompiledTemplates + 10 {
		_, err := compileNameTemplate(fmt.Sprintf("vault-{{.RoleName}}-%d", i))
		require.NoError(t, err)
	}
	compiledTemplates.Lock()
	n := len(compiledTemplates.m)
	compiledTemplates.Unlock()
	require.LessOrEqual(t, n, maxCompiledTemplates)

	_, err = compileNameTemplate(`{{range .}}{{end}}`)
	require.Error(t, err, "a template the shape check refuses is refused from the cache path too")
}
