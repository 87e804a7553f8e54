"""gridedge.uplink: the journal's records to the cloud over mutual TLS with gridwire.

* :mod:`gridedge.uplink.link`: one connection's rules (resume, window, batching,
  heartbeats), sans-IO apart from an injected clock;
* :mod:`gridedge.uplink.protocol`: the thin Twisted adapter;
* :mod:`gridedge.uplink.counting`: raw bytes on the socket, below TLS;
* :mod:`gridedge.uplink.tls`: device identity, server-name checks, TLS 1.3 resumption;
* :mod:`gridedge.uplink.traffic`: bytes per day, kept on the data partition;
* :mod:`gridedge.uplink.backoff`: how long to wait before reconnecting;
* :mod:`gridedge.uplink.service`: the reconnecting service for the supervision tree.

Tests: tests/edge/test_uplink_link.py, tests/edge/test_uplink_tls.py,
tests/edge/test_uplink_backoff.py, tests/edge/test_traffic.py,
tests/system/.
"""

from gridedge.uplink.backoff import ReconnectPolicy
from gridedge.uplink.link import Link, LinkSettings
from gridedge.uplink.service import UplinkService, UplinkStatus
from gridedge.uplink.tls import DeviceIdentity, ResumingCreator, TLSFilesError
from gridedge.uplink.traffic import Traffic

__all__ = [
    "DeviceIdentity",
    "Link",
    "LinkSettings",
    "ReconnectPolicy",
    "ResumingCreator",
    "TLSFilesError",
    "Traffic",
    "UplinkService",
    "UplinkStatus",
]
