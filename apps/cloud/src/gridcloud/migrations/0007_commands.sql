-- 0007: commands from the cloud down to a meter or a unit (issue 12).
--
-- Design notes: docs/cloud.md ("Commands") and the docstrings of gridcloud.commands and
-- gridcloud.api.resources.commands.
--
-- Life of a command (every transition is an UPDATE of `state` with its timestamp, and
-- each one lands in feed_log for the live feed, by the trigger at the end):
--
--   queued -> sent -> acknowledged -> succeeded | failed
--      \        \            (the unit stored it durably)
--       `--------`--> expired   (its expiry passed before the unit executed it)
--
-- `sent` is only a hint: a command sent to a session that died before the unit
-- acknowledged it is simply sent again on the unit's next Hello (the unit executes
-- each command id once, whatever the number of deliveries).

CREATE TABLE commands (
    id               bigserial PRIMARY KEY,
    edge_id          text NOT NULL REFERENCES edges (edge_id),
    -- The meter of relay and read commands; NULL for the unit's own (config, reboot).
    meter_id         bigint,
    action           text NOT NULL CHECK (action IN
                         ('relay_open', 'relay_close', 'read_now', 'set_config', 'reboot',
                          'upload_now')),
    -- The action's parameters (set_config: the settings), as the unit receives them.
    params           jsonb NOT NULL DEFAULT '{}',
    -- 'api': created through POST /v1/commands; 'unit': by the unit's local page, whose
    -- own id for it is unit_command_id (the unit reports it with its outcome).
    origin           text NOT NULL DEFAULT 'api' CHECK (origin IN ('api', 'unit')),
    unit_command_id  bigint,
    created_by       text,
    idempotency_key  text,
    state            text NOT NULL DEFAULT 'queued' CHECK (state IN
                         ('queued', 'sent', 'acknowledged', 'succeeded', 'failed', 'expired')),
    reason           text,
    deliveries       integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    sent_at          timestamptz,
    acknowledged_at  timestamptz,
    succeeded_at     timestamptz,
    failed_at        timestamptz,
    expired_at       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (created_by, idempotency_key),
    UNIQUE (edge_id, unit_command_id)
);
-- What a session has to deliver: its edge's commands the unit does not have yet.
CREATE INDEX commands_undelivered ON commands (edge_id, id) WHERE state IN ('queued', 'sent');
-- What the expiry sweep looks at.
CREATE INDEX commands_open_expiry ON commands (expires_at) WHERE state IN ('queued', 'sent');
CREATE INDEX commands_by_meter ON commands (meter_id, id);

-- Command transitions on the live feed: a feed_log row with command_id set (first_seq
-- = last_seq = 1: one event per row, so the feed's resume position works unchanged).
ALTER TABLE feed_log ADD COLUMN command_id bigint;

CREATE FUNCTION commands_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO feed_log (edge_id, first_seq, last_seq, command_id)
    VALUES (NEW.edge_id, 1, 1, NEW.id);
    PERFORM pg_notify('gridcloud_feed', NEW.edge_id);
    IF NEW.state = 'queued' THEN
        -- Wakes the gridcloud serve node that holds this edge's session (gridcloud.commands).
        PERFORM pg_notify('gridcloud_commands', NEW.edge_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER commands_feed_insert AFTER INSERT ON commands
    FOR EACH ROW EXECUTE FUNCTION commands_feed();
CREATE TRIGGER commands_feed_update AFTER UPDATE OF state ON commands
    FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state) EXECUTE FUNCTION commands_feed();

-- The outcome of a command comes up from the unit as an EventReport (kinds 0x8010
-- succeeded, 0x8011 failed, 0x8012 expired; detail "<command id> <action> <reason>",
-- docs/protocol.md), in the journal's sequence space: stored here in the very
-- transaction that stores the event and advances the edge's high-water mark, so it is
-- applied exactly once.  A unit-originated command (id >= 2^62, the unit's own
-- numbering) gets its row here.  An outcome never overrides another outcome, except
-- the cloud's own guess "expired" (the unit's clock decides).
CREATE FUNCTION apply_command_outcome(p_edge_id text, p_meter_id bigint, p_time bigint,
                                      p_kind integer, p_detail text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_parts  text[];
    v_id     bigint;
    v_action text;
    v_reason text;
    v_state  text;
    v_at     timestamptz := to_timestamp(p_time);
    v_row    commands%ROWTYPE;
BEGIN
    v_parts := regexp_match(p_detail, '^([0-9]{1,19}) ([a-z_]+) ?(.*)$', 's');
    IF v_parts IS NULL THEN
        RAISE WARNING 'edge %: command outcome with an unreadable detail: %', p_edge_id, p_detail;
        RETURN;
    END IF;
    v_id := v_parts[1]::bigint;
    v_action := v_parts[2];
    v_reason := nullif(v_parts[3], '');
    v_state := CASE p_kind WHEN 32784 THEN 'succeeded' WHEN 32785 THEN 'failed' ELSE 'expired' END;
    IF v_id >= 4611686018427387904 THEN  -- 2^62: the unit's own command
        IF v_action NOT IN ('relay_open', 'relay_close', 'read_now', 'set_config', 'reboot',
                          'upload_now') THEN
            RETURN;
        END IF;
        INSERT INTO commands (edge_id, meter_id, action, origin, unit_command_id, state, reason,
                              created_at, expires_at, acknowledged_at)
        VALUES (p_edge_id, nullif(p_meter_id, 0), v_action, 'unit', v_id, 'acknowledged', NULL,
                v_at, v_at, v_at)
        ON CONFLICT (edge_id, unit_command_id) DO NOTHING
        RETURNING * INTO v_row;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        v_id := v_row.id;
    END IF;
    UPDATE commands
       SET state = v_state, reason = v_reason, updated_at = now(),
           acknowledged_at = coalesce(acknowledged_at, v_at),
           succeeded_at = CASE WHEN v_state = 'succeeded' THEN v_at END,
           failed_at = CASE WHEN v_state = 'failed' THEN v_at END,
           expired_at = CASE WHEN v_state = 'expired' THEN v_at END
     WHERE id = v_id AND edge_id = p_edge_id
       AND state IN ('queued', 'sent', 'acknowledged', 'expired')
    RETURNING * INTO v_row;
    IF FOUND AND v_state = 'succeeded' AND v_row.meter_id IS NOT NULL
       AND v_row.action IN ('relay_open', 'relay_close') THEN
        -- The meter confirmed: its relay position is known now, before its next reading.
        UPDATE meters
           SET flags = CASE WHEN v_row.action = 'relay_open' THEN flags | 1 ELSE flags & ~1 END,
               updated_at = now()
         WHERE meter_id = v_row.meter_id;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION ingest_event(p_edge_id text, p_seq bigint, p_meter_id bigint,
                                        p_time bigint, p_kind integer, p_detail text)
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
    INSERT INTO events (edge_id, seq, meter_id, event_time, kind, detail)
    VALUES (p_edge_id, p_seq, p_meter_id, to_timestamp(p_time), p_kind, p_detail);
    IF p_kind BETWEEN 32784 AND 32786 THEN  -- 0x8010..0x8012: a command's outcome
        PERFORM apply_command_outcome(p_edge_id, p_meter_id, p_time, p_kind, p_detail);
    END IF;
    UPDATE edges
       SET last_seq = p_seq, last_batch_at = now(),
           seq_gaps_total = seq_gaps_total + greatest(p_seq - v_prev - 1, 0)
     WHERE edge_id = p_edge_id;
    RETURN v_prev;
END
$$;
