"""The countdown of one prepaid meter's allowance on the unit: pure rules, no I/O, no clock.

Why pure: these few rules decide when a customer's supply is cut off while nobody can
check them from the cloud, so each is a function of (state, input) that the unit tests
drive case by case (tests/edge/test_edge_credit.py); :mod:`gridedge.credit.service`
only stores the results and acts on them.

The rules (docs/edge.md, "Prepaid credit on the unit"):

* **Consumption** is counted from the register of the meter's readings as the radio
  link journals them, after the allowance's anchor reading: each reading newer than the
  last one counted adds ``register - last register``.  A register lower than the last
  one restarted from zero (a register reset): the reading's own register is the energy
  since the reset; what was used between the last reading and the reset is unknown and
  not counted (the cloud's ledger follows the same rule, docs/pipeline.md).
* **A late reading** (``interval_end`` not after the last one counted) adds nothing:
  the register is cumulative, so the later reading already counted its energy.
* **A newer allowance** (a higher ``generation``) replaces the held one; one that is not
  newer (delivered late, after a newer one) changes nothing.  The new one counts from
  its anchor: what the unit read after the anchor counts against it at once.
* **Expiry**: at or after ``valid_until`` the allowance is used up.
* **Relay**: the unit wants the relay open when ``used >= allowance`` or the allowance
  expired; it closes only a relay it opened itself for credit, and only because a newer
  allowance leaves credit.

Tests: tests/edge/test_edge_credit.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gridwire import Allowance

__all__ = ["MeterCredit", "apply_allowance", "count", "register_delta", "wants_open"]


@dataclass(frozen=True, slots=True)
class MeterCredit:
    """What the unit holds for one prepaid meter."""

    meter_id: int
    generation: int
    allowance_wh: int
    anchor_end: int
    anchor_wh: int
    valid_until: int
    #: the newest reading counted (the anchor until one after it arrives)
    last_end: int
    last_wh: int
    #: Wh used since the anchor
    used_wh: int = 0
    #: the unit opened the relay for credit (and has not closed it since)
    opened: bool = False

    @property
    def remaining_wh(self) -> int:
        return self.allowance_wh - self.used_wh


def register_delta(previous_wh: int, register_wh: int) -> int:
    """Energy between two readings of a cumulative register (a reset: counted from zero)."""
    return register_wh - previous_wh if register_wh >= previous_wh else register_wh


def count(state: MeterCredit, interval_end: int, register_wh: int) -> MeterCredit:
    """``state`` after one reading of its meter (late or duplicate readings add nothing)."""
    if interval_end <= state.last_end:
        return state
    return replace(state, last_end=interval_end, last_wh=register_wh,
                   used_wh=state.used_wh + register_delta(state.last_wh, register_wh))


def apply_allowance(
    state: MeterCredit | None, meter_id: int, allowance: Allowance,
    newest: tuple[int, int] | None,
) -> MeterCredit | None:
    """The state under ``allowance``; None when it is not newer than the held one.

    ``newest`` is the meter's newest reading the unit knows (interval_end, register),
    held or not: what it read after the anchor is counted at once.
    """
    if state is not None and allowance.generation <= state.generation:
        return None
    fresh = MeterCredit(meter_id, allowance.generation, allowance.allowance_wh,
                        allowance.anchor_end, allowance.anchor_wh, allowance.valid_until,
                        allowance.anchor_end, allowance.anchor_wh, 0,
                        state.opened if state is not None else False)
    candidates = [newest] if newest is not None else []
    if state is not None:
        candidates.append((state.last_end, state.last_wh))
    later = [c for c in candidates if c[0] > allowance.anchor_end]
    if later:
        end, register = max(later)
        fresh = count(fresh, end, register)
    return fresh


def wants_open(state: MeterCredit, now: float) -> bool:
    """True when the allowance is used up or expired."""
    return state.used_wh >= state.allowance_wh or now >= state.valid_until
