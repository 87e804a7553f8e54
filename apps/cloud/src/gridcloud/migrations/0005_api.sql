-- 0005: what the HTTP API (`gridcloud api`) needs: API keys, edge presence, the feed log,
-- and the index of per-edge reading queries.
--
-- Design notes: docs/api.md and the docstrings of gridcloud.api.keys / gridcloud.api.feed.

-- Bearer keys for internal systems.  Only the SHA-256 of a key is stored: keys are
-- 32 random bytes, so a fast hash is enough (nothing to brute-force) and lets the
-- API find a key with one unique-index probe per request.
CREATE TABLE api_keys (
    name         text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    key_sha256   bytea NOT NULL UNIQUE,
    -- The key's first characters, shown by `gridcloud apikey list` to tell keys apart.
    prefix       text NOT NULL,
    scopes       text[] NOT NULL CHECK (scopes <@ ARRAY['read', 'write', 'admin']),
    -- The edges this key may see; NULL: every edge.
    edges        text[],
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at   timestamptz,
    revoked_at   timestamptz
);

-- Which live session holds each edge, whatever `gridcloud serve` node it is on:
-- set when a node claims the edge, cleared (only if still its own) when that
-- session ends.  See gridcloud.presence.
ALTER TABLE edges ADD COLUMN session_token text;

-- Per-edge reading queries (API pages, CSV export, the feed) go by journal
-- sequence: (edge, seq) is unique per edge and is the feed's position too.
CREATE INDEX readings_edge_seq ON readings (edge_id, seq);

-- The live feed: one row per committed advance of an edge's high-water mark
-- (a stored batch or event).  Written by the trigger below inside the ingest
-- transaction, so a row exists exactly when its records are committed.
--
-- Its order is (txid, id), read only below the snapshot's xmin: every
-- transaction with a smaller txid has finished, so nothing can later appear
-- before a position already delivered.  That makes (txid, id, seq) a resume
-- point that survives an API restart (gridcloud.api.feed).
CREATE TABLE feed_log (
    id          bigserial PRIMARY KEY,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    edge_id     text NOT NULL,
    first_seq   bigint NOT NULL,
    last_seq    bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feed_log_order ON feed_log (txid, id);

CREATE FUNCTION feed_log_append() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO feed_log (edge_id, first_seq, last_seq)
    VALUES (NEW.edge_id, OLD.last_seq + 1, NEW.last_seq);
    PERFORM pg_notify('gridcloud_feed', NEW.edge_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER edges_feed AFTER UPDATE OF last_seq ON edges
    FOR EACH ROW WHEN (NEW.last_seq > OLD.last_seq) EXECUTE FUNCTION feed_log_append();
