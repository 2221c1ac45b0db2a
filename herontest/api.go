package herontest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxNameLength is Heron's documented limit on a key name, in characters
// (counted as Unicode code points, as Python's len does).
const MaxNameLength = 128

// maxBodyBytes bounds what the emulator reads from a request body; a name of 128
// code points fits many times over, so anything larger is not a valid request.
const maxBodyBytes = 64 << 10

type route struct {
	pattern string
	methods []string
	auth    bool
}

var (
	routeHello     = &route{"/api/hello_world", []string{http.MethodGet}, false}
	routeHelloAuth = &route{"/api/hello_world/authenticated", []string{http.MethodGet}, true}
	routeKeys      = &route{"/api/credentials/keys", []string{http.MethodGet, http.MethodPost}, true}
	routeKey       = &route{"/api/credentials/keys/{heron_id}", []string{http.MethodDelete}, true}
	routeDeact     = &route{"/api/credentials/keys/{heron_id}/deactivate", []string{http.MethodPut}, true}
	routeAct       = &route{"/api/credentials/keys/{heron_id}/activate", []string{http.MethodPut}, true}
)

func (rt *route) allows(method string) bool {
	for _, m := range rt.methods {
		if m == method {
			return true
		}
	}
	return false
}

// matchRoute maps a path to an endpoint and its heron_id. Matching is exact:
// Heron documents no trailing-slash variants, so "/api/credentials/keys/" is a 404.
func matchRoute(path string) (*route, string) {
	switch path {
	case routeHello.pattern:
		return routeHello, ""
	case routeHelloAuth.pattern:
		return routeHelloAuth, ""
	case routeKeys.pattern:
		return routeKeys, ""
	}
	rest, ok := strings.CutPrefix(path, routeKeys.pattern+"/")
	if !ok {
		return nil, ""
	}
	parts := strings.Split(rest, "/")
	if parts[0] == "" {
		return nil, ""
	}
	switch {
	case len(parts) == 1:
		return routeKey, parts[0]
	case len(parts) == 2 && parts[1] == "deactivate":
		return routeDeact, parts[0]
	case len(parts) == 2 && parts[1] == "activate":
		return routeAct, parts[0]
	}
	return nil, ""
}

// response is an endpoint's answer, written (or dropped) by the pipeline.
type response struct {
	status int
	body   any // nil: no body
	allow  string
}

// errorBody is Heron's error shape; Description is a string or, for field
// validation failures, an object.
type errorBody struct {
	Code        int    `json:"code"`
	Description any    `json:"description"`
	Name        string `json:"name"`
}

func errResp(status int, description any) response {
	return response{status: status, body: errorBody{Code: status, Description: description, Name: http.StatusText(status)}}
}

// Descriptions follow Werkzeug's stock texts, which is what a Flask API such as
// Heron's sends for errors it does not customise.
var stockDescriptions = map[int]string{
	http.StatusNotFound:            "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.",
	http.StatusMethodNotAllowed:    "The method is not allowed for the requested URL.",
	http.StatusInternalServerError: "The server encountered an internal error and was unable to complete your request. Either the server is overloaded or there is an error in the application.",
	http.StatusBadGateway:          "The proxy server received an invalid response from an upstream server.",
	http.StatusServiceUnavailable:  "The server is temporarily unable to service your request due to maintenance downtime or capacity problems. Please try again later.",
	http.StatusGatewayTimeout:      "The connection to an upstream server timed out.",
}

var keyNotFound = errResp(http.StatusNotFound, "Key not found")

func writeResponse(w http.ResponseWriter, res response) {
	if res.allow != "" {
		w.Header().Set("Allow", res.allow)
	}
	if res.body == nil {
		w.WriteHeader(res.status)
		return
	}
	b, err := json.Marshal(res.body)
	if err != nil {
		// Only emulator bugs get here; say so loudly rather than send half a body.
		panic(fmt.Sprintf("herontest: marshal response: %v", err))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(res.status)
	_, _ = w.Write(append(b, '\n'))
}

// dropConnection closes the client's connection without a response, which a
// client sees as io.EOF or a connection reset.
func dropConnection(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	// HTTP/2 and wrapped writers cannot hijack; this aborts the stream instead
	// and net/http does not log it.
	panic(http.ErrAbortHandler)
}

func keyPrefix(token string) string {
	if len(token) > 8 {
		return token[:8]
	}
	return token
}

// finish completes a request's record; s.mu must not be held.
func (s *Server) finish(rec *RequestRecord, status int, dropped, injected bool) {
	s.mu.Lock()
	rec.Status, rec.Dropped, rec.Injected = status, dropped, injected
	line := fmt.Sprintf("%s %s -> %d env=%q user=%q key=%s dropped=%t injected=%t",
		rec.Method, rec.Path, status, rec.Environment, rec.User, rec.KeyPrefix, dropped, injected)
	s.mu.Unlock()
	s.logf("%s", line)
}

// caller is who an authenticated request acts as.
type caller struct {
	env, user, id string
	key           *KeyRecord // nil for requests without a valid key
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		w.Header().Set("Connection", "close")
		writeResponse(w, errResp(http.StatusServiceUnavailable, "The emulator is shutting down."))
		return
	}
	defer s.inflight.Done()

	rt, id := matchRoute(r.URL.Path)
	token := r.Header.Get("x-api-key")
	rec := &RequestRecord{
		Method:    r.Method,
		Path:      r.URL.Path,
		UserAgent: r.UserAgent(),
		KeyPrefix: keyPrefix(token),
	}
	if rt != nil {
		rec.Route = rt.pattern
	}
	s.mu.Lock()
	rec.Time = s.now()
	s.requests = append(s.requests, rec)
	latency := s.faults.Latency
	s.mu.Unlock()

	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			s.finish(rec, 0, false, true)
			// Returning normally would let net/http send an empty 200.
			panic(http.ErrAbortHandler)
		case <-s.closed:
			t.Stop()
			s.finish(rec, 0, false, true)
			panic(http.ErrAbortHandler)
		}
	}

	allowed := rt != nil && rt.allows(r.Method)
	s.mu.Lock()
	now := s.now()
	var key *KeyRecord
	if token != "" {
		if k := s.byToken[token]; k != nil && !k.Deleted && k.IsActive {
			key = k
		}
	}
	if allowed && rt.auth && key == nil {
		s.mu.Unlock()
		desc := "Invalid API key"
		if token == "" {
			desc = "Missing API key: send it in the x-api-key header"
		}
		writeResponse(w, errResp(http.StatusUnauthorized, desc))
		s.finish(rec, http.StatusUnauthorized, false, false)
		return
	}
	var c caller
	var rd rateDecision
	if key != nil {
		c = caller{env: key.Environment, user: key.User, id: key.ID, key: key}
		rec.Environment, rec.User = c.env, c.user
		rd = s.admitLocked(c.env, c.user, now)
	}
	if rd.limited {
		s.mu.Unlock()
		rd.apply(w.Header())
		desc := "Too many requests"
		if rd.hasHeaders && rd.limit > 0 {
			desc = fmt.Sprintf("%d per 1 minute", rd.limit)
		}
		writeResponse(w, errResp(http.StatusTooManyRequests, desc))
		s.finish(rec, http.StatusTooManyRequests, false, rd.forced)
		return
	}
	authenticated := allowed && rt.auth
	f := s.pickFaultLocked(r.Method, r.URL.Path, authenticated, allowed && rt == routeKeys && r.Method == http.MethodPost)
	delay := s.pickDelayLocked(r.Method, r.URL.Path)
	s.mu.Unlock()

	rd.apply(w.Header())
	if delay > 0 {
		// Server-side slowness: the client leaving does not stop it, Close does.
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.closed:
			t.Stop()
			s.finish(rec, 0, false, true)
			panic(http.ErrAbortHandler)
		}
	}
	switch {
	case f.status != 0:
		writeResponse(w, stockError(f.status))
		s.finish(rec, f.status, false, true)
		return
	case f.dropBefore:
		s.finish(rec, 0, true, true)
		dropConnection(w)
		return
	case f.late:
		s.answerLate(w, r, rec, f, rt, id, allowed, c)
		return
	}

	res := s.process(r, rt, id, allowed, c)
	s.setProcessed(rec, res.status)
	switch {
	case f.dropAfter:
		s.finish(rec, 0, true, true)
		dropConnection(w)
	case f.statusAfter != 0:
		writeResponse(w, stockError(f.statusAfter))
		s.finish(rec, f.statusAfter, false, true)
	default:
		writeResponse(w, res)
		s.finish(rec, res.status, false, false)
	}
}

// stockError is an error with Werkzeug's stock description for status.
func stockError(status int) response {
	desc, ok := stockDescriptions[status]
	if !ok {
		desc = http.StatusText(status)
	}
	return errResp(status, desc)
}

func (s *Server) setProcessed(rec *RequestRecord, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec.Processed = status
}

// process runs an admitted request through routing and its endpoint, updating
// the caller's last_used first (so a list shows the listing request's use).
func (s *Server) process(r *http.Request, rt *route, id string, allowed bool, c caller) response {
	switch {
	case rt == nil:
		return errResp(http.StatusNotFound, stockDescriptions[http.StatusNotFound])
	case !allowed:
		res := errResp(http.StatusMethodNotAllowed, stockDescriptions[http.StatusMethodNotAllowed])
		res.allow = strings.Join(rt.methods, ", ")
		return res
	}
	if rt.auth {
		s.mu.Lock()
		t := storeTime(s.now())
		c.key.LastUsed = &t
		s.mu.Unlock()
	}
	return s.dispatch(r, rt, id, c)
}

// answerLate answers a FailNextLate request now (status or dropped connection)
// and schedules its processing f.lateDelay later, on a copy of the request whose
// body is read now, as a gateway would have forwarded it.
func (s *Server) answerLate(w http.ResponseWriter, r *http.Request, rec *RequestRecord, f fault, rt *route, id string, allowed bool, c caller) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	lr := r.Clone(context.Background())
	lr.Body = io.NopCloser(bytes.NewReader(body))
	s.scheduleLate(f.lateDelay, func() {
		res := s.process(lr, rt, id, allowed, c)
		s.setProcessed(rec, res.status)
		s.logf("%s %s processed late -> %d env=%q user=%q key=%s", rec.Method, rec.Path, res.status, rec.Environment, rec.User, rec.KeyPrefix)
	})
	if f.lateStatus == 0 {
		s.finish(rec, 0, true, true)
		dropConnection(w)
		return
	}
	writeResponse(w, stockError(f.lateStatus))
	s.finish(rec, f.lateStatus, false, true)
}

func (s *Server) dispatch(r *http.Request, rt *route, id string, c caller) response {
	switch rt {
	case routeHello, routeHelloAuth:
		return response{status: http.StatusOK, body: map[string]string{"hello": "world"}}
	case routeKeys:
		if r.Method == http.MethodPost {
			return s.handleCreate(r, c)
		}
		return s.handleList(c)
	case routeDeact:
		return s.handleSetActive(id, c, false)
	case routeAct:
		return s.handleSetActive(id, c, true)
	case routeKey:
		return s.handleDelete(id, c)
	}
	panic("herontest: unrouted endpoint " + rt.pattern)
}

// apiTime renders like Python's datetime.isoformat() on an aware UTC datetime.
func apiTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000000-07:00")
}

type createdKeyJSON struct {
	HeronID     string `json:"heron_id"`
	Name        string `json:"name"`
	Token       string `json:"token"`
	TokenPrefix string `json:"token_prefix"`
	Created     string `json:"created"`
	IsActive    bool   `json:"is_active"`
}

type listedKeyJSON struct {
	HeronID     string  `json:"heron_id"`
	Name        string  `json:"name"`
	TokenPrefix string  `json:"token_prefix"`
	Created     string  `json:"created"`
	IsActive    bool    `json:"is_active"`
	LastUsed    *string `json:"last_used"`
}

type activeJSON struct {
	HeronID  string `json:"heron_id"`
	IsActive bool   `json:"is_active"`
}

// parseCreate validates a create body strictly (see the package documentation)
// and returns the name or the 400 to send.
func parseCreate(r *http.Request) (string, *response) {
	fail := func(desc any) (string, *response) {
		res := errResp(http.StatusBadRequest, desc)
		return "", &res
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return fail("Content-Type must be application/json")
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	if err != nil {
		return fail("Could not read the request body")
	}
	if len(body) > maxBodyBytes {
		return fail("Request body too large")
	}
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&fields); err != nil || fields == nil {
		return fail("The request body must be a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return fail("The request body must be a single JSON object")
	}
	errs := map[string][]string{}
	for k := range fields {
		if k != "name" {
			errs[k] = []string{"Unknown field."}
		}
	}
	var name string
	switch raw, ok := fields["name"]; {
	case !ok:
		errs["name"] = []string{"Missing data for required field."}
	case string(raw) == "null":
		errs["name"] = []string{"Field may not be null."}
	case json.Unmarshal(raw, &name) != nil:
		errs["name"] = []string{"Not a valid string."}
	default:
		if n := utf8.RuneCountInString(name); n < 1 || n > MaxNameLength {
			errs["name"] = []string{fmt.Sprintf("Length must be between 1 and %d.", MaxNameLength)}
		}
	}
	if len(errs) > 0 {
		return fail(map[string]any{"json": errs})
	}
	return name, nil
}

func (s *Server) handleCreate(r *http.Request, c caller) response {
	name, bad := parseCreate(r)
	if bad != nil {
		return *bad
	}
	k := s.createKey(c.env, c.user, name, c.id)
	return response{status: http.StatusCreated, body: createdKeyJSON{
		HeronID:     k.ID,
		Name:        k.Name,
		Token:       k.Token,
		TokenPrefix: k.TokenPrefix,
		Created:     apiTime(k.Created),
		IsActive:    k.IsActive,
	}}
}

func (s *Server) handleList(c caller) response {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Never nil, so an empty environment lists as [] rather than null.
	keys := []listedKeyJSON{}
	for _, k := range s.keys {
		if k.Environment != c.env || k.User != c.user || k.Deleted {
			continue
		}
		lk := listedKeyJSON{
			HeronID:     k.ID,
			Name:        k.Name,
			TokenPrefix: k.TokenPrefix,
			Created:     apiTime(k.Created),
			IsActive:    k.IsActive,
		}
		if k.LastUsed != nil {
			v := apiTime(*k.LastUsed)
			lk.LastUsed = &v
		}
		keys = append(keys, lk)
	}
	return response{status: http.StatusOK, body: map[string]any{"keys": keys}}
}

// liveKeyLocked finds a key the caller's user may manage; anything else is
// indistinguishable from an unknown id so that neither environments nor users
// can probe each other.
func (s *Server) liveKeyLocked(id string, c caller) *KeyRecord {
	k := s.byID[id]
	if k == nil || k.Deleted || k.Environment != c.env || k.User != c.user {
		return nil
	}
	return k
}

func (s *Server) handleSetActive(id string, c caller, active bool) response {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.liveKeyLocked(id, c)
	if k == nil {
		return keyNotFound
	}
	if k.IsActive && !active {
		k.DeactivatedAt = storeTime(s.now())
	}
	k.IsActive = active
	return response{status: http.StatusOK, body: activeJSON{HeronID: k.ID, IsActive: k.IsActive}}
}

func (s *Server) handleDelete(id string, c caller) response {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.liveKeyLocked(id, c)
	if k == nil {
		return keyNotFound
	}
	k.Deleted = true
	k.DeletedAt = storeTime(s.now())
	return response{status: http.StatusNoContent}
}
