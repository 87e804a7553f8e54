"""``gridcloud api``: the HTTP API for internal systems (Klein over txpostgres).

Billing, customer care and dashboards read the cloud through it.  Modules, one job each:
config (settings), service (the process's service tree), routes (the route table that
serves requests and describes them), openapi (the document built from that table),
params (query parameters), problems (RFC 9457 errors), keys (API keys), ratelimit
(per-key token buckets), pagination (opaque cursors), database (the txpostgres pool),
resources (edges, meters, readings, events, keys), csvexport (streamed CSV), pacing
(flow control of streams) and feed (Server-Sent Events from LISTEN/NOTIFY).  Reference: docs/api.md.

Tests: tests/cloud/test_api_resources.py.
"""
