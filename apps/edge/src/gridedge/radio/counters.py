"""The radio link's event counters, and the frame decoder's, as one flat dict for ``stats()``.

Why apart: every part of the link counts what it does into one
:class:`LinkCounters`; what is exported (``RadioLink.stats()``, the service's
periodic log line, ``gridedge health --json``) is assembled here, so adding a
counter touches the part that counts and nothing else.

Tests: tests/radio/test_link.py, tests/radio/test_end_to_end.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from gridradio import FrameDecoder

__all__ = ["LinkCounters", "decoder_stats", "fresh_decoder"]


@dataclass
class LinkCounters:
    """Event counters of the link (frame-level drops are in the decoder)."""

    reports: int = 0
    duplicates: int = 0
    misaligned: int = 0
    records_delivered: int = 0
    sink_appends: int = 0
    sink_failures: int = 0
    polls_sent: int = 0
    poll_failures: int = 0
    poll_timeouts: int = 0
    late_responses: int = 0
    intervals_unavailable: int = 0
    held_discarded: int = 0
    relay_commands: int = 0
    relay_late_confirms: int = 0
    module_resets: int = 0
    joins: int = 0
    leaves: int = 0
    frames_sent: int = 0
    frames_unsent: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def count_extra(self, name: str) -> None:
        """Count an event that has no field of its own (e.g. an unexpected frame type)."""
        self.extra[name] = self.extra.get(name, 0) + 1

    def as_dict(self) -> dict[str, int]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out.update(self.extra)
        return out


def decoder_stats(decoder: FrameDecoder) -> dict[str, int]:
    """The decoder's counters: good frames, bytes, drops in all and by reason."""
    out = {
        "frames_ok": decoder.frames_ok,
        "bytes_received": decoder.bytes_received,
        "frames_dropped": decoder.frames_dropped,
    }
    for kind, n in decoder.errors.items():
        out[f"dropped_{kind}"] = n
    return out


def fresh_decoder(old: FrameDecoder) -> FrameDecoder:
    """A new decoder (no half frame from the old connection) keeping the old counters."""
    new = FrameDecoder()
    new.bytes_received = old.bytes_received
    new.frames_ok = old.frames_ok
    new.errors = old.errors
    return new
