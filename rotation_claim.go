package heron

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// A rotation's claim across backend instances. The config and static role
// locks are one instance's: during a plugin reload or an HA failover the
// old instance finishes its requests (its periodic pass among them) while
// the new one serves, and both could decide to rotate the same admin key or
// static role. Storage has no compare-and-set, but it is linearizable, which
// is enough for "write, then read": each rotation writes a claim of its own
// and then lists the target's claims; of two rotations that overlap, at
// least one sees the other's claim, and one that sees another's live claim
// backs off. So at most one rotation of a target runs at a time (two that
// start in the same instant may both back off: the pass tries again next
// time, a rotation by hand answers "retry"). A claim left by a crashed
// instance stops counting after claimTTL.
//
//	rotating/<target>/<instance>.<n>   rotationClaim
const rotatingStoragePrefix = "rotating/"

// claimTTL is how long a claim counts: longer than any rotation (a POST,
// a verify, a few storage writes, with retries and the limiter's wait).
const claimTTL = 10 * time.Minute

// errRotationBusy says another instance is rotating the same target.
var errRotationBusy = errors.New("another rotation of it is running (on another instance of the plugin: a reload or failover)")

type rotationClaim struct {
	Since time.Time `json:"since"`
}

var claimSeq atomic.Uint64

// claimRotation claims target (e.g. "admin/<env>", "static/<role>") for one
// rotation, with the caller holding the target's in-memory lock. It returns
// the release to defer, or errRotationBusy when another instance's claim
// counts; the caller then reads the target again after claiming it (a
// rotation that finished before the claim shows in storage).
func (b *heronBackend) claimRotation(ctx context.Context, s logical.Storage, target string) (func(), error) {
	dir := rotatingStoragePrefix + target + "/"
	mine := fmt.Sprintf("%s.%d", b.id, claimSeq.Add(1))
	if err := putJSON(ctx, s, dir+mine, "rotation claim "+target, &rotationClaim{Since: b.now()}); err != nil {
		return nil, err
	}
	release := func() {
		// A claim left behind (the delete failed) only delays the target's
		// next rotation on another instance by claimTTL.
		if err := s.Delete(context.WithoutCancel(ctx), dir+mine); err != nil {
			b.Logger().Warn("could not delete a rotation claim; it expires by itself", "target", target, "error", err)
		}
	}
	claimed, err := b.rotationClaimed(ctx, s, target)
	if err != nil || claimed {
		release()
		if err == nil {
			err = errRotationBusy
		}
		return nil, err
	}
	return release, nil
}

// rotationClaimed reports whether another instance holds a live claim on
// target: a rotation of it may be running there. (This instance's own
// rotations are kept out by the target's in-memory lock, which the caller
// holds; a claim of its own is one a failed release left.) A claim older
// than claimTTL, a crashed instance's, does not count and is deleted.
func (b *heronBackend) rotationClaimed(ctx context.Context, s logical.Storage, target string) (bool, error) {
	dir := rotatingStoragePrefix + target + "/"
	names, err := s.List(ctx, dir)
	if err != nil {
		return false, fmt.Errorf("listing rotation claims of %s: %w", target, err)
	}
	now := b.now()
	for _, name := range names {
		if strings.HasPrefix(name, b.id+".") || strings.HasSuffix(name, "/") {
			continue
		}
		c, err := getJSON[rotationClaim](ctx, s, dir+name, "rotation claim "+target)
		if err != nil {
			return false, err
		}
		if c == nil {
			continue // released meanwhile
		}
		if now.Sub(c.Since) >= claimTTL {
			// A crashed instance's: no longer counts, and goes.
			if err := s.Delete(ctx, dir+name); err != nil {
				b.Logger().Debug("could not delete an expired rotation claim", "target", target, "claim", name, "error", err)
			}
			continue
		}
		return true, nil
	}
	return false, nil
}
