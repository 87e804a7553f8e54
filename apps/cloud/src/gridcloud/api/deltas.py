"""Deltas of a new release, made in the background by the API process that accepted it.

Why in the background: ``zstd -19 --long=27 --patch-from`` of a few hundred MiB
takes minutes of one core; the upload's answer should not wait for it.  The
upload's handler calls :meth:`DeltaMaker.plan`, which records one
``release_deltas`` row (state ``making``) per base, the ``deltas_from`` latest
earlier releases of the same compatible, in the answer; the maker then runs
zstd for them one at a time (a child process, gridcloud.bundles) and records
each as ``ready`` (size, sha256), ``skipped`` (no smaller than the bundle: a unit
would gain nothing) or ``failed`` (zstd's reason).

A row left ``making`` by a process that died is claimed again by the next API
process to start after :data:`STALE` (one ``UPDATE ... RETURNING``, so only one
process claims it).

Tests: tests/cloud/test_cloud_releases.py.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from .. import bundles
from ..config import ReleasesConfig
from .database import Database

log = Logger(namespace="gridcloud.api.deltas")

#: A delta still ``making`` after this long was abandoned by a process that died.
STALE = "2 hours"

PLAN_SQL = """
INSERT INTO release_deltas (release_id, base_id)
SELECT %(release)s, b.id FROM releases b, releases t
 WHERE t.id = %(release)s AND b.compatible = t.compatible AND b.id < t.id
 ORDER BY b.id DESC LIMIT %(count)s
ON CONFLICT DO NOTHING
RETURNING id
"""

JOB_SQL = """
SELECT d.id, d.base_id, d.release_id, b.file, t.file, t.size
  FROM release_deltas d JOIN releases b ON b.id = d.base_id JOIN releases t ON t.id = d.release_id
 WHERE d.id = ANY(%(ids)s::bigint[]) ORDER BY d.id
"""

RECLAIM_SQL = f"""
UPDATE release_deltas SET created_at = now()
 WHERE state = 'making' AND created_at < now() - interval '{STALE}'
RETURNING id
"""

DONE_SQL = """
UPDATE release_deltas
   SET state = %(state)s, size = %(size)s, sha256 = %(sha256)s, file = %(file)s,
       reason = %(reason)s, done_at = now()
 WHERE id = %(id)s
"""


class DeltaMaker:
    """Makes the planned deltas, one zstd at a time (see the module docstring)."""

    def __init__(self, reactor: Any, db: Database, config: ReleasesConfig) -> None:
        self._reactor = reactor
        self._db = db
        self._config = config
        self._queue: deque[int] = deque()
        self._busy = False
        self._stopped = False
        #: fires when the queue runs empty (tests wait on it)
        self._idle: list[defer.Deferred[None]] = []
        #: deltas made since start (ready or skipped)
        self.made = 0

    def start(self) -> None:
        """Claim the deltas a dead process left unfinished."""
        if not self._config.enabled:
            return
        self._db.rows(RECLAIM_SQL).addCallbacks(
            lambda rows: self._enqueue([r[0] for r in rows]),
            lambda failure: log.warn("claiming unfinished deltas failed: {why}",
                                     why=failure.getErrorMessage()))

    def stop(self) -> defer.Deferred[None]:
        """Start nothing more (a zstd running now finishes; its row stays ``making``)."""
        self._stopped = True
        return defer.succeed(None)

    async def plan(self, release_id: int) -> None:
        """Record the deltas of ``release_id`` as ``making`` and queue them."""
        if self._config.deltas_from <= 0:
            return
        rows = await self._db.rows(PLAN_SQL, {"release": release_id,
                                              "count": self._config.deltas_from})
        self._enqueue([r[0] for r in rows])

    def idle(self) -> defer.Deferred[None]:
        """Fires when nothing is queued or running."""
        if not self._busy and not self._queue:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        return d

    def _enqueue(self, ids: list[int]) -> None:
        self._queue.extend(ids)
        if not self._busy:
            defer.ensureDeferred(self._work())

    async def _work(self) -> None:
        self._busy = True
        try:
            while self._queue and not self._stopped:
                ids = [self._queue.popleft()]
                for job in await self._db.rows(JOB_SQL, {"ids": ids}):
                    await self._make(*job)
        except Exception as exc:  # the database went away: the rows wait for a restart
            log.warn("making deltas stopped: {why}", why=str(exc) or type(exc).__name__)
        finally:
            self._busy = False
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    async def _make(self, delta_id: int, base_id: int, release_id: int, base_file: str,
                    target_file: str, target_size: int) -> None:
        folder = self._config.folder
        assert folder is not None
        name = f"deltas/{base_id}-{release_id}.zst"
        out = folder / name
        out.parent.mkdir(parents=True, exist_ok=True)
        values: dict[str, Any] = {"id": delta_id, "size": None, "sha256": None, "file": None,
                                  "reason": None}
        try:
            made = await bundles.make_delta(self._reactor, folder / base_file,
                                            folder / target_file, out)
        except (OSError, bundles.BundleRefused) as exc:  # a tool failed; not a verity bundle
            values.update(state="failed", reason=str(exc)[:500])
            log.warn("delta of release {r} from release {b} failed: {why}", r=release_id,
                     b=base_id, why=str(exc))
        else:
            values.update(size=made.size, sha256=made.sha256)
            if made.size >= target_size:
                Path(out).unlink(missing_ok=True)
                values.update(state="skipped", file=None,
                              reason=f"{made.size} bytes, no smaller than the bundle")
            else:
                values.update(state="ready", file=name)
            self.made += 1
            log.info("delta of release {r} from release {b}: {size} bytes ({state})",
                     r=release_id, b=base_id, size=made.size, state=values["state"])
        await self._db.run(DONE_SQL, values)
