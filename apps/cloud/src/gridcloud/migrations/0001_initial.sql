-- 0001: edges, meters, time-partitioned readings, and the ingest function.
--
-- Applied by `gridcloud migrate` inside one transaction (see migrations/__init__.py).
-- Design notes and queries: docs/cloud.md ("Schema").

-- One row per edge unit. Created when `gridcloud pki revoke` names it or when it
-- first connects with a valid device certificate (auto-registration).
CREATE TABLE edges (
    edge_id           text PRIMARY KEY,
    first_seen_at     timestamptz NOT NULL DEFAULT now(),
    last_connected_at timestamptz,
    last_peer         text,
    firmware_version  text,
    boot_slot         text,
    -- High-water mark of the edge's journal: every record with seq <= last_seq
    -- is committed in `readings`.  This, not a unique index, is what makes
    -- ingest idempotent on (edge, seq): see ingest_batch() below.
    last_seq          bigint NOT NULL DEFAULT 0,
    last_batch_at     timestamptz,
    readings_total    bigint NOT NULL DEFAULT 0,
    -- Records the edge skipped (seq gaps: journal overflow on the edge).
    seq_gaps_total    bigint NOT NULL DEFAULT 0,
    revoked_at        timestamptz,
    revoked_reason    text
);

-- Certificate-level revocation (a leaked key on an edge that was re-keyed).
CREATE TABLE revoked_certificates (
    serial     numeric PRIMARY KEY,
    edge_id    text,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    reason     text
);

-- Latest state of every meter, kept up to date by ingest_batch().
CREATE TABLE meters (
    meter_id          bigint PRIMARY KEY,
    edge_id           text NOT NULL REFERENCES edges (edge_id),
    first_seen_at     timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    last_interval_end timestamptz NOT NULL,
    energy_wh         bigint NOT NULL,
    max_demand_w      bigint NOT NULL,
    voltage_dv        integer NOT NULL,
    current_ma        bigint NOT NULL,
    power_factor      integer NOT NULL,
    flags             integer NOT NULL
);

-- Alarms reported by edges (EventReport).  They share the journal sequence space
-- with readings, so they go through the same high-water mark (ingest_event()).
CREATE TABLE events (
    edge_id     text NOT NULL REFERENCES edges (edge_id),
    seq         bigint NOT NULL,
    meter_id    bigint NOT NULL,
    event_time  timestamptz NOT NULL,
    kind        integer NOT NULL,
    detail      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (edge_id, seq)
);
CREATE INDEX events_meter_time ON events (meter_id, event_time);

-- Interval readings, range-partitioned by interval end (one partition per UTC
-- day, created ahead by create_readings_partitions()).  The DEFAULT partition
-- takes anything outside the prepared days, so no reading is ever rejected.
CREATE TABLE readings (
    edge_id      text NOT NULL,
    seq          bigint NOT NULL,
    meter_id     bigint NOT NULL,
    interval_end timestamptz NOT NULL,
    energy_wh    bigint NOT NULL,
    max_demand_w bigint NOT NULL,
    voltage_dv   integer NOT NULL,
    current_ma   bigint NOT NULL,
    power_factor integer NOT NULL,
    flags        integer NOT NULL
) PARTITION BY RANGE (interval_end);

CREATE TABLE readings_default PARTITION OF readings DEFAULT;

-- Queries are "this meter over that time": the index every partition gets.
CREATE INDEX readings_meter_time ON readings (meter_id, interval_end);

-- Create the daily partitions for [today - days_back, today + days_ahead] (UTC)
-- that do not exist yet; idempotent, cheap when nothing is missing.  Rows that
-- already sit in the default partition for a new day are moved into it first,
-- because PostgreSQL refuses to attach a range the default partition overlaps.
CREATE FUNCTION create_readings_partitions(days_ahead integer, days_back integer DEFAULT 1)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d       date;
    part    text;
    lo      timestamptz;
    hi      timestamptz;
    created integer := 0;
BEGIN
    FOR d IN SELECT generate_series((now() AT TIME ZONE 'UTC')::date - days_back,
                                    (now() AT TIME ZONE 'UTC')::date + days_ahead,
                                    interval '1 day')::date
    LOOP
        part := 'readings_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I (LIKE readings INCLUDING DEFAULTS)', part);
        EXECUTE format(
            'WITH moved AS (DELETE FROM readings_default'
            ' WHERE interval_end >= %L AND interval_end < %L RETURNING *)'
            ' INSERT INTO %I SELECT * FROM moved', lo, hi, part);
        EXECUTE format('ALTER TABLE readings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

SELECT create_readings_partitions(7, 1);

-- Store one batch of consecutive journal records of one edge, exactly once.
--
-- Why a high-water mark and not ON CONFLICT: `readings` is partitioned by time,
-- so a unique index must contain interval_end and cannot guarantee uniqueness of
-- (edge_id, seq) alone.  The edge sends its journal in sequence order and the
-- ack is cumulative, so "seq <= edges.last_seq" is exactly "already stored".
-- The edge row is locked FOR UPDATE first, which serialises two sessions of the
-- same edge (an old one still finishing while a new one replays): the second
-- waits, then sees the first one's high-water mark and skips those records.
--
-- Arguments are parallel arrays (one element per record, seq = first_seq + i).
-- Returns the high-water mark before this batch (so the caller can see gaps).
CREATE FUNCTION ingest_batch(
    p_edge_id      text,
    p_first_seq    bigint,
    p_meter_id     bigint[],
    p_interval_end bigint[],     -- seconds since the Unix epoch (UTC)
    p_energy_wh    bigint[],
    p_max_demand_w bigint[],
    p_voltage_dv   integer[],
    p_current_ma   bigint[],
    p_power_factor integer[],
    p_flags        integer[]
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_prev  bigint;
    v_count integer := cardinality(p_meter_id);
    v_last  bigint := p_first_seq + cardinality(p_meter_id) - 1;
    v_skip  integer;
BEGIN
    SELECT last_seq INTO v_prev FROM edges WHERE edge_id = p_edge_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown edge %', p_edge_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF v_count = 0 OR v_last <= v_prev THEN
        RETURN v_prev;                       -- all already stored
    END IF;
    v_skip := greatest(v_prev - p_first_seq + 1, 0)::integer;   -- records already stored

    INSERT INTO readings (edge_id, seq, meter_id, interval_end, energy_wh, max_demand_w,
                          voltage_dv, current_ma, power_factor, flags)
    SELECT p_edge_id, p_first_seq + r.ord - 1, r.meter_id, to_timestamp(r.interval_end),
           r.energy_wh, r.max_demand_w, r.voltage_dv, r.current_ma, r.power_factor, r.flags
      FROM unnest(p_meter_id, p_interval_end, p_energy_wh, p_max_demand_w, p_voltage_dv,
                  p_current_ma, p_power_factor, p_flags)
           WITH ORDINALITY AS r(meter_id, interval_end, energy_wh, max_demand_w, voltage_dv,
                                current_ma, power_factor, flags, ord)
     WHERE r.ord > v_skip;

    -- Latest state per meter: the newest interval of this batch, if newer.
    INSERT INTO meters AS m (meter_id, edge_id, last_interval_end, energy_wh, max_demand_w,
                             voltage_dv, current_ma, power_factor, flags)
    SELECT DISTINCT ON (r.meter_id) r.meter_id, p_edge_id, to_timestamp(r.interval_end),
           r.energy_wh, r.max_demand_w, r.voltage_dv, r.current_ma, r.power_factor, r.flags
      FROM unnest(p_meter_id, p_interval_end, p_energy_wh, p_max_demand_w, p_voltage_dv,
                  p_current_ma, p_power_factor, p_flags)
           WITH ORDINALITY AS r(meter_id, interval_end, energy_wh, max_demand_w, voltage_dv,
                                current_ma, power_factor, flags, ord)
     WHERE r.ord > v_skip
     ORDER BY r.meter_id, r.interval_end DESC, r.ord DESC
    ON CONFLICT (meter_id) DO UPDATE
       SET edge_id = excluded.edge_id, updated_at = now(),
           last_interval_end = excluded.last_interval_end, energy_wh = excluded.energy_wh,
           max_demand_w = excluded.max_demand_w, voltage_dv = excluded.voltage_dv,
           current_ma = excluded.current_ma, power_factor = excluded.power_factor,
           flags = excluded.flags
     WHERE m.last_interval_end <= excluded.last_interval_end;

    UPDATE edges
       SET last_seq = v_last, last_batch_at = now(),
           readings_total = readings_total + (v_count - v_skip),
           seq_gaps_total = seq_gaps_total + greatest(p_first_seq - v_prev - 1, 0)
     WHERE edge_id = p_edge_id;
    RETURN v_prev;
END
$$;

-- Store one EventReport exactly once (same high-water mark rule as ingest_batch).
CREATE FUNCTION ingest_event(p_edge_id text, p_seq bigint, p_meter_id bigint,
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
    UPDATE edges
       SET last_seq = p_seq, last_batch_at = now(),
           seq_gaps_total = seq_gaps_total + greatest(p_seq - v_prev - 1, 0)
     WHERE edge_id = p_edge_id;
    RETURN v_prev;
END
$$;
