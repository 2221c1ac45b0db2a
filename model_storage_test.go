package heron

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/vault/sdk/logical"
)

// modelStorage is the storage the model-based test (model_test.go) hands to
// the backend: an in-memory store whose writes (Put, Delete) can be made to
// fail, either before anything is written or after the write committed (the
// storage backend applied it but the caller got an error: a timeout after a
// Raft commit, a lost answer from Consul...).
//
// Reads never fail. The model itself reads through inner, so its
// bookkeeping never consumes an armed fault.
type modelStorage struct {
	inner logical.Storage

	mu    sync.Mutex
	rules []*storageFault
	// injected lists the faults that fired, for the step log.
	injected []string
}

// storageFaultMode says when an armed storage fault strikes.
type storageFaultMode int

const (
	// storageFailBefore refuses the write: nothing is stored.
	storageFailBefore storageFaultMode = iota
	// storageFailAfter applies the write and then reports an error.
	storageFailAfter
)

func (m storageFaultMode) String() string {
	if m == storageFailAfter {
		return "commit-then-fail"
	}
	return "fail-before-write"
}

// storageFault fails the next left writes of op ("put", "delete" or "" for
// either) whose key starts with prefix.
type storageFault struct {
	op     string
	prefix string
	mode   storageFaultMode
	left   int
}

func (f *storageFault) String() string {
	op := f.op
	if op == "" {
		op = "put|delete"
	}
	return fmt.Sprintf("%s %s* x%d %s", op, f.prefix, f.left, f.mode)
}

var _ logical.Storage = (*modelStorage)(nil)

func newModelStorage() *modelStorage {
	return &modelStorage{inner: &logical.InmemStorage{}}
}

// arm adds a fault rule; rules are consumed in the order they were added.
func (s *modelStorage) arm(f storageFault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := f
	s.rules = append(s.rules, &c)
}

// armOnce arms a fault for the next write of op to key alone and returns
// what takes it back when that write never came (a gated storage
// operation's fault, model_concurrent_test.go "Faults inside a round").
func (s *modelStorage) armOnce(op, key string, mode storageFaultMode) (disarm func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &storageFault{op: op, prefix: key, mode: mode, left: 1}
	s.rules = append(s.rules, r)
	return disarmer(&s.mu, &s.rules, r)
}

// disarmer is what takes rule r back out of *rules, under mu, if it is
// still there (an armOnce's disarm).
func disarmer[T comparable](mu *sync.Mutex, rules *[]T, r T) func() {
	return func() {
		mu.Lock()
		defer mu.Unlock()
		if i := slices.Index(*rules, r); i >= 0 {
			*rules = append((*rules)[:i:i], (*rules)[i+1:]...)
		}
	}
}

// clear drops every armed fault.
func (s *modelStorage) clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules = nil
}

// injectedCount is how many faults fired since the last takeInjected.
func (s *modelStorage) injectedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.injected)
}

// takeInjected returns and forgets the faults that fired since the last call.
func (s *modelStorage) takeInjected() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.injected
	s.injected = nil
	return out
}

// take consumes a rule matching op and key, if any.
func (s *modelStorage) take(op, key string) (storageFaultMode, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.rules {
		if (r.op != "" && r.op != op) || !strings.HasPrefix(key, r.prefix) {
			continue
		}
		r.left--
		if r.left <= 0 {
			s.rules = append(s.rules[:i:i], s.rules[i+1:]...)
		}
		s.injected = append(s.injected, fmt.Sprintf("%s %s: %s", op, key, r.mode))
		return r.mode, true
	}
	return 0, false
}

func (s *modelStorage) List(ctx context.Context, prefix string) ([]string, error) {
	return s.inner.List(ctx, prefix)
}

func (s *modelStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	return s.inner.Get(ctx, key)
}

func (s *modelStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	mode, fail := s.take("put", e.Key)
	if !fail {
		return s.inner.Put(ctx, e)
	}
	if mode == storageFailAfter {
		if err := s.inner.Put(ctx, e); err != nil {
			return err
		}
	}
	return fmt.Errorf("injected storage failure (%s) writing %q", mode, e.Key)
}

func (s *modelStorage) Delete(ctx context.Context, key string) error {
	mode, fail := s.take("delete", key)
	if !fail {
		return s.inner.Delete(ctx, key)
	}
	if mode == storageFailAfter {
		if err := s.inner.Delete(ctx, key); err != nil {
			return err
		}
	}
	return fmt.Errorf("injected storage failure (%s) deleting %q", mode, key)
}
