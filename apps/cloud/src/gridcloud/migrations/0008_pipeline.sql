-- 0008: the data pipeline (`gridcloud pipeline`): energy aggregates, prepaid credit, alarms.
--
-- Design notes: docs/pipeline.md and the docstrings of the gridcloud.pipeline package.
--
-- Work: every edge's journal sequence space, in order.  `pipeline_progress.done_seq`
-- is how far the pipeline has processed an edge (readings, events and dead letters
-- all take journal sequence numbers); `edges.last_seq` is how far ingest has
-- committed.  A worker claims edges with work (last_seq > done_seq) FOR UPDATE SKIP
-- LOCKED, processes (done_seq, upto] and moves done_seq in the same transaction
-- that commits the effects, so a crash at any instant loses or repeats nothing and
-- ingest itself writes nothing for the pipeline.  Woken by ingest's own NOTIFY
-- gridcloud_feed (migration 0005), with polling as the fallback.

CREATE TABLE pipeline_progress (
    edge_id     text PRIMARY KEY REFERENCES edges (edge_id),
    -- every record of the edge with seq <= done_seq has been processed
    done_seq    bigint NOT NULL DEFAULT 0,
    -- consecutive failed attempts at the edge's next records
    failures    integer NOT NULL DEFAULT 0,
    -- records up to this seq are claimed one at a time, alone (a batch with them failed)
    narrow_until bigint NOT NULL DEFAULT 0,
    retry_at    timestamptz,
    last_error  text,
    updated_at  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO pipeline_progress (edge_id) SELECT edge_id FROM edges;

CREATE FUNCTION pipeline_progress_for_edge() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pipeline_progress (edge_id) VALUES (NEW.edge_id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER edges_pipeline AFTER INSERT ON edges
    FOR EACH ROW EXECUTE FUNCTION pipeline_progress_for_edge();

-- Records the pipeline set aside after repeated failures, with the reason.  They
-- count as processed for nothing: aggregates and charges skip them.
CREATE TABLE pipeline_dead_letters (
    edge_id   text NOT NULL,
    seq       bigint NOT NULL,
    reason    text NOT NULL,
    attempts  integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (edge_id, seq)
);

-- The newest processed reading of each meter (the fast path: in-order readings need
-- no look-up of the previous register value).  Its row lock serialises two workers
-- that meet on one meter (a meter that moved between edges).
CREATE TABLE meter_state (
    meter_id  bigint PRIMARY KEY,
    last_end  timestamptz,
    last_wh   bigint
);

-- Stage 1: energy and peak demand per meter and per edge, per hour and per UTC day.
-- An interval (end - 15 min, end] belongs to the hour/day holding its last instant.
-- energy_wh: the register's increase since the meter's previous reading, attributed
-- to the reading that shows it (across a gap: all of it to the reading after the gap).
CREATE TABLE energy_meter (
    meter_id      bigint NOT NULL,
    period        text NOT NULL CHECK (period IN ('hour', 'day')),
    start         timestamptz NOT NULL,
    energy_wh     bigint NOT NULL,
    peak_demand_w bigint NOT NULL,
    readings      integer NOT NULL,
    PRIMARY KEY (meter_id, period, start)
);
CREATE TABLE energy_edge (
    edge_id       text NOT NULL,
    period        text NOT NULL CHECK (period IN ('hour', 'day')),
    start         timestamptz NOT NULL,
    energy_wh     bigint NOT NULL,
    -- the highest demand one of its meters recorded (not the coincident peak)
    peak_demand_w bigint NOT NULL,
    readings      integer NOT NULL,
    PRIMARY KEY (edge_id, period, start)
);

-- Stage 2: prepaid credit.  Money is integer minor units (cents); prices are minor
-- units per kWh, so one Wh at price p costs p/1000 minor units exactly.
CREATE TABLE customers (
    customer_id bigserial PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    reference   text UNIQUE CHECK (length(reference) BETWEEN 1 AND 100),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tariffs (
    tariff_id  bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    currency   text NOT NULL DEFAULT 'XXX' CHECK (currency ~ '^[A-Z]{3}$'),
    -- the zone time-of-use bands and days are reckoned in
    timezone   text NOT NULL DEFAULT 'UTC',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A tariff's rates from valid_from on (until the next version): a change mid-day is
-- a new version; each interval is priced by the version in force at its last instant.
CREATE TABLE tariff_versions (
    tariff_id       bigint NOT NULL REFERENCES tariffs (tariff_id),
    valid_from      timestamptz NOT NULL,
    -- minor units per day, charged for each local day from the account's first
    -- (the version in force at the day's start)
    standing_charge bigint NOT NULL CHECK (standing_charge >= 0),
    -- time-of-use bands: band i starts at band_start[i] minutes after local midnight and
    -- runs to the next start; band_start[1] = 0; price in minor units per kWh
    band_start      integer[] NOT NULL,
    band_price      bigint[] NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tariff_id, valid_from),
    CHECK (cardinality(band_start) = cardinality(band_price) AND cardinality(band_start) >= 1
           AND band_start[1] = 0)
);

CREATE TABLE credit_accounts (
    meter_id        bigint PRIMARY KEY,
    customer_id     bigint NOT NULL REFERENCES customers (customer_id),
    tariff_id       bigint NOT NULL REFERENCES tariffs (tariff_id),
    -- readings ending after this are charged
    active_from     timestamptz NOT NULL DEFAULT now(),
    balance         bigint NOT NULL DEFAULT 0,
    -- sum over charged readings of Wh * price (thousandths of a minor unit), and the
    -- minor units charged for energy so far: floor(exact_milli / 1000), so rounding
    -- never drifts and the charges add up to the tariff applied to the energy
    exact_milli     numeric NOT NULL DEFAULT 0,
    energy_charged  bigint NOT NULL DEFAULT 0,
    -- the last local day whose standing charge is in the ledger
    standing_through date,
    low_balance     bigint NOT NULL DEFAULT 0 CHECK (low_balance >= 0),
    -- the relay state the pipeline last asked for
    relay           text NOT NULL DEFAULT 'closed' CHECK (relay IN ('open', 'closed')),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_accounts_customer ON credit_accounts (customer_id);

CREATE TABLE topups (
    topup_id   bigserial PRIMARY KEY,
    meter_id   bigint NOT NULL REFERENCES credit_accounts (meter_id),
    amount     bigint NOT NULL CHECK (amount > 0),
    -- the caller's reference: a top-up sent twice is stored once
    reference  text NOT NULL UNIQUE CHECK (length(reference) BETWEEN 1 AND 100),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every change of a balance.  amount is signed: + top-up, - charge.  An energy charge
-- names the readings it charges: the meter, the edge and the journal sequence range of
-- the batch, and the interval range; energy_wh may be negative in a correction (a
-- late reading moves energy from the reading after it).
CREATE TABLE ledger (
    entry_id     bigserial PRIMARY KEY,
    meter_id     bigint NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('topup', 'energy', 'standing')),
    amount       bigint NOT NULL,
    balance_after bigint NOT NULL,
    energy_wh    bigint,
    tariff_id    bigint,
    edge_id      text,
    first_seq    bigint,
    last_seq     bigint,
    first_interval_end timestamptz,
    last_interval_end  timestamptz,
    readings     integer,
    day          date,
    topup_id     bigint REFERENCES topups (topup_id),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_meter ON ledger (meter_id, entry_id);

-- Relay decisions, written in the transaction of the charge or top-up that made them.
-- An outbox: the commands path (issue 12) turns each row into a command and fills
-- command_id; until then they wait here, in order.
CREATE TABLE relay_requests (
    request_id  bigserial PRIMARY KEY,
    meter_id    bigint NOT NULL,
    desired     text NOT NULL CHECK (desired IN ('open', 'closed')),
    reason      text NOT NULL,
    entry_id    bigint REFERENCES ledger (entry_id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    command_id  bigint
);
CREATE INDEX relay_requests_pending ON relay_requests (request_id) WHERE command_id IS NULL;

-- Stage 3: alarms.  One open row per (kind, edge, meter) at most; meter_id 0: the unit.
CREATE TABLE alarms (
    alarm_id    bigserial PRIMARY KEY,
    kind        text NOT NULL,
    edge_id     text NOT NULL,
    meter_id    bigint NOT NULL,
    raised_at   timestamptz NOT NULL DEFAULT now(),
    cleared_at  timestamptz,
    evidence    jsonb NOT NULL,
    cleared_evidence jsonb
);
CREATE UNIQUE INDEX alarms_open ON alarms (kind, edge_id, meter_id) WHERE cleared_at IS NULL;
CREATE INDEX alarms_meter ON alarms (meter_id, alarm_id);

-- Every raised or cleared alarm goes into the live feed's log (migration 0005) in the
-- transaction that changed it, so /v1/feed sends it in the same resumable order as
-- readings and events; `gridcloud api` processes are woken by NOTIFY gridcloud_alarms.
ALTER TABLE feed_log ADD COLUMN alarm_id bigint;

CREATE FUNCTION alarms_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO feed_log (edge_id, first_seq, last_seq, alarm_id)
    VALUES (NEW.edge_id, 0, 0, NEW.alarm_id);
    PERFORM pg_notify('gridcloud_alarms', NEW.edge_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER alarms_changed AFTER INSERT OR UPDATE OF cleared_at ON alarms
    FOR EACH ROW EXECUTE FUNCTION alarms_notify();

-- The price (minor units per kWh) of an interval ending at p_end under a version.
CREATE FUNCTION tariff_band_price(p_start integer[], p_price bigint[], p_tz text,
                                  p_end timestamptz)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_price[coalesce(array_position(
        array(SELECT s <= (extract(hour FROM l) * 60 + extract(minute FROM l))::integer
                FROM unnest(p_start) s), false) - 1, cardinality(p_start))]
      FROM (SELECT (p_end - interval '1 microsecond') AT TIME ZONE p_tz AS l) t
$$;

-- ---------------------------------------------------------------------------------------
-- Claim: up to p_edges edges with unprocessed records, up to p_batch records each, locked
-- for this transaction (SKIP LOCKED: other workers take other edges).  An edge whose
-- batch failed is claimed alone, when its retry time has come, one record at a time up
-- to the end of the failed batch, so the one record that fails is found and set aside
-- while the others go through.
CREATE FUNCTION pipeline_claim(p_edges integer, p_batch integer)
RETURNS TABLE (edge_id text, from_seq bigint, upto bigint, failures integer)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    SELECT p.edge_id, p.done_seq, least(e.last_seq, p.done_seq + 1), p.failures
      FROM pipeline_progress p JOIN edges e ON e.edge_id = p.edge_id
     WHERE e.last_seq > p.done_seq AND p.done_seq < p.narrow_until
       AND coalesce(p.retry_at, '-infinity') <= now()
     ORDER BY p.retry_at NULLS FIRST
     LIMIT 1
       FOR UPDATE OF p SKIP LOCKED;
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT p.edge_id, p.done_seq, least(e.last_seq, p.done_seq + p_batch), 0
      FROM pipeline_progress p JOIN edges e ON e.edge_id = p.edge_id
     WHERE e.last_seq > p.done_seq AND p.done_seq >= p.narrow_until
     ORDER BY p.updated_at
     LIMIT p_edges
       FOR UPDATE OF p SKIP LOCKED;
END
$$;

-- A failed attempt at claimed edges (after the attempt's rollback): count it, back off,
-- and set a single record aside for good after p_max_attempts.  Returns the number of
-- records set aside.
CREATE FUNCTION pipeline_failed(p_edge_id text[], p_from bigint[], p_upto bigint[],
                                p_reason text, p_max_attempts integer, p_backoff double precision)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_dead integer;
BEGIN
    WITH c AS (
        SELECT * FROM unnest(p_edge_id, p_from, p_upto) AS c(edge_id, from_seq, upto)
    ), p AS (
        SELECT p.edge_id, p.failures + 1 AS attempts, c.upto - c.from_seq AS n, c.upto
          FROM pipeline_progress p JOIN c ON c.edge_id = p.edge_id AND c.from_seq = p.done_seq
           FOR UPDATE OF p
    ), dead AS (
        INSERT INTO pipeline_dead_letters (edge_id, seq, reason, attempts)
        SELECT p.edge_id, c.upto, p_reason, p.attempts
          FROM p JOIN c USING (edge_id)
         WHERE p.n = 1 AND p.attempts >= p_max_attempts
        ON CONFLICT DO NOTHING
        RETURNING edge_id, seq
    ), upd AS (
        UPDATE pipeline_progress g
           SET failures = CASE WHEN d.seq IS NULL THEN p.attempts ELSE 0 END,
               done_seq = coalesce(d.seq, g.done_seq),
               narrow_until = greatest(g.narrow_until, p.upto),
               retry_at = CASE WHEN d.seq IS NULL   -- set aside: go on with the next at once
                               THEN now() + make_interval(secs => least(
                                        p_backoff * 2 ^ (p.attempts - 1), 300)) END,
               last_error = left(p_reason, 2000),
               updated_at = now()
          FROM p LEFT JOIN dead d USING (edge_id)
         WHERE g.edge_id = p.edge_id
    )
    SELECT count(*) INTO v_dead FROM dead;
    RETURN v_dead;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Process claimed ranges: all three stages, set-based, and move done_seq; one transaction
-- (the caller's).  Returns counters of what was done.
--
-- Energy of a reading = register - the register of the meter's previous *processed*
-- reading (a register that went down was reset: the reading's own value is the energy
-- since the reset).  A reading processed out of order (late, or from another edge) also
-- changes the energy of the processed reading after it: both are applied as differences
-- (new minus old) to aggregates and charges, so the result never depends on the order
-- readings arrive in.
CREATE FUNCTION pipeline_process(
    p_edge_id text[], p_from bigint[], p_upto bigint[],
    p_voltage_min integer, p_voltage_max integer,
    OUT o_readings integer, OUT o_aggregates integer, OUT o_charges integer,
    OUT o_relay integer, OUT o_raised integer, OUT o_cleared integer, OUT o_events integer
)
-- JIT compiles for longer than these statements run (their row estimates are coarse)
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v_n integer;
    v_c integer;
BEGIN
    o_readings := 0; o_aggregates := 0; o_charges := 0; o_relay := 0;
    o_raised := 0; o_cleared := 0; o_events := 0;

    -- This transaction's commit need not wait for its WAL flush: a crash of PostgreSQL can
    -- lose only whole pipeline transactions, and with them their acknowledgement (done_seq),
    -- so the work is simply done again.  Nothing outside PostgreSQL acts on the commit.
    PERFORM set_config('synchronous_commit', 'off', true);

    CREATE TEMP TABLE IF NOT EXISTS pl_claim (
        edge_id text, from_seq bigint, upto bigint) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS pl_new (
        edge_id text, seq bigint, meter_id bigint, interval_end timestamptz, energy_wh bigint,
        max_demand_w bigint, voltage_dv integer, flags integer) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS pl_span (
        meter_id bigint, lo timestamptz, hi timestamptz, prev_end timestamptz,
        next_end timestamptz, was_last timestamptz, ooo boolean) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS pl_delta (
        meter_id bigint, edge_id text, seq bigint, interval_end timestamptz, is_new boolean,
        dwh bigint, max_demand_w bigint) ON COMMIT DELETE ROWS;

    INSERT INTO pl_claim SELECT * FROM unnest(p_edge_id, p_from, p_upto);

    INSERT INTO pl_new
    SELECT r.edge_id, r.seq, r.meter_id, r.interval_end, r.energy_wh, r.max_demand_w,
           r.voltage_dv, r.flags
      FROM unnest(p_edge_id, p_from, p_upto) AS c(edge_id, from_seq, upto)
      CROSS JOIN LATERAL (
          SELECT * FROM readings r   -- an index range per edge, never a scan of readings
           WHERE r.edge_id = c.edge_id AND r.seq > c.from_seq AND r.seq <= c.upto OFFSET 0) r;
    GET DIAGNOSTICS o_readings = ROW_COUNT;
    ANALYZE pl_new;

    -- Lock each meter's state (in meter order: no deadlock between workers).
    INSERT INTO meter_state (meter_id) SELECT DISTINCT meter_id FROM pl_new
    ON CONFLICT DO NOTHING;
    PERFORM 1 FROM meter_state s WHERE s.meter_id IN (SELECT meter_id FROM pl_new)
     ORDER BY s.meter_id FOR UPDATE;

    -- Per meter: the range of new readings, and the processed readings just before and
    -- just after it (the after one only when readings arrive out of order).
    INSERT INTO pl_span
    SELECT m.meter_id, m.lo, m.hi,
           CASE WHEN s.last_end IS NULL OR s.last_end < m.lo THEN s.last_end
                ELSE (SELECT max(r.interval_end) FROM readings r
                       WHERE r.meter_id = m.meter_id AND r.interval_end < m.lo
                         AND EXISTS (SELECT 1 FROM pipeline_progress g
                                      WHERE g.edge_id = r.edge_id AND g.done_seq >= r.seq)
                         AND NOT EXISTS (SELECT 1 FROM pipeline_dead_letters d
                                          WHERE d.edge_id = r.edge_id AND d.seq = r.seq))
           END,
           CASE WHEN s.last_end IS NULL OR s.last_end < m.lo THEN NULL
                ELSE (SELECT min(r.interval_end) FROM readings r
                       WHERE r.meter_id = m.meter_id AND r.interval_end > m.hi
                         AND EXISTS (SELECT 1 FROM pipeline_progress g
                                      WHERE g.edge_id = r.edge_id AND g.done_seq >= r.seq)
                         AND NOT EXISTS (SELECT 1 FROM pipeline_dead_letters d
                                          WHERE d.edge_id = r.edge_id AND d.seq = r.seq))
           END,
           s.last_end, s.last_end IS NOT NULL AND s.last_end >= m.lo
      FROM (SELECT meter_id, min(interval_end) AS lo, max(interval_end) AS hi
              FROM pl_new GROUP BY meter_id) m
      JOIN meter_state s ON s.meter_id = m.meter_id;
    ANALYZE pl_span;

    -- The readings of each span: new ones, and processed ones (the span's ends, and any
    -- processed reading among out-of-order new ones).  In order (the usual case) the
    -- span is the previous processed reading plus the new ones.
    WITH win AS (
        SELECT n.meter_id, n.edge_id, n.seq, n.interval_end, n.energy_wh, n.max_demand_w,
               true AS is_new
          FROM pl_new n
        UNION ALL
        SELECT r.meter_id, r.edge_id, r.seq, r.interval_end, r.energy_wh, r.max_demand_w, false
          FROM pl_span s
          CROSS JOIN LATERAL (
              SELECT * FROM readings r   -- index probes on (meter_id, interval_end)
               WHERE r.meter_id = s.meter_id
                 AND r.interval_end >= coalesce(s.prev_end, s.lo)
                 AND r.interval_end <= CASE WHEN s.ooo THEN coalesce(s.next_end, s.hi)
                                            ELSE s.prev_end END
              OFFSET 0) r   -- (a fence: joined flat, it becomes a scan of readings)
         WHERE (s.ooo OR s.prev_end IS NOT NULL)
           AND NOT EXISTS (SELECT 1 FROM pl_new n
                            WHERE n.meter_id = r.meter_id AND n.interval_end = r.interval_end)
           AND EXISTS (SELECT 1 FROM pipeline_progress g
                        WHERE g.edge_id = r.edge_id AND g.done_seq >= r.seq)
           AND NOT EXISTS (SELECT 1 FROM pipeline_dead_letters d
                            WHERE d.edge_id = r.edge_id AND d.seq = r.seq)
    ), lagged AS (
        SELECT w.*,
               lag(w.energy_wh) OVER (PARTITION BY w.meter_id ORDER BY w.interval_end) AS prev_all,
               lag(w.energy_wh) OVER (PARTITION BY w.meter_id, w.is_new
                                      ORDER BY w.interval_end) AS prev_same,
               row_number() OVER (PARTITION BY w.meter_id ORDER BY w.interval_end) AS pos
          FROM win w
    )
    INSERT INTO pl_delta
    SELECT l.meter_id, l.edge_id, l.seq, l.interval_end, l.is_new,
           CASE WHEN l.prev_all IS NULL THEN 0
                WHEN l.energy_wh >= l.prev_all THEN l.energy_wh - l.prev_all
                ELSE l.energy_wh END
           - CASE WHEN l.is_new OR l.prev_same IS NULL THEN 0
                  WHEN l.energy_wh >= l.prev_same THEN l.energy_wh - l.prev_same
                  ELSE l.energy_wh END,
           l.max_demand_w
      FROM lagged l
     WHERE l.is_new OR l.pos > 1;
    ANALYZE pl_delta;

    UPDATE meter_state s
       SET last_end = n.interval_end, last_wh = n.energy_wh
      FROM (SELECT DISTINCT ON (meter_id) meter_id, interval_end, energy_wh
              FROM pl_new ORDER BY meter_id, interval_end DESC) n
     WHERE s.meter_id = n.meter_id AND (s.last_end IS NULL OR s.last_end < n.interval_end);

    -- Stage 1: aggregates (hour and day in one pass; per meter and per edge).
    WITH d AS (
        SELECT meter_id, edge_id, is_new, dwh, max_demand_w,
               date_trunc('hour', interval_end - interval '1 microsecond') AS hour
          FROM pl_delta
    ), g AS (
        SELECT meter_id, CASE WHEN grouping(day) = 0 THEN 'day' ELSE 'hour' END AS period,
               coalesce(day, hour) AS start, sum(dwh)::bigint AS energy_wh,
               coalesce(max(max_demand_w) FILTER (WHERE is_new), 0) AS peak,
               count(*) FILTER (WHERE is_new)::integer AS n
          FROM (SELECT *, date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day
                  FROM d) x
         GROUP BY GROUPING SETS ((meter_id, hour), (meter_id, day))
    )
    INSERT INTO energy_meter AS a (meter_id, period, start, energy_wh, peak_demand_w, readings)
    SELECT meter_id, period, start, energy_wh, peak, n FROM g
    ON CONFLICT (meter_id, period, start) DO UPDATE
       SET energy_wh = a.energy_wh + excluded.energy_wh,
           peak_demand_w = greatest(a.peak_demand_w, excluded.peak_demand_w),
           readings = a.readings + excluded.readings;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    o_aggregates := o_aggregates + v_n;

    WITH d AS (
        SELECT edge_id, is_new, dwh, max_demand_w,
               date_trunc('hour', interval_end - interval '1 microsecond') AS hour
          FROM pl_delta
    ), g AS (
        SELECT edge_id, CASE WHEN grouping(day) = 0 THEN 'day' ELSE 'hour' END AS period,
               coalesce(day, hour) AS start, sum(dwh)::bigint AS energy_wh,
               coalesce(max(max_demand_w) FILTER (WHERE is_new), 0) AS peak,
               count(*) FILTER (WHERE is_new)::integer AS n
          FROM (SELECT *, date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day
                  FROM d) x
         GROUP BY GROUPING SETS ((edge_id, hour), (edge_id, day))
    )
    INSERT INTO energy_edge AS a (edge_id, period, start, energy_wh, peak_demand_w, readings)
    SELECT edge_id, period, start, energy_wh, peak, n FROM g
    ON CONFLICT (edge_id, period, start) DO UPDATE
       SET energy_wh = a.energy_wh + excluded.energy_wh,
           peak_demand_w = greatest(a.peak_demand_w, excluded.peak_demand_w),
           readings = a.readings + excluded.readings;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    o_aggregates := o_aggregates + v_n;

    -- Stage 2: credit.  Per account touched: the energy charge (exact, carried in
    -- thousandths so rounding never drifts), standing charges of new local days, the
    -- balance, the low-balance alarm and the relay decision, in one statement per step.
    WITH charged AS (
        SELECT d.meter_id, d.edge_id, d.seq, d.interval_end, d.is_new, d.dwh, a.tariff_id
          FROM pl_delta d
          JOIN credit_accounts a ON a.meter_id = d.meter_id AND d.interval_end > a.active_from
    ), price AS MATERIALIZED (
        -- one look-up per tariff and interval, not per reading
        SELECT k.tariff_id, k.interval_end, t.timezone,
               tariff_band_price(v.band_start, v.band_price, t.timezone, k.interval_end) AS price
          FROM (SELECT DISTINCT tariff_id, interval_end FROM charged) k
          JOIN tariffs t ON t.tariff_id = k.tariff_id
          CROSS JOIN LATERAL (
              SELECT tv.band_start, tv.band_price FROM tariff_versions tv
               WHERE tv.tariff_id = k.tariff_id
                 AND tv.valid_from < k.interval_end
               ORDER BY tv.valid_from DESC LIMIT 1) v
    ), priced AS (
        SELECT c.meter_id, c.edge_id, c.seq, c.interval_end, c.is_new, c.dwh, c.tariff_id,
               p.timezone, p.price
          FROM charged c JOIN price p USING (tariff_id, interval_end)
    ), per_account AS (
        SELECT meter_id, min(tariff_id) AS tariff_id, min(timezone) AS timezone,
               sum(dwh * price) AS exact, sum(dwh)::bigint AS wh,
               min(edge_id) AS edge_id, min(seq) FILTER (WHERE is_new) AS first_seq,
               max(seq) FILTER (WHERE is_new) AS last_seq,
               min(interval_end) AS first_end, max(interval_end) AS last_end,
               count(*) FILTER (WHERE is_new)::integer AS n,
               (max(interval_end - interval '1 microsecond')
                    FILTER (WHERE is_new) AT TIME ZONE min(timezone))::date AS last_day
          FROM priced GROUP BY meter_id
    ), acc AS (
        SELECT a.meter_id, a.balance, a.low_balance, a.relay, a.exact_milli, a.energy_charged,
               p.tariff_id, p.wh, p.edge_id, p.first_seq, p.last_seq, p.first_end, p.last_end,
               p.n, p.exact,
               floor((a.exact_milli + p.exact) / 1000)::bigint - a.energy_charged AS energy_amount,
               coalesce(a.standing_through,
                        (a.active_from AT TIME ZONE p.timezone)::date - 1) AS standing_from,
               p.last_day, p.timezone
          FROM per_account p JOIN credit_accounts a ON a.meter_id = p.meter_id
           FOR UPDATE OF a
    ), standing AS (
        SELECT acc.meter_id, day::date AS day,
               (SELECT tv.standing_charge FROM tariff_versions tv
                 WHERE tv.tariff_id = acc.tariff_id
                   AND tv.valid_from <= (day::timestamp AT TIME ZONE acc.timezone)
                 ORDER BY tv.valid_from DESC LIMIT 1) AS amount
          FROM acc, generate_series((acc.standing_from + 1)::timestamp, acc.last_day::timestamp,
                                    interval '1 day') day
         WHERE acc.last_day > acc.standing_from
    ), totals AS MATERIALIZED (
        SELECT acc.*, coalesce(s.amount, 0)::bigint AS standing_amount
          FROM acc
          LEFT JOIN (SELECT meter_id, sum(coalesce(amount, 0)) AS amount FROM standing
                      GROUP BY meter_id) s ON s.meter_id = acc.meter_id
    ), moved AS (
        UPDATE credit_accounts a
           SET exact_milli = a.exact_milli + t.exact,
               energy_charged = a.energy_charged + t.energy_amount,
               balance = a.balance - t.energy_amount - t.standing_amount,
               standing_through = greatest(t.standing_from, t.last_day),
               relay = CASE WHEN a.balance - t.energy_amount - t.standing_amount <= 0
                            THEN 'open' ELSE a.relay END
          FROM totals t
         WHERE a.meter_id = t.meter_id
        RETURNING a.meter_id, a.balance AS new_balance, t.balance AS old_balance,
                  t.relay AS old_relay, a.relay AS new_relay, t.low_balance,
                  t.energy_amount, t.standing_amount, t.wh, t.tariff_id, t.edge_id,
                  t.first_seq, t.last_seq, t.first_end, t.last_end, t.n
    ), energy_rows AS (
        INSERT INTO ledger (meter_id, kind, amount, balance_after, energy_wh, tariff_id,
                            edge_id, first_seq, last_seq, first_interval_end,
                            last_interval_end, readings)
        SELECT meter_id, 'energy', -energy_amount, new_balance + 0, wh, tariff_id, edge_id,
               first_seq, last_seq, first_end, last_end, n
          FROM moved
         WHERE energy_amount <> 0 OR wh <> 0
        RETURNING entry_id, meter_id
    ), standing_rows AS (
        INSERT INTO ledger (meter_id, kind, amount, balance_after, tariff_id, day)
        SELECT s.meter_id, 'standing', -coalesce(s.amount, 0), m.new_balance, m.tariff_id, s.day
          FROM standing s JOIN moved m USING (meter_id)
        RETURNING entry_id, meter_id
    ), relay AS (
        INSERT INTO relay_requests (meter_id, desired, reason, entry_id)
        SELECT m.meter_id, 'open', 'balance ' || m.new_balance || ' <= 0',
               (SELECT max(entry_id) FROM (SELECT entry_id, meter_id FROM energy_rows
                                           UNION ALL SELECT entry_id, meter_id
                                             FROM standing_rows) e
                 WHERE e.meter_id = m.meter_id)
          FROM moved m
         WHERE m.old_relay = 'closed' AND m.new_relay = 'open'
        RETURNING 1
    ), low AS (
        INSERT INTO alarms (kind, edge_id, meter_id, evidence)
        SELECT 'low_balance', coalesce(m.edge_id, ''), m.meter_id,
               jsonb_build_object('balance', m.new_balance, 'threshold', m.low_balance,
                                  'last_interval_end', m.last_end)
          FROM moved m
         WHERE m.new_balance < m.low_balance AND m.old_balance >= m.low_balance
        ON CONFLICT (kind, edge_id, meter_id) WHERE cleared_at IS NULL DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM energy_rows) + (SELECT count(*) FROM standing_rows),
           (SELECT count(*) FROM relay), (SELECT count(*) FROM low)
      INTO o_charges, o_relay, v_n;
    o_raised := o_raised + v_n;

    -- Stage 3: alarms from readings.  A condition seen in the new readings raises its alarm
    -- once (the first such reading is the evidence); the meter's newest reading without
    -- the condition clears it.  Readings older than the meter's newest processed one can
    -- raise but not clear.
    WITH bad AS MATERIALIZED (
        -- only the readings with a condition (rare), one row per condition
        SELECT n.*, k.kind
          FROM pl_new n
          CROSS JOIN LATERAL (
              SELECT 'tamper' WHERE n.flags & 2 <> 0
              UNION ALL SELECT 'outage' WHERE n.flags & 4 <> 0
              UNION ALL SELECT 'voltage'
               WHERE n.voltage_dv < p_voltage_min OR n.voltage_dv > p_voltage_max) k(kind)
         WHERE n.flags & 6 <> 0 OR n.voltage_dv < p_voltage_min OR n.voltage_dv > p_voltage_max
    ), first_bad AS (
        SELECT DISTINCT ON (kind, meter_id) kind, meter_id, edge_id,
               jsonb_build_object('edge_id', edge_id, 'seq', seq, 'interval_end', interval_end,
                                  'flags', flags, 'voltage_dv', voltage_dv) AS evidence
          FROM bad ORDER BY kind, meter_id, interval_end
    ), watched AS MATERIALIZED (
        -- (kind, meter) pairs whose state may change: a condition now, or an alarm open
        SELECT kind, meter_id FROM first_bad
        UNION
        SELECT a.kind, a.meter_id FROM alarms a
         WHERE a.cleared_at IS NULL AND a.kind IN ('tamper', 'outage', 'voltage')
           AND a.meter_id IN (SELECT meter_id FROM pl_span)
    ), latest AS (
        -- the newest new reading of each watched meter, if newer than any processed before
        SELECT w.kind, w.meter_id, n.edge_id, n.seq, n.interval_end,
               CASE w.kind WHEN 'tamper' THEN n.flags & 2 <> 0
                           WHEN 'outage' THEN n.flags & 4 <> 0
                           ELSE n.voltage_dv < p_voltage_min OR n.voltage_dv > p_voltage_max
               END AS bad_now
          FROM watched w
          JOIN pl_span s ON s.meter_id = w.meter_id AND (s.was_last IS NULL OR s.hi > s.was_last)
          JOIN pl_new n ON n.meter_id = w.meter_id AND n.interval_end = s.hi
    ), raised AS (
        INSERT INTO alarms (kind, edge_id, meter_id, evidence, cleared_at, cleared_evidence)
        SELECT f.kind, f.edge_id, f.meter_id, f.evidence,
               CASE WHEN l.bad_now = false THEN now() END,
               CASE WHEN l.bad_now = false
                    THEN jsonb_build_object('edge_id', l.edge_id, 'seq', l.seq,
                                            'interval_end', l.interval_end) END
          FROM first_bad f
          LEFT JOIN latest l ON l.kind = f.kind AND l.meter_id = f.meter_id
         WHERE NOT EXISTS (SELECT 1 FROM alarms a
                            WHERE a.kind = f.kind AND a.meter_id = f.meter_id
                              AND a.cleared_at IS NULL)
        ON CONFLICT (kind, edge_id, meter_id) WHERE cleared_at IS NULL DO NOTHING
        RETURNING kind, meter_id
    ), cleared AS (
        UPDATE alarms a SET cleared_at = now(),
                            cleared_evidence = jsonb_build_object('edge_id', l.edge_id,
                                                                  'seq', l.seq,
                                                                  'interval_end', l.interval_end)
          FROM latest l
         WHERE a.kind = l.kind AND a.meter_id = l.meter_id AND a.cleared_at IS NULL
           AND NOT l.bad_now
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM raised), (SELECT count(*) FROM cleared) INTO v_n, v_c;
    o_raised := o_raised + v_n;
    o_cleared := o_cleared + v_c;

    -- Unit events: a journal eviction raises an alarm for the unit (cleared by the unit's
    -- next readings after it); the number of evictions is in the evidence.
    WITH ev AS (
        SELECT e.edge_id, e.seq, e.event_time, e.detail
          FROM pl_claim c
          JOIN events e ON e.edge_id = c.edge_id AND e.seq > c.from_seq AND e.seq <= c.upto
         WHERE e.kind = 32769
    ), last_ev AS (
        SELECT DISTINCT ON (edge_id) * FROM ev ORDER BY edge_id, seq DESC
    ), raised AS (
        INSERT INTO alarms (kind, edge_id, meter_id, evidence)
        SELECT 'journal_eviction', l.edge_id, 0,
               jsonb_build_object('seq', l.seq, 'event_time', l.event_time, 'detail', l.detail,
                                  'evictions', (SELECT count(*) FROM ev WHERE ev.edge_id = l.edge_id))
          FROM last_ev l
        ON CONFLICT (kind, edge_id, meter_id) WHERE cleared_at IS NULL DO UPDATE
           SET evidence = alarms.evidence || jsonb_build_object(
                   'seq', excluded.evidence -> 'seq',
                   'evictions', (alarms.evidence ->> 'evictions')::bigint
                                + (excluded.evidence ->> 'evictions')::bigint)
        RETURNING 1
    ), cleared AS (
        UPDATE alarms a
           SET cleared_at = now(),
               cleared_evidence = jsonb_build_object('seq', x.seq, 'interval_end', x.interval_end)
          FROM (SELECT DISTINCT ON (n.edge_id) n.edge_id, n.seq, n.interval_end
                  FROM pl_new n ORDER BY n.edge_id, n.seq DESC) x
         WHERE a.kind = 'journal_eviction' AND a.edge_id = x.edge_id AND a.cleared_at IS NULL
           AND x.seq > coalesce((SELECT max(seq) FROM ev WHERE ev.edge_id = x.edge_id), 0)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM ev), (SELECT count(*) FROM raised),
           (SELECT count(*) FROM cleared)
      INTO o_events, v_n, v_c;
    o_raised := o_raised + v_n;
    o_cleared := o_cleared + v_c;

    -- Acknowledge: in this very transaction.
    UPDATE pipeline_progress p
       SET done_seq = k.upto, failures = 0, retry_at = NULL, last_error = NULL,
           updated_at = now()
      FROM pl_claim k
     WHERE p.edge_id = k.edge_id AND p.done_seq = k.from_seq;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n <> cardinality(p_edge_id) THEN
        RAISE EXCEPTION 'pipeline: % of % claimed edges moved on meanwhile (not claimed?)',
                        cardinality(p_edge_id) - v_n, cardinality(p_edge_id)
              USING ERRCODE = 'serialization_failure';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Alarms of time passing (run every few seconds by one pipeline process at a time):
-- a meter silent for p_silent_intervals intervals, a unit offline for p_offline minutes.
-- Returns (raised, cleared).
CREATE FUNCTION pipeline_sweep(p_silent_intervals integer, p_offline_minutes integer,
                               OUT raised integer, OUT cleared integer)
LANGUAGE plpgsql AS $$
DECLARE
    r1 integer; r2 integer; c1 integer; c2 integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('gridcloud pipeline sweep')) THEN
        raised := 0; cleared := 0;
        RETURN;
    END IF;
    INSERT INTO alarms (kind, edge_id, meter_id, evidence)
    SELECT 'meter_silent', m.edge_id, m.meter_id,
           jsonb_build_object('last_interval_end', m.last_interval_end,
                              'intervals', p_silent_intervals)
      FROM meters m
      JOIN edges e ON e.edge_id = m.edge_id
     WHERE m.last_interval_end < now() - make_interval(secs => 900 * p_silent_intervals)
       AND e.session_token IS NOT NULL  -- a silent unit is its own alarm
    ON CONFLICT (kind, edge_id, meter_id) WHERE cleared_at IS NULL DO NOTHING;
    GET DIAGNOSTICS r1 = ROW_COUNT;
    UPDATE alarms a
       SET cleared_at = now(),
           cleared_evidence = jsonb_build_object('last_interval_end', m.last_interval_end)
      FROM meters m
     WHERE a.kind = 'meter_silent' AND a.cleared_at IS NULL AND m.meter_id = a.meter_id
       AND m.last_interval_end >= now() - make_interval(secs => 900 * p_silent_intervals);
    GET DIAGNOSTICS c1 = ROW_COUNT;
    INSERT INTO alarms (kind, edge_id, meter_id, evidence)
    SELECT 'unit_offline', e.edge_id, 0,
           jsonb_build_object('last_connected_at', e.last_connected_at,
                              'last_batch_at', e.last_batch_at, 'minutes', p_offline_minutes)
      FROM edges e
     WHERE e.session_token IS NULL AND e.revoked_at IS NULL
       AND greatest(e.last_connected_at, e.last_batch_at)
           < now() - make_interval(mins => p_offline_minutes)
    ON CONFLICT (kind, edge_id, meter_id) WHERE cleared_at IS NULL DO NOTHING;
    GET DIAGNOSTICS r2 = ROW_COUNT;
    UPDATE alarms a
       SET cleared_at = now(),
           cleared_evidence = jsonb_build_object('last_connected_at', e.last_connected_at)
      FROM edges e
     WHERE a.kind = 'unit_offline' AND a.cleared_at IS NULL AND e.edge_id = a.edge_id
       AND e.session_token IS NOT NULL;
    GET DIAGNOSTICS c2 = ROW_COUNT;
    raised := r1 + r2;
    cleared := c1 + c2;
END
$$;

-- ---------------------------------------------------------------------------------------
-- A top-up, exactly once per reference.  Returns the top-up and whether it is new; a
-- reference used before for another meter or amount is refused (unique_violation).  A
-- top-up that brings the balance above zero while the relay was opened for credit asks
-- for it to close; one that lifts it to the low-balance threshold clears that alarm.
CREATE FUNCTION credit_topup(p_meter_id bigint, p_amount bigint, p_reference text,
                             OUT topup_id bigint, OUT created boolean, OUT balance bigint,
                             OUT entry_id bigint, OUT created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_acc credit_accounts%ROWTYPE;
    v_old topups%ROWTYPE;
BEGIN
    SELECT * INTO v_acc FROM credit_accounts a WHERE a.meter_id = p_meter_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for meter %', p_meter_id
              USING ERRCODE = 'no_data_found';
    END IF;
    SELECT * INTO v_old FROM topups t WHERE t.reference = p_reference;
    IF FOUND THEN
        IF v_old.meter_id <> p_meter_id OR v_old.amount <> p_amount THEN
            RAISE EXCEPTION 'reference % was used for another top-up', p_reference
                  USING ERRCODE = 'unique_violation';
        END IF;
        topup_id := v_old.topup_id; created := false; balance := v_acc.balance;
        created_at := v_old.created_at;
        SELECT l.entry_id INTO entry_id FROM ledger l WHERE l.topup_id = v_old.topup_id;
        RETURN;
    END IF;
    INSERT INTO topups (meter_id, amount, reference) VALUES (p_meter_id, p_amount, p_reference)
    RETURNING topups.topup_id, topups.created_at INTO topup_id, created_at;
    balance := v_acc.balance + p_amount;
    UPDATE credit_accounts a
       SET balance = credit_topup.balance,
           relay = CASE WHEN credit_topup.balance > 0 THEN 'closed' ELSE a.relay END
     WHERE a.meter_id = p_meter_id;
    INSERT INTO ledger (meter_id, kind, amount, balance_after, topup_id)
    VALUES (p_meter_id, 'topup', p_amount, balance, topup_id)
    RETURNING ledger.entry_id INTO entry_id;
    IF v_acc.relay = 'open' AND balance > 0 THEN
        INSERT INTO relay_requests (meter_id, desired, reason, entry_id)
        VALUES (p_meter_id, 'closed', 'top-up: balance ' || balance || ' > 0', entry_id);
    END IF;
    IF balance >= v_acc.low_balance THEN
        UPDATE alarms a SET cleared_at = now(),
                            cleared_evidence = jsonb_build_object('balance', balance,
                                                                  'topup_id', topup_id)
         WHERE a.kind = 'low_balance' AND a.meter_id = p_meter_id AND a.cleared_at IS NULL;
    END IF;
    created := true;
END
$$;
