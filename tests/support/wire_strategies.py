"""Hypothesis strategies for every gridwire message (shared by the wire tests)."""

from __future__ import annotations

from gridwire import (
    Ack,
    CertificateIssued,
    CertificateRequest,
    ChunkRequest,
    Command,
    CommandResult,
    Error,
    EventReport,
    FirmwareChunk,
    FirmwareOffer,
    FirmwareStatus,
    Hello,
    IntervalRecord,
    Ping,
    Pong,
    ReadingBatch,
    Welcome,
)
from hypothesis import strategies as st

U16 = st.integers(0, 2**16 - 1)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
SEQ = st.integers(1, 2**64 - 1)


def text(max_bytes: int) -> st.SearchStrategy[str]:
    """Unicode text whose UTF-8 form fits max_bytes."""
    return st.text(max_size=max_bytes).filter(lambda s: len(s.encode("utf-8")) <= max_bytes)


def _field(low: int, high: int) -> st.SearchStrategy[int]:
    # mix tiny ranges (so deltas and deflate kick in) with full-range extremes
    return st.one_of(st.integers(low, min(high, low + 3)), st.integers(low, high))


records = st.builds(
    IntervalRecord,
    meter_id=_field(0, 2**32 - 1),
    interval_end=_field(0, 2**32 - 1),
    energy_wh=_field(0, 2**64 - 1),
    max_demand_w=_field(0, 2**32 - 1),
    voltage_dv=_field(0, 2**16 - 1),
    current_ma=_field(0, 2**32 - 1),
    power_factor=st.integers(-1000, 1000),
    flags=U16,
)


@st.composite
def realistic_records(draw: st.DrawFn, max_meters: int = 6) -> list[IntervalRecord]:
    """Several meters over several intervals, cumulative energy: exercises every column mode."""
    meters = draw(st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=max_meters, unique=True))
    intervals = draw(st.integers(1, 5))
    start = draw(st.integers(0, 2**32 - 1 - 900 * 6))
    energy = {m: draw(st.integers(0, 2**40)) for m in meters}
    out = []
    for k in range(intervals):
        for m in draw(st.permutations(meters)):
            energy[m] += draw(st.integers(0, 5000))
            out.append(
                IntervalRecord(
                    meter_id=m,
                    interval_end=start + 900 * k,
                    energy_wh=energy[m],
                    max_demand_w=draw(st.integers(0, 9000)),
                    voltage_dv=draw(st.integers(2000, 2600)),
                    current_ma=draw(st.integers(0, 40000)),
                    power_factor=draw(st.integers(-1000, 1000)),
                    flags=draw(st.sampled_from([0, 0, 0, 1, 4, 8])),
                )
            )
    return out


@st.composite
def reading_batches(draw: st.DrawFn) -> ReadingBatch:
    """A batch of arbitrary or realistic records with room for its sequence numbers."""
    recs = draw(st.one_of(st.lists(records, min_size=1, max_size=40), realistic_records()))
    first = draw(st.integers(1, 2**64 - len(recs)))
    return ReadingBatch(first_seq=first, records=recs)


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    low = draw(st.integers(1, 2**16 - 1))
    return Hello(
        min_version=low,
        max_version=draw(st.integers(low, 2**16 - 1)),
        firmware_version=draw(text(64)),
        boot_slot=draw(text(8)),
        last_command_id=draw(U64),
        edge_time=draw(U64),
    )


@st.composite
def firmware_offers(draw: st.DrawFn) -> FirmwareOffer:
    return FirmwareOffer(
        offer_id=draw(U64),
        version=draw(text(64)),
        size=draw(st.integers(1, 2**40 - 1)),
        sha256=draw(st.binary(min_size=32, max_size=32)),
        chunk_size=draw(st.integers(1, 65536)),
    )


messages = st.one_of(
    hellos(),
    st.builds(
        Welcome,
        version=st.integers(1, 2**16 - 1),
        server_time=U64,
        last_acked_seq=U64,
        heartbeat_interval=st.integers(1, 2**32 - 1),
        max_in_flight=st.integers(1, 2**16 - 1),
    ),
    reading_batches(),
    st.builds(Ack, up_to_seq=U64),
    st.builds(EventReport, seq=SEQ, meter_id=U32, time=U64, kind=U16, detail=text(255)),
    st.builds(
        Command,
        command_id=U64,
        kind=U16,
        meter_id=U32,
        payload=st.binary(max_size=300),
    ),
    st.builds(CommandResult, command_id=U64, status=st.integers(0, 255), detail=text(255)),
    st.builds(Ping, nonce=U32),
    st.builds(Pong, nonce=U32),
    firmware_offers(),
    st.builds(ChunkRequest, offer_id=U64, index=U32),
    st.builds(FirmwareChunk, offer_id=U64, index=U32, data=st.binary(max_size=2000)),
    st.builds(
        FirmwareStatus,
        offer_id=U64,
        state=st.integers(0, 255),
        received=st.integers(0, 2**40 - 1),
        detail=text(255),
    ),
    st.builds(Error, code=U16, detail=text(255)),
    st.builds(CertificateRequest, csr=st.binary(min_size=1, max_size=2048)),
    st.one_of(
        st.builds(CertificateIssued, detail=text(255)),
        st.builds(CertificateIssued, certificate=st.binary(min_size=1, max_size=700),
                  issuer=st.binary(min_size=1, max_size=700), detail=text(255)),
    ),
)
