-- 0006: bytes on each edge's connections per UTC day, as the cloud counted them
-- (the TLS bytes on the socket, the same bytes the edge counts itself in
-- gridedge.uplink.traffic), for the API's "bytes up/down today".
--
-- Written by gridcloud.traffic: every serve node adds what it counted since its
-- last flush (once a minute and when a connection closes) with an additive
-- upsert, so several nodes and reconnects sum up.  No foreign key to edges: a
-- refused edge's bytes (a revoked unit still dialling in) are counted too.
CREATE TABLE edge_traffic (
    edge_id     text NOT NULL,
    day         date NOT NULL,
    -- from the edge to the cloud / from the cloud to the edge
    bytes_up    bigint NOT NULL DEFAULT 0 CHECK (bytes_up >= 0),
    bytes_down  bigint NOT NULL DEFAULT 0 CHECK (bytes_down >= 0),
    PRIMARY KEY (edge_id, day)
);
