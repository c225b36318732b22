"""The compliance console: a web UI at `/console` for compliance officers, security
teams and everyone else who holds a token, rendered on the server.

It is a client of the same services the API calls (`RecordService`, `DsrService`,
`AuditAccess`, the policy, the keyring), so it enforces the same policy, encrypts
and audits the same way, and has no SQL of its own. A principal logs in with its
bearer token, which is exchanged for a server-side session (`principals.sessions`):
the cookie holds a random id (`HttpOnly; Secure; SameSite=Strict; Path=/console`),
every POST carries the session's CSRF token, sessions end on logout, after
`[console] idle_minutes` without a request and after `lifetime_hours` in any case.
"""
