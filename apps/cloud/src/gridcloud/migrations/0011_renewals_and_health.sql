-- 0011: unit certificates renewed over gridwire (gridcloud.renewal, docs/operations.md),
-- and the units' health summaries (EventReport kind 0x8006) on the edges.
--
-- One row per certificate the online issuing CA signed for an edge's request.  The
-- edge asks with a new key while its certificate (old_serial) nears expiry; a
-- request for a key signed already gets the same certificate back (the unique key
-- on (edge_id, public_key_sha256)), so an answer lost in a cut costs nothing.  The
-- old certificate stays valid until a connection with the new one is admitted:
-- then confirm_certificate_renewal() marks the row confirmed and revokes old_serial
-- (revoked_certificates + NOTIFY gridcloud_revoked, as gridcloud.revocation does).
CREATE TABLE certificate_renewals (
    id                bigserial PRIMARY KEY,
    edge_id           text NOT NULL REFERENCES edges (edge_id),
    old_serial        numeric NOT NULL,
    new_serial        numeric NOT NULL UNIQUE,
    public_key_sha256 bytea NOT NULL,
    certificate       bytea NOT NULL,  -- DER
    issuer            bytea NOT NULL,  -- DER of the issuing CA that signed it
    not_after         timestamptz NOT NULL,
    issued_at         timestamptz NOT NULL DEFAULT now(),
    confirmed_at      timestamptz,
    -- another request of the edge replaced this one before it was ever used
    superseded_at     timestamptz,
    UNIQUE (edge_id, public_key_sha256)
);

-- Admission asks "is this serial a renewal not yet confirmed?" at every connection:
-- an index of the few rows that are.
CREATE INDEX certificate_renewals_unconfirmed
    ON certificate_renewals (new_serial)
    WHERE confirmed_at IS NULL AND superseded_at IS NULL;

-- Record a signed renewal; returns the row's certificate and issuer, which are those
-- of an earlier row when the same key was signed already (two nodes racing, or a
-- request repeated after a cut).  Older unconfirmed renewals of the edge are
-- superseded and their serials revoked: they were never used, and never will be.
CREATE FUNCTION record_certificate_renewal(
    p_edge text, p_old numeric, p_new numeric, p_key bytea, p_cert bytea, p_issuer bytea,
    p_not_after timestamptz
) RETURNS TABLE (certificate bytea, issuer bytea, new_serial numeric)
LANGUAGE plpgsql AS $$
DECLARE
    stale numeric;
BEGIN
    INSERT INTO certificate_renewals AS r
           (edge_id, old_serial, new_serial, public_key_sha256, certificate, issuer, not_after)
    VALUES (p_edge, p_old, p_new, p_key, p_cert, p_issuer, p_not_after)
    ON CONFLICT (edge_id, public_key_sha256) DO NOTHING;
    FOR stale IN
        UPDATE certificate_renewals AS r SET superseded_at = now()
         WHERE r.edge_id = p_edge AND r.public_key_sha256 <> p_key
           AND r.confirmed_at IS NULL AND r.superseded_at IS NULL
        RETURNING r.new_serial
    LOOP
        INSERT INTO revoked_certificates (serial, edge_id, reason)
        VALUES (stale, p_edge, 'renewal superseded before use')
        ON CONFLICT (serial) DO NOTHING;
        PERFORM pg_notify('gridcloud_revoked', p_edge || ' ' || stale);
    END LOOP;
    RETURN QUERY
        SELECT r.certificate, r.issuer, r.new_serial FROM certificate_renewals r
         WHERE r.edge_id = p_edge AND r.public_key_sha256 = p_key;
END;
$$;

-- A connection with certificate p_serial was admitted: if it is a renewal not yet
-- confirmed, confirm it and revoke the certificate it replaces.  Returns the
-- revoked serial, or NULL when there was nothing to do.
CREATE FUNCTION confirm_certificate_renewal(p_edge text, p_serial numeric)
RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE
    old numeric;
BEGIN
    UPDATE certificate_renewals SET confirmed_at = now()
     WHERE edge_id = p_edge AND new_serial = p_serial
       AND confirmed_at IS NULL AND superseded_at IS NULL
    RETURNING old_serial INTO old;
    IF old IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO revoked_certificates (serial, edge_id, reason)
    VALUES (old, p_edge, 'renewed: replaced by serial ' || p_serial)
    ON CONFLICT (serial) DO NOTHING;
    PERFORM pg_notify('gridcloud_revoked', p_edge || ' ' || old);
    RETURN old;
END;
$$;

-- The unit's last health summary (EventReport kind 0x8006, gridwire.HealthSummary), for
-- GET /v1/edges: the parsed numbers, and when the unit took them.  Summaries are not
-- alarms, so they are not kept in `events` (an hourly row per unit would crowd the alarms
-- on /v1/events and the feed); only the latest is kept, here.
ALTER TABLE edges ADD COLUMN health jsonb, ADD COLUMN health_at timestamptz;

-- Store a health summary exactly once on (edge, seq), like ingest_event(): under the
-- edge's row lock, a seq at or below the high-water mark is a repeat and changes nothing;
-- otherwise the mark moves and the summary becomes the edge's latest unless an even
-- later one is there (a backlog uploaded after a cut brings old summaries).
CREATE FUNCTION ingest_health_summary(p_edge_id text, p_seq bigint, p_time bigint,
                                      p_health jsonb)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_prev bigint;
BEGIN
    SELECT last_seq INTO v_prev FROM edges WHERE edge_id = p_edge_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown edge %', p_edge_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF p_seq <= v_prev THEN
        RETURN v_prev;
    END IF;
    UPDATE edges
       SET last_seq = p_seq, last_batch_at = now(),
           seq_gaps_total = seq_gaps_total + greatest(p_seq - v_prev - 1, 0),
           health = CASE WHEN health_at IS NULL OR health_at <= to_timestamp(p_time)
                         THEN p_health ELSE health END,
           health_at = greatest(health_at, to_timestamp(p_time))
     WHERE edge_id = p_edge_id;
    RETURN v_prev;
END
$$;

-- gridcloud.metrics samples the commands by state every few seconds: the open ones
-- through this small partial index, the ones finished lately through updated_at,
-- instead of counting a table that grows for years.
CREATE INDEX commands_open_state ON commands (state)
    WHERE state IN ('queued', 'sent', 'acknowledged');
CREATE INDEX commands_updated_at ON commands (updated_at);
