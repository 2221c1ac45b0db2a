package heronapi

import (
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// Spec, Invariant 8 and "Upstream calls": in any sliding 60 s window the
// engine sends at most rate_limit_per_minute requests (+1) to an
// environment, across 429 pauses, Retry-After, low X-RateLimit-Remaining
// and budget changes. TestLimiterBudgetHoldsOverEverySlidingWindow names
// six cases; here rapid searches every mix of them for a counter-example:
// any starting budget and number of concurrent senders, pauses of any
// length after any send, Heron's rate-limit headers with any remaining
// count and reset, and budget changes up or down at any time.
func TestLimiterBudget_AnyPausesObservationsAndChanges(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		sends := rapid.IntRange(1, 250).Draw(t, "sends")
		// Mostly budgets Heron could grant; sometimes one far above its
		// 500/min, where grants may go in bursts of a tenth of a second.
		budget := rapid.OneOf(rapid.IntRange(1, 1200), rapid.IntRange(1200, 100000))
		type answer struct {
			pause     time.Duration // a 429's Retry-After; 0: none
			observe   bool
			remaining int
			reset     time.Duration
		}
		answers := map[int]answer{}
		for _, i := range rapid.SliceOfNDistinct(rapid.IntRange(0, sends-1), 0, 12, rapid.ID[int]).Draw(t, "answered sends") {
			a := answer{}
			if rapid.Bool().Draw(t, "429") {
				a.pause = time.Duration(rapid.IntRange(1, 180).Draw(t, "retry-after s")) * time.Second
			} else {
				a.observe = true
				a.remaining = rapid.IntRange(0, 500).Draw(t, "remaining")
				a.reset = time.Duration(rapid.IntRange(-5, 120).Draw(t, "reset in s")) * time.Second
			}
			answers[i] = a
		}
		var changes []budgetChange
		for range rapid.IntRange(0, 6).Draw(t, "budget changes") {
			changes = append(changes, budgetChange{
				after: time.Duration(rapid.IntRange(1, 600).Draw(t, "change after s")) * time.Second,
				to:    budget.Draw(t, "new budget"),
			})
		}
		slices.SortStableFunc(changes, func(a, b budgetChange) int { return int(a.after - b.after) })
		budgetRun{
			start:   budget.Draw(t, "budget"),
			workers: rapid.IntRange(1, 60).Draw(t, "senders"),
			sends:   sends,
			changes: changes,
			answer: func(i int, at time.Time, l *Limiter) {
				a, ok := answers[i]
				switch {
				case !ok:
				case a.pause > 0:
					l.PauseFor(a.pause)
				case a.observe:
					h := http.Header{}
					h.Set("X-RateLimit-Limit", "500")
					h.Set("X-RateLimit-Remaining", strconv.Itoa(a.remaining))
					h.Set("X-RateLimit-Reset", strconv.FormatInt(at.Add(a.reset).Unix(), 10))
					l.Observe(h)
				}
			},
		}.run(t)
	})
}
