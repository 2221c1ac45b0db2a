package heron

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// One record of every key change, read three ways: a Vault event (framework
// SendEvent: subscribable on Vault Enterprise), the key's own record in
// storage (its timestamps, and a tombstone once deleted, readable at keys/),
// and one structured log line at info level with event=<name>.

const (
	eventKeyIssue         = "heron/key-issue"
	eventKeyRenew         = "heron/key-renew"
	eventKeyExpire        = "heron/key-expire"
	eventKeyRevoke        = "heron/key-revoke"
	eventKeyDelete        = "heron/key-delete"
	eventKeyMissing       = "heron/key-missing"
	eventAdminRotate      = "heron/admin-rotate"
	eventAdminRotateFail  = "heron/admin-rotate-fail"
	eventStaticRotate     = "heron/static-rotate"
	eventStaticRotateFail = "heron/static-rotate-fail"
	eventStaticDeactivate = "heron/static-deactivate"

	// eventSendTimeout bounds a send that runs beside the operation.
	eventSendTimeout = 5 * time.Second
)

// Tombstone reasons: why a key's record says deleted.
const (
	reasonRevoked       = "revoked"
	reasonRetention     = "retention"
	reasonMissing       = "missing"
	reasonRollback      = "rollback"
	reasonStaticRetired = "static-retired"
	reasonConfigDeleted = "config-deleted"
	// reasonRetiredCap: a rotated-out admin key deleted before its
	// old_key_retention because the config keeps at most
	// maxRetiredAdminKeys of them.
	reasonRetiredCap = "retired-cap"
)

// keyChange is the metadata of one change: ids and names, never a token.
type keyChange struct {
	KeyID, KeyName, TokenPrefix, Environment, Role string
	// DataPath is the engine path the change belongs to (creds/<role>,
	// static-creds/<role>, config/<env>); Vault prefixes the mount.
	DataPath string
}

// changeOf is the change metadata of a tracked key.
func changeOf(k *trackedKey) keyChange {
	path := "creds/" + k.Role
	switch k.Kind {
	case keyKindStatic:
		path = "static-creds/" + k.Role
	case keyKindAdmin:
		path = configStoragePrefix + k.Environment
	}
	return keyChange{KeyID: k.KeyID, KeyName: k.KeyName, TokenPrefix: k.TokenPrefix, Environment: k.Environment, Role: k.Role, DataPath: path}
}

// recordChange sends the Vault event and logs the line for one change. The
// record's own fields are the caller's write. Sending never fails or slows
// the operation: it runs beside it, in order (eventQueue), bounded, and a
// server without an event bus (or without subscribers) costs nothing but a
// debug line.
func (b *heronBackend) recordChange(name string, c keyChange, extra ...interface{}) {
	pairs := []string{
		"key_id", c.KeyID,
		"key_name", c.KeyName,
		"token_prefix", c.TokenPrefix,
		"environment", c.Environment,
		logical.EventMetadataDataPath, c.DataPath,
		logical.EventMetadataModified, "true",
	}
	if c.Role != "" {
		pairs = append(pairs, "role", c.Role)
	}
	args := []interface{}{"event", name}
	for i := 0; i+1 < len(pairs); i += 2 {
		args = append(args, pairs[i], pairs[i+1])
	}
	b.Logger().Info("key change", append(args, extra...)...)
	if name == eventKeyIssue || name == eventStaticRotate || name == eventAdminRotate {
		// Readers of a cached list of Heron's keys must not miss it.
		b.noteCreated(c)
	}

	b.events.send(b, name, pairs)
}

// maxQueuedEvents bounds the events waiting to be sent: a Vault that stops
// taking them must not make the plugin hold every change since.
const maxQueuedEvents = 10000

// eventQueue sends a mount's events one at a time, in the order of the
// changes, beside the operations that made them: a key's issue never reaches
// a subscriber after its revocation. A goroutine runs only while events wait.
type eventQueue struct {
	mu      sync.Mutex
	pending []queuedEvent
	running bool
	dropped int
}

type queuedEvent struct {
	name  string
	pairs []string
}

func (q *eventQueue) send(b *heronBackend, name string, pairs []string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) >= maxQueuedEvents {
		// The log line above carries the change all the same.
		q.dropped++
		if q.dropped == 1 || q.dropped%1000 == 0 {
			b.Logger().Warn("events not sent: Vault is not taking them; the log lines carry the changes", "event", name, "dropped", q.dropped)
		}
		return
	}
	q.pending = append(q.pending, queuedEvent{name, pairs})
	b.eventSends.Add(1)
	if !q.running {
		q.running = true
		go q.drain(b)
	}
}

func (q *eventQueue) drain(b *heronBackend) {
	for {
		q.mu.Lock()
		if len(q.pending) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		ev := q.pending[0]
		q.pending[0] = queuedEvent{}
		q.pending = q.pending[1:]
		q.mu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), eventSendTimeout)
		if err := logical.SendEvent(ctx, b, ev.name, ev.pairs...); err != nil {
			b.Logger().Debug("event not sent", "event", ev.name, "error", err)
		}
		cancel()
		b.eventSends.Done()
	}
}
