//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// raftCluster is a Vault cluster of three `vault server` processes on
// 127.0.0.1 sharing integrated storage (Raft): node 1 is initialized, the
// others join it through retry_join, all are unsealed with the one key.
// Every node is a *vault in file mode (its own config, directory, log and
// ports), so the single-server helpers (run, issue, pluginPIDs...) work
// against any of them.
type raftCluster struct {
	t     *testing.T
	nodes []*vault
	// dead marks the nodes the test killed.
	dead map[*vault]bool
	// pluginDirs holds each node's plugin_directory, in node order.
	pluginDirs []string
}

// raftOptions adjusts startRaftClusterAt.
type raftOptions struct {
	// ownPluginDirs gives every node its own, empty plugin_directory (as
	// separate machines have) instead of the suite's shared one, and leaves
	// the plugin unregistered and heron/ unmounted: the caller installs it.
	ownPluginDirs bool
}

// startRaftCluster starts n Raft nodes, inits and unseals them, waits for
// every node to be a voter, and registers and mounts the plugin through the
// active node (the catalog and the mount table replicate through Raft).
// The nodes log at debug, to explain failures.
func startRaftCluster(t *testing.T, n int) *raftCluster {
	t.Helper()
	return startRaftClusterAt(t, n, "debug")
}

// startRaftClusterAt is startRaftCluster with the nodes at logLevel: the
// benchmark runs at info, as a production cluster would, since per-request
// debug lines (the plugin's included) cost CPU on every node.
func startRaftClusterAt(t *testing.T, n int, logLevel string, opts ...raftOptions) *raftCluster {
	t.Helper()
	var opt raftOptions
	if len(opts) > 0 {
		opt = opts[0]
	}
	c := &raftCluster{t: t, dead: map[*vault]bool{}}
	for range n {
		v := newVault(t)
		v.fileMode = true
		v.configPath = filepath.Join(v.dir, "vault.hcl")
		c.nodes = append(c.nodes, v)
	}
	leader := c.nodes[0]
	for i, v := range c.nodes {
		raftDir := filepath.Join(v.dir, "raft")
		if err := os.MkdirAll(raftDir, 0o700); err != nil {
			t.Fatal(err)
		}
		plugins := pluginDir
		if opt.ownPluginDirs {
			plugins = filepath.Join(v.dir, "plugins")
			if err := os.MkdirAll(plugins, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		c.pluginDirs = append(c.pluginDirs, plugins)
		join := ""
		if i > 0 {
			join = fmt.Sprintf(`
  retry_join {
    leader_api_addr = %q
  }`, leader.addr)
		}
		cfg := fmt.Sprintf(`
storage "raft" {
  path    = %q
  node_id = "n%d"
  # Production timings (multiplier 5) would make the failover take ~10s.
  performance_multiplier = 1
%s
}
listener "tcp" {
  address         = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_disable     = true
}
api_addr         = "http://127.0.0.1:%d"
cluster_addr     = "https://127.0.0.1:%d"
plugin_directory = %q
disable_mlock    = true
log_level        = %q
`, raftDir, i+1, join, v.port, v.port+1, v.port, v.port+1, plugins, logLevel)
		if err := os.WriteFile(v.configPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		v.start()
	}
	for _, v := range c.nodes {
		v.waitHealth(0)
	}

	var init struct {
		Keys      []string `json:"unseal_keys_b64"`
		RootToken string   `json:"root_token"`
	}
	leader.runJSON(&init, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json")
	if len(init.Keys) != 1 || init.RootToken == "" {
		t.Fatalf("operator init: unexpected answer %+v", init)
	}
	for _, v := range c.nodes {
		v.unsealKey, v.token = init.Keys[0], init.RootToken
	}
	leader.unseal() // waits for 200: active
	leader.initAPI()
	// Joined nodes are promoted to voters once autopilot deems them stable
	// (10s by default).
	leader.run("operator", "raft", "autopilot", "set-config", "-server-stabilization-time=1s")

	for _, v := range c.nodes[1:] {
		c.unsealJoined(v)
		v.initAPI()
	}
	// Generous: a loaded machine once kept both followers non-voters for
	// the whole of a 60s wait.
	eventually(t, 90*time.Second, fmt.Sprintf("%d Raft voters", n), func() error {
		peers := c.peers(leader)
		voters := 0
		for _, p := range peers {
			if p.Voter {
				voters++
			}
		}
		if voters != n {
			return fmt.Errorf("peers %+v; autopilot state: %s", peers, leader.cliAs("", "operator", "raft", "autopilot", "state", "-format=json").stdout)
		}
		return nil
	})
	if !opt.ownPluginDirs {
		leader.enableHeron()
	}
	return c
}

// unsealJoined unseals a node started with retry_join once it has joined:
// with a Shamir seal, the join completes only when the node is given the
// key, and it is given it only once it has found the leader (its seal
// status then reports it initialized).
func (c *raftCluster) unsealJoined(v *vault) {
	c.t.Helper()
	eventually(c.t, 60*time.Second, "node "+v.addr+" joined", func() error {
		s := c.sealStatus(v)
		if !s.Initialized {
			return fmt.Errorf("not initialized yet: %+v", s)
		}
		return nil
	})
	v.run("operator", "unseal", v.unsealKey)
	eventually(c.t, 60*time.Second, "node "+v.addr+" unsealed standby", func() error {
		if code := c.health(v); code != http.StatusTooManyRequests && code != http.StatusOK {
			return fmt.Errorf("sys/health %d", code)
		}
		return nil
	})
}

type raftSealStatus struct {
	Initialized bool `json:"initialized"`
	Sealed      bool `json:"sealed"`
}

func (c *raftCluster) sealStatus(v *vault) raftSealStatus {
	c.t.Helper()
	var s raftSealStatus
	c.getJSON(v, "/v1/sys/seal-status", &s)
	return s
}

// health is the status of sys/health: 200 active, 429 standby, 503 sealed,
// 501 not initialized; 0 if the node does not answer.
func (c *raftCluster) health(v *vault) int {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(v.addr + "/v1/sys/health")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (c *raftCluster) getJSON(v *vault, path string, out any) {
	c.t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(v.addr + path)
	if err != nil {
		c.t.Fatalf("GET %s%s: %v", v.addr, path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		c.t.Fatalf("GET %s%s: %s: %v", v.addr, path, resp.Status, err)
	}
}

type raftPeer struct {
	NodeID  string `json:"node_id"`
	Address string `json:"address"`
	Leader  bool   `json:"leader"`
	Voter   bool   `json:"voter"`
}

// peers is `vault operator raft list-peers` as v answers it.
func (c *raftCluster) peers(v *vault) []raftPeer {
	c.t.Helper()
	var r struct {
		Data struct {
			Config struct {
				Servers []raftPeer `json:"servers"`
			} `json:"config"`
		} `json:"data"`
	}
	v.runJSON(&r, "operator", "raft", "list-peers", "-format=json")
	return r.Data.Config.Servers
}

type raftLeader struct {
	HAEnabled     bool   `json:"ha_enabled"`
	IsSelf        bool   `json:"is_self"`
	LeaderAddress string `json:"leader_address"`
}

// leaderAs is sys/leader as v answers it (unauthenticated).
func (c *raftCluster) leaderAs(v *vault) (raftLeader, error) {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(v.addr + "/v1/sys/leader")
	if err != nil {
		return raftLeader{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return raftLeader{}, fmt.Errorf("sys/leader: %s", resp.Status)
	}
	var l raftLeader
	return l, json.NewDecoder(resp.Body).Decode(&l)
}

// alive lists the nodes not killed.
func (c *raftCluster) alive() []*vault {
	var out []*vault
	for _, v := range c.nodes {
		if !c.dead[v] {
			out = append(out, v)
		}
	}
	return out
}

// active waits until exactly one live node says it is the leader, every
// live node names it, and it answers sys/health as active; it returns it
// and the live standbys.
func (c *raftCluster) active(timeout time.Duration) (*vault, []*vault) {
	c.t.Helper()
	var act *vault
	var standbys []*vault
	eventually(c.t, timeout, "one active node", func() error {
		act, standbys = nil, nil
		var views []string
		for _, v := range c.alive() {
			l, err := c.leaderAs(v)
			if err != nil {
				return fmt.Errorf("%s: %w", v.addr, err)
			}
			views = append(views, fmt.Sprintf("%s: self=%t leader=%s", v.addr, l.IsSelf, l.LeaderAddress))
			if l.IsSelf {
				if act != nil {
					return fmt.Errorf("two nodes say they lead: %s", strings.Join(views, "; "))
				}
				act = v
			} else {
				standbys = append(standbys, v)
			}
		}
		if act == nil {
			return fmt.Errorf("no leader: %s", strings.Join(views, "; "))
		}
		for _, v := range standbys {
			if l, _ := c.leaderAs(v); l.LeaderAddress != act.addr {
				return fmt.Errorf("standby %s names leader %q, want %s", v.addr, l.LeaderAddress, act.addr)
			}
		}
		if code := c.health(act); code != http.StatusOK {
			return fmt.Errorf("leader %s: sys/health %d", act.addr, code)
		}
		return nil
	})
	return act, standbys
}

// kill SIGKILLs node v (and its plugin processes, which share its process
// group) and waits for it to be gone.
func (c *raftCluster) kill(v *vault) {
	c.t.Helper()
	v.stop(syscall.SIGKILL)
	c.dead[v] = true
}

// name is the node id of v, for messages.
func (c *raftCluster) name(v *vault) string {
	for i, n := range c.nodes {
		if n == v {
			return fmt.Sprintf("n%d (%s)", i+1, v.addr)
		}
	}
	return v.addr
}
