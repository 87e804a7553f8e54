-- 0010: over-the-air updates (issue 15): signed releases, their deltas, edge tags, rollouts.
--
-- Design notes: docs/updates.md ("Releases", "Rollouts") and the docstrings of
-- gridcloud.api.resources.releases, gridcloud.api.resources.rollouts and gridcloud.firmware.
--
-- Life of a rollout unit (one row per (rollout, edge); its id R names the unit's offers:
-- 2*R the full bundle, 2*R+1 a delta):
--
--   pending -> offered -> downloading -> verifying -> installing -> rebooting -> healthy
--      |          \____________\______________\____________\____________\-> failed
--      |                                                       rebooting -> rolled_back
--      `--(any state not final)--> cancelled   (the rollout was cancelled)
--
-- Waves: a unit's wave is fixed at creation; the rollout's current_wave says which waves
-- may be offered.  rollout_step() moves the rollout on, and is called in the very
-- transaction that changes a unit's state, under a row lock on the rollout: every
-- `gridcloud serve` and `gridcloud api` process runs the same rule on the same rows, so
-- they agree without a coordinator.

CREATE TABLE releases (
    id          bigserial PRIMARY KEY,
    version     text NOT NULL,
    compatible  text NOT NULL,
    size        bigint NOT NULL CHECK (size > 0),
    sha256      text NOT NULL,
    -- The signer's subject as RAUC printed it ("O = ..., CN = ...").
    signer      text NOT NULL,
    -- The bundle's file, relative to the [releases] folder.
    file        text NOT NULL,
    uploaded_by text,
    uploaded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (compatible, version)
);

-- zstd --patch-from deltas from an earlier release of the same compatible (gridcloud.bundles).
CREATE TABLE release_deltas (
    id          bigserial PRIMARY KEY,
    release_id  bigint NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    base_id     bigint NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    -- making: zstd runs (or its process died: docs/updates.md); ready: offered;
    -- failed / skipped (no smaller than the bundle itself): never offered, reason says why.
    state       text NOT NULL DEFAULT 'making'
                    CHECK (state IN ('making', 'ready', 'failed', 'skipped')),
    size        bigint,
    sha256      text,
    file        text,
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    done_at     timestamptz,
    UNIQUE (release_id, base_id)
);

-- Operators group units by tag ("north", "pilot") to target rollouts.
ALTER TABLE edges ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
CREATE INDEX edges_tags ON edges USING gin (tags);

CREATE TABLE rollouts (
    id                bigserial PRIMARY KEY,
    release_id        bigint NOT NULL REFERENCES releases (id),
    -- As the request gave it: {"edges": [...]}, {"tag": "t"} or {"percent": n}.
    target            jsonb NOT NULL,
    wave_size         integer NOT NULL CHECK (wave_size >= 1),
    max_failures      integer NOT NULL CHECK (max_failures >= 0),
    state             text NOT NULL DEFAULT 'running'
                          CHECK (state IN ('running', 'paused', 'cancelled', 'completed')),
    paused_reason     text,
    current_wave      integer NOT NULL DEFAULT 0,
    -- Failures an operator accepted by resuming a rollout that paused itself: the
    -- threshold counts only the failures after them.
    failures_accepted integer NOT NULL DEFAULT 0,
    created_by        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);

CREATE TABLE rollout_units (
    id          bigserial PRIMARY KEY,
    rollout_id  bigint NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    edge_id     text NOT NULL REFERENCES edges (edge_id),
    wave        integer NOT NULL CHECK (wave >= 0),
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN
                    ('pending', 'offered', 'downloading', 'verifying', 'installing',
                     'rebooting', 'healthy', 'rolled_back', 'failed', 'cancelled')),
    -- Bytes of the blob the unit downloads (the full bundle, or a delta once it takes one).
    received    bigint NOT NULL DEFAULT 0,
    size        bigint NOT NULL DEFAULT 0,
    -- The unit's reason (failed, rolled_back) or the step it reported.
    detail      text NOT NULL DEFAULT '',
    -- The unit failed to rebuild the bundle from a delta: from then on it is offered the
    -- full bundle only (a delta that failed once would fail the same way again).
    delta_failed boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (rollout_id, edge_id)
);
CREATE INDEX rollout_units_by_rollout ON rollout_units (rollout_id, wave, state);
-- A unit is in at most one unfinished rollout at a time: two would offer it two bundles.
CREATE UNIQUE INDEX rollout_units_one_open ON rollout_units (edge_id)
    WHERE state NOT IN ('healthy', 'rolled_back', 'failed', 'cancelled');

-- Move a running rollout on: pause it when its failures pass max_failures, start the next
-- wave when every unit of the started waves is final, complete it after the last wave.
-- Returns the rollout's state.  Call it in the transaction that changed a unit.
CREATE FUNCTION rollout_step(p_rollout bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    ro rollouts%ROWTYPE;
    failures integer;
    open_units integer;
    next_wave integer;
BEGIN
    SELECT * INTO ro FROM rollouts WHERE id = p_rollout FOR UPDATE;
    IF NOT FOUND OR ro.state <> 'running' THEN
        RETURN ro.state;
    END IF;
    SELECT count(*) FILTER (WHERE state IN ('failed', 'rolled_back')),
           count(*) FILTER (WHERE wave <= ro.current_wave
                              AND state NOT IN ('healthy', 'failed', 'rolled_back', 'cancelled')),
           min(wave) FILTER (WHERE wave > ro.current_wave)
      INTO failures, open_units, next_wave
      FROM rollout_units WHERE rollout_id = p_rollout;
    IF failures - ro.failures_accepted > ro.max_failures THEN
        UPDATE rollouts
           SET state = 'paused', updated_at = now(),
               paused_reason = format('paused itself: %s unit(s) failed or rolled back, more '
                                      'than max_failures %s', failures - ro.failures_accepted,
                                      ro.max_failures)
         WHERE id = p_rollout;
        RETURN 'paused';
    END IF;
    IF open_units > 0 THEN
        RETURN 'running';
    END IF;
    IF next_wave IS NULL THEN
        UPDATE rollouts SET state = 'completed', updated_at = now(), finished_at = now()
         WHERE id = p_rollout;
        RETURN 'completed';
    END IF;
    UPDATE rollouts SET current_wave = next_wave, updated_at = now() WHERE id = p_rollout;
    -- Wakes every gridcloud serve node: the ones holding the new wave's units offer to them.
    PERFORM pg_notify('gridcloud_rollouts', p_rollout::text);
    RETURN 'running';
END
$$;

-- A unit's report (a FirmwareStatus, or the cloud's own finding): the unit's new state and
-- the rollout's next step, in one transaction.  Locks the rollout first, so that reports of
-- two units of one rollout on two nodes are applied one after the other.  Ignored (NULL)
-- for a unit of another edge, one already healthy, or a cancelled one unless it reports
-- its end (healthy, rolled back, failed).
CREATE FUNCTION rollout_unit_report(p_unit bigint, p_edge text, p_state text,
                                    p_received bigint, p_size bigint, p_detail text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_rollout bigint;
    v_state text;
BEGIN
    SELECT rollout_id INTO v_rollout FROM rollout_units WHERE id = p_unit AND edge_id = p_edge;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM rollouts WHERE id = v_rollout FOR UPDATE;
    IF p_state = 'delta_failed' THEN
        -- Not a failure of the unit: it takes the full bundle at its next connection.
        UPDATE rollout_units
           SET state = 'offered', delta_failed = true, received = 0,
               detail = left('delta failed, the full bundle next: ' || p_detail, 500),
               updated_at = now()
         WHERE id = p_unit AND state NOT IN ('healthy', 'rolled_back', 'failed', 'cancelled')
        RETURNING state INTO v_state;
        RETURN v_state;
    END IF;
    UPDATE rollout_units
       SET state = p_state,
           received = CASE WHEN p_state = 'downloading' THEN p_received ELSE received END,
           size = coalesce(p_size, size),
           detail = left(p_detail, 500),
           updated_at = now()
     -- healthy, rolled_back and failed are final: a late or repeated report (a unit that
     -- retries what it failed) never turns them back into progress.
     WHERE id = p_unit AND state NOT IN ('healthy', 'rolled_back', 'failed')
       -- A cancelled unit that had begun still reports how it ended: the truth is shown.
       AND (state <> 'cancelled' OR p_state IN ('healthy', 'rolled_back', 'failed'))
    RETURNING state INTO v_state;
    IF v_state IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM rollout_step(v_rollout);
    RETURN v_state;
END
$$;

-- An operator's pause, resume or cancel (the API), under the same row lock as the reports.
-- Returns the rollout's state after it, or NULL if there is no such rollout; a finished
-- rollout (completed, cancelled) is left as it is.  Resuming a rollout that paused itself
-- accepts the failures so far: the threshold then counts only the ones after them.
CREATE FUNCTION rollout_control(p_rollout bigint, p_action text, p_reason text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    ro rollouts%ROWTYPE;
    failures integer;
BEGIN
    SELECT * INTO ro FROM rollouts WHERE id = p_rollout FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF ro.state IN ('completed', 'cancelled') THEN
        RETURN ro.state;
    END IF;
    IF p_action = 'pause' THEN
        UPDATE rollouts SET state = 'paused', paused_reason = p_reason, updated_at = now()
         WHERE id = p_rollout;
    ELSIF p_action = 'resume' THEN
        SELECT count(*) INTO failures FROM rollout_units
         WHERE rollout_id = p_rollout AND state IN ('failed', 'rolled_back');
        UPDATE rollouts
           SET state = 'running', paused_reason = NULL, updated_at = now(),
               failures_accepted = CASE WHEN failures - failures_accepted > max_failures
                                        THEN failures ELSE failures_accepted END
         WHERE id = p_rollout;
        PERFORM rollout_step(p_rollout);
        PERFORM pg_notify('gridcloud_rollouts', p_rollout::text);
    ELSIF p_action = 'cancel' THEN
        UPDATE rollout_units SET state = 'cancelled', detail = p_reason, updated_at = now()
         WHERE rollout_id = p_rollout
           AND state NOT IN ('healthy', 'rolled_back', 'failed', 'cancelled');
        UPDATE rollouts SET state = 'cancelled', updated_at = now(), finished_at = now()
         WHERE id = p_rollout;
        -- The serve nodes forget the cancelled units' offers (no more chunks for them).
        PERFORM pg_notify('gridcloud_rollouts', p_rollout::text);
    ELSE
        RAISE EXCEPTION 'unknown rollout action %', p_action;
    END IF;
    RETURN (SELECT state FROM rollouts WHERE id = p_rollout);
END
$$;

-- Rollout unit changes on the live feed (as commands in 0007 and alarms in 0008): a
-- feed_log row with rollout_unit_id set, sent as an event "rollout".
ALTER TABLE feed_log ADD COLUMN rollout_unit_id bigint;

CREATE FUNCTION rollout_units_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO feed_log (edge_id, first_seq, last_seq, rollout_unit_id)
    VALUES (NEW.edge_id, 1, 1, NEW.id);
    PERFORM pg_notify('gridcloud_feed', NEW.edge_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER rollout_units_feed AFTER UPDATE OF state, received ON rollout_units
    FOR EACH ROW
    WHEN (NEW.state IS DISTINCT FROM OLD.state OR NEW.received IS DISTINCT FROM OLD.received)
    EXECUTE FUNCTION rollout_units_feed();
