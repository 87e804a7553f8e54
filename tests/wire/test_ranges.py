"""gridwire's value ranges (docs/protocol.md, "Value ranges") and Welcome's limit extensions."""

from __future__ import annotations

from gridwire import (
    EdgeSession,
    EventReport,
    Hello,
    IntervalRecord,
    RecordColumns,
    Welcome,
    event_problem,
    record_problems,
)
from gridwire._codec import FrameDecoder, encode_message
from gridwire._limits import Limits


def test_point1_record_problems_name_the_records_outside_the_value_ranges() -> None:
    """energy_wh = 2**63 encodes (u64) but is outside its value range; 2**63-1 is fine."""
    good = IntervalRecord(1, 1_700_000_100, 2**63 - 1, 0, 0, 0, 0, 0)
    bad = good._replace(meter_id=2, energy_wh=2**63)
    problems = record_problems(RecordColumns.from_records([good, bad, good]))
    assert list(problems) == [1] and "energy_wh" in problems[1]
    assert record_problems(RecordColumns.from_records([good])) == {}


def test_point1_event_problem_refuses_far_times_and_nul() -> None:
    """Event times beyond u32 seconds and a NUL in the detail are outside the value ranges."""
    ok = EventReport(seq=1, meter_id=1, time=2**32 - 1, kind=1, detail="fine")
    assert event_problem(ok) is None
    for time in (10**13, 2**63):
        assert "time" in (event_problem(EventReport(seq=1, meter_id=1, time=time, kind=1)) or "")
    nul = EventReport(seq=1, meter_id=1, time=0, kind=1, detail="a\x00b")
    assert "NUL" in (event_problem(nul) or "")


def test_point1_welcome_limits_travel_as_optional_extensions() -> None:
    """Welcome's limits round-trip; without them the frame is v1's; the edge's batch limit
    follows what the cloud said."""
    plain = Welcome(version=1, server_time=0, last_acked_seq=0)
    limited = Welcome(version=1, server_time=0, last_acked_seq=0, max_batch_records=100,
                      max_frame_size=70_000)
    decoder = FrameDecoder(Limits())
    assert decoder.feed(encode_message(limited)) == [limited]
    assert decoder.feed(encode_message(plain)) == [plain]
    edge = EdgeSession()
    edge.send(Hello(min_version=1, max_version=1, firmware_version="1", boot_slot="A"))
    assert edge.batch_limit == Limits().max_batch_records
    edge.receive_data(encode_message(limited))
    assert edge.batch_limit == 100
