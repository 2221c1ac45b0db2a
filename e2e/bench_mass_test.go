//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// ---------------------------------------------------------------------------
// 3. Mass revocation

type benchMass struct {
	n, budget    int
	issueWall    time.Duration
	wall         time.Duration // revoke command to the last key deleted in Heron
	leasesGone   time.Duration // revoke command to Vault holding no lease under the prefix
	irrevocable  int
	deletes      int // DELETE requests during the revocation
	other        string
	maxInMinute  int     // most engine requests in any 60 s window of the revocation
	postsPerKey  float64 // POSTs per lease during the issuance
	issueReqsPer float64 // every engine request per lease during the issuance
}

// floor is the physical limit: n requests at budget per minute.
func (m benchMass) floor() time.Duration {
	return time.Duration(float64(m.n) / float64(m.budget) * float64(time.Minute))
}

func (m benchMass) ratio() float64 { return m.wall.Seconds() / m.floor().Seconds() }

func benchMeasureMassRevoke(t *testing.T, v *vault, e *emulator, n, budget int) benchMass {
	t.Helper()
	m := benchMass{n: n, budget: budget}

	from := time.Now()
	leases, errs := issueMany(t, v, "bulk", n, benchIssueConcurrency)
	if len(errs) > 0 {
		t.Fatalf("issuing %d bulk leases: %v", n, errs[0])
	}
	m.issueWall = time.Since(from)
	reqs := benchEngineReqs(e, from, time.Now())
	m.issueReqsPer = float64(len(reqs)) / float64(n)
	for _, r := range reqs {
		if r.Method == http.MethodPost {
			m.postsPerKey++
		}
	}
	m.postsPerKey /= float64(n)

	// The budget is a promise over every sliding 60 s window: the issuance's
	// requests count in the minute after them. Revoking at once would
	// measure that wait too (a first run after the limiter became a
	// sliding window took 119 s instead of 60), so the revocation starts
	// once they no longer fit the window with it.
	if len(reqs)+n > budget && len(reqs) > 0 {
		lastReq := reqs[len(reqs)-1].Time
		for _, r := range reqs {
			if r.Time.After(lastReq) {
				lastReq = r.Time
			}
		}
		time.Sleep(time.Until(lastReq.Add(time.Minute + time.Second)))
	}

	// The budget under test. verify=false: checking the key again would spend
	// a request of the budget being measured.
	v.run("write", "heron/config/development", fmt.Sprintf("rate_limit_per_minute=%d", budget), "verify=false")

	ids := keyIDs(leases)
	t0 := time.Now()
	v.run("lease", "revoke", "-prefix", "heron/creds/bulk/")
	floor := m.floor()
	last := benchWaitDeleted(t, e, ids, 3*floor+2*time.Minute)
	m.wall = last.Sub(t0)
	eventually(t, 5*time.Minute, "Vault dropping the revoked leases", func() error { return v.leasesLeft("heron/creds/bulk/") })
	m.leasesGone = time.Since(t0)
	m.irrevocable = v.irrevocableLeases()

	reqs = benchEngineReqs(e, t0, last.Add(time.Millisecond))
	var others []herontest.RequestRecord
	times := make([]time.Time, 0, len(reqs))
	for _, r := range reqs {
		times = append(times, r.Time)
		if r.Method == http.MethodDelete && r.Route == "/api/credentials/keys/{heron_id}" {
			m.deletes++
			continue
		}
		others = append(others, r)
	}
	m.other = benchDescribeReqs(others)
	// Background requests spend the same budget, so they count here.
	for _, r := range e.Requests() {
		if benchIsBackground(r) && !r.Time.Before(t0) && r.Time.Before(last) {
			times = append(times, r.Time)
		}
	}
	m.maxInMinute = herontest.MaxInWindowOf(times, time.Minute)

	v.run("write", "heron/config/development", fmt.Sprintf("rate_limit_per_minute=%d", benchFastBudget), "verify=false")
	return m
}
