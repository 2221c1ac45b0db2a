package herontest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// controlPrefix is deliberately outside /api/ so that nothing could mistake it
// for a Heron endpoint.
const controlPrefix = "/_emulator/"

// StatCount is the number of requests for one method, route and environment.
type StatCount struct {
	Method string `json:"method"`
	// Route is the endpoint pattern, or the raw path for unknown paths.
	Route       string         `json:"route"`
	Environment string         `json:"environment"`
	Count       int            `json:"count"`
	ByStatus    map[string]int `json:"by_status"`
}

// Stats summarises the recorded requests.
type Stats struct {
	Env           string      `json:"env"`
	Window        string      `json:"window"`
	Total         int         `json:"total"`
	MaxInWindow   int         `json:"max_in_window"`
	RateLimit     int         `json:"rate_limit"`      // -1 when unlimited
	UserRateLimit int         `json:"user_rate_limit"` // -1 when off
	Counts        []StatCount `json:"counts"`
}

// Stats counts recorded requests of env ("" = all) by method, route, environment
// and status, and reports MaxInWindow(env, window).
func (s *Server) Stats(env string, window time.Duration) Stats {
	reqs := s.Requests()
	type k struct{ method, route, env string }
	counts := map[k]*StatCount{}
	st := Stats{Env: env, Window: window.String(), RateLimit: s.RateLimit(), UserRateLimit: s.UserRateLimit(), Counts: []StatCount{}}
	for _, r := range reqs {
		if env != "" && r.Environment != env {
			continue
		}
		st.Total++
		route := r.Route
		if route == "" {
			route = r.Path
		}
		key := k{r.Method, route, r.Environment}
		c := counts[key]
		if c == nil {
			c = &StatCount{Method: r.Method, Route: route, Environment: r.Environment, ByStatus: map[string]int{}}
			counts[key] = c
		}
		c.Count++
		status := fmt.Sprint(r.Status)
		if r.Dropped {
			status = "dropped"
		}
		c.ByStatus[status]++
	}
	for _, c := range counts {
		st.Counts = append(st.Counts, *c)
	}
	sort.Slice(st.Counts, func(i, j int) bool {
		a, b := st.Counts[i], st.Counts[j]
		if a.Environment != b.Environment {
			return a.Environment < b.Environment
		}
		if a.Route != b.Route {
			return a.Route < b.Route
		}
		return a.Method < b.Method
	})
	st.MaxInWindow = s.MaxInWindow(env, window)
	return st
}

// FaultsJSON is the /_emulator/faults wire form of Faults (durations as Go strings).
type FaultsJSON struct {
	Latency              string  `json:"latency"`
	ErrorRate            float64 `json:"error_rate"`
	DropAfterPOSTRate    float64 `json:"drop_after_post_rate"`
	ProcessThenErrorRate float64 `json:"process_then_error_rate"`
	Seed                 int64   `json:"seed"`
}

func faultsToJSON(f Faults) FaultsJSON {
	return FaultsJSON{
		Latency: f.Latency.String(), ErrorRate: f.ErrorRate, DropAfterPOSTRate: f.DropAfterPOSTRate,
		ProcessThenErrorRate: f.ProcessThenErrorRate, Seed: f.Seed,
	}
}

// ControlHandler serves the emulator's own, non-Heron test controls. Paths are
// relative to the server root and start with /_emulator/:
//
//	GET  /_emulator/keys[?env=]                 every KeyRecord, tokens included
//	GET  /_emulator/requests                    every RequestRecord
//	GET  /_emulator/stats?env=&window=60s       Stats
//	GET  /_emulator/faults                      current random faults
//	POST /_emulator/faults                      {"latency":"250ms","error_rate":0.1,"drop_after_post_rate":0,"process_then_error_rate":0,"seed":1}
//	POST /_emulator/fail-next                   {"method":"POST","path_prefix":"/api/credentials/keys","n":1,"mode":"process-then-drop"}
//	                                            mode: any ParseFaultMode name, or "late-504" (any 5xx) / "late-drop"
//	                                            with "delay":"2s": FailNextLate
//	POST /_emulator/delay-next                  {"method":"POST","path_prefix":"/api/credentials/keys","n":1,"delay":"3s"}
//	GET  /_emulator/late                        {"pending":N}: PendingLate
//	POST /_emulator/flush-late                  {"processed":N,"pending":M}: FlushLate
//	POST /_emulator/force429                    {"env":"development","duration":"10s","retry_after":"2s"}
//	GET  /_emulator/rate-limit                  {"per_minute":N,"per_user_per_minute":M}
//	POST /_emulator/rate-limit                  {"per_minute":N} and/or {"per_user_per_minute":M}
//	POST /_emulator/admin-keys?env=NAME         a new admin key of env's default user
//	POST /_emulator/users?env=NAME              a new user of env and its first key
//	POST /_emulator/reset-requests              forget recorded requests
//	POST /_emulator/reset-faults                clear faults, FailNext/FailNextLate/DelayNext rules and forced 429s
//
// Errors use Heron's error shape so one decoder serves both surfaces.
func (s *Server) ControlHandler() http.Handler {
	return http.HandlerFunc(s.serveControl)
}

func (s *Server) serveControl(w http.ResponseWriter, r *http.Request) {
	type endpoint struct {
		method string
		fn     func(*http.Request) response
	}
	endpoints := map[string]endpoint{
		"keys":       {http.MethodGet, s.ctlKeys},
		"requests":   {http.MethodGet, func(*http.Request) response { return ok(s.Requests()) }},
		"stats":      {http.MethodGet, s.ctlStats},
		"fail-next":  {http.MethodPost, s.ctlFailNext},
		"force429":   {http.MethodPost, s.ctlForce429},
		"admin-keys": {http.MethodPost, s.ctlAdminKey},
		"users":      {http.MethodPost, s.ctlUser},
		"delay-next": {http.MethodPost, s.ctlDelayNext},
		"late":       {http.MethodGet, func(*http.Request) response { return ok(map[string]int{"pending": s.PendingLate()}) }},
		"flush-late": {http.MethodPost, func(*http.Request) response {
			n := s.FlushLate()
			return ok(map[string]int{"processed": n, "pending": s.PendingLate()})
		}},
		"reset-requests": {http.MethodPost, func(*http.Request) response { s.ResetRequests(); return response{status: http.StatusNoContent} }},
		"reset-faults":   {http.MethodPost, func(*http.Request) response { s.ResetFaults(); return response{status: http.StatusNoContent} }},
	}
	name, _ := strings.CutPrefix(r.URL.Path, controlPrefix)
	var res response
	switch {
	case name == "faults" || name == "rate-limit":
		switch r.Method {
		case http.MethodGet:
			if name == "faults" {
				res = ok(faultsToJSON(s.CurrentFaults()))
			} else {
				res = ok(s.rateLimits())
			}
		case http.MethodPost:
			if name == "faults" {
				res = s.ctlSetFaults(r)
			} else {
				res = s.ctlSetRateLimit(r)
			}
		default:
			res = errResp(http.StatusMethodNotAllowed, stockDescriptions[http.StatusMethodNotAllowed])
			res.allow = "GET, POST"
		}
	default:
		ep, found := endpoints[name]
		switch {
		case !found:
			res = errResp(http.StatusNotFound, stockDescriptions[http.StatusNotFound])
		case r.Method != ep.method:
			res = errResp(http.StatusMethodNotAllowed, stockDescriptions[http.StatusMethodNotAllowed])
			res.allow = ep.method
		default:
			res = ep.fn(r)
		}
	}
	writeResponse(w, res)
}

func ok(body any) response { return response{status: http.StatusOK, body: body} }

func badRequest(format string, args ...any) response {
	return errResp(http.StatusBadRequest, fmt.Sprintf(format, args...))
}

func decodeStrict(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// parseDur accepts "" as zero so that callers may omit fields.
func parseDur(field, v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %v", field, err)
	}
	return d, nil
}

func (s *Server) ctlKeys(r *http.Request) response {
	var keys []KeyRecord
	if env := r.URL.Query().Get("env"); env != "" {
		keys = s.KeysIn(env)
	} else {
		keys = s.Keys()
	}
	if keys == nil {
		keys = []KeyRecord{}
	}
	return ok(keys)
}

func (s *Server) ctlStats(r *http.Request) response {
	window := rateWindow
	if v := r.URL.Query().Get("window"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return badRequest("window must be a positive Go duration such as 60s")
		}
		window = d
	}
	return ok(s.Stats(r.URL.Query().Get("env"), window))
}

func (s *Server) ctlSetFaults(r *http.Request) response {
	var in FaultsJSON
	if err := decodeStrict(r, &in); err != nil {
		return badRequest("invalid faults: %v", err)
	}
	lat, err := parseDur("latency", in.Latency)
	if err != nil || lat < 0 {
		return badRequest("latency must be a non-negative Go duration")
	}
	for _, r := range []float64{in.ErrorRate, in.DropAfterPOSTRate, in.ProcessThenErrorRate} {
		if r < 0 || r > 1 {
			return badRequest("rates must be between 0 and 1")
		}
	}
	s.SetFaults(Faults{
		Latency: lat, ErrorRate: in.ErrorRate, DropAfterPOSTRate: in.DropAfterPOSTRate,
		ProcessThenErrorRate: in.ProcessThenErrorRate, Seed: in.Seed,
	})
	return ok(faultsToJSON(s.CurrentFaults()))
}

func (s *Server) ctlFailNext(r *http.Request) response {
	var in struct {
		Method     string `json:"method"`
		PathPrefix string `json:"path_prefix"`
		N          int    `json:"n"`
		Mode       string `json:"mode"`
		Delay      string `json:"delay"`
	}
	if err := decodeStrict(r, &in); err != nil {
		return badRequest("invalid fail-next: %v", err)
	}
	if in.N <= 0 {
		return badRequest("n must be positive")
	}
	delay, err := parseDur("delay", in.Delay)
	if err != nil || delay < 0 {
		return badRequest("delay must be a non-negative Go duration")
	}
	if answer, late := strings.CutPrefix(in.Mode, "late-"); late {
		status := 0
		if answer != "drop" {
			status, err = strconv.Atoi(answer)
			if err != nil || status < 500 || status > 599 {
				return badRequest("late mode must be late-drop or late-5xx such as late-504, not %q", in.Mode)
			}
		}
		s.FailNextLate(in.Method, in.PathPrefix, in.N, status, delay)
		return ok(map[string]int{"pending": s.PendingFailNext()})
	}
	mode, err := ParseFaultMode(in.Mode)
	if err != nil {
		return badRequest("%v", err)
	}
	if in.Delay != "" {
		return badRequest("delay applies only to late-* modes (see delay-next for slowness)")
	}
	s.FailNext(in.Method, in.PathPrefix, in.N, mode)
	return ok(map[string]int{"pending": s.PendingFailNext()})
}

func (s *Server) ctlDelayNext(r *http.Request) response {
	var in struct {
		Method     string `json:"method"`
		PathPrefix string `json:"path_prefix"`
		N          int    `json:"n"`
		Delay      string `json:"delay"`
	}
	if err := decodeStrict(r, &in); err != nil {
		return badRequest("invalid delay-next: %v", err)
	}
	d, err := parseDur("delay", in.Delay)
	if err != nil || d <= 0 {
		return badRequest("delay must be a positive Go duration")
	}
	if in.N <= 0 {
		return badRequest("n must be positive")
	}
	s.DelayNext(in.Method, in.PathPrefix, in.N, d)
	return ok(map[string]int{"pending": s.PendingDelayNext()})
}

func (s *Server) ctlForce429(r *http.Request) response {
	var in struct {
		Env        string `json:"env"`
		Duration   string `json:"duration"`
		RetryAfter string `json:"retry_after"`
	}
	if err := decodeStrict(r, &in); err != nil {
		return badRequest("invalid force429: %v", err)
	}
	d, err := parseDur("duration", in.Duration)
	if err != nil {
		return badRequest("%v", err)
	}
	ra, err := parseDur("retry_after", in.RetryAfter)
	if err != nil {
		return badRequest("%v", err)
	}
	s.Force429(in.Env, d, ra)
	return response{status: http.StatusNoContent}
}

func (s *Server) rateLimits() map[string]int {
	return map[string]int{"per_minute": s.RateLimit(), "per_user_per_minute": s.UserRateLimit()}
}

func (s *Server) ctlSetRateLimit(r *http.Request) response {
	var in struct {
		PerMinute        *int `json:"per_minute"`
		PerUserPerMinute *int `json:"per_user_per_minute"`
	}
	if err := decodeStrict(r, &in); err != nil || (in.PerMinute == nil && in.PerUserPerMinute == nil) {
		return badRequest("body must be {\"per_minute\": N} and/or {\"per_user_per_minute\": M}")
	}
	if in.PerMinute != nil {
		s.SetRateLimit(*in.PerMinute)
	}
	if in.PerUserPerMinute != nil {
		s.SetUserRateLimit(*in.PerUserPerMinute)
	}
	return ok(s.rateLimits())
}

func (s *Server) ctlAdminKey(r *http.Request) response {
	env := r.URL.Query().Get("env")
	if env == "" {
		return badRequest("env query parameter required")
	}
	tok := s.AddAdminKey(env)
	k, _ := s.KeyByToken(tok)
	return response{status: http.StatusCreated, body: map[string]string{
		"environment":  env,
		"token":        tok,
		"heron_id":     k.ID,
		"token_prefix": k.TokenPrefix,
		"user":         k.User,
	}}
}

func (s *Server) ctlUser(r *http.Request) response {
	env := r.URL.Query().Get("env")
	if env == "" {
		return badRequest("env query parameter required")
	}
	tok := s.AddUser(env)
	k, _ := s.KeyByToken(tok)
	return response{status: http.StatusCreated, body: map[string]string{
		"environment":  env,
		"user":         k.User,
		"token":        tok,
		"heron_id":     k.ID,
		"token_prefix": k.TokenPrefix,
	}}
}
