-- 0013: each edge's gridwire reference table (protocol version 3, gridwire._references),
-- so that a reconnecting unit's first batch is coded against what both ends already know,
-- on whichever serve node it lands and after a node restarts with an empty cache.
--
-- One row per edge: the table (every meter the unit has sent, in the order first seen
-- = its index, with its latest record) as a gridwire batch body, and the sequence number
-- of the last batch applied to it.  Why a blob and not a row per meter: the table is only
-- ever read and written whole (loaded at admission, replaced after each batch), one
-- 10-20 KB value is one write instead of a thousand upserts, and the encoding holds
-- gridwire's full value ranges (energy_wh is unsigned 64-bit).
--
-- Written by gridcloud.references after each batch is committed, conditionally on
-- as_of_seq being the table the connection started from (or its previous batch), so a
-- chain broken anywhere (a failed write, two nodes racing over one unit) is never
-- extended: the unit then offers a table newer than this one and both ends start empty.
CREATE TABLE edge_references (
    edge_id     text PRIMARY KEY REFERENCES edges (edge_id) ON DELETE CASCADE,
    as_of_seq   bigint NOT NULL CHECK (as_of_seq >= 1),
    meters      integer NOT NULL CHECK (meters >= 1),
    body        bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The unit's monthly data budget ([uplink] budget_mb_per_month) and its own count of this
-- month's bytes, as its last Hello said them (NULL: no budget), for the API's edge resource
-- beside the cloud's own counts (edge_traffic).  The count is as of last_connected_at.
ALTER TABLE edges
    ADD COLUMN budget_bytes bigint CHECK (budget_bytes > 0),
    ADD COLUMN month_bytes_reported bigint CHECK (month_bytes_reported >= 0);
