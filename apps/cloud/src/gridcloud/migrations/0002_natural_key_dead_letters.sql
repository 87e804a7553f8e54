-- 0002: readings unique on their natural key; a dead-letter table for what cannot be stored.
--
-- Design notes: docs/cloud.md ("Exactly once", "Dead letters").

-- A reading is one meter's interval: (meter_id, interval_end) is unique.  The
-- partition key (interval_end) is part of it, so PostgreSQL accepts it on the
-- partitioned table and every partition (present and future) gets it.  It replaces
-- the plain index on the same columns.  (edge, seq) alone cannot tell a journal
-- that was restored from an old copy and renumbered, or wiped and back-filled:
-- those resend readings the cloud has under new sequence numbers.
CREATE UNIQUE INDEX readings_natural_key ON readings (meter_id, interval_end);
DROP INDEX readings_meter_time;

ALTER TABLE edges
    -- readings skipped because (meter_id, interval_end) was already stored
    ADD COLUMN duplicates_total   bigint NOT NULL DEFAULT 0,
    -- of those, the ones whose values differed from the stored reading (kept: the first)
    ADD COLUMN conflicts_total    bigint NOT NULL DEFAULT 0,
    -- records set aside in dead_letters
    ADD COLUMN dead_letters_total bigint NOT NULL DEFAULT 0;

-- Records the cloud can never store (a value outside docs/protocol.md's value
-- ranges, or one PostgreSQL refuses), kept with the reason instead of failing
-- their batch for ever.  They take their journal sequence number like any
-- record, so the high-water mark passes them and the batch is acknowledged.
-- record: the values as received, as JSON text (json, not jsonb: it may hold \u0000).
CREATE TABLE dead_letters (
    edge_id     text NOT NULL REFERENCES edges (edge_id),
    seq         bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('reading', 'event')),
    record      json NOT NULL,
    reason      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (edge_id, seq)
);

-- Set one record aside, exactly once (the high-water-mark rule of ingest_batch()).
-- Returns the high-water mark before it.
CREATE FUNCTION dead_letter(p_edge_id text, p_seq bigint, p_kind text, p_record json,
                            p_reason text)
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
    INSERT INTO dead_letters (edge_id, seq, kind, record, reason)
    VALUES (p_edge_id, p_seq, p_kind, p_record, p_reason);
    UPDATE edges
       SET last_seq = p_seq, last_batch_at = now(),
           dead_letters_total = dead_letters_total + 1,
           seq_gaps_total = seq_gaps_total + greatest(p_seq - v_prev - 1, 0)
     WHERE edge_id = p_edge_id;
    RETURN v_prev;
END
$$;

-- ingest_batch() as in 0001, but a reading whose (meter_id, interval_end) is stored
-- already is skipped (ON CONFLICT DO NOTHING) and counted; the ones whose values
-- differ are counted apart and the first of them is returned for the log.  Only
-- readings really inserted update `meters`.  Returns one row: the high-water mark
-- before the batch, the duplicates, the differing ones, and the first differing
-- (meter_id, interval_end) or NULLs.
DROP FUNCTION ingest_batch(text, bigint, bigint[], bigint[], bigint[], bigint[], integer[],
                           bigint[], integer[], integer[]);
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
    p_flags        integer[],
    OUT previous      bigint,
    OUT duplicates    integer,
    OUT conflicts     integer,
    OUT conflict_meter bigint,
    OUT conflict_end  bigint
)
LANGUAGE plpgsql AS $$
DECLARE
    v_count    integer := cardinality(p_meter_id);
    v_last     bigint := p_first_seq + cardinality(p_meter_id) - 1;
    v_skip     integer;
    v_inserted integer;
BEGIN
    duplicates := 0;
    conflicts := 0;
    SELECT last_seq INTO previous FROM edges WHERE edge_id = p_edge_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown edge %', p_edge_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF v_count = 0 OR v_last <= previous THEN
        RETURN;                              -- all already stored
    END IF;
    v_skip := greatest(previous - p_first_seq + 1, 0)::integer;   -- records already stored

    WITH incoming AS (
        SELECT p_first_seq + r.ord - 1 AS seq, r.meter_id, to_timestamp(r.interval_end) AS ends,
               r.energy_wh, r.max_demand_w, r.voltage_dv, r.current_ma, r.power_factor, r.flags
          FROM unnest(p_meter_id, p_interval_end, p_energy_wh, p_max_demand_w, p_voltage_dv,
                      p_current_ma, p_power_factor, p_flags)
               WITH ORDINALITY AS r(meter_id, interval_end, energy_wh, max_demand_w, voltage_dv,
                                    current_ma, power_factor, flags, ord)
         WHERE r.ord > v_skip
    ), inserted AS (
        INSERT INTO readings (edge_id, seq, meter_id, interval_end, energy_wh, max_demand_w,
                              voltage_dv, current_ma, power_factor, flags)
        SELECT p_edge_id, i.seq, i.meter_id, i.ends, i.energy_wh, i.max_demand_w, i.voltage_dv,
               i.current_ma, i.power_factor, i.flags
          FROM incoming i
        ON CONFLICT (meter_id, interval_end) DO NOTHING
        RETURNING meter_id, interval_end, energy_wh, max_demand_w, voltage_dv, current_ma,
                  power_factor, flags
    ), latest AS (
        -- Latest state per meter: the newest interval inserted, if newer.
        INSERT INTO meters AS m (meter_id, edge_id, last_interval_end, energy_wh, max_demand_w,
                                 voltage_dv, current_ma, power_factor, flags)
        SELECT DISTINCT ON (n.meter_id) n.meter_id, p_edge_id, n.interval_end, n.energy_wh,
               n.max_demand_w, n.voltage_dv, n.current_ma, n.power_factor, n.flags
          FROM inserted n
         ORDER BY n.meter_id, n.interval_end DESC
        ON CONFLICT (meter_id) DO UPDATE
           SET edge_id = excluded.edge_id, updated_at = now(),
               last_interval_end = excluded.last_interval_end, energy_wh = excluded.energy_wh,
               max_demand_w = excluded.max_demand_w, voltage_dv = excluded.voltage_dv,
               current_ma = excluded.current_ma, power_factor = excluded.power_factor,
               flags = excluded.flags
         WHERE m.last_interval_end <= excluded.last_interval_end
    )
    SELECT count(*) INTO v_inserted FROM inserted;

    duplicates := v_count - v_skip - v_inserted;
    IF duplicates > 0 THEN
        -- Rare (a restored or wiped journal): compare the skipped readings with the stored ones.
        SELECT count(*) OVER (), r.meter_id, extract(epoch FROM r.interval_end)::bigint
          INTO conflicts, conflict_meter, conflict_end
          FROM readings r
          JOIN unnest(p_meter_id, p_interval_end, p_energy_wh, p_max_demand_w, p_voltage_dv,
                      p_current_ma, p_power_factor, p_flags)
               WITH ORDINALITY AS x(meter_id, interval_end, energy_wh, max_demand_w, voltage_dv,
                                    current_ma, power_factor, flags, ord)
            ON r.meter_id = x.meter_id AND r.interval_end = to_timestamp(x.interval_end)
         WHERE x.ord > v_skip
           AND NOT (r.edge_id = p_edge_id AND r.seq = p_first_seq + x.ord - 1)
           AND (r.energy_wh, r.max_demand_w, r.voltage_dv, r.current_ma, r.power_factor, r.flags)
               IS DISTINCT FROM (x.energy_wh, x.max_demand_w, x.voltage_dv, x.current_ma,
                                 x.power_factor, x.flags)
         ORDER BY r.meter_id, r.interval_end
         LIMIT 1;
        conflicts := coalesce(conflicts, 0);
    END IF;

    UPDATE edges
       SET last_seq = v_last, last_batch_at = now(),
           readings_total = readings_total + v_inserted,
           duplicates_total = duplicates_total + duplicates,
           conflicts_total = conflicts_total + conflicts,
           seq_gaps_total = seq_gaps_total + greatest(p_first_seq - previous - 1, 0)
     WHERE edge_id = p_edge_id;
END
$$;
