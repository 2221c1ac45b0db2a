//go:build e2e

package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is a child process in its own process group, so that stopping it also
// stops what it spawned (Vault's plugin processes).
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // set before done is closed
	once    sync.Once
}

// startProc starts bin with args, appending stdout and stderr to logPath.
func startProc(t *testing.T, name, logPath string, env []string, bin string, args ...string) *proc {
	t.Helper()
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logFile, "==== %s: %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(syscall.SIGTERM, 10*time.Second) })
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig to the whole process group and waits for the leader, then
// SIGKILLs the group so that no plugin process outlives the test.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	// Once only: after the group is gone its id may be reused by a stranger.
	p.once.Do(func() { p.stopOnce(sig, grace) })
}

func (p *proc) stopOnce(sig syscall.Signal, grace time.Duration) {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, sig)
	select {
	case <-p.done:
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
	// Wait for the rest of the group (plugins) to be gone too, so that a
	// restart never shares the data directory with a dying plugin.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logTail returns the last n lines of the process log.
func (p *proc) logTail(n int) string {
	return fileTail(p.logPath, n)
}

func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

var (
	portsMu sync.Mutex
	// portsTaken holds every port handed out in this process, so that two
	// parallel tests never get overlapping (port, port+1) pairs.
	portsTaken = map[int]bool{}
)

// freePortPair returns a port p such that p and p+1 are free now: Vault's
// cluster listener takes the API port + 1 unless told otherwise (dev mode
// cannot be told).
func freePortPair(t *testing.T) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		l.Close()
		if err != nil {
			continue
		}
		l2.Close()
		if portsTaken[p] || portsTaken[p+1] || portsTaken[p-1] {
			continue
		}
		portsTaken[p], portsTaken[p+1] = true, true
		return p
	}
	t.Fatal("no free port pair found")
	return 0
}

// baseEnv is the environment of every child: the test's own, minus any VAULT_*
// setting of the developer's shell, which could point the CLI at a real Vault.
func baseEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VAULT_") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	// The CLI's token helper and the dev server write ~/.vault-token.
	return append(env, "HOME="+home)
}

// eventually polls f until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	// Quick at first, then every few seconds: a long wait polled ten times
	// a second (a CLI process each time, for some checks) takes the CPU
	// that the short-lease tests running beside it need on 2 cores.
	pause := 100 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not done after %s: %v", what, timeout, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, 3*time.Second)
	}
}
