"""The health rule: each condition that makes a unit unhealthy is reported in words, and a
unit that has heard the meters and reached the cloud within the windows is healthy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gridedge.health import HealthService, Snapshot, evaluate, notes, running_problems
from twisted.internet.task import Clock

GOOD = Snapshot(
    now=10_000.0, started_at=0.0,
    parts={n: {"running": True, "restarts": 0, "last_error": None}
           for n in ("journal", "radio", "uplink")},
    journal_open=True, journal_disk_full=False,
    radio_configured=True, radio_last_frame_at=9_990.0,
    uplink_connected=True, uplink_last_connected_at=10_000.0,
)


def check(s: Snapshot) -> list[str]:
    return evaluate(s, radio_window=300, uplink_window=900)


def test_healthy_unit() -> None:
    """Everything running, a recent frame, connected: no problems."""
    assert check(GOOD) == []


def test_each_condition_is_reported() -> None:
    """A stopped part, a closed or full journal, radio silence and a long disconnection each
    produce their own line."""
    parts = dict(GOOD.parts, radio={"running": False, "restarts": 3, "last_error": "ENODEV"})
    assert check(replace(GOOD, parts=parts)) == [
        "radio is not running (restarts: 3, last error: ENODEV)"]
    assert check(replace(GOOD, journal_open=False)) == ["journal is not open"]
    assert check(replace(GOOD, journal_disk_full=True)) == ["journal: data partition is full"]
    assert check(replace(GOOD, radio_last_frame_at=None)) == ["radio: no frame received yet"]
    assert check(replace(GOOD, radio_last_frame_at=9_000.0)) == [
        "radio: no frame for 1000 s (window 300 s)"]
    assert check(replace(GOOD, uplink_connected=False, uplink_last_connected_at=None)) == [
        "uplink: never connected to the cloud since start"]
    assert check(replace(GOOD, uplink_connected=False, uplink_last_connected_at=8_000.0)) == [
        "uplink: disconnected for 2000 s (window 900 s)"]


def test_windows() -> None:
    """Inside the windows, a short radio silence or disconnection is still healthy; no radio
    configured means no radio condition."""
    assert check(replace(GOOD, radio_last_frame_at=9_800.0, uplink_connected=False,
                         uplink_last_connected_at=9_200.0)) == []
    assert check(replace(GOOD, radio_configured=False, radio_last_frame_at=None)) == []


def test_running_ignores_silent_meters_and_an_unreachable_cloud() -> None:
    """'Running' (what mark-good waits for) survives a network outage but not a dead part."""
    outage = replace(GOOD, radio_last_frame_at=None, uplink_connected=False,
                     uplink_last_connected_at=None)
    assert len(check(outage)) == 2
    assert running_problems(outage) == []
    parts = dict(GOOD.parts, uplink={"running": False, "restarts": 1, "last_error": "no cert"})
    assert running_problems(replace(outage, parts=parts)) == [
        "uplink is not running (restarts: 1, last error: no cert)"]



def test_point8_running_judges_the_firmware_not_the_disk() -> None:
    """A full or failing data partition makes the unit unhealthy, not "not running": mark-good
    must not give a firmware slot up for a fault another slot would meet as well."""
    full = replace(GOOD, journal_disk_full=True)
    assert check(full) == ["journal: data partition is full"]
    assert running_problems(full) == []
    parts = dict(GOOD.parts,
                 journal={"running": False, "restarts": 4, "last_error": "disk I/O error"},
                 radio={"running": False, "restarts": 4, "last_error": "journal is not open"})
    fault = replace(GOOD, parts=parts, journal_open=False, radio_last_frame_at=None,
                    journal_disk_fault="cannot open journal: disk I/O error")
    assert check(fault) == ["journal: data partition fault: cannot open journal: disk I/O error",
                            "radio: no frame received yet"]
    assert running_problems(fault) == []
    for snap in (full, fault):  # what `gridedge health [--running]` prints
        report = HealthService(Clock(), Path("unused.sock"), lambda snap=snap: snap,
                               lambda: None, radio_window=300, uplink_window=900).report()
        assert not report["healthy"] and report["problems"] == check(snap)
        assert report["running"] and report["running_problems"] == []
    assert running_problems(replace(fault, journal_disk_fault=None)) == [
        "journal is not running (restarts: 4, last error: disk I/O error)",
        "radio is not running (restarts: 4, last error: journal is not open)",
        "journal is not open"]


def test_radio_backlog_is_reported_not_judged() -> None:
    """The radio backlog is in the report and its notes; it does not make the unit unhealthy."""
    radio = {"meters_owed": 940, "intervals_owed": 37_000, "oldest_owed": 1767571200,
             "records_held": 36_000, "polls_queued": 938, "frames_ok": 5}
    snap = replace(GOOD, details={"radio": radio})
    service = HealthService(Clock(), Path("unused.sock"), lambda: snap, lambda: None,
                            radio_window=300, uplink_window=900)
    report = service.report()
    assert report["radio_backlog"] == {
        "meters_owed": 940, "intervals_owed": 37_000, "oldest_owed": 1767571200,
        "records_held": 36_000, "polls_queued": 938}
    assert report["notes"] == [
        "radio backlog: 940 meters owe 37000 intervals, the oldest ending 2026-01-05 "
        "00:00:00Z; 36000 records held in memory, 938 meters queued for a poll"]
    assert report["healthy"]
    caught_up = dict(radio, meters_owed=0, intervals_owed=0, oldest_owed=0)
    assert notes(replace(GOOD, details={"radio": caught_up})) == []
    assert notes(GOOD) == []
