"""gridedge.radio: the edge's link to the radio module over a serial port.

Public surface (everything else is private):

* :class:`RadioLink`: registry, gap filling, relay commands, delivery to a
  :class:`RecordSink`; :class:`RelayOutcome`, :class:`MeterStatus`;
* :class:`LinkSettings`, the link's tuning (``[radio]`` in gridedge.toml),
  and :class:`SettingError` for a value out of range;
* :class:`RadioService`: the link on a (re)opened serial port, for the
  supervision tree;
* :class:`RecordSink` with :class:`MemorySink` and :class:`SQLiteSink`, and
  :class:`SinkError` for the failures a sink expects.

The serial protocol itself (frames, framing, CRC, the interval record) is the
sans-IO package ``gridradio``, shared with the simulator; it is specified in
docs/radio.md.  ``python -m gridedge.radio`` runs the link alone against a
port (see ``--help``).

Tests: tests/radio/.
"""

from .link import RadioLink
from .registry import MeterStatus
from .relays import RelayOutcome
from .service import RadioProtocol, RadioService
from .settings import LinkSettings, SettingError
from .sink import MemorySink, RecordSink, SinkError, SQLiteSink

__all__ = [
    "LinkSettings",
    "MemorySink",
    "MeterStatus",
    "RadioLink",
    "RadioProtocol",
    "RadioService",
    "RecordSink",
    "RelayOutcome",
    "SQLiteSink",
    "SettingError",
    "SinkError",
]
