"""The update agent: takes offers from the cloud, fetches, verifies, installs, reboots, and
reports what happened, across link cuts and reboots.

Why a state machine fed by its adapter (like gridedge.uplink.link): every rule here is a
decision (which offer, when to ask for a chunk, what a bad chunk costs, when to reboot), and
the tests drive them all with ``task.Clock``, real bundles and a stand-in for the unit's two
slots.  Its outside world is four things: the uplink connection (:class:`Port`, attached on
Welcome and detached when the connection goes), the download store on /data, the bundle
tools (``rauc info``, ``zstd`` and the hash tree put back for a delta), and the slots
(``rauc status``/``install``, reboot).

Rules (docs/updates.md, "The unit"):

* Offers: an offer whose final outcome this unit already reported (healthy, rolled back,
  rejected) is answered with that outcome again (the cloud missed it), not fetched.  Of the
  others, a download already under way is resumed; else a delta whose base is the bundle
  this unit holds (``base.raucb``, same sha256); else the full offer.
* Before fetching, and again before installing, the running slot must be marked good (as
  fwup refuses to upgrade an unvalidated slot): if it is not yet, the agent waits and asks
  again later; no failure.  /data must hold the blob (and a delta's rebuilt bundle) plus
  ``min_free_mb``; the space is taken at once.
* Readings first: a ChunkRequest goes only when the uplink has no upload outstanding and
  nothing owed now (``Port.uploads_idle``), one chunk in flight, at most ``max_chunk_rate``
  requests a second.
* A chunk that fails verification is fetched again, up to 3 times; then FAILED.  A bad
  signature, a foreign compatible or a bundle that is not a verity bundle: REJECTED.
* Installed: ``pending.json`` is written and the unit reboots (now or in the window).  After
  the boot: the new slot running and marked good (by the firmware's mark-good script) is
  HEALTHY; back on the slot it was installed from is ROLLED_BACK, with the reason mark-good
  wrote.

Tests: tests/edge/test_firmware_agent.py, tests/edge/test_firmware_verity.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from gridwire import ChunkRequest, FirmwareChunk, FirmwareOffer, FirmwareState, FirmwareStatus
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridedge.config import FirmwareConfig
from gridedge.firmware.fetch import DeltaFetch, FullFetch
from gridedge.firmware.manifest import ManifestError
from gridedge.firmware.rauc import BundleRefused, BundleTools, Slots, ToolError
from gridedge.firmware.store import Download, DownloadStore
from gridedge.firmware.verity import VerityError
from gridedge.firmware.window import seconds_until_window

__all__ = ["Agent", "Port", "UpdateFailed"]

#: re-fetches of one chunk (or of the hash tree) before the download fails
MAX_REFETCH = 3
#: a DOWNLOADING status at most every this part of the size, or this many seconds
PROGRESS_STEP = 0.05
PROGRESS_EVERY = 60.0
_FINAL = (FirmwareState.HEALTHY, FirmwareState.ROLLED_BACK, FirmwareState.REJECTED)


class Port(Protocol):
    """The uplink connection as the agent uses it (gridedge.uplink.link.Link)."""

    def uploads_idle(self) -> bool:
        """No upload unacknowledged and none owed now: a chunk may use the link."""

    def send_message(self, message: ChunkRequest | FirmwareStatus) -> None:
        """Send on this connection."""


class UpdateFailed(Exception):
    """The update stops here; ``state`` (FAILED or REJECTED) and the message are reported."""

    def __init__(self, state: FirmwareState, reason: str) -> None:
        super().__init__(reason)
        self.state = state


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class Agent:
    """One unit's updates.  ``phase`` and ``last_status`` are what the page shows."""

    log = Logger()

    def __init__(
        self,
        settings: FirmwareConfig,
        store: DownloadStore,
        tools: BundleTools,
        slots: Slots,
        clock: IReactorTime,
        running_version: str,
        *,
        retry_after: float = 60.0,
        chunk_timeout: float = 120.0,
        boot_id: Callable[[], str] = _boot_id,
    ) -> None:
        self.settings = settings
        self.store = store
        self.tools = tools
        self.slots = slots
        self.clock = clock
        self.running_version = running_version
        self.retry_after = retry_after
        self.chunk_timeout = chunk_timeout
        self._boot_id = boot_id
        #: idle, waiting (slot not good yet), downloading, checking, installing, window,
        #: rebooting, booted (checking the new slot), failed
        self.phase = "idle"
        self._waiting_for = ""  #: why the phase is "waiting", logged once
        self.last_status: FirmwareStatus | None = None
        self.version: str | None = None  #: the version being fetched or installed
        self._port: Port | None = None
        self._offers: list[FirmwareOffer] = []
        self._offered_here: set[int] = set()  # offer ids of the attached connection
        self._failed_here: set[int] = set()  # offers failed since that connection began
        self._failed_deltas: set[int] = set()  # deltas that failed: the full offer instead
        self._compatible: str | None = None  # the running system's, from rauc status
        self._beginning = False  # an offer is being taken up (asking rauc, making room)
        self._owed: FirmwareStatus | None = None
        self._download: Download | None = None
        self._plan: FullFetch | DeltaFetch | None = None
        self._in_flight: int | None = None
        self._next_request = 0.0
        self._progress_at = (0, 0.0)
        self._timer: IDelayedCall | None = None
        self._chunk_timer: IDelayedCall | None = None
        self._deciding: IDelayedCall | None = None

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        """At the unit's start: an update pending over a reboot is judged first."""
        pending = self.store.pending()
        if pending is not None:
            self.phase = "booted"
            self.version = str(pending.get("version"))
            self._judge_boot(pending)

    def stop(self) -> None:
        for call in (self._timer, self._chunk_timer, self._deciding):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._chunk_timer = self._deciding = None

    def attach(self, port: Port) -> None:
        """A connection is ready (Welcome): send what is owed, and go on fetching."""
        self._port = port
        self._offers = []
        self._offered_here = set()
        self._failed_here = set()
        if self._owed is not None:
            self._send(self._owed)
            self._owed = None
        self._pump()

    def detach(self, port: Port) -> None:
        """That connection is gone: its offers and the chunk in flight with it."""
        if self._port is not port:
            return
        self._port = None
        self._offers = []
        self._in_flight = None
        if self._chunk_timer is not None and self._chunk_timer.active():
            self._chunk_timer.cancel()
        self._chunk_timer = None

    # -- from the cloud ----------------------------------------------------------------------

    def offered(self, offer: FirmwareOffer) -> None:
        """An offer on the attached connection; decided once the burst of offers is in."""
        if not self.settings.enabled:
            self.log.info("firmware {version} offered (offer {id}); updates are disabled "
                          "([firmware] enabled = false)", version=offer.version, id=offer.offer_id)
            return
        self._offers.append(offer)
        self._offered_here.add(offer.offer_id)
        if self._deciding is None or not self._deciding.active():
            self._deciding = self.clock.callLater(0, self._decide)

    def chunk(self, chunk: FirmwareChunk) -> None:
        """A chunk arrived: check it, store it, ask for the next."""
        download, plan = self._download, self._plan
        if download is None or plan is None or chunk.offer_id != download.offer_id \
                or chunk.index != self._in_flight:
            return  # late (timed out and asked again) or of a download given up
        self._in_flight = None
        if self._chunk_timer is not None and self._chunk_timer.active():
            self._chunk_timer.cancel()
        try:
            if isinstance(plan, FullFetch):
                bad = plan.bad_block(download, chunk.index, chunk.data)
                if bad is not None:
                    self._refetch(str(chunk.index), f"chunk {chunk.index} failed verification "
                                  f"(block at byte {bad})")
                    self._pump()
                    return
            else:
                plan.add(chunk.index, chunk.data)
            self._download = download = self.store.write_chunk(download, chunk.index,
                                                               chunk.data)
        except UpdateFailed as exc:
            self._fail(exc)
            return
        except OSError as exc:
            self._fail(UpdateFailed(FirmwareState.FAILED, f"cannot store the download: {exc}"))
            return
        self._progress(download)
        self._pump()

    def wake(self) -> None:
        """The uplink may have become idle (an Ack came): ask for a chunk if one is due."""
        self._pump()

    # -- choosing an offer -------------------------------------------------------------------

    def _decide(self) -> None:
        self._deciding = None
        if self._beginning or self.phase not in ("idle", "waiting", "failed", "downloading"):
            return  # installing or rebooting: offers wait for the next connection
        offers: list[FirmwareOffer] = []
        chosen: FirmwareOffer | None = None
        for offer in list(self._offers):
            outcome = self.store.outcome(offer.offer_id)
            if outcome is not None and outcome[0] in _FINAL:
                self._offers.remove(offer)  # answered once per offer
                self._send(FirmwareStatus(offer_id=offer.offer_id, state=outcome[0],
                                          detail=outcome[1]))
            elif offer.offer_id not in self._failed_here:
                offers.append(offer)
        current = self.store.current() if self._download is None else self._download
        base = self.store.base_sha256()
        for offer in offers:
            if current is not None and current.same_offer(offer):
                chosen = offer
                break
        if chosen is None:
            deltas = [o for o in offers if o.is_delta and o.offer_id not in self._failed_deltas
                      and o.delta_base is not None and o.delta_base.hex() == base]
            fulls = [o for o in offers if not o.is_delta]
            if not deltas and not fulls:
                return
            chosen = (deltas or fulls)[0]
        if self.phase == "downloading" and self._download is not None \
                and self._download.offer_id == chosen.offer_id:
            self._pump()  # resumed on a new connection
            return
        self._spawn(self._begin(chosen, current))

    async def _begin(self, offer: FirmwareOffer, current: Download | None) -> None:
        self._beginning = True
        try:
            if not await self._slot_good():
                return
            if current is not None and current.same_offer(offer):
                download = current
                self.log.info("firmware {version}: resuming offer {id} at {n} of {size} bytes",
                              version=offer.version, id=offer.offer_id, n=current.received,
                              size=offer.size)
            else:
                short = self.store.room_needed(offer, self.settings.min_free_bytes)
                if short is not None and short > 0:
                    raise UpdateFailed(FirmwareState.FAILED, f"no room on /data: "
                                       f"{short / 1e6:.1f} MB more needed for {offer.size} bytes "
                                       f"and {self.settings.min_free_bytes >> 20} MiB kept free")
                try:
                    download = self.store.begin(offer)
                except OSError as exc:
                    raise UpdateFailed(FirmwareState.FAILED, f"no room on /data: {exc}") from None
                self.log.info("firmware {version}: fetching offer {id} ({kind}, {size} bytes)",
                              version=offer.version, id=offer.offer_id, size=offer.size,
                              kind="delta" if offer.is_delta else "full bundle")
            self._download, self._in_flight = download, None
            self._plan = DeltaFetch(self.store, download) if download.is_delta \
                else FullFetch(self.store)
            self.version = offer.version
            self.phase = "downloading"
            self._progress_at = (-1, 0.0)
            self._progress(download)
            self._pump()
        except UpdateFailed as exc:
            self._fail(exc, offer.offer_id)
        finally:
            self._beginning = False

    async def _slot_good(self) -> bool:
        """True when the running slot is marked good; else wait (phase "waiting") and decide
        again later on this connection's offers."""
        wait = self.retry_after
        try:
            status = await self.slots.status()
        except ToolError as exc:
            why = f"rauc status failed ({exc})"
        else:
            if status.good:
                self._compatible = status.compatible
                return True
            # mark-good judges the slot within minutes of the boot: look again soon, as the
            # judging of a new slot does, rather than sit out a whole retry period
            wait = self.retry_after / 6
            why = f"running slot {status.booted} not marked good yet"
        if (self.phase, self._waiting_for) != ("waiting", why):
            self.log.info("firmware: {why}; asking again every {s:g} s", why=why, s=wait)
        self.phase, self._waiting_for = "waiting", why
        self._later(wait, self._decide)
        return False

    # -- fetching ----------------------------------------------------------------------------

    def _pump(self) -> None:
        download, plan, port = self._download, self._plan, self._port
        if self.phase != "downloading" or download is None or plan is None or port is None \
                or download.offer_id not in self._offered_here or self._in_flight is not None \
                or (self._timer is not None and self._timer.active()):
            return
        try:
            step = plan.next(download)
            if isinstance(plan, FullFetch) and plan.tree is not None and not plan.tail_checked:
                self._check_stored_tail(plan)  # the tree was built just now
                download = self._download
                assert download is not None
                step = plan.next(download)
            if step.check:
                self.phase = "checking"
                self._spawn(self._check_tail(download))
                return
        except (ManifestError, VerityError) as exc:
            self._bad_tail(exc)
            return
        except UpdateFailed as exc:
            self._fail(exc)
            return
        except OSError as exc:
            self._fail(UpdateFailed(FirmwareState.FAILED, f"cannot read the download: {exc}"))
            return
        if step.done:
            self.phase = "checking"
            self._spawn(self._downloaded(download))
            return
        assert step.index is not None
        now = self.clock.seconds()
        wait = self._next_request - now
        if wait > 0 or not port.uploads_idle():
            self._later(max(wait, 1.0 / self.settings.max_chunk_rate), self._pump)
            return
        self._next_request = now + 1.0 / self.settings.max_chunk_rate
        self._in_flight = step.index
        self._chunk_timer = self.clock.callLater(self.chunk_timeout, self._chunk_late)
        port.send_message(ChunkRequest(offer_id=download.offer_id, index=step.index))

    def _chunk_late(self) -> None:
        self._chunk_timer = None
        self._in_flight = None  # asked again; a late copy is ignored
        self._pump()

    def _bad_tail(self, exc: Exception) -> None:
        """The stored tail is wrong: a bad hash tree is fetched again (up to 3 times); a
        tail that is no verity bundle is refused."""
        download, plan = self._download, self._plan
        if isinstance(exc, VerityError) and download is not None \
                and isinstance(plan, FullFetch):
            try:
                for index in plan.tail_chunks(download):
                    if plan.cms is not None and download.span(index)[0] < plan.cms[0]:
                        download = download.marked(index, on=False)
                self._download = download
                self.store.save(download)
                self._refetch("tree", f"hash tree: {exc}")
            except UpdateFailed as failed:
                self._fail(failed)
                return
            plan.tree = None
            self._pump()
            return
        self._fail(UpdateFailed(FirmwareState.REJECTED, f"not a verity bundle: {exc}"))

    def _refetch(self, key: str, reason: str) -> None:
        assert self._download is not None
        fetches = dict(self._download.fetches)
        fetches[key] = fetches.get(key, 0) + 1
        if fetches[key] > MAX_REFETCH:  # logged with the failure
            raise UpdateFailed(FirmwareState.FAILED, f"{reason}, {MAX_REFETCH} re-fetches")
        self.log.warn("firmware: {reason} (re-fetch {n} of {max})", reason=reason,
                      n=fetches[key], max=MAX_REFETCH)
        self._download = replace(self._download, fetches=fetches)
        self.store.save(self._download)

    async def _check_tail(self, download: Download) -> None:
        """The signature of the fetched tail (``rauc info`` on the partial file) and the
        manifest inside it."""
        plan = self._plan
        assert isinstance(plan, FullFetch)
        try:
            info = await self.tools.info(self.store.part)
            manifest = plan.signed()
            self._check_compatible(info.compatible)
            if manifest.version != download.version:
                raise UpdateFailed(FirmwareState.REJECTED, f"the bundle is version "
                                   f"{manifest.version}, offered as {download.version}")
            self.phase = "downloading"
            # Builds and checks the tree when its chunks are in (VerityError: fetched again);
            # a real bundle's tree spans chunks beyond the signature's, fetched next, and the
            # stored tail is then checked when _pump sees the tree built.
            plan.next(download)
            self._check_stored_tail(plan)
        except BundleRefused as exc:
            self._fail(UpdateFailed(FirmwareState.REJECTED, str(exc)))
            return
        except UpdateFailed as exc:
            self._fail(exc)
            return
        except (ManifestError, VerityError) as exc:
            self.phase = "downloading"
            self._bad_tail(exc)
            return
        self.phase = "downloading"
        self._pump()

    def _check_stored_tail(self, plan: FullFetch) -> None:
        """Once the tree is built: tail chunks stored before it whose data blocks fail it are
        fetched again (UpdateFailed after 3 times)."""
        if plan.tree is None or plan.tail_checked:
            return
        plan.tail_checked = True
        download = self._download
        assert download is not None
        for index in plan.stored_bad(download):
            self._download = download = download.marked(index, on=False)
            self.store.save(download)
            self._refetch(str(index), f"chunk {index} failed verification")

    def _check_compatible(self, compatible: str) -> None:
        mine = self._compatible
        if mine is not None and compatible != mine:
            raise UpdateFailed(FirmwareState.REJECTED, f"bundle is for {compatible!r}; "
                               f"this unit is {mine!r}")

    async def _downloaded(self, download: Download) -> None:
        """Every chunk is in: check the whole, rebuild a delta, then install."""
        try:
            self._status(FirmwareState.DOWNLOADED, download.size)
            if download.is_delta:
                bundle = await self._rebuild(download)
                sha256, size = download.target_sha256, download.target_size
            else:
                digest = await self.tools.sha256(self.store.part)
                if digest != download.sha256:
                    self.store.discard()
                    raise UpdateFailed(FirmwareState.FAILED, "the bundle's sha256 is not the "
                                       "offer's")
                bundle, sha256, size = self.store.part, download.sha256, download.size
            assert sha256 is not None
            await self._install(bundle, download.offer_id, download.version, sha256, size)
        except UpdateFailed as exc:
            self._fail(exc)
        except ToolError as exc:
            self._fail(UpdateFailed(FirmwareState.FAILED, str(exc)))

    async def _rebuild(self, download: Download) -> Path:
        plan = self._plan
        assert isinstance(plan, DeltaFetch)
        if not plan.matches(download):
            self._failed_deltas.add(download.offer_id)
            self.store.discard()
            raise UpdateFailed(FirmwareState.FAILED, "the delta's sha256 is not the offer's")
        self._status(FirmwareState.VERIFYING, download.size, "rebuilding from the delta")
        try:
            await self.tools.patch(self.store.base, self.store.part, self.store.rebuilt)
            digest = await self.tools.sha256(self.store.rebuilt)
        except ToolError as exc:
            self._failed_deltas.add(download.offer_id)
            self.store.discard()
            raise UpdateFailed(FirmwareState.FAILED, f"delta rebuild failed: {exc}") from None
        if digest != download.target_sha256 or \
                self.store.rebuilt.stat().st_size != download.target_size:
            self._failed_deltas.add(download.offer_id)
            self.store.discard()
            raise UpdateFailed(FirmwareState.FAILED, "the rebuilt bundle is not the target "
                               "(sha256 or size)")
        return self.store.rebuilt

    # -- installing --------------------------------------------------------------------------

    def install_local(self, bundle: Path, sha256: str) -> defer.Deferred[None]:
        """The local page's bundle: the same checks and install as an offer's (offer id 0:
        nothing is reported to the cloud).  Fails with UpdateFailed."""
        if self.phase not in ("idle", "failed", "waiting"):
            return defer.fail(UpdateFailed(FirmwareState.FAILED,
                                           f"an update is under way ({self.phase})"))
        self.stop()
        return defer.Deferred.fromCoroutine(self._install_local(bundle, sha256))

    async def _install_local(self, bundle: Path, sha256: str) -> None:
        try:
            try:
                status = await self.slots.status()
            except ToolError as exc:
                raise UpdateFailed(FirmwareState.FAILED, f"rauc status: {exc}") from None
            if not status.good:
                raise UpdateFailed(FirmwareState.FAILED, f"running slot {status.booted} is not "
                                   "marked good yet; try again once the unit is healthy")
            self._compatible = status.compatible
            await self._install(bundle, 0, None, sha256, bundle.stat().st_size)
        except UpdateFailed as exc:
            self._fail(exc, 0)
            raise
        except (ToolError, OSError) as exc:
            failed = UpdateFailed(FirmwareState.FAILED, str(exc))
            self._fail(failed, 0)
            raise failed from None

    async def _install(self, bundle: Path, offer_id: int, version: str | None, sha256: str,
                       size: int) -> None:
        """Signature and compatible (``rauc info``), running slot good, ``rauc install``,
        then reboot as configured."""
        self.phase = "checking"
        self._status(FirmwareState.VERIFYING, size, "signature", offer_id)
        try:
            info = await self.tools.info(bundle)
        except BundleRefused as exc:
            raise UpdateFailed(FirmwareState.REJECTED, str(exc)) from None
        self._check_compatible(info.compatible)
        version = version or info.version
        self.version = version
        status = await self.slots.status()
        if not status.good:
            # Cannot happen for an offer (checked before fetching; only a reboot unmarks it)
            # unless someone marked it bad by hand: wait rather than fail.
            self.phase = "waiting"
            self._later(self.retry_after, lambda: self._spawn(
                self._install(bundle, offer_id, version, sha256, size)))
            return
        self.phase = "installing"
        self._status(FirmwareState.INSTALLING, size, "", offer_id)
        self.log.info("firmware {version}: installing {path}", version=version, path=str(bundle))
        try:
            await self.slots.install(bundle)
        except ToolError as exc:
            raise UpdateFailed(FirmwareState.FAILED, f"rauc install: {exc}") from None
        # The other slot is now the boot loader's first choice: say so first, so that any
        # boot from here on is judged against it (and by its own failure, not an older one).
        with contextlib.suppress(OSError):
            os.unlink(self.store.last_failure)
        self.store.set_pending({"offer_id": offer_id, "version": version,
                                "from_version": self.running_version, "boot_id": self._boot_id(),
                                "booted": status.booted})
        self.store.keep_installed(bundle, version, sha256)
        if offer_id:  # a local install leaves an offer's download where it is
            self.store.discard()
            self._download, self._plan = None, None
        self._status(FirmwareState.INSTALLED, size, "", offer_id)
        self._schedule_reboot(offer_id, size)

    def _schedule_reboot(self, offer_id: int, size: int) -> None:
        """Reboot now, or at the start of the maintenance window."""
        wait = 0.0 if self.settings.reboot == "now" else \
            seconds_until_window(self.clock.seconds(), self.settings.window)
        self.phase = "window" if wait > 0 else "rebooting"
        if wait > 0:
            self.log.info("firmware {version} installed; rebooting in the window, in {s:.0f} s",
                          version=self.version, s=wait)
        self._later(wait, lambda: self._reboot(offer_id, size))

    def _reboot(self, offer_id: int, size: int) -> None:
        self.phase = "rebooting"
        self._status(FirmwareState.REBOOTING, size, "", offer_id)
        self.log.info("firmware {version}: rebooting into the new slot", version=self.version)
        self.slots.reboot()

    # -- after the reboot --------------------------------------------------------------------

    def _judge_boot(self, pending: dict[str, Any]) -> None:
        self._spawn(self._judge(pending))

    async def _judge(self, pending: dict[str, Any]) -> None:
        offer_id, version = int(pending["offer_id"]), str(pending["version"])
        if pending.get("boot_id") and pending["boot_id"] == self._boot_id():
            self.log.warn("firmware {version}: installed but not rebooted yet", version=version)
            self._schedule_reboot(offer_id, 0)
            return
        try:
            status = await self.slots.status()
        except ToolError as exc:
            self.log.warn("firmware: rauc status failed ({error})", error=str(exc))
            self._later(self.retry_after / 6, lambda: self._judge_boot(pending))
            return
        # Back on the slot the update was installed from: the boot loader gave the new one
        # up (mark-good rebooted it until its attempts ran out).  Without the slot on record,
        # the version tells.
        old_slot = pending.get("booted")
        if (status.booted == old_slot) if old_slot else (self.running_version != version):
            reason = self.store.failure_reason() or \
                f"the unit came back on slot {status.booted}, running {self.running_version}"
            self.store.drop_installed()
            self._final(offer_id, FirmwareState.ROLLED_BACK, reason)
            self.log.warn("firmware {version} rolled back: {reason}", version=version,
                          reason=reason)
            return
        if not status.good:  # mark-good has not judged the new slot yet
            self._later(self.retry_after / 6, lambda: self._judge_boot(pending))
            return
        if self.running_version != version:
            self.log.warn("firmware: slot {slot} runs {running}, the bundle said {version}",
                          slot=status.booted, running=self.running_version, version=version)
        self.store.promote_installed()
        with contextlib.suppress(OSError):
            os.unlink(self.store.last_failure)
        self._final(offer_id, FirmwareState.HEALTHY,
                    f"slot {status.booted} marked good, running {self.running_version}")
        self.log.info("firmware {version}: healthy, slot {slot} marked good", version=version,
                      slot=status.booted)

    def _final(self, offer_id: int, state: FirmwareState, detail: str) -> None:
        self.store.clear_pending()
        self.phase = "idle"
        if offer_id:
            self.store.remember(offer_id, state, detail)
        self._status(state, 0, detail, offer_id, owed=True)

    # -- reporting ---------------------------------------------------------------------------

    def _fail(self, exc: UpdateFailed, offer_id: int | None = None) -> None:
        download = self._download
        if offer_id is None:
            offer_id = download.offer_id if download is not None else 0
        self.log.warn("firmware: update {state}: {reason}", state=exc.state.name,
                      reason=str(exc))
        if offer_id:
            self._failed_here.add(offer_id)
            if exc.state is FirmwareState.REJECTED:
                self.store.remember(offer_id, exc.state, str(exc)[:255])
            self.store.discard()
            self._download, self._plan, self._in_flight = None, None, None
        self.phase = "failed"
        self._status(exc.state, download.received if download is not None else 0,
                     str(exc), offer_id, owed=True)

    def _progress(self, download: Download) -> None:
        """DOWNLOADING at most every 5% or 60 s (and at the start)."""
        received, now = download.received, self.clock.seconds()
        last, at = self._progress_at
        if last >= 0 and received - last < download.size * PROGRESS_STEP \
                and now - at < PROGRESS_EVERY and received < download.size:
            return
        self._progress_at = (received, now)
        self._status(FirmwareState.DOWNLOADING, received)

    def _status(self, state: FirmwareState, received: int, detail: str = "",
                offer_id: int | None = None, *, owed: bool = False) -> None:
        if offer_id is None:
            offer_id = self._download.offer_id if self._download is not None else 0
        status = FirmwareStatus(offer_id=offer_id, state=state, received=received,
                                detail=detail.encode()[:255].decode(errors="ignore"))
        self.last_status = status
        if not offer_id:
            return  # a local install: the page shows it, the cloud has no offer to match
        if self._port is None:
            if owed or state is not FirmwareState.DOWNLOADING:
                self._owed = status
            return
        self._send(status)

    def _send(self, status: FirmwareStatus) -> None:
        if self._port is None:
            self._owed = status
        else:
            self._port.send_message(status)

    def _spawn(self, step: Coroutine[Any, Any, None]) -> None:
        """Run an asynchronous step; what it did not expect (a file it cannot read, a tool
        that vanished) fails the update with the reason instead of leaving the agent stuck."""
        def unexpected(failure: Failure) -> None:
            self.log.failure("firmware: unexpected error", failure)
            self._fail(UpdateFailed(FirmwareState.FAILED,
                                    f"unexpected error: {failure.getErrorMessage()}"))
        defer.Deferred.fromCoroutine(step).addErrback(unexpected)

    def _later(self, seconds: float, call: Callable[[], object]) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

        def fire() -> None:
            self._timer = None
            call()
        self._timer = self.clock.callLater(seconds, fire)

    def view(self) -> dict[str, Any]:
        """What the page and `gridedge health` show."""
        status = self.last_status
        download = self._download
        return {
            "phase": self.phase,
            "version": self.version,
            "received": download.received if download is not None else None,
            "size": download.size if download is not None else None,
            "last_state": FirmwareState(status.state).name if status is not None else None,
            "last_detail": status.detail if status is not None else None,
        }

