package heron

import (
	"sort"

	"github.com/hashicorp/vault/sdk/framework"
)

// Listing at scale: keys/, roles/ and static-roles/ take Vault's paging
// convention, `after` (the last name of the previous page) and `limit`.

const maxPageLimit = 10000

// pagingFields are the list paths' after and limit.
func pagingFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"after": {
			Type:         framework.TypeString,
			Description:  "List only names that sort after this one (the last of the previous page).",
			Query:        true,
			DisplayAttrs: &framework.DisplayAttributes{Name: "After"},
		},
		"limit": {
			Type:         framework.TypeInt,
			Description:  "At most this many names (1 to 10000); without it, all.",
			Query:        true,
			DisplayAttrs: &framework.DisplayAttributes{Name: "Limit"},
		},
	}
}

// withPaging adds after and limit to fields.
func withPaging(fields map[string]*framework.FieldSchema) map[string]*framework.FieldSchema {
	if fields == nil {
		fields = map[string]*framework.FieldSchema{}
	}
	for k, v := range pagingFields() {
		fields[k] = v
	}
	return fields
}

// pageRequest is a list request's after and limit (limit 0: no limit).
type pageRequest struct {
	after string
	limit int
}

// readPage reads after and limit; a limit out of range is the caller's
// mistake (a 400 naming the rule).
func readPage(d *framework.FieldData) (pageRequest, string) {
	p := pageRequest{after: d.Get("after").(string)}
	if v, ok := d.GetOk("limit"); ok {
		p.limit = v.(int)
		if p.limit < 1 || p.limit > maxPageLimit {
			return p, "limit must be between 1 and 10000"
		}
	}
	return p, ""
}

// names returns the sorted names after p.after, at most p.limit of them.
func (p pageRequest) names(all []string) []string {
	// Read-only when sorted already: keys/ hands a list shared by pages.
	if !sort.StringsAreSorted(all) {
		sort.Strings(all)
	}
	i := sort.SearchStrings(all, p.after)
	if p.after != "" && i < len(all) && all[i] == p.after {
		i++
	}
	out := all[i:]
	if p.limit > 0 && len(out) > p.limit {
		out = out[:p.limit]
	}
	return out
}
