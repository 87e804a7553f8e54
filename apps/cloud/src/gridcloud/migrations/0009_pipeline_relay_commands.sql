-- 0009: the pipeline's relay decisions become commands (issues 12 and 13).
--
-- `gridcloud pipeline` writes each relay decision (balance at or below zero: open; a top-up
-- bringing it above zero: close) into `relay_requests` in the transaction that charges or
-- tops up (migration 0008).  This trigger turns the row into a command in that very
-- transaction, so a decision and its command exist together or not at all, and the
-- commands path (migration 0007, gridcloud.commands) delivers it like any other: NOTIFY
-- wakes the node that holds the unit, or the unit gets it at its next Hello.
--
-- Commands run on the unit in id order, so an `open` followed by a `close` (a top-up
-- soon after the credit ran out) leaves the relay closed even if both were queued
-- while the unit was offline.  A meter that never reported has no known unit: its
-- request stays with command_id NULL (the relay_requests_pending index lists them).
ALTER TABLE commands DROP CONSTRAINT commands_origin_check;
ALTER TABLE commands ADD CONSTRAINT commands_origin_check
    CHECK (origin IN ('api', 'unit', 'pipeline'));

CREATE FUNCTION relay_request_command() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_edge text;
BEGIN
    SELECT edge_id INTO v_edge FROM meters WHERE meter_id = NEW.meter_id;
    IF v_edge IS NULL THEN
        RETURN NEW;
    END IF;
    INSERT INTO commands (edge_id, meter_id, action, origin, created_by, idempotency_key,
                          expires_at)
    VALUES (v_edge, NEW.meter_id,
            CASE NEW.desired WHEN 'open' THEN 'relay_open' ELSE 'relay_close' END,
            'pipeline', 'pipeline', 'relay-request-' || NEW.request_id,
            now() + interval '7 days')
    RETURNING id INTO NEW.command_id;
    RETURN NEW;
END
$$;

CREATE TRIGGER relay_requests_command BEFORE INSERT ON relay_requests
    FOR EACH ROW EXECUTE FUNCTION relay_request_command();
