package heron

import (
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	gotemplate "text/template"
	"text/template/parse"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-secure-stdlib/base62"
	"github.com/hashicorp/vault/sdk/helper/template"
)

// The name_template sandbox: a role's template is user input that runs in the
// plugin process serving every mount, so its cost must be bounded whatever
// it says (spec invariant 5).

// renderKeyName renders the role's name_template. Errors are user errors: the
// template or the caller's names produce a name Heron would refuse.
func (r *heronRole) renderKeyName(data nameTemplateData) (string, error) {
	tmpl, err := compileNameTemplate(r.nameTemplate())
	if err != nil {
		return "", err
	}
	name, err := tmpl.Generate(data)
	if err != nil {
		return "", fmt.Errorf("name_template failed to render: %v", err)
	}
	if strings.TrimSpace(name) == "" {
		return "", errors.New("name_template rendered an empty key name")
	}
	if n := utf8.RuneCountInString(name); n > maxKeyNameLength {
		return "", fmt.Errorf("name_template rendered a key name of %d characters, Heron allows at most %d", n, maxKeyNameLength)
	}
	return name, nil
}

// compiledTemplates holds the name templates already checked and parsed, by
// their text: an issuance renders its role's template, and parsing it (and
// the shape check's own parse) was most of the issuance handler's CPU. A
// text/template is safe to execute concurrently. Bounded: a mount has a few
// templates; past maxCompiledTemplates the cache starts over.
var compiledTemplates = struct {
	sync.Mutex
	m map[string]template.StringTemplate
}{m: map[string]template.StringTemplate{}}

const maxCompiledTemplates = 256

// compileNameTemplate checks and parses a name_template, or takes it from
// compiledTemplates. Errors are user errors and are not kept.
func compileNameTemplate(text string) (template.StringTemplate, error) {
	compiledTemplates.Lock()
	tmpl, ok := compiledTemplates.m[text]
	compiledTemplates.Unlock()
	if ok {
		return tmpl, nil
	}
	if err := checkTemplateShape(text); err != nil {
		return template.StringTemplate{}, err
	}
	tmpl, err := template.NewTemplate(append([]template.Opt{template.Template(text)}, boundedFunctions...)...)
	if err != nil {
		return template.StringTemplate{}, fmt.Errorf("name_template is invalid: %v", err)
	}
	compiledTemplates.Lock()
	if len(compiledTemplates.m) >= maxCompiledTemplates {
		compiledTemplates.m = map[string]template.StringTemplate{}
	}
	compiledTemplates.m[text] = tmpl
	compiledTemplates.Unlock()
	return tmpl, nil
}

// maxNameTemplateLength bounds the template text; a name is at most 128
// characters, so a longer template is a mistake or an attack.
const maxNameTemplateLength = 4096

// templateFuncNames lists the functions helper/template provides, so the
// shape check can parse what it will accept.
var templateFuncNames = []string{
	"random", "truncate", "truncate_sha256", "uppercase", "lowercase", "replace", "sha256",
	"base64", "unix_time", "unix_time_millis", "timestamp", "uuid", "printf",
}

// templateBuiltins are text/template's own functions, which a name_template
// may use like any Go template (the string-making ones run bounded, below).
var templateBuiltins = []string{
	"and", "or", "not", "len", "index", "slice", "call", "print", "println", "printf",
	"html", "js", "urlquery", "eq", "ne", "lt", "le", "gt", "ge",
}

// maxTemplateValue bounds every string a function in a name_template can
// make. Without it a few hundred bytes of template that double a value
// ({{$x = printf "%s%s" $x $x}}, repeated) allocate gigabytes; with it no
// rendering holds more than about a megabyte (a few thousand actions of at
// most this much each), and a key name needs far less.
const maxTemplateValue = 1024

// boundedFunctions replaces every function of helper/template and every
// text/template builtin that can make a string longer than its input with a
// version that refuses to go past maxTemplateValue. The rest (truncate,
// sha256, uuid, the clocks) only ever make short strings.
var boundedFunctions = []template.Opt{
	// The sdk's random allocates whatever length it is asked for; a
	// template like {{random 2000000000}} would take the plugin down.
	template.Function("random", boundedRandom),
	// text/template's printf pads to any width it is given
	// ({{printf "%999999999d" 1}}); only allow widths a name can hold.
	template.Function("printf", boundedPrintf),
	template.Function("print", capped1(fmt.Sprint)),
	template.Function("println", capped1(fmt.Sprintln)),
	template.Function("html", capped1(gotemplate.HTMLEscaper)),
	template.Function("js", capped1(gotemplate.JSEscaper)),
	template.Function("urlquery", capped1(gotemplate.URLQueryEscaper)),
	template.Function("uppercase", capped(strings.ToUpper)),
	template.Function("lowercase", capped(strings.ToLower)),
	template.Function("base64", capped(func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) })),
	template.Function("timestamp", capped(func(layout string) string { return time.Now().UTC().Format(layout) })),
	template.Function("replace", boundedReplace),
}

// checkValue refuses a string past maxTemplateValue.
func checkValue(s string) (string, error) {
	if len(s) > maxTemplateValue {
		return "", fmt.Errorf("a value in name_template grew past %d bytes; a key name is at most %d characters", maxTemplateValue, maxKeyNameLength)
	}
	return s, nil
}

// capped bounds a one-string function (its input is bounded already, so
// its output is at most a few times maxTemplateValue before the check).
func capped(f func(string) string) func(string) (string, error) {
	return func(s string) (string, error) {
		if _, err := checkValue(s); err != nil {
			return "", err
		}
		return checkValue(f(s))
	}
}

// capped1 bounds a variadic builtin by what its arguments print to.
func capped1(f func(...interface{}) string) func(...interface{}) (string, error) {
	return func(args ...interface{}) (string, error) {
		if err := checkArgs(args); err != nil {
			return "", err
		}
		return checkValue(f(args...))
	}
}

// checkArgs refuses arguments whose strings together pass maxTemplateValue,
// before anything is built from them.
func checkArgs(args []interface{}) error {
	total := 0
	for _, a := range args {
		if s, ok := a.(string); ok {
			total += len(s)
		}
	}
	if total > maxTemplateValue {
		return fmt.Errorf("values in name_template add up to more than %d bytes; a key name is at most %d characters", maxTemplateValue, maxKeyNameLength)
	}
	return nil
}

// boundedReplace is the sdk's replace (find, replacement, input), refusing a
// result past maxTemplateValue before building it.
func boundedReplace(find, replacement, input string) (string, error) {
	if _, err := checkValue(input); err != nil {
		return "", err
	}
	n := strings.Count(input, find)
	if find == "" {
		n = utf8.RuneCountInString(input) + 1
	}
	if len(input)+n*(len(replacement)-len(find)) > maxTemplateValue {
		return "", fmt.Errorf("replace in name_template would make a value longer than %d bytes", maxTemplateValue)
	}
	return strings.ReplaceAll(input, find, replacement), nil
}

// templateFuncs names every function a name_template may call, for parsing.
func templateFuncs() map[string]any {
	funcs := make(map[string]any, len(templateFuncNames)+len(templateBuiltins))
	for _, name := range append(append([]string(nil), templateFuncNames...), templateBuiltins...) {
		funcs[name] = func(...any) string { return "" }
	}
	return funcs
}

// checkTemplateShape refuses what could make rendering unbounded: loops
// ({{range 2000000000}}{{end}} spins for minutes without writing a byte),
// nested templates (each calling the next twice: 2^30 executions in a few
// hundred bytes) and very long template text. A key name needs none of them.
func checkTemplateShape(text string) error {
	if len(text) > maxNameTemplateLength {
		return fmt.Errorf("name_template is %d bytes long, at most %d are allowed", len(text), maxNameTemplateLength)
	}
	trees, err := parse.Parse("name_template", text, "", "", templateFuncs(), gotemplate.FuncMap{})
	if err != nil {
		return fmt.Errorf("name_template is invalid: %v", err)
	}
	if len(trees) > 1 {
		return errors.New("name_template must not define templates (define, block)")
	}
	for _, tree := range trees {
		if tree.Root != nil && unbounded(tree.Root) {
			return errors.New("name_template must not use range or template actions: a key name needs no loop")
		}
	}
	return nil
}

// uniqueNames reports whether every name the role's template renders is
// unique by construction: it calls random or uuid. Such names need no
// look-up before a creation (see createUnderWAL).
func (r *heronRole) uniqueNames() bool {
	trees, err := parse.Parse("name_template", r.nameTemplate(), "", "", templateFuncs(), gotemplate.FuncMap{})
	if err != nil {
		return false
	}
	calls := false
	for _, tree := range trees {
		if tree.Root != nil && callsAny(tree.Root, "random", "uuid") {
			calls = true
		}
	}
	if !calls {
		return false
	}
	// A call that cannot reach the name ({{if false}}{{random 8}}{{end}})
	// makes no name unique: two renderings of one request must differ.
	data := nameTemplateData{RoleName: r.Name, DisplayName: "token", Environment: r.Environment}
	a, errA := r.renderKeyName(data)
	b, errB := r.renderKeyName(data)
	return errA == nil && errB == nil && a != b
}

// callsAny reports whether the template below node calls one of names.
func callsAny(node parse.Node, names ...string) bool {
	found := false
	var walk func(parse.Node)
	walk = func(n parse.Node) {
		if found || n == nil {
			return
		}
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return
			}
			for _, c := range n.Nodes {
				walk(c)
			}
		case *parse.ActionNode:
			walk(n.Pipe)
		case *parse.PipeNode:
			if n == nil {
				return
			}
			for _, c := range n.Cmds {
				walk(c)
			}
		case *parse.CommandNode:
			for _, a := range n.Args {
				walk(a)
			}
		case *parse.IdentifierNode:
			found = slices.Contains(names, n.Ident)
		case *parse.IfNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.WithNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		}
	}
	walk(node)
	return found
}

// unbounded reports whether node contains an action whose cost the template
// text does not bound: range, or a call to another template.
func unbounded(node parse.Node) bool {
	switch n := node.(type) {
	case *parse.RangeNode, *parse.TemplateNode:
		return true
	case *parse.ListNode:
		if n == nil {
			return false
		}
		for _, c := range n.Nodes {
			if unbounded(c) {
				return true
			}
		}
	case *parse.IfNode:
		return unbounded(n.List) || unbounded(n.ElseList)
	case *parse.WithNode:
		return unbounded(n.List) || unbounded(n.ElseList)
	}
	return false
}

// boundedRandom is the sdk's random, refusing lengths no key name can hold.
func boundedRandom(n int) (string, error) {
	if n < 1 || n > maxKeyNameLength {
		return "", fmt.Errorf("random length must be between 1 and %d, got %d", maxKeyNameLength, n)
	}
	return base62.Random(n)
}

// printfWidth finds the width and precision numbers of a format string.
var printfWidth = regexp.MustCompile(`%[-+# 0]*(\*|\d+)?(?:\.(\*|\d+))?`)

// printfIndex finds an explicit argument index inside a verb.
var printfIndex = regexp.MustCompile(`%[^a-zA-Z%]*\[`)

// boundedPrintf is fmt.Sprintf with widths and precisions capped at what a
// key name can hold.
func boundedPrintf(format string, args ...interface{}) (string, error) {
	// Explicit argument indexes can carry a width or precision past the
	// check below (%.[1]9999999d); a key name needs none.
	if printfIndex.MatchString(format) {
		return "", errors.New("printf: argument indexes ([n]) are not allowed in name_template")
	}
	for _, m := range printfWidth.FindAllStringSubmatch(format, -1) {
		for _, w := range m[1:] {
			if w == "*" {
				return "", errors.New("printf: * widths are not allowed in name_template")
			}
			if n, err := strconv.Atoi(w); w != "" && (err != nil || n > maxKeyNameLength) {
				return "", fmt.Errorf("printf: widths above %d are not allowed in name_template", maxKeyNameLength)
			}
		}
	}
	if err := checkArgs(append(args, format)); err != nil {
		return "", err
	}
	return checkValue(fmt.Sprintf(format, args...))
}
