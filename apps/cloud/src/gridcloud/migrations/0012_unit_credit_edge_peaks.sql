-- 0012 (issue 13): prepaid credit on the unit (the allowance each prepaid meter's unit holds),
-- and the coincident per-edge peak (at the end: edge_demand, pipeline_process replaced).
--
-- Design notes: docs/pipeline.md ("Credit on the unit") and docs/edge.md ("Prepaid credit on
-- the unit").  The cloud sends each prepaid meter's remaining allowance, in Wh, to its unit as
-- a `set_allowance` command (gridwire CommandKind 9, payload gridwire.Allowance); the unit
-- counts its own readings down from it and opens the relay at zero, link or no link.
--
-- An allowance is anchored at the meter's newest processed reading (meter_state): the balance
-- is exactly the balance after that reading, and the unit counts the consumption after it.
-- Allowances are computed here, in the transaction that changed the balance (the pipeline's
-- batch or credit_topup()), by statement-level triggers, so a balance and the allowance made
-- from it commit together or not at all (kill -9 of a worker loses or repeats nothing).
--
-- When one is sent (the link is metered: not for every reading), per account:
--   first        the meter has a unit, a processed reading and no allowance yet
--   credit       the balance rose (a top-up, a correction)
--   tariff       the account's tariff changed, or a tariff version was added (prices or
--                the validity's end move)
--   half         charges took the balance to half of the balance the last allowance was
--                made from, or less (re-anchors the conservative estimate; a few per top-up)
--   validity     half of the last allowance's validity has passed
--   unit_opened  the unit reported CREDIT_RELAY_OPENED (0x8007) and the ledger, having
--                processed the readings up to that decision, shows credit: the ledger wins,
--                the new allowance makes the unit close the relay
-- A new allowance supersedes the meter's set_allowance commands still queued (never sent):
-- they end `expired` with the reason, so a unit coming back sends and receives one.

ALTER TABLE commands DROP CONSTRAINT commands_action_check;
ALTER TABLE commands ADD CONSTRAINT commands_action_check CHECK (action IN
    ('relay_open', 'relay_close', 'read_now', 'set_config', 'reboot', 'upload_now',
     'set_allowance'));

CREATE TABLE credit_allowances (
    -- orders a meter's allowances (the unit applies only a newer one)
    generation     bigserial PRIMARY KEY,
    meter_id       bigint NOT NULL REFERENCES credit_accounts (meter_id),
    reason         text NOT NULL CHECK (reason IN
                       ('first', 'credit', 'tariff', 'half', 'validity', 'unit_opened')),
    balance        bigint NOT NULL,      -- the ledger balance it was made from
    price          bigint NOT NULL,      -- minor units per kWh: the tariff's highest band
    reserve        bigint NOT NULL,      -- standing charges held back for the validity
    -- thousandths of a minor unit of energy already used but not yet charged (the account's
    -- exact_milli - 1000 * energy_charged): the Wh are those that take the balance to zero
    carried_milli  integer NOT NULL,
    allowance_wh   bigint NOT NULL,
    anchor_end     timestamptz NOT NULL,
    anchor_wh      bigint NOT NULL,
    valid_until    timestamptz NOT NULL,
    command_id     bigint,               -- NULL: the meter has no known unit yet
    -- the unit reported opening the relay under this allowance (event 0x8007)
    unit_opened_at timestamptz,
    unit_opened_reading timestamptz,     -- the interval_end of the reading it decided at
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_allowances_meter ON credit_allowances (meter_id, generation DESC);

-- Make and send allowances for p_meters (each with p_reasons[i]); meters without a processed
-- reading (no anchor) are left out.  Returns the number sent.
CREATE FUNCTION credit_send_allowances(p_meters bigint[], p_reasons text[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_hours numeric := coalesce(nullif(current_setting('gridcloud.allowance_hours', true), ''),
                                '72')::numeric;
    v_count integer;
    v_made  bigint[];
BEGIN
    WITH wanted AS (
        SELECT DISTINCT ON (w.meter_id) w.meter_id, w.reason
          FROM unnest(p_meters, p_reasons) AS w(meter_id, reason)
         ORDER BY w.meter_id
    ), made AS (
        SELECT a.meter_id, w.reason, a.balance, s.last_end, s.last_wh, m.edge_id, v.price,
               v.standing_charge,
               least(now() + make_interval(secs => v_hours * 3600),
                     (SELECT min(n.valid_from) FROM tariff_versions n
                       WHERE n.tariff_id = a.tariff_id AND n.valid_from > now())) AS valid_until,
               (a.exact_milli - 1000 * a.energy_charged) AS frac
          FROM wanted w
          JOIN credit_accounts a USING (meter_id)
          JOIN meter_state s USING (meter_id)
          LEFT JOIN meters m USING (meter_id)
          CROSS JOIN LATERAL (
                SELECT (SELECT max(p) FROM unnest(t.band_price) p) AS price, t.standing_charge
                  FROM tariff_versions t
                 WHERE t.tariff_id = a.tariff_id AND t.valid_from <= now()
                 ORDER BY t.valid_from DESC LIMIT 1) v
         WHERE s.last_end IS NOT NULL
    ), priced AS (
        SELECT made.*,
               standing_charge * ceil(extract(epoch FROM valid_until - now()) / 86400)::bigint
                   AS reserve
          FROM made
    ), rows AS (
        INSERT INTO credit_allowances (meter_id, reason, balance, price, reserve, carried_milli,
                                       allowance_wh, anchor_end, anchor_wh, valid_until)
        SELECT meter_id, reason, balance, price, reserve, frac,
               CASE WHEN balance - reserve <= 0 THEN 0
                    WHEN price <= 0 THEN 9007199254740991  -- a free tariff: no limit
                    ELSE ceil((1000 * (balance - reserve) - frac) / price)::bigint END,
               last_end, last_wh, valid_until
          FROM priced
        RETURNING generation
    )
    SELECT array_agg(generation) INTO v_made FROM rows;
    IF v_made IS NULL THEN
        RETURN 0;
    END IF;
    -- (a statement of its own: the rows above are visible to it)
    WITH made AS (
        SELECT * FROM credit_allowances WHERE generation = ANY (v_made)
    ), superseded AS (
        UPDATE commands c
           SET state = 'expired', expired_at = now(), updated_at = now(),
               reason = 'superseded by allowance ' || r.generation || ' before delivery'
          FROM made r
         WHERE c.meter_id = r.meter_id AND c.action = 'set_allowance' AND c.state = 'queued'
        RETURNING 1
    ), sent AS (
        INSERT INTO commands (edge_id, meter_id, action, params, origin, created_by,
                              idempotency_key, expires_at)
        SELECT m.edge_id, r.meter_id, 'set_allowance',
               jsonb_build_object('generation', r.generation, 'allowance_wh', r.allowance_wh,
                                  'anchor_end', extract(epoch FROM r.anchor_end)::bigint,
                                  'anchor_wh', r.anchor_wh,
                                  'valid_until', extract(epoch FROM r.valid_until)::bigint),
               'pipeline', 'pipeline', 'allowance-' || r.generation, r.valid_until
          FROM made r JOIN meters m USING (meter_id)
         WHERE m.edge_id IS NOT NULL
        RETURNING id, (params ->> 'generation')::bigint AS generation
    )
    UPDATE credit_allowances a SET command_id = sent.id
      FROM sent WHERE a.generation = sent.generation;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- After each statement that changes accounts (a pipeline batch, a top-up): the rule above.
CREATE FUNCTION credit_accounts_allowances() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_meters  bigint[];
    v_reasons text[];
BEGIN
    SELECT array_agg(c.meter_id), array_agg(c.reason) INTO v_meters, v_reasons
      FROM (SELECT n.meter_id,
                   CASE WHEN l.generation IS NULL THEN 'first'
                        WHEN n.balance > o.balance THEN 'credit'
                        WHEN n.tariff_id <> o.tariff_id THEN 'tariff'
                        WHEN l.unit_opened_at IS NOT NULL AND n.balance > 0
                             AND s.last_end >= l.unit_opened_reading THEN 'unit_opened'
                        WHEN n.balance > 0 AND n.balance * 2 <= l.balance THEN 'half'
                        WHEN now() > l.created_at + (l.valid_until - l.created_at) / 2
                             THEN 'validity'
                   END AS reason
              FROM new_rows n
              JOIN old_rows o USING (meter_id)
              LEFT JOIN meter_state s USING (meter_id)
              LEFT JOIN LATERAL (SELECT * FROM credit_allowances x WHERE x.meter_id = n.meter_id
                                  ORDER BY x.generation DESC LIMIT 1) l ON true) c
     WHERE c.reason IS NOT NULL;
    IF v_meters IS NOT NULL THEN
        PERFORM credit_send_allowances(v_meters, v_reasons);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER credit_accounts_allowances AFTER UPDATE ON credit_accounts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION credit_accounts_allowances();

-- A tariff version added: the accounts on that tariff get allowances at the new prices.
CREATE FUNCTION tariff_versions_allowances() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM credit_send_allowances(array_agg(a.meter_id), array_agg('tariff'::text))
       FROM credit_accounts a WHERE a.tariff_id IN (SELECT tariff_id FROM new_rows)
     HAVING count(*) > 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER tariff_versions_allowances AFTER INSERT ON tariff_versions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tariff_versions_allowances();

-- The unit's own decisions (events 0x8007 CREDIT_RELAY_OPENED, 0x8008 CREDIT_RELAY_CLOSED,
-- detail "generation=<g> allowance_wh=<a> used_wh=<u> at=<interval_end> ...") arrive with its
-- readings.  An opening is marked on the allowance it was made under; when the ledger has
-- already processed the reading the unit decided at and shows credit, a new allowance goes
-- out at once (else the pipeline's next batch of that meter decides, by the rule above).
CREATE FUNCTION events_credit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_meters bigint[];
BEGIN
    WITH opened AS (
        SELECT e.meter_id, (regexp_match(e.detail, 'generation=([0-9]+)'))[1]::bigint AS generation,
               to_timestamp((regexp_match(e.detail, ' at=([0-9]+)'))[1]::bigint) AS at,
               e.event_time
          FROM new_rows e
         WHERE e.kind = 32775  -- 0x8007
    ), marked AS (
        UPDATE credit_allowances a SET unit_opened_at = o.event_time, unit_opened_reading = o.at
          FROM opened o
         WHERE a.generation = o.generation AND a.meter_id = o.meter_id
        RETURNING a.meter_id, a.generation, o.at
    )
    SELECT array_agg(k.meter_id) INTO v_meters
      FROM marked k
      JOIN credit_accounts c USING (meter_id)
      JOIN meter_state s USING (meter_id)
     WHERE c.balance > 0 AND s.last_end >= k.at
       AND k.generation = (SELECT max(x.generation) FROM credit_allowances x
                            WHERE x.meter_id = k.meter_id);
    IF v_meters IS NOT NULL THEN
        PERFORM credit_send_allowances(v_meters,
                                       array_fill('unit_opened'::text, ARRAY[cardinality(v_meters)]));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_credit AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_credit();


-- ---------------------------------------------------------------------------------------------
-- The per-edge peak is the coincident peak (issue 13).  Until now energy_edge.peak_demand_w was
-- the largest demand one of the edge's meters recorded, which overstates what the edge's
-- transformer carried.  edge_demand holds, per edge and interval, the sum of the demand its
-- meters recorded in that interval; the period's peak is the largest such sum.  The existing
-- rows are recomputed from readings (they were a different quantity).
CREATE TABLE edge_demand (
    edge_id      text NOT NULL,
    interval_end timestamptz NOT NULL,
    demand_w     bigint NOT NULL,
    PRIMARY KEY (edge_id, interval_end)
);
COMMENT ON COLUMN energy_edge.peak_demand_w IS
    'the coincident peak: the largest sum of its meters'' demand in one interval (0012)';

INSERT INTO edge_demand (edge_id, interval_end, demand_w)
SELECT r.edge_id, r.interval_end, sum(r.max_demand_w)
  FROM readings r
  JOIN pipeline_progress p ON p.edge_id = r.edge_id AND r.seq <= p.done_seq
 WHERE NOT EXISTS (SELECT 1 FROM pipeline_dead_letters d
                    WHERE d.edge_id = r.edge_id AND d.seq = r.seq)
 GROUP BY r.edge_id, r.interval_end;

UPDATE energy_edge e
   SET peak_demand_w = coalesce((
        SELECT max(d.demand_w) FROM edge_demand d
         WHERE d.edge_id = e.edge_id
           AND d.interval_end > e.start
           AND d.interval_end <= e.start + CASE e.period WHEN 'hour' THEN interval '1 hour'
                                                         ELSE interval '1 day' END), 0);

CREATE OR REPLACE FUNCTION pipeline_process(
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

    -- Per edge (migration 0012): energy as before; the peak is the coincident peak, the
    -- largest sum over the period's intervals of the demand its meters recorded in the same
    -- interval.  edge_demand keeps each interval's running sum (a late reading adds to its
    -- own interval), and sums only grow, so the period's peak is greatest(old, new sums).
    WITH sums AS (
        INSERT INTO edge_demand AS s (edge_id, interval_end, demand_w)
        SELECT edge_id, interval_end, sum(max_demand_w)::bigint
          FROM pl_delta WHERE is_new
         GROUP BY edge_id, interval_end
        ON CONFLICT (edge_id, interval_end) DO UPDATE SET demand_w = s.demand_w + excluded.demand_w
        RETURNING s.edge_id, s.interval_end, s.demand_w
    ), x AS (
        SELECT edge_id, is_new, dwh, NULL::bigint AS demand,
               date_trunc('hour', interval_end - interval '1 microsecond') AS hour
          FROM pl_delta
        UNION ALL
        SELECT edge_id, false, 0, demand_w,
               date_trunc('hour', interval_end - interval '1 microsecond')
          FROM sums
    ), g AS (
        SELECT edge_id, CASE WHEN grouping(day) = 0 THEN 'day' ELSE 'hour' END AS period,
               coalesce(day, hour) AS start, sum(dwh)::bigint AS energy_wh,
               coalesce(max(demand), 0) AS peak,
               count(*) FILTER (WHERE is_new)::integer AS n
          FROM (SELECT *, date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day
                  FROM x) y
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


-- ---------------------------------------------------------------------------------------------
-- Bounded growth (issue 13): feed_log gains a row per stored batch, event, command transition
-- and alarm change, alarms a row per condition, edge_demand a row per edge and interval.
-- `gridcloud pipeline`'s sweeper calls pipeline_trim() (one process at a time: an advisory
-- lock), which deletes at most p_limit rows of each per call, oldest first, so a large backlog
-- is worked off in short transactions over several sweeps:
--   feed_log     rows created more than p_feed_days ago (a live-feed client resuming from
--                further back resumes at the oldest row kept, docs/api.md)
--   alarms       alarms cleared more than p_alarm_days ago (open alarms are never deleted);
--                the configuration keeps p_alarm_days >= p_feed_days, so no feed_log row
--                still names a deleted alarm
--   edge_demand  intervals more than p_demand_days older than the edge's newest (relative to
--                the edge's own data, not the clock: a reading that late no longer raises its
--                edge's coincident peak with the other meters' demand of that interval)
-- 0 days: keep that table whole.
CREATE INDEX alarms_cleared ON alarms (cleared_at) WHERE cleared_at IS NOT NULL;

CREATE FUNCTION pipeline_trim(p_feed_days integer, p_alarm_days integer, p_demand_days integer,
                              p_limit integer,
                              OUT feed integer, OUT alarms integer, OUT demand integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_upto bigint;
BEGIN
    feed := 0; alarms := 0; demand := 0;
    IF NOT pg_try_advisory_xact_lock(hashtext('gridcloud pipeline trim')) THEN
        RETURN;
    END IF;
    IF p_feed_days > 0 THEN
        -- Only the p_limit oldest rows are looked at (ids grow with time): bounded work even
        -- when nothing is old enough.
        SELECT max(f.id) INTO v_upto
          FROM (SELECT id, created_at FROM feed_log ORDER BY id LIMIT p_limit) f
         WHERE f.created_at < now() - make_interval(days => p_feed_days);
        IF v_upto IS NOT NULL THEN
            DELETE FROM feed_log
             WHERE id <= v_upto AND created_at < now() - make_interval(days => p_feed_days);
            GET DIAGNOSTICS feed = ROW_COUNT;
        END IF;
    END IF;
    IF p_alarm_days > 0 THEN
        DELETE FROM alarms
         WHERE alarm_id IN (SELECT a.alarm_id FROM alarms a
                             WHERE a.cleared_at < now() - make_interval(days => p_alarm_days)
                             ORDER BY a.cleared_at LIMIT p_limit);
        GET DIAGNOSTICS alarms = ROW_COUNT;
    END IF;
    IF p_demand_days > 0 THEN
        DELETE FROM edge_demand d
         USING (SELECT e.edge_id, o.interval_end
                  FROM (SELECT DISTINCT edge_id FROM energy_edge) e
                  CROSS JOIN LATERAL (
                        SELECT x.interval_end FROM edge_demand x
                         WHERE x.edge_id = e.edge_id
                           AND x.interval_end < (SELECT max(y.interval_end) FROM edge_demand y
                                                  WHERE y.edge_id = e.edge_id)
                                                - make_interval(days => p_demand_days)
                         ORDER BY x.interval_end LIMIT p_limit) o
                 LIMIT p_limit) old
         WHERE d.edge_id = old.edge_id AND d.interval_end = old.interval_end;
        GET DIAGNOSTICS demand = ROW_COUNT;
    END IF;
END
$$;
