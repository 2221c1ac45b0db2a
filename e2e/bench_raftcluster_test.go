//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heron-vault/vault-plugin-secrets-heron/herontest"
)

// ---------------------------------------------------------------------------
// 6. A 3-node cluster with integrated storage (Raft)

// benchRaftNodes is the cluster's size: the smallest that keeps a quorum
// when a node fails, what a team outgrowing one server runs first.
const benchRaftNodes = 3

type benchRaftLatency struct {
	conc                          int
	creds, kvWrite, raw, roleRead benchStats
	floor                         benchStats // floor/creds/<role>; cpuPlugin is the floor plugin's
}

// floorRatio is issue 22's figure on Raft: creds_p50 / floor_p50.
func (l benchRaftLatency) floorRatio() float64 {
	return float64(l.creds.p50) / float64(l.floor.p50)
}

// ratio is the issue's figure on Raft: creds_p50 / (kv_write_p50 +
// raw_post_p50), a lease-less write of a new secret plus the POST that a
// program holding an admin key would send.
func (l benchRaftLatency) ratio() float64 {
	return float64(l.creds.p50) / float64(l.kvWrite.p50+l.raw.p50)
}

type benchRaft struct {
	startup time.Duration // from the first node's start to an active node with the plugin mounted
	latency []benchRaftLatency
	// Raft log entries per operation (the leader's last index before and
	// after each kind's series at 1 client, over commitOps operations);
	// commitsErr says why they are missing.
	commitsCreds, commitsKV, commitsRole, commitsFloor float64
	commitOps                                          int
	commitsErr                                         string
}

// benchMeasureRaft starts a 3-node Raft cluster on 127.0.0.1 with an
// emulator of its own and measures, through the active node, creds/<role>
// next to a KV v2 write and a roles/<name> read, and a raw POST to the
// emulator, at each of benchConcurrencies. The cluster is torn down with the
// test: what it issued goes with it.
func benchMeasureRaft(t *testing.T, samples int) benchRaft {
	t.Helper()
	var r benchRaft
	e := startEmulator(t)
	t0 := time.Now()
	c := startRaftClusterAt(t, benchRaftNodes, "info")
	act, standbys := c.active(60 * time.Second)
	r.startup = time.Since(t0)
	act.configure("development", e.devKey, e.URL, fmt.Sprintf("rate_limit_per_minute=%d", benchFastBudget))
	act.writeRole("raft", "environment=development", "ttl=1h")
	act.run("secrets", "enable", "-path=kv", "-version=2", "kv")
	eventually(t, time.Minute, "KV v2 accepting writes on the Raft cluster", func() error {
		_, err := act.api.Logical().Write("kv/data/warm", map[string]any{"data": map[string]any{"api_key": herontest.NewKeyToken()}})
		return err
	})
	// The first issuance starts the plugin on the active node.
	if _, err := act.issue("", "raft"); err != nil {
		t.Fatalf("first issuance on the Raft cluster: %v", err)
	}
	plugins := act.pluginPIDs(t)
	if len(plugins) != 1 {
		t.Fatalf("want one plugin process under the active node, found %v", plugins)
	}
	// The floor beside the engine, registered and mounted through the
	// active node like the engine.
	benchMountFloor(t, act, e, "raft")
	if _, err := act.issueFloor("raft"); err != nil {
		t.Fatalf("first floor issuance on the Raft cluster: %v", err)
	}
	pids := []int{act.proc.cmd.Process.Pid}
	for _, v := range standbys {
		pids = append(pids, v.proc.cmd.Process.Pid)
	}
	pids = append(pids, plugins[0], os.Getpid(), benchFloorPID(t, act))
	h := newBenchHTTP(act, e)

	var kvSeq, rawSeq atomic.Int64
	for _, conc := range benchConcurrencies {
		l := benchRaftLatency{conc: conc}
		kinds := []struct {
			name    string
			dst     *benchStats
			op      func() error
			commits *float64 // counted at 1 client; nil: nothing to count
		}{
			{"creds", &l.creds, func() error { _, err := act.issue("", "raft"); return err }, &r.commitsCreds},
			{"floor", &l.floor, func() error { _, err := act.issueFloor("raft"); return err }, &r.commitsFloor},
			// A new secret each time, as issuing is a new key each time (and
			// so that KV's max_versions never adds a delete to the write).
			{"KV write", &l.kvWrite, func() error { return h.kvWrite(fmt.Sprintf("/v1/kv/data/bench-%d", kvSeq.Add(1))) }, &r.commitsKV},
			{"role read", &l.roleRead, func() error { return h.vaultGet("/v1/heron/roles/raft") }, &r.commitsRole},
			{"raw POST", &l.raw, func() error {
				_, err := h.rawCreate(fmt.Sprintf("bench-raft-raw-%d", rawSeq.Add(1)))
				return err
			}, nil},
		}
		// Every kind warms up first, so that the Raft index taken between
		// two series counts only the series.
		for _, k := range kinds {
			if _, _, err := benchRun(min(samples, 4*conc), conc, k.op); err != nil {
				t.Fatalf("Raft: %s warm-up at %d clients: %v", k.name, conc, err)
			}
		}
		count := conc == 1
		var index uint64
		if count {
			var err error
			if index, err = benchRaftIndex(act); err != nil {
				r.commitsErr, count = err.Error(), false
			}
		}
		for _, k := range kinds {
			cpu0 := benchCPU(t, pids)
			durs, wall, err := benchRun(samples, conc, k.op)
			if err != nil {
				t.Fatalf("Raft: %s at %d clients: %v", k.name, conc, err)
			}
			cpu1 := benchCPU(t, pids)
			st := benchSummarize(durs, wall)
			per := func(i int) time.Duration { return (cpu1[i] - cpu0[i]) / time.Duration(samples) }
			st.cpuVault = per(0)
			for i := range standbys {
				st.cpuStandby += per(1 + i)
			}
			st.cpuPlugin, st.cpuSelf = per(len(pids)-3), per(len(pids)-2)
			if k.dst == &l.floor {
				st.cpuPlugin = per(len(pids) - 1)
			}
			*k.dst = st
			if count && k.commits != nil {
				next, err := benchRaftIndex(act)
				if err != nil {
					r.commitsErr, count = err.Error(), false
					continue
				}
				*k.commits = float64(next-index) / float64(samples)
				index = next
			}
		}
		if conc == 1 && r.commitsErr == "" {
			r.commitOps = samples
		}
		r.latency = append(r.latency, l)
	}
	return r
}

// benchRaftIndex returns the leader's last Raft log index, from autopilot's
// state (sys/storage/raft/autopilot/state), which autopilot refreshes every
// 2 s (its default update interval) rather than on each read. A read right
// after a series could predate its last commits, so it waits for the state
// to change twice (the followers' last_contact changes at every refresh):
// the second change is a refresh that began after the call.
func benchRaftIndex(v *vault) (uint64, error) {
	prev, _, err := benchRaftState(v)
	if err != nil {
		return 0, err
	}
	changes := 0
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		doc, index, err := benchRaftState(v)
		if err != nil {
			return 0, err
		}
		if doc != prev {
			prev = doc
			if changes++; changes == 2 {
				return index, nil
			}
		}
	}
	return 0, fmt.Errorf("autopilot's state changed %d times in 15 s, want 2 (a refresh after the series)", changes)
}

// benchRaftState reads autopilot's state as v answers it: the raw data
// document and the leader's last log index.
func benchRaftState(v *vault) (string, uint64, error) {
	var st struct {
		Data struct {
			Leader  string `json:"leader"`
			Servers map[string]struct {
				LastIndex uint64 `json:"last_index"`
			} `json:"servers"`
		} `json:"data"`
	}
	req, err := http.NewRequest(http.MethodGet, v.addr+"/v1/sys/storage/raft/autopilot/state", nil)
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("X-Vault-Token", v.token)
	resp, err := v.http.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("autopilot state: %d %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return "", 0, fmt.Errorf("autopilot state: %w", err)
	}
	leader, ok := st.Data.Servers[st.Data.Leader]
	if !ok {
		return "", 0, fmt.Errorf("autopilot state names leader %q among servers %v", st.Data.Leader, slices.Sorted(maps.Keys(st.Data.Servers)))
	}
	// The response's request_id differs on every read; the data only when
	// autopilot refreshed it.
	var doc struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", 0, err
	}
	return string(doc.Data), leader.LastIndex, nil
}
