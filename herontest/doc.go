// Package herontest is an in-process emulator of the parts of the Heron Data API
// that the Vault secrets engine uses (see /work/shared/heron-api.md, the contract),
// in the spirit of net/http/httptest: start one with NewServer, point a client at
// Server.URL, inspect what happened with Keys/Requests, and inject faults.
//
// # Decisions where Heron's documentation is silent
//
// Heron documents the happy path and a handful of error codes. Everywhere else the
// emulator picks the strictest behaviour a real Heron deployment could plausibly
// have, so that a client that works here does not get surprised in production:
//
//   - Environments are users. Heron says a key belongs to one user in one
//     environment; the emulator models exactly one user per environment, so every
//     key of an environment (seeded or created) appears in that environment's list
//     and can manage every other key of it. Environments never see each other's
//     keys: a foreign heron_id is answered 404 exactly like an unknown one.
//   - Request pipeline, in this order: record -> injected latency -> authentication
//     (401, only for a documented method of an endpoint that requires a key) ->
//     forced 429 -> sliding-window
//     rate limit (429) -> injected faults -> routing errors (404/405) -> endpoint.
//     Routing errors come after authentication only for requests that carry a
//     valid key; an unknown path with no key is a plain 404, as in Flask where
//     routing precedes the view's auth decorator.
//   - "One budget per environment across the whole API, whatever the endpoint":
//     every request whose x-api-key is an active key is charged to that key's
//     environment, including /api/hello_world and unknown paths. Requests without a
//     valid key are not limited (there is no environment to charge) and carry no
//     X-RateLimit-* headers; nor do responses when the limit is disabled.
//   - A 429 was "not processed", so it does not consume budget (it is still
//     recorded in Requests and counted by MaxInWindow). Injected 5xx and dropped
//     connections happen after the limiter and so do consume budget, like a real
//     upstream failure would.
//   - X-RateLimit-Reset is the Unix second (rounded up) at which the oldest request
//     in the window leaves it; Retry-After is the whole seconds (rounded up, at
//     least 1) until a slot frees.
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
//     processed: not for 401s, 429s or injected 5xx, but yes for requests whose
//     response is dropped after processing.
//   - Timestamps are rendered like Python's isoformat (microseconds and an explicit
//     "+00:00" offset), which is valid RFC 3339 yet not what Go emits, so a client
//     that hand-parses "Z" suffixes is caught.
//   - Only the documented methods are routed; HEAD and OPTIONS get 405 with an
//     Allow header. Paths are matched exactly (no trailing-slash redirects).
//
// The optional /_emulator/ control surface (Options.Control, ControlHandler) is
// not part of Heron and is never recorded in Requests.
package herontest
