"""Radio link benchmark: frame parsing speed; edge CPU and memory with 5,000 meters.

1. Parsing on one core: gridradio's FrameDecoder (SLIP, CRC, typed frames) over
   a day-like mix of frames fed in 4 KiB reads, side by side with two
   baselines on the same bytes: the floor (just splitting the bytes at the
   delimiters, no checks, no objects) and a naive byte-by-byte SLIP decoder
   in pure Python, as a first implementation would write it.
2. The edge process: ``python -m gridedge.radio`` (RadioService + SQLite sink)
   as its own process against ``gridsim --meters 5000`` over a real pty, one
   simulated day at 2,000x with 1% corrupted frames.  CPU time and peak RSS
   (VmHWM) come from /proc/<pid> just before the edge is stopped; CPU per
   record divides by the records it delivered.  The idle RSS (after start,
   before any meter) is shown beside it.

Targets: >= 50,000 frames/s parsed; edge peak RSS <= 64 MB with 5,000 meters.
Prints a table, then one JSON object as the very last line.

Run: make bench-radio  (or .venv/bin/python bench/bench_radio.py [--meters N])
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gridradio import FrameDecoder, IntervalReport, ModuleStatus, PollResponse, PollStatus, encode
from gridsim.model import make_meters, produce_interval

TARGET_FPS = 50_000
TARGET_RSS_MB = 64
T0 = 1767571200
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _traffic(meters: int = 2000, intervals: int = 12) -> tuple[bytes, int]:
    """Bytes of a realistic stream: reports, heartbeats and some poll responses."""
    population = make_meters(meters, 1)
    parts: list[bytes] = []
    count = 0
    for k in range(1, intervals + 1):
        end = T0 + k * 900
        records, _ = produce_interval(population, end, 1, 3.0)
        for i, record in enumerate(records):
            parts.append(encode(IntervalReport(record)))
            count += 1
            if i % 60 == 0:
                parts.append(encode(ModuleStatus(end + i, end - T0, meters, 0, 0x0103)))
                count += 1
            if i % 100 == 0:
                parts.append(
                    encode(
                        PollResponse(i, record.meter_id, end, 1, PollStatus.OK, T0, end, (record,))
                    )
                )
                count += 1
    return b"".join(parts), count


def _chunks(data: bytes, size: int = 4096) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _best(fn: object, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()  # type: ignore[operator]
        best = min(best, time.process_time() - t)
    return best


def _naive_decode(chunks: list[bytes]) -> int:
    """A straightforward byte-at-a-time SLIP decoder with a CRC check per frame."""
    from binascii import crc_hqx

    frames = 0
    frame = bytearray()
    escaped = False
    for chunk in chunks:
        for byte in chunk:
            if byte == 0xC0:
                if len(frame) >= 3 and crc_hqx(bytes(frame), 0xFFFF) == 0:
                    frames += 1
                frame = bytearray()
                escaped = False
            elif escaped:
                frame.append(0xC0 if byte == 0xDC else 0xDB)
                escaped = False
            elif byte == 0xDB:
                escaped = True
            else:
                frame.append(byte)
    return frames


def bench_parse() -> dict[str, float]:
    data, count = _traffic()
    chunks = _chunks(data)

    def decoder() -> None:
        d = FrameDecoder()
        n = 0
        for c in chunks:
            n += len(d.feed(c))
        assert n == count, (n, count)

    def floor() -> None:
        tail = b""
        for c in chunks:
            parts = (tail + c).split(b"\xc0")
            tail = parts.pop()

    small = chunks[: max(1, len(chunks) // 5)]
    small_frames = sum(c.count(b"\xc0") for c in small) / 2
    t_dec = _best(decoder)
    t_floor = _best(floor)
    t_naive = _best(lambda: _naive_decode(small), repeat=2)
    return {
        "frames": count,
        "bytes": len(data),
        "decoder_fps": count / t_dec,
        "floor_fps": count / t_floor,
        "naive_fps": small_frames / t_naive,
    }


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _proc_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def bench_edge(meters: int, speed: float) -> dict[str, float]:
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-radio-") as tmp:
        port, truth, records = f"{tmp}/radio", f"{tmp}/truth.sqlite", f"{tmp}/records.sqlite"
        log = open(f"{tmp}/log", "wb")  # noqa: SIM115
        edge = subprocess.Popen(
            [
                py,
                "-m",
                "gridedge.radio",
                "--port",
                port,
                "--records",
                records,
                "--synchronous",
                "NORMAL",
                "--poll-rate",
                "500",
                "--poll-burst",
                "50",
                "--polls-in-flight",
                "32",
                "--poll-timeout",
                "2",
                "--backoff",
                "0.5",
                "--scan-every",
                "0.5",
                "--reopen-max",
                "0.5",
                "--stats-every",
                "0",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        time.sleep(2.0)
        idle_rss = _proc_kb(edge.pid, "VmRSS")
        idle_cpu = _proc_cpu(edge.pid)
        sim = subprocess.Popen(
            [
                py,
                "-m",
                "gridsim.cli",
                "--meters",
                str(meters),
                "--port",
                port,
                "--speed",
                str(speed),
                "--days",
                "1",
                "--start",
                "2026-01-05",
                "--truth",
                truth,
                "--corrupt-rate",
                "0.01",
                "--noise-rate",
                "0.002",
                "--log-every",
                "30",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        started = time.monotonic()
        expected = meters * 96
        delivered = 0
        try:
            while time.monotonic() - started < 600:
                time.sleep(0.5)
                if Path(records).exists():
                    db = sqlite3.connect(f"file:{records}?mode=ro", uri=True)
                    try:
                        delivered = db.execute("SELECT count(*) FROM records").fetchone()[0]
                    except sqlite3.OperationalError:
                        delivered = 0
                    db.close()
                if delivered >= expected or edge.poll() is not None:
                    break
            wall = time.monotonic() - started
            cpu = _proc_cpu(edge.pid) - idle_cpu
            peak = _proc_kb(edge.pid, "VmHWM")
        finally:
            for p in (sim, edge):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in (sim, edge):
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
            log.close()
    return {
        "meters": meters,
        "records_expected": expected,
        "records_delivered": delivered,
        "wall_s": wall,
        "edge_cpu_s": cpu,
        "cpu_us_per_record": cpu / max(1, delivered) * 1e6,
        "edge_idle_rss_mb": idle_rss / 1024,
        "edge_peak_rss_mb": peak / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meters", type=int, default=5000)
    ap.add_argument("--speed", type=float, default=2000)
    args = ap.parse_args()

    parse = bench_parse()
    edge = bench_edge(args.meters, args.speed)
    ok_fps = parse["decoder_fps"] >= TARGET_FPS
    ok_rss = edge["edge_peak_rss_mb"] <= TARGET_RSS_MB
    complete = edge["records_delivered"] == edge["records_expected"]

    print(
        "radio frame parsing, one core, 4 KiB reads "
        f"({parse['frames']:,} frames, {parse['bytes']:,} bytes)"
    )
    print(f"  {'implementation':<44} {'frames/s':>12} {'vs decoder':>11}")
    for name, key in (
        ("gridradio FrameDecoder (SLIP+CRC+typed frames)", "decoder_fps"),
        ("floor: split at delimiters only", "floor_fps"),
        ("naive byte-by-byte SLIP + CRC, no decoding", "naive_fps"),
    ):
        print(f"  {name:<44} {parse[key]:>12,.0f} {parse[key] / parse['decoder_fps']:>10.2f}x")
    print(f"  target >= {TARGET_FPS:,} frames/s: {'met' if ok_fps else 'NOT MET'}")
    print()
    print(
        f"edge process vs gridsim, {edge['meters']:,} meters, one simulated day, 1% corrupt frames"
    )
    rows = [
        (
            "records delivered / expected",
            f"{edge['records_delivered']:,} / {edge['records_expected']:,}",
        ),
        ("wall time, s", f"{edge['wall_s']:.1f}"),
        ("edge CPU, s", f"{edge['edge_cpu_s']:.2f}"),
        ("edge CPU per record, us", f"{edge['cpu_us_per_record']:.1f}"),
        ("edge RSS idle (no meters), MB", f"{edge['edge_idle_rss_mb']:.1f}"),
        ("edge peak RSS, MB", f"{edge['edge_peak_rss_mb']:.1f}"),
        (f"target peak RSS <= {TARGET_RSS_MB} MB", "met" if ok_rss else "NOT MET"),
    ]
    for name, value in rows:
        print(f"  {name:<36} {value:>20}")
    result = {
        "bench": "radio",
        "frames_per_s": round(parse["decoder_fps"]),
        "floor_frames_per_s": round(parse["floor_fps"]),
        "naive_frames_per_s": round(parse["naive_fps"]),
        "decoder_vs_naive": round(parse["decoder_fps"] / parse["naive_fps"], 2),
        "decoder_vs_floor": round(parse["decoder_fps"] / parse["floor_fps"], 3),
        "edge_cpu_us_per_record": round(edge["cpu_us_per_record"], 1),
        "edge_peak_rss_mb": round(edge["edge_peak_rss_mb"], 1),
        "edge_idle_rss_mb": round(edge["edge_idle_rss_mb"], 1),
        "meters": edge["meters"],
        "records_delivered": edge["records_delivered"],
        "records_expected": edge["records_expected"],
        "targets": {"frames_per_s": TARGET_FPS, "edge_peak_rss_mb": TARGET_RSS_MB},
        "targets_met": ok_fps and ok_rss and complete,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
