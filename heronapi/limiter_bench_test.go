package heronapi

import (
	"context"
	"testing"
	"time"
)

// BenchmarkLimiterAtMaxBudget is one grant after another at the engine's
// highest budget, 100,000 a minute (a grant every 600 us), which the engine
// benchmark configures to keep the budget out of its figures. Go's timers
// sleep in whole milliseconds when the process has nothing else to do
// (netpoll's epoll timeout): when each grant waited on a timer, a grant took
// about 1.2 ms on the 2-core machine of BENCHMARKS.md, 850 grants/s against
// the budget's 1,667, and 16 clients issuing at once queued in the limiter.
// Grants now go in bursts of a tenth of a second's worth at such budgets.
// ns/op is the spacing achieved; grants/s next to budget/s says how much of
// the budget can be spent.
func BenchmarkLimiterAtMaxBudget(b *testing.B) {
	const perMinute = 100000
	l := NewLimiter(perMinute)
	ctx := context.Background()
	start := time.Now()
	for b.Loop() {
		if err := l.Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "grants/s")
	b.ReportMetric(perMinute/60.0, "budget/s")
}
