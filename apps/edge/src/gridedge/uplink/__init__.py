"""gridedge.uplink: the journal's records to the cloud over mutual TLS with gridwire.

* :mod:`gridedge.uplink.link`: one connection's rules (resume, window, batching,
  heartbeats), sans-IO apart from an injected clock;
* :mod:`gridedge.uplink.protocol`: the thin Twisted adapter and byte counting;
* :mod:`gridedge.uplink.tls`: device identity, server-name checks, TLS 1.3 resumption;
* :mod:`gridedge.uplink.service`: the reconnecting service for the supervision tree.

Tests: tests/edge/test_uplink_link.py, tests/edge/test_uplink_tls.py, tests/system/.
"""

from gridedge.uplink.link import Link, LinkSettings
from gridedge.uplink.service import UplinkService, UplinkStatus, backoff_policy
from gridedge.uplink.tls import DeviceIdentity, ResumingCreator, TLSFilesError

__all__ = [
    "DeviceIdentity",
    "Link",
    "LinkSettings",
    "ResumingCreator",
    "TLSFilesError",
    "UplinkService",
    "UplinkStatus",
    "backoff_policy",
]
