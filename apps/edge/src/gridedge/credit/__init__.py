"""Prepaid credit on the unit: the cloud's allowances counted down from the meters' readings.

* :mod:`~gridedge.credit.countdown`: the rules (pure functions of state and input);
* :mod:`~gridedge.credit.store`: ``credit.db`` on the data partition;
* :mod:`~gridedge.credit.service`: :class:`UnitCredit` (allowances in, readings counted,
  relay decisions through the command executor, events) and :class:`CreditSink`.

Tests: tests/edge/test_edge_credit.py, tests/system/test_credit_offline.py.
"""

from __future__ import annotations

from .countdown import MeterCredit
from .service import CreditSink, UnitCredit
from .store import CreditStore, CreditStoreError

__all__ = ["CreditSink", "CreditStore", "CreditStoreError", "MeterCredit", "UnitCredit"]
