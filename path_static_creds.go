package heron

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// static-creds/<name>: the current key of a static role (no lease).

func pathStaticCreds(b *heronBackend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "static-creds/" + framework.GenericNameRegex("name") + "$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixHeron,
				OperationSuffix: "static-credentials",
			},
			Fields: map[string]*framework.FieldSchema{
				"name": {
					Type:         framework.TypeString,
					Description:  "Name of the static role.",
					Required:     true,
					DisplayAttrs: &framework.DisplayAttributes{Name: "Name"},
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback:                    b.pathStaticCredsRead,
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					Summary:                     "Read a static role's current Heron key.",
				},
			},
			HelpSynopsis:    pathStaticCredsHelpSyn,
			HelpDescription: pathStaticCredsHelpDesc,
		},
	}
}

// pathStaticCredsRead handles READ static-creds/<name>. A current key that
// the engine no longer tracks (the cleanup pass found it deleted in Heron by
// hand) is replaced by a rotation first, logged.
func (b *heronBackend) pathStaticCredsRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if resp := pathNameError(req, "static role", name); resp != nil {
		return resp, nil
	}
	r, err := getStaticRole(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return logical.ErrorResponse("unknown static role %q", name), nil
	}
	rec, err := getTrackedKey(ctx, req.Storage, r.KeyID)
	if err != nil {
		return nil, err
	}
	// A quarantined current key (keys/<id>/deactivate) no longer works:
	// the holder gets a new one, and the quarantined key stays deactivated.
	if r.KeyID == "" || rec == nil || rec.State != keyStateActive || rec.Quarantined {
		b.Logger().Warn("static role's current key is gone (deleted in Heron by hand?): rotating now", "role", name, "key_id", r.KeyID)
		// Decided from a read outside the role's lock: another reader may be
		// replacing the same key. Only one replacement happens; the others
		// serve the key it made.
		r, _, err = b.rotateStaticIf(ctx, req.Storage, name, func(ctx context.Context, r *staticRole) (bool, error) {
			return keyGone(ctx, req.Storage, r)
		})
		if errors.Is(err, errStaticUser) {
			return logical.ErrorResponse(err.Error()), nil
		}
		if err != nil {
			return nil, fmt.Errorf("replacing the missing key of static role %q: %w", name, err)
		}
	}
	data := map[string]interface{}{
		"api_key":      r.Token,
		"key_id":       r.KeyID,
		"key_name":     r.KeyName,
		"token_prefix": r.TokenPrefix,
		"environment":  r.Environment,
		"role":         r.Name,
		"last_rotated": formatTime(r.LastRotated),
		"ttl":          0,
	}
	// Vault's conventional names (as HashiCorp's engines answer): when the
	// key was last rotated, and the rotation it lives on.
	data["last_vault_rotation"] = timeOrNil(r.LastRotated)
	if r.RotationSchedule != "" {
		data["rotation_schedule"] = r.RotationSchedule
	} else {
		data["rotation_period"] = int64(r.RotationPeriod.Seconds())
	}
	next := r.rotationSchedule().readNext(b.now())
	if !next.IsZero() {
		data["ttl"] = max(int64(next.Sub(b.now()).Seconds()), 0)
	}
	if r.PreviousKeyID != "" {
		data["previous_key_id"] = r.PreviousKeyID
		data["previous_deactivates_at"] = formatTime(r.previousDeactivatesAt())
	}
	// Until when this key is sure to work: it stays current until the next
	// scheduled rotation, then previous for at least overlap (a rotation by
	// hand, or a quarantine, can end it sooner). Empty when no rotation is
	// scheduled.
	data["valid_until"] = ""
	if !next.IsZero() {
		data["valid_until"] = formatTime(next.Add(r.Overlap))
	}
	return &logical.Response{Data: data}, nil
}

const pathStaticCredsHelpSyn = `Read a static role's current Heron key.`

const pathStaticCredsHelpDesc = `
Returns the static role's current key (api_key), with ttl the seconds until the
next rotation. During an overlap, previous_key_id and previous_deactivates_at
say which key is on its way out and until when it works at the latest. There is
no lease: read again after a rotation. valid_until is until when the key is
sure to work: the next scheduled rotation plus overlap (a rotation by hand or a
quarantine can end it sooner).
`
