//go:build e2e

package e2e

import (
	"testing"
	"time"
)

// ---------------------------------------------------------------------------
// 1. Upstream requests per operation

type benchCounts struct {
	issue, expiry, revoke, renew float64
	// detail names what was sent, e.g. "POST /api/credentials/keys x20".
	issueDetail, expiryDetail, revokeDetail, renewDetail string
}

func benchMeasureCounts(t *testing.T, v *vault, e *emulator) benchCounts {
	t.Helper()
	var c benchCounts
	const n = benchCountSamples

	from := time.Now()
	leases := make([]lease, n)
	for i := range leases {
		l, err := v.issue("", "count")
		if err != nil {
			t.Fatalf("issuing count lease %d: %v", i, err)
		}
		leases[i] = l
	}
	reqs := benchEngineReqs(e, from, time.Now())
	c.issue, c.issueDetail = float64(len(reqs))/n, benchDescribeReqs(reqs)

	from = time.Now()
	for _, l := range leases {
		if _, err := v.api.Sys().Renew(l.LeaseID, 0); err != nil {
			t.Fatalf("renewing %s: %v", l.LeaseID, err)
		}
	}
	reqs = benchEngineReqs(e, from, time.Now())
	c.renew, c.renewDetail = float64(len(reqs))/n, benchDescribeReqs(reqs)

	from = time.Now()
	for _, l := range leases {
		if _, err := v.api.Logical().Write("sys/leases/revoke", map[string]any{"lease_id": l.LeaseID, "sync": true}); err != nil {
			t.Fatalf("revoking %s: %v", l.LeaseID, err)
		}
	}
	benchWaitDeleted(t, e, keyIDs(leases), time.Minute)
	reqs = benchEngineReqs(e, from, time.Now())
	c.revoke, c.revokeDetail = float64(len(reqs))/n, benchDescribeReqs(reqs)

	short := make([]lease, benchExpirySamples)
	for i := range short {
		l, err := v.issue("", "expiry")
		if err != nil {
			t.Fatalf("issuing expiry lease %d: %v", i, err)
		}
		short[i] = l
	}
	from = time.Now()
	for _, l := range short {
		e.waitState(t, l.Data.KeyID, stateDeactivated, time.Minute)
	}
	// Anything the engine would send after deactivating (it must not) gets
	// time to show up.
	time.Sleep(2 * time.Second)
	reqs = benchEngineReqs(e, from, time.Now())
	c.expiry, c.expiryDetail = float64(len(reqs))/benchExpirySamples, benchDescribeReqs(reqs)
	return c
}
