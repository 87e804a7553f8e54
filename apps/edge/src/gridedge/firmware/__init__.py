"""Over-the-air updates on the unit: offers from the cloud and bundles from the local page,
fetched, verified, installed with RAUC, and reported (docs/updates.md, "The unit").

The parts: :mod:`~gridedge.firmware.agent` (the rules), :mod:`~gridedge.firmware.store`
(files on /data), :mod:`~gridedge.firmware.fetch` (chunk order and checks),
:mod:`~gridedge.firmware.verity` and :mod:`~gridedge.firmware.manifest` (the bundle's
signed structure), :mod:`~gridedge.firmware.rauc` (the tools), and
:mod:`~gridedge.firmware.window` (when to reboot).

Tests: tests/edge/test_firmware_agent.py.
"""

from gridedge.firmware.agent import Agent, Port, UpdateFailed
from gridedge.firmware.rauc import BundleTools, RaucSlots, Slots, SlotStatus
from gridedge.firmware.store import DownloadStore

__all__ = ["Agent", "BundleTools", "DownloadStore", "Port", "RaucSlots", "SlotStatus", "Slots",
           "UpdateFailed"]
