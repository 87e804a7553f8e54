"""The ground truth: every interval record the simulated meters produced, in SQLite.

gridsim writes a record here *before* the meter can report it or answer a poll
for it, so the file is exactly the set of records the edge (and then the cloud)
must end up with, once each.  It doubles as the meters' memory when gridsim
is restarted with ``--resume``.

Reading it (tests, tools, the cloud's end-to-end checks)::

    from gridsim.truth import GroundTruth

    with GroundTruth("truth.sqlite") as truth:
        truth.is_complete()        # True once the run's last interval is recorded
        truth.count()              # number of records
        truth.records()            # iterator of IntervalRecord, by meter then interval
        truth.records(100001)      # one meter's records
        truth.keys()               # set of (meter_id, interval_end)
        truth.energy_by_meter()    # {meter_id: Wh consumed during the run}
        truth.meters()             # {meter_id: "household" | "business"}
        truth.meta()               # seed, meters, start, end, sim_time, complete, ...

Opening is read-only and safe while gridsim is writing (WAL mode).

Schema (stable, documented in docs/radio.md)::

    meta(key TEXT PRIMARY KEY, value TEXT)
    meters(meter_id INTEGER PRIMARY KEY, kind TEXT, initial_energy_wh INTEGER)
    records(meter_id, interval_end, energy_wh, max_demand_w, voltage_dv,
            current_ma, power_factor, flags, PRIMARY KEY (meter_id, interval_end))

Tests: tests/sim/test_truth.py, tests/radio/test_end_to_end.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from gridradio import IntervalRecord

__all__ = ["GroundTruth", "TruthWriter"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meters (
    meter_id INTEGER PRIMARY KEY, kind TEXT NOT NULL, initial_energy_wh INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    meter_id INTEGER NOT NULL,
    interval_end INTEGER NOT NULL,
    energy_wh INTEGER NOT NULL,
    max_demand_w INTEGER NOT NULL,
    voltage_dv INTEGER NOT NULL,
    current_ma INTEGER NOT NULL,
    power_factor INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    PRIMARY KEY (meter_id, interval_end)
) WITHOUT ROWID;
"""

_COLUMNS = (
    "meter_id, interval_end, energy_wh, max_demand_w, voltage_dv, current_ma, power_factor, flags"
)


class GroundTruth:
    """Read-only view of a ground-truth file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no ground-truth file at {self.path}")
        self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)

    def __enter__(self) -> GroundTruth:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def meta(self) -> dict[str, Any]:
        """Run parameters and progress: seed, meters, start, end, sim_time, complete, ..."""
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def is_complete(self) -> bool:
        """True once the last interval of the run (``--duration``) has been recorded."""
        return bool(self.meta().get("complete", False))

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])

    def records(self, meter_id: int | None = None) -> Iterator[IntervalRecord]:
        """Records by meter id then interval end (one meter's if ``meter_id`` is given)."""
        if meter_id is None:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM records ORDER BY meter_id, interval_end"
            )
        else:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM records WHERE meter_id = ? ORDER BY interval_end",
                (meter_id,),
            )
        return map(IntervalRecord._make, rows)

    def keys(self) -> set[tuple[int, int]]:
        """Every (meter_id, interval_end) recorded."""
        return set(self._db.execute("SELECT meter_id, interval_end FROM records"))

    def meters(self) -> dict[int, str]:
        """meter_id -> kind ("household" or "business") of every simulated meter."""
        return dict(self._db.execute("SELECT meter_id, kind FROM meters"))

    def energy_by_meter(self) -> dict[int, int]:
        """meter_id -> Wh consumed during the run (last register minus the initial one)."""
        rows = self._db.execute(
            "SELECT m.meter_id, coalesce(max(r.energy_wh), m.initial_energy_wh)"
            " - m.initial_energy_wh FROM meters m LEFT JOIN records r USING (meter_id)"
            " GROUP BY m.meter_id"
        )
        return dict(rows)


class TruthWriter:
    """gridsim's side: creates or resumes the file and appends records."""

    def __init__(self, path: str | Path, *, resume: bool) -> None:
        self.path = Path(path)
        existed = self.path.exists() and self.path.stat().st_size > 0
        if existed and not resume:
            raise FileExistsError(
                f"{self.path} already holds a ground truth; pass --resume to continue that run "
                "or remove the file to start a new one"
            )
        self.resumed = existed
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values: Any) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def add_meters(self, rows: Iterable[tuple[int, str, int]]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR IGNORE INTO meters VALUES (?, ?, ?)", rows)
        self._db.execute("COMMIT")

    def append(self, records: list[IntervalRecord], sim_time: int, complete: bool = False) -> None:
        """Store one interval's records and the clock, in one transaction."""
        db = self._db
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO records ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", records)
        db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("sim_time", json.dumps(sim_time)), ("complete", json.dumps(complete))],
        )
        db.execute("COMMIT")

    def latest(self, keep: int) -> dict[int, list[IntervalRecord]]:
        """The newest ``keep`` records of every meter, oldest first (to resume a run)."""
        out: dict[int, list[IntervalRecord]] = {}
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM (SELECT *, row_number() OVER (PARTITION BY meter_id"
            " ORDER BY interval_end DESC) AS n FROM records) WHERE n <= ?"
            " ORDER BY meter_id, interval_end",
            (keep,),
        )
        for row in rows:
            out.setdefault(row[0], []).append(IntervalRecord._make(row))
        return out

    def close(self) -> None:
        self._db.close()
