package heron

import (
	"context"
	"errors"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/heron-vault/vault-plugin-secrets-heron/heronapi"
)

func pathTidy(b *heronBackend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "tidy$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationVerb:   "tidy",
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					Callback: b.pathTidyWrite,
					Summary:  "Run the cleanup pass now.",
				},
			},
			HelpSynopsis:    pathTidyHelpSyn,
			HelpDescription: pathTidyHelpDesc,
		},
	}
}

// pathTidyWrite handles UPDATE tidy.
func (b *heronBackend) pathTidyWrite(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	counts, err := b.cleanupWithWAL(heronapi.Background(ctx), req)
	if err != nil {
		return nil, upstreamError("tidy", err)
	}
	return &logical.Response{Data: map[string]interface{}{
		"expired_keys_deleted":   counts.ExpiredKeysDeleted,
		"admin_keys_deactivated": counts.AdminKeysDeactivated,
		"admin_keys_deleted":     counts.AdminKeysDeleted,
		"reconciled_keys":        counts.UntrackedGoneKeys,
		"rolled_back_wal":        counts.RolledBackWAL,
		"pending_wal":            counts.PendingWAL,
		"overdue_keys":           counts.OverdueKeys,
		"pending_revocations":    counts.PendingRevocations,
	}}, nil
}

// cleanupWithWAL is tidy: the cleanup pass plus settling write-ahead records
// of interrupted issuances (Vault's rollback does that on its own schedule).
func (b *heronBackend) cleanupWithWAL(ctx context.Context, req *logical.Request) (*cleanupCounts, error) {
	settled, pending, walErr := b.rollbackStaleWALs(ctx, req, "")
	counts, err := b.cleanup(ctx, req.Storage, true)
	if counts != nil {
		counts.RolledBackWAL = settled
		counts.PendingWAL = pending
	}
	return counts, errors.Join(walErr, err)
}

const pathTidyHelpSyn = `Run the cleanup pass now.`

const pathTidyHelpDesc = `
Deletes keys deactivated at lease expiry once their role's
expired_key_retention has passed, deactivates and deletes rotated-out admin
keys past old_key_retention, drops from tracking the keys Heron no longer has,
and deletes keys left by interrupted issuances (write-ahead records). The same
pass runs periodically. Returns counts.
`
