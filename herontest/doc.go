// Package herontest is an in-process emulator of the parts of the Heron Data API
// that the Vault secrets engine uses (see docs/heron-api.md in this repository, the contract),
// in the spirit of net/http/httptest: start one with NewServer, point a client at
// Server.URL, inspect what happened with Keys/Requests, and inject faults.
//
// # Decisions where Heron's documentation is silent
//
// Heron documents the happy path and a handful of error codes. Everywhere else the
// emulator picks the strictest behaviour a real Heron deployment could plausibly
// have, so that a client that works here does not get surprised in production:
//
//   - Users. Heron says "an API key belongs to one user in one environment; keys
//     created with a key belong to the same user as the key used", and list
//     returns the keys of the authenticated user. The emulator models exactly
//     that: every key seeded through Options.Environments and every AddAdminKey
//     key belongs to its environment's DefaultUser (so they all list and manage
//     each other's keys, as before users existed), AddUser makes a new user with
//     its own key list, and a key created through the API belongs to the user of
//     the key that created it (KeyRecord.User, RequestRecord.User). A user lists
//     only its own keys; deactivating, activating or deleting a key of another
//     user, or of another environment, is answered 404 exactly like an unknown
//     heron_id (same body), so that nobody can probe for keys they do not own.
//     User ids are unique across environments (DefaultUser aside, which is
//     per environment).
//   - Request pipeline, in this order: record -> injected latency (Faults.Latency)
//     -> authentication (401, only for a documented method of an endpoint that
//     requires a key) -> forced 429 -> sliding-window rate limits, environment and
//     user (429) -> choice of the FailNext/random fault and of the DelayNext delay
//     -> DelayNext delay -> unprocessed faults (5xx, drop before processing) or a
//     late answer (FailNextLate) -> routing errors (404/405) -> endpoint ->
//     processed-then-bad-answer faults (process-then-5xx, process-then-drop).
//     Routing errors come after authentication only for requests that carry a
//     valid key; an unknown path with no key is a plain 404, as in Flask where
//     routing precedes the view's auth decorator.
//   - "One budget per environment across the whole API, whatever the endpoint":
//     every request whose x-api-key is an active key is charged to that key's
//     environment, including /api/hello_world and unknown paths. Requests without a
//     valid key are not limited (there is no environment to charge) and carry no
//     X-RateLimit-* headers; nor do responses when the limit is disabled.
//   - Per-user limit. Heron documents only the environment budget, yet says some
//     budgets are stricter; Options.RateLimitPerUserPerMinute (or
//     SetUserRateLimit) adds an optional budget per user over the same sliding
//     window, off by default. A request is admitted only when both budgets have
//     room, and is then charged to both. The X-RateLimit-* headers describe the
//     binding budget: on a 429 the full one whose slot frees last (so
//     Retry-After is the wait that actually lets the request through, and the
//     429 description names that budget's limit), otherwise the one with the
//     fewest requests left (ties: the smaller limit, then the environment).
//   - A 429 was "not processed", so it does not consume budget (it is still
//     recorded in Requests and counted by MaxInWindow). Injected 5xx and dropped
//     connections happen after the limiter and so do consume budget, like a real
//     upstream failure would; so does a late (FailNextLate) request, once, when
//     it arrives (its later processing is not a new request).
//   - X-RateLimit-Reset is the Unix second (rounded up) at which the oldest request
//     in the binding window leaves it; Retry-After is the whole seconds (rounded
//     up, at least 1) until a slot frees.
//   - Processed, then a bad answer. Real gateways answer 500/502/503/504 after
//     Heron did the work; FaultProcessThen500/502/503/504 and
//     Faults.ProcessThenErrorRate (any authenticated request) do that, like
//     FaultProcessThenDrop does with a dropped connection. Unprocessed 5xx
//     (FaultStatus500/502/503/504, Faults.ErrorRate) never change anything.
//     RequestRecord.Processed tells the two apart: it is the status the
//     endpoint produced, 0 when the request was not processed.
//   - Late processing (FailNextLate): a gateway timeout while Heron is still
//     working. The request is answered at once (the chosen 5xx, or a dropped
//     connection), its body is read before answering, and it is processed
//     delay later in the background, with the emulator clock at that moment:
//     a key created late has created = the processing time, last_used of the
//     calling key is set then, and a list made in between does not show it.
//     The processing happens even if the calling key was deactivated or
//     deleted meanwhile (it was authenticated when the request arrived). Close
//     drops every late action not yet started, and one that would be scheduled
//     once Close has begun; FlushLate runs the pending ones at once, in due
//     order; PendingLate counts those scheduled or running. ResetFaults does not
//     cancel them: they are Heron's work in progress, no longer a fault.
//   - Slowness. Faults.Latency is network latency before the request reaches
//     Heron: a client that gives up during it cancels the request (not
//     processed). DelayNext is Heron being slow on one admitted request: a
//     client that gives up during it does not stop it (the request is processed
//     anyway, as a server that does not watch its client would), which is how a
//     client timeout can still create a key. Close aborts both.
//   - POST /api/credentials/keys is validated strictly, always answering 400 (the
//     code Heron documents for this endpoint) rather than 422: Content-Type must be
//     application/json, the body must be one JSON object with exactly the field
//     "name" (unknown fields are rejected, as marshmallow 3 does by default), and
//     name must be a string of 1..128 Unicode code points. A body that is not JSON
//     gets a string description; field errors get a structured, webargs-style
//     description object such as {"json":{"name":["Length must be between 1 and 128."]}},
//     so clients must cope with both shapes the contract allows.
//   - Deactivating an already inactive key, or activating an active one, is a
//     200 no-op. A key may deactivate or delete itself (after which it gets 401),
//     and deleting an active key is allowed: Heron documents no 400/409 for either.
//   - 401 bodies do not say whether a key is unknown, deleted or deactivated.
//   - last_used is updated only when an authenticated request is actually
//     processed: not for 401s, 429s or unprocessed injected 5xx, but yes for
//     requests whose response is dropped or replaced by a 5xx after processing,
//     and for late processing (at that time).
//   - Timestamps are rendered like Python's isoformat (microseconds and an explicit
//     "+00:00" offset), which is valid RFC 3339 yet not what Go emits, so a client
//     that hand-parses "Z" suffixes is caught.
//   - Only the documented methods are routed; HEAD and OPTIONS get 405 with an
//     Allow header. Paths are matched exactly (no trailing-slash redirects).
//
// The optional /_emulator/ control surface (Options.Control, ControlHandler) is
// not part of Heron and is never recorded in Requests.
package herontest
