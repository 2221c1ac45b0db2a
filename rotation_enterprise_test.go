package heron

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/helper/automatedrotationutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/rotation"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Vault's rotation manager (Vault Enterprise 1.19+) and its absence (Vault
// Community), seen through a fake SystemView.

// entView is a SystemView whose rotation manager records every call.
// registerErr, when set, is its answer to a registration (and
// deregisterErr to a deregistration); withResponseMissing makes it a server
// that predates RegisterRotationJobWithResponse (gRPC Unimplemented).
type entView struct {
	logical.StaticSystemView
	mu                  sync.Mutex
	next                time.Time
	registerErr         error
	deregisterErr       error
	withResponseMissing bool
	jobs                map[string]rotation.RotationJobConfigureRequest
	registrations       []rotation.RotationJobConfigureRequest
	deregistrations     []rotation.RotationJobDeregisterRequest
}

func (v *entView) RegisterRotationJobWithResponse(_ context.Context, req *rotation.RotationJobConfigureRequest) (*rotation.RotationInfo, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.withResponseMissing {
		return nil, status.Error(codes.Unimplemented, "unknown method RegisterRotationJobWithResponse for service pb.SystemView")
	}
	if v.registerErr != nil {
		return nil, v.registerErr
	}
	v.jobs[req.ReqPath] = *req
	v.registrations = append(v.registrations, *req)
	return &rotation.RotationInfo{RotationID: "rot-" + req.ReqPath, NextVaultRotation: v.next}, nil
}

func (v *entView) RegisterRotationJob(_ context.Context, req *rotation.RotationJobConfigureRequest) (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.registerErr != nil {
		return "", v.registerErr
	}
	v.jobs[req.ReqPath] = *req
	v.registrations = append(v.registrations, *req)
	return "rot-" + req.ReqPath, nil
}

func (v *entView) DeregisterRotationJob(_ context.Context, req *rotation.RotationJobDeregisterRequest) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.deregisterErr != nil {
		return v.deregisterErr
	}
	delete(v.jobs, req.ReqPath)
	v.deregistrations = append(v.deregistrations, *req)
	return nil
}

func (v *entView) job(path string) (rotation.RotationJobConfigureRequest, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	j, ok := v.jobs[path]
	return j, ok
}

func (v *entView) counts() (reg, dereg int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.registrations), len(v.deregistrations)
}

// entLogBuf is a log sink safe for the backend's goroutines.
type entLogBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *entLogBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *entLogBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// onEnterprise replaces e's backend by one (same storage and emulator) on a
// server whose SystemView is v, mounted at heron/, logging at info level
// into the returned buffer.
func onEnterprise(t *testing.T, e *testEnv, v *entView) *entLogBuf {
	t.Helper()
	if v.jobs == nil {
		v.jobs = map[string]rotation.RotationJobConfigureRequest{}
	}
	v.DefaultLeaseTTLVal, v.MaxLeaseTTLVal = testDefaultLeaseTTL, testMaxLeaseTTL
	logs := &entLogBuf{}
	conf := logical.TestBackendConfig()
	conf.StorageView = e.s
	conf.System = v
	conf.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs})
	start := func() *heronBackend {
		b := backend()
		b.retryWaitMin = 5 * time.Millisecond
		require.NoError(t, b.Setup(context.Background(), conf))
		return b
	}
	e.b, e.start = start(), start
	return logs
}

// entDo is e.do with the mount point Vault sets.
func entDo(e *testEnv, op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
	e.t.Helper()
	return e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: op, Path: path, Data: data, Storage: e.s, MountPoint: "heron/", DisplayName: "token-tester",
	})
}

func entOK(e *testEnv, op logical.Operation, path string, data map[string]interface{}) *logical.Response {
	e.t.Helper()
	resp, err := entDo(e, op, path, data)
	require.NoError(e.t, err, "%s %s", op, path)
	if resp != nil {
		require.False(e.t, resp.IsError(), "%s %s: %v", op, path, resp.Error())
	}
	return resp
}

// rotationCall is Vault's rotation manager calling the backend for path.
func rotationCall(e *testEnv, path string, next time.Time) error {
	e.t.Helper()
	_, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.RotationOperation, Path: path, Storage: e.s, MountPoint: "heron/",
		RotationInfo: &rotation.RotationInfo{RotationID: "rot-" + path, NextVaultRotation: next},
	})
	return err
}

func warningsOf(resp *logical.Response) string {
	if resp == nil {
		return ""
	}
	return strings.Join(resp.Warnings, "\n")
}

// A config write with rotation_schedule and rotation_window registers the
// job with Vault's rotation manager (its name, mount, path and schedule), and
// the read shows the time Vault said it rotates next.
func TestEnterprise_ConfigWriteRegistersTheJobAndReadShowsVaultsNextRotation(t *testing.T) {
	e := getTestBackend(t)
	v := &entView{next: time.Date(2030, 1, 12, 3, 0, 0, 0, time.UTC)}
	onEnterprise(t, e, v)
	e.configure("development")
	reg, _ := v.counts()
	require.Zero(t, reg, "no schedule, no job")

	resp := entOK(e, logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_schedule": "0 3 * * SAT", "rotation_window": "1h"})
	require.NotContains(t, warningsOf(resp), "the engine, not Vault, schedules")
	job, ok := v.job("config/development")
	require.True(t, ok, "registered with Vault's rotation manager")
	require.Equal(t, rotation.RotationJobConfigureRequest{
		Name: "heron-admin-key-development", MountPoint: "heron/", ReqPath: "config/development",
		RotationSchedule: "0 3 * * SAT", RotationWindow: time.Hour,
	}, job)

	read := entOK(e, logical.ReadOperation, "config/development", nil).Data
	require.Equal(t, true, read["rotation_managed_by_vault"])
	require.Equal(t, "2030-01-12T03:00:00Z", read["next_vault_rotation"])
	require.Equal(t, "2030-01-12T03:00:00Z", read["next_rotation"])

	// A write of other settings leaves Vault's job (and its clock) alone.
	reg, _ = v.counts()
	entOK(e, logical.UpdateOperation, "config/development", map[string]interface{}{"max_retries": 2})
	after, _ := v.counts()
	require.Equal(t, reg, after, "a write that does not touch the schedule does not register again")

	// Switching to a period registers the period.
	entOK(e, logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_period": "24h"})
	job, _ = v.job("config/development")
	require.Equal(t, 24*time.Hour, job.RotationPeriod)
	require.Equal(t, "", job.RotationSchedule)
	require.Zero(t, job.RotationWindow)
}

// disable_automated_rotation and delete take the job out of Vault's rotation
// manager; enabling again puts it back.
func TestEnterprise_DisableAndDeleteDeregister(t *testing.T) {
	e := getTestBackend(t)
	v := &entView{next: time.Date(2030, 1, 12, 3, 0, 0, 0, time.UTC)}
	onEnterprise(t, e, v)
	e.configure("development")

	entOK(e, logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_period": "24h"})
	entOK(e, logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_schedule": "0 4 * * *", "rotation_window": "30m"})
	job, ok := v.job("static-roles/app")
	require.True(t, ok, "a static role registers too")
	require.Equal(t, rotation.RotationJobConfigureRequest{
		Name: "heron-static-role-app", MountPoint: "heron/", ReqPath: "static-roles/app",
		RotationSchedule: "0 4 * * *", RotationWindow: 30 * time.Minute,
	}, job)
	read := entOK(e, logical.ReadOperation, "static-roles/app", nil).Data
	require.Equal(t, true, read["rotation_managed_by_vault"])
	require.Equal(t, "2030-01-12T03:00:00Z", read["next_vault_rotation"])

	for _, path := range []string{"config/development", "static-roles/app"} {
		entOK(e, logical.UpdateOperation, path, map[string]interface{}{"disable_automated_rotation": true})
		_, ok := v.job(path)
		require.False(t, ok, "%s: disabled, deregistered", path)
		read := entOK(e, logical.ReadOperation, path, nil).Data
		require.Equal(t, false, read["rotation_managed_by_vault"], path)
		require.Nil(t, read["next_vault_rotation"], path)

		entOK(e, logical.UpdateOperation, path, map[string]interface{}{"disable_automated_rotation": false})
		_, ok = v.job(path)
		require.True(t, ok, "%s: enabled again, registered again", path)
	}

	entOK(e, logical.DeleteOperation, "static-roles/app", nil)
	_, ok = v.job("static-roles/app")
	require.False(t, ok, "static role deleted, job deregistered")
	entOK(e, logical.DeleteOperation, "config/development", nil)
	_, ok = v.job("config/development")
	require.False(t, ok, "config deleted, job deregistered")
}

// When Vault's rotation manager runs a schedule, the engine's own periodic
// pass does not rotate it as well: the key is rotated once, by Vault's call
// (RotateCredential), with trigger "scheduled", and the read then shows the
// next time Vault gave in that call.
func TestEnterprise_PassLeavesAVaultManagedScheduleToVaultsCall(t *testing.T) {
	e := getTestBackend(t)
	day := time.Date(2030, 1, 7, 0, 0, 0, 0, time.UTC)
	e.atTime(day)
	v := &entView{next: day.Add(time.Hour)}
	logs := onEnterprise(t, e, v)
	e.atTime(day)
	e.configure("development")
	entOK(e, logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_period": "1h"})
	entOK(e, logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_schedule": "0 * * * *", "rotation_window": "10m"})
	first := staticCreds(e, "app")["key_id"]

	// Past both schedules' times: the pass leaves them to Vault.
	e.atTime(day.Add(time.Hour + 5*time.Minute))
	require.NoError(t, e.b.periodicFunc(context.Background(), &logical.Request{Storage: e.s}))
	require.True(t, e.authenticates(e.adminKey["development"]), "the pass does not rotate an admin key Vault schedules")
	require.Equal(t, first, staticCreds(e, "app")["key_id"], "the pass does not rotate a static role Vault schedules")

	// Vault's calls rotate, once each.
	before := len(logs.String())
	next := day.Add(2 * time.Hour)
	require.NoError(t, rotationCall(e, "config/development", next))
	require.False(t, e.authenticates(e.adminKey["development"]), "rotated by the rotation manager's call")
	require.NoError(t, rotationCall(e, "static-roles/app", next))
	second := staticCreds(e, "app")["key_id"]
	require.NotEqual(t, first, second, "rotated by the rotation manager's call")
	calls := logs.String()[before:]
	require.Contains(t, calls, "event=heron/admin-rotate")
	require.Contains(t, calls, "event=heron/static-rotate")
	require.NotContains(t, calls, "on user request", "the rotation manager's rotations are scheduled ones")
	require.Equal(t, 2, strings.Count(calls, "trigger=scheduled"))
	for _, path := range []string{"config/development", "static-roles/app"} {
		read := entOK(e, logical.ReadOperation, path, nil).Data
		require.Equal(t, "2030-01-07T02:00:00Z", read["next_vault_rotation"], path)
	}
	require.Equal(t, int64(55*60), staticCreds(e, "app")["ttl"], "static-creds' ttl counts to Vault's next rotation")

	// Another pass, even later: still nothing of its own.
	e.atTime(day.Add(5 * time.Hour))
	cfg, err := getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	admin := cfg.AdminAPIKey
	require.NoError(t, e.b.periodicFunc(context.Background(), &logical.Request{Storage: e.s}))
	cfg, err = getConfig(context.Background(), e.s, "development")
	require.NoError(t, err)
	require.Equal(t, admin, cfg.AdminAPIKey, "rotated once: the pass does not follow Vault's rotation with its own")
	require.Equal(t, second, staticCreds(e, "app")["key_id"])
}

// A call of the rotation manager for a target deleted or disabled since it
// was scheduled rotates nothing and is no error (Vault would retry it).
func TestEnterprise_RotateCredentialSkipsDeletedAndDisabledTargets(t *testing.T) {
	e := getTestBackend(t)
	v := &entView{}
	onEnterprise(t, e, v)
	e.configure("development")
	entOK(e, logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_period": "1h"})

	// A deregistration the rotation manager refuses fails the write, as a
	// registration does: the job and the config stay as they were.
	v.deregisterErr = errors.New("rotation manager unavailable")
	resp, err := entDo(e, logical.UpdateOperation, "config/development", map[string]interface{}{"disable_automated_rotation": true})
	require.NoError(t, err)
	require.True(t, resp.IsError())
	require.Contains(t, resp.Error().Error(), "error deregistering rotation job")
	require.Equal(t, false, entOK(e, logical.ReadOperation, "config/development", nil).Data["disable_automated_rotation"])
	v.deregisterErr = nil

	// Disabled after Vault scheduled its call: the call comes anyway.
	entOK(e, logical.UpdateOperation, "config/development", map[string]interface{}{"disable_automated_rotation": true})
	require.NoError(t, rotationCall(e, "static-roles/gone", time.Time{}))
	require.NoError(t, rotationCall(e, "config/production", time.Time{}))
	require.NoError(t, rotationCall(e, "config/development", time.Time{}))
	require.True(t, e.authenticates(e.adminKey["development"]), "disabled: not rotated")
}

// As on HashiCorp's engines, a rotation manager that refuses the job fails
// the write (400), and nothing is stored or created.
func TestEnterprise_RegistrationRefusedFailsTheWrite(t *testing.T) {
	e := getTestBackend(t)
	v := &entView{}
	onEnterprise(t, e, v)
	e.configure("development")
	v.registerErr = errors.New("rotation manager is sealed")

	resp, err := entDo(e, logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_schedule": "0 3 * * *"})
	require.NoError(t, err)
	require.True(t, resp.IsError())
	require.Contains(t, resp.Error().Error(), "error registering rotation job")
	require.Contains(t, resp.Error().Error(), "rotation manager is sealed")
	read := entOK(e, logical.ReadOperation, "config/development", nil).Data
	require.Equal(t, "", read["rotation_schedule"], "nothing stored")

	// A write that also sets the key (the path that verifies it) fails the same.
	resp, err = entDo(e, logical.UpdateOperation, "config/development", map[string]interface{}{"admin_api_key": e.adminKey["development"], "rotation_period": "24h"})
	require.NoError(t, err)
	require.True(t, resp.IsError())
	require.Contains(t, resp.Error().Error(), "error registering rotation job")
	read = entOK(e, logical.ReadOperation, "config/development", nil).Data
	require.Equal(t, int64(0), read["rotation_period"], "nothing stored")

	before := len(e.srv.Keys())
	resp, err = entDo(e, logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development"})
	require.NoError(t, err)
	require.True(t, resp.IsError())
	require.Contains(t, resp.Error().Error(), "error registering rotation job")
	require.Nil(t, entOK(e, logical.ReadOperation, "static-roles/app", nil), "no role stored")
	require.Equal(t, before, len(e.srv.Keys()), "no key created")

	// An existing static role keeps its settings.
	v.registerErr = nil
	entOK(e, logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_period": "48h"})
	v.registerErr = fmt.Errorf("rotation manager is sealed")
	resp, err = entDo(e, logical.UpdateOperation, "static-roles/app", map[string]interface{}{"rotation_period": "24h"})
	require.NoError(t, err)
	require.True(t, resp.IsError())
	require.Equal(t, int64(48*3600), entOK(e, logical.ReadOperation, "static-roles/app", nil).Data["rotation_period"])
	v.registerErr = nil
	entOK(e, logical.DeleteOperation, "static-roles/app", nil)
}

// On Vault Community the registration answers "unsupported" (in-process as
// automatedrotationutil.ErrRotationManagerUnsupported, across the plugin's
// gRPC boundary as its text): the write succeeds with the warning that the
// engine schedules the rotation, and the engine's own pass rotates at its
// time.
func TestCommunity_UnsupportedKeepsTheEnginesSchedulerAndWarns(t *testing.T) {
	for name, unsupported := range map[string]error{
		"in process": fmt.Errorf("error registering rotation job: %w", automatedrotationutil.ErrRotationManagerUnsupported),
		"over gRPC":  status.Error(codes.Internal, "error registering rotation job: "+automatedrotationutil.ErrRotationManagerUnsupported.Error()),
	} {
		t.Run(name, func(t *testing.T) {
			e := getTestBackend(t)
			day := time.Date(2030, 1, 7, 0, 0, 0, 0, time.UTC)
			v := &entView{registerErr: unsupported}
			onEnterprise(t, e, v)
			e.atTime(day)
			e.configure("development")
			resp := entOK(e, logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_schedule": "0 3 * * *", "rotation_window": "1h"})
			require.Contains(t, warningsOf(resp), "the engine, not Vault, schedules")
			resp = entOK(e, logical.CreateOperation, "static-roles/app", map[string]interface{}{"environment": "development", "rotation_schedule": "0 3 * * *", "rotation_window": "1h"})
			require.Contains(t, warningsOf(resp), "the engine, not Vault, schedules")
			first := staticCreds(e, "app")["key_id"]
			read := entOK(e, logical.ReadOperation, "config/development", nil).Data
			require.Equal(t, false, read["rotation_managed_by_vault"])
			require.Equal(t, "2030-01-07T03:00:00Z", read["next_vault_rotation"], "the engine's own next time")

			e.atTime(day.Add(3*time.Hour + 10*time.Minute))
			require.NoError(t, e.b.periodicFunc(context.Background(), &logical.Request{Storage: e.s}))
			require.False(t, e.authenticates(e.adminKey["development"]), "the engine's pass rotated the admin key")
			require.NotEqual(t, first, staticCreds(e, "app")["key_id"], "the engine's pass rotated the static role")
			entOK(e, logical.DeleteOperation, "static-roles/app", nil)
		})
	}
}

// A Vault Enterprise that predates RegisterRotationJobWithResponse is asked
// with RegisterRotationJob: Vault runs the schedule, without a next time.
func TestEnterprise_OlderServerWithoutWithResponseStillRegisters(t *testing.T) {
	e := getTestBackend(t)
	v := &entView{withResponseMissing: true}
	onEnterprise(t, e, v)
	e.configure("development")
	resp := entOK(e, logical.UpdateOperation, "config/development", map[string]interface{}{"rotation_period": "24h"})
	require.NotContains(t, warningsOf(resp), "the engine, not Vault, schedules")
	_, ok := v.job("config/development")
	require.True(t, ok)
	read := entOK(e, logical.ReadOperation, "config/development", nil).Data
	require.Equal(t, true, read["rotation_managed_by_vault"])
	require.Nil(t, read["next_vault_rotation"])
}
