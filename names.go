package heron

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/hashicorp/vault/sdk/logical"
)

// Names: every role and static role name, environment and key id that a
// caller sends becomes part of a storage key (and of the paths Vault's
// policies are written against), so each passes one rule before anything is
// read, written or created with it.
//
//   - Role and static role names: nameRule. Enforced when a role is created;
//     a name stored before the rule existed keeps working on every other
//     operation (read, update, delete, creds, revoke, rotate).
//   - Environments: environmentRegex, everywhere.
//   - Any name in a path: written as stored (lowercase), and never with "..",
//     which Vault's storage refuses as a key. Vault's policies are
//     case-sensitive: a path that differs from the stored name in case only
//     must never reach that name's data.

// nameRule is the rule of role and static role names, as the errors say it.
const nameRule = `[a-z0-9]([a-z0-9_.-]{0,62}[a-z0-9])? without ".."`

// environmentRule is the rule of environment names, as the errors say it.
const environmentRule = `[a-z0-9-]{1,64}`

var nameRegex = regexp.MustCompile(`^[a-z0-9]([a-z0-9_.-]{0,62}[a-z0-9])?$`)

// staticKeyNameFixed is what a static role's key name adds to the role's
// name: "vault-static-" and "-<unix_time>" (10 digits until 2286).
const staticKeyNameFixed = len("vault-static-") + len("-") + 10

// validName reports whether name follows nameRule.
func validName(name string) bool {
	return nameRegex.MatchString(name) && !strings.Contains(name, "..")
}

// pathNameError checks a role or static role name (kind says which) taken
// from req's path, before any storage is touched: it must be written as
// stored (lowercase) and hold no "..". A non-nil response is the 400 to
// answer, naming the path to use. Names stored before nameRule existed pass:
// the full rule is checked on create (newNameError).
func pathNameError(req *logical.Request, kind, name string) *logical.Response {
	if lower := strings.ToLower(name); lower != name {
		// The rest of every path is lowercase: lowering the whole path
		// names the one to use.
		return logical.ErrorResponse("%s name %q is invalid: names are lowercase, use %s, not %s (Vault policies are case-sensitive, so a path must name the %s exactly as stored)",
			kind, name, strings.ToLower(req.Path), req.Path, kind)
	}
	if strings.Contains(name, "..") {
		return logical.ErrorResponse("%s name %q is invalid: names must match %s", kind, name, nameRule)
	}
	return nil
}

// newNameError checks the name of a role or static role being created
// against nameRule; a static role's name must also leave its key names
// (vault-static-<name>-<unix_time>) within Heron's limit. A non-empty string
// is the 400 to answer.
func newNameError(kind, name string, static bool) string {
	if static && len(name)+staticKeyNameFixed > maxKeyNameLength {
		return fmt.Sprintf("%s name is %d characters: its keys are named vault-static-<name>-<unix_time>, which Heron limits to %d characters, so the name may have at most %d (and names must match %s)",
			kind, len(name), maxKeyNameLength, maxKeyNameLength-staticKeyNameFixed, nameRule)
	}
	if !validName(name) {
		return fmt.Sprintf("%s name %q is invalid: names must match %s (lowercase letters, digits, '_', '.' and '-', starting and ending with a letter or digit, at most 64 characters)", kind, name, nameRule)
	}
	return ""
}

// environmentError checks an environment name (from a path or a field;
// field says which, for the message). A non-empty string is the 400 to
// answer.
func environmentError(field, env string) string {
	if environmentRegex.MatchString(env) {
		return ""
	}
	return fmt.Sprintf("%s %q is invalid: environment names must match %s", field, env, environmentRule)
}

// pathEnvironmentError checks an environment taken from req's path, before
// any storage is touched. A non-nil response is the 400 to answer; a name
// that differs from a valid one in case only names the path to use.
func pathEnvironmentError(req *logical.Request, env string) *logical.Response {
	if environmentRegex.MatchString(env) {
		return nil
	}
	if lower := strings.ToLower(env); environmentRegex.MatchString(lower) {
		return logical.ErrorResponse("environment %q is invalid: environment names are lowercase, use %s, not %s (Vault policies are case-sensitive, so a path must name the environment exactly as stored)",
			env, strings.ToLower(req.Path), req.Path)
	}
	return logical.ErrorResponse("%s", environmentError("environment", env))
}

// pathKeyIDError checks a Heron key id taken from req's path: ids are kept
// as storage keys, so "..", which Vault's storage refuses, is a 400 (no key
// the engine tracks has it).
func pathKeyIDError(id string) *logical.Response {
	if strings.Contains(id, "..") {
		return logical.ErrorResponse("key_id %q is invalid: a Heron key id is a plain path segment, without \"..\"", id)
	}
	return nil
}
