-- 0012: prepaid credit on the unit (issue 13): the allowance each prepaid meter's unit holds.
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
