package heron

import (
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/stretchr/testify/require"
)

// Writes that call Heron before they store anything run on the active node
// (and the primary cluster) on Vault Enterprise, never on a node that cannot
// write what Heron answered.
func TestOperationsThatCallHeronFirst_AreForwardedToTheActiveNode(t *testing.T) {
	b := backend()
	forwarded := map[string][]logical.Operation{
		"config/" + environmentPattern + "$":                              {logical.CreateOperation, logical.UpdateOperation, logical.DeleteOperation},
		"config/" + environmentPattern + "/rotate$":                       {logical.UpdateOperation},
		"rotate-root/" + environmentPattern + "$":                         {logical.UpdateOperation},
		"static-roles/" + framework.GenericNameRegex("name") + "$":        {logical.CreateOperation, logical.UpdateOperation, logical.DeleteOperation},
		"static-roles/" + framework.GenericNameRegex("name") + "/rotate$": {logical.UpdateOperation},
		"rotate-role/" + framework.GenericNameRegex("name") + "$":         {logical.UpdateOperation},
		"creds/" + framework.GenericNameRegex("role") + "$":               {logical.ReadOperation, logical.UpdateOperation},
		"static-creds/" + framework.GenericNameRegex("name") + "$":        {logical.ReadOperation},
	}
	seen := map[string]bool{}
	for _, p := range b.Paths {
		ops, ok := forwarded[p.Pattern]
		if !ok {
			continue
		}
		seen[p.Pattern] = true
		for _, op := range ops {
			h, ok := p.Operations[op].(*framework.PathOperation)
			require.True(t, ok, "%s %s", op, p.Pattern)
			require.True(t, h.ForwardPerformanceStandby, "%s %s: ForwardPerformanceStandby", op, p.Pattern)
			require.True(t, h.ForwardPerformanceSecondary, "%s %s: ForwardPerformanceSecondary", op, p.Pattern)
		}
	}
	require.Len(t, seen, len(forwarded), "every path is found: %v", seen)
}
