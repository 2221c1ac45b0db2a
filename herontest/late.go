package herontest

import (
	"sort"
	"time"
)

// lateAction is the processing of a FailNextLate request, scheduled to run
// after its answer was sent.
type lateAction struct {
	timer *time.Timer
	due   time.Time // wall clock, for FlushLate's order
	seq   uint64
	run   func()
}

// scheduleLate runs fn after delay unless Close begins first; when the server is
// already closing, fn is dropped (nothing runs after Close).
func (s *Server) scheduleLate(delay time.Duration, fn func()) {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closing {
		s.logf("late action dropped: emulator closing")
		return
	}
	s.lateSeq++
	a := &lateAction{due: time.Now().Add(delay), seq: s.lateSeq, run: fn}
	s.late[a] = struct{}{}
	s.lateLeft++
	// fireLate takes lifeMu, so it cannot see a before a.timer is set.
	a.timer = time.AfterFunc(delay, func() { s.fireLate(a) })
}

func (s *Server) fireLate(a *lateAction) {
	s.lifeMu.Lock()
	if _, ok := s.late[a]; !ok {
		// Close dropped it, or FlushLate ran it.
		s.lifeMu.Unlock()
		return
	}
	delete(s.late, a)
	// Under lifeMu and before Close can set closing: Add happens before Wait.
	s.inflight.Add(1)
	s.lifeMu.Unlock()
	s.runLate(a)
}

func (s *Server) runLate(a *lateAction) {
	defer s.inflight.Done()
	defer func() {
		s.lifeMu.Lock()
		s.lateLeft--
		s.lifeMu.Unlock()
	}()
	a.run()
}

// PendingLate returns how many late actions (FailNextLate) are scheduled or
// running: 0 means every late processing has either happened or been dropped
// by Close.
func (s *Server) PendingLate() int {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	return s.lateLeft
}

// FlushLate runs every scheduled late action now, in the order they were due,
// in the calling goroutine, and returns how many it ran; a test that wants
// "Heron finished its work" at a precise point calls it instead of sleeping.
// Late actions already running are not waited for (see PendingLate).
func (s *Server) FlushLate() int {
	s.lifeMu.Lock()
	as := make([]*lateAction, 0, len(s.late))
	for a := range s.late {
		a.timer.Stop() // if it fired already, fireLate finds a gone and returns
		delete(s.late, a)
		as = append(as, a)
	}
	s.inflight.Add(len(as))
	s.lifeMu.Unlock()
	sort.Slice(as, func(i, j int) bool {
		if !as[i].due.Equal(as[j].due) {
			return as[i].due.Before(as[j].due)
		}
		return as[i].seq < as[j].seq
	})
	for _, a := range as {
		s.runLate(a)
	}
	return len(as)
}
