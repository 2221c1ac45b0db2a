package heron

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// What happens to a rotated-out admin key after its rotation lives in a
// record of its own, so that the cleanup pass never writes a config:
//
//	retired-admin-keys/<environment>/<key id>   retiredProgress
//
// The config entry says which keys are retired (a rotation switches to the
// new key and retires the old one in one write); these records say how far
// each got (deactivated when, deleted). The config's lock is one instance's:
// two instances on one storage (a reload or failover, the old one finishing
// its pass) could otherwise both read the config and write it back, and the
// pass's copy, dropping a deleted retired key, would undo the other's
// rotation: the rotated-in admin key forgotten, the stored key one already
// deactivated. getConfig applies the records to the config it reads; the
// next config write (a rotation, an operator's write) folds them in and
// drops the deleted keys.
const retiredProgressPrefix = "retired-admin-keys/"

// retiredProgress is how far the retirement of one admin key got.
type retiredProgress struct {
	// RetiredAt names the retirement it belongs to: a key written back as
	// the admin key and rotated out again is a new retirement, which a
	// record of the old one (left by a failed delete) must not describe.
	RetiredAt     time.Time `json:"retired_at"`
	Deactivated   bool      `json:"deactivated,omitempty"`
	DeactivatedAt time.Time `json:"deactivated_at,omitempty"`
	DeleteAfter   time.Time `json:"delete_after,omitempty"`
	Deleted       bool      `json:"deleted,omitempty"`
	DeletedAt     time.Time `json:"deleted_at,omitempty"`
}

func retiredProgressPath(env, keyID string) string {
	return retiredProgressPrefix + env + "/" + keyID
}

// applyRetiredProgress applies env's progress records to cfg as read from
// storage: deactivations are copied in, deleted keys dropped. It remembers
// the records it found (cfg.progressIDs), so that a write of cfg deletes
// those it no longer needs.
func applyRetiredProgress(ctx context.Context, s logical.Storage, cfg *heronConfig) error {
	if len(cfg.RetiredKeys) == 0 {
		return nil
	}
	ids, err := s.List(ctx, retiredProgressPrefix+cfg.Environment+"/")
	if err != nil {
		return fmt.Errorf("listing the rotated-out admin keys of config %q: %w", cfg.Environment, err)
	}
	if len(ids) == 0 {
		return nil
	}
	found := make(map[string]bool, len(ids))
	for _, id := range ids {
		found[id] = true
	}
	kept := cfg.RetiredKeys[:0]
	for _, rk := range cfg.RetiredKeys {
		if !found[rk.KeyID] {
			kept = append(kept, rk)
			continue
		}
		p, err := getJSON[retiredProgress](ctx, s, retiredProgressPath(cfg.Environment, rk.KeyID), "rotated-out admin key "+rk.KeyID)
		if err != nil {
			return err
		}
		if p == nil || !p.RetiredAt.Equal(rk.RetiredAt) {
			kept = append(kept, rk)
			continue
		}
		if p.Deleted {
			continue
		}
		if p.Deactivated && !rk.Deactivated {
			rk.Deactivated, rk.DeactivatedAt, rk.DeleteAfter = true, p.DeactivatedAt, p.DeleteAfter
		}
		kept = append(kept, rk)
	}
	cfg.RetiredKeys = kept
	cfg.progressIDs = ids
	return nil
}

// dropFoldedProgress deletes, after cfg was stored, the progress records of
// keys cfg no longer retires (deleted, or no longer retired): the stored
// config now says all there is. A record that stays behind (the delete
// failed) only costs a read.
func (b *heronBackend) dropFoldedProgress(ctx context.Context, s logical.Storage, cfg *heronConfig) {
	if len(cfg.progressIDs) == 0 {
		return
	}
	still := make(map[string]bool, len(cfg.RetiredKeys))
	for _, rk := range cfg.RetiredKeys {
		still[rk.KeyID] = true
	}
	for _, id := range cfg.progressIDs {
		if still[id] {
			continue
		}
		if err := s.Delete(ctx, retiredProgressPath(cfg.Environment, id)); err != nil {
			b.Logger().Warn("could not delete a settled rotated-out admin key's record; the next config write will", "environment", cfg.Environment, "key_id", id, "error", err)
			return
		}
	}
	cfg.progressIDs = nil
}

// dropAllProgress deletes every progress record of env (its config is gone).
func dropAllProgress(ctx context.Context, s logical.Storage, env string) error {
	ids, err := s.List(ctx, retiredProgressPrefix+env+"/")
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := s.Delete(ctx, retiredProgressPath(env, id)); err != nil {
			return err
		}
	}
	return nil
}

// putRetiredProgress records how far rk's retirement got, from rk.
func putRetiredProgress(ctx context.Context, s logical.Storage, env string, rk retiredAdminKey, deletedAt time.Time) error {
	p := retiredProgress{RetiredAt: rk.RetiredAt, Deactivated: rk.Deactivated, DeactivatedAt: rk.DeactivatedAt, DeleteAfter: rk.DeleteAfter}
	if !deletedAt.IsZero() {
		p.Deleted, p.DeletedAt = true, deletedAt
	}
	return putJSON(ctx, s, retiredProgressPath(env, rk.KeyID), "rotated-out admin key "+rk.KeyID, &p)
}
