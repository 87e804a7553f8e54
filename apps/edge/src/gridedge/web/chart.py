"""A meter's last 24 hours as an SVG bar chart, drawn on the unit.

Why server-side SVG: the page must work with no internet and little script, and a chart
library would weigh more than the whole page.  A bar per interval (energy used in it, from the
difference of the cumulative register), a dashed line for intervals with the relay open, and
text in the browser's own font: a few kilobytes.

Tests: tests/edge/test_web_parts.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

from gridwire import Flags, IntervalRecord

__all__ = ["energy_chart"]

_W, _H, _PAD_L, _PAD_B, _PAD_T = 720, 220, 44, 22, 10
_DAY = 86400


def energy_chart(records: Sequence[IntervalRecord], interval: int = 900) -> str:
    """SVG of Wh per interval over the 24 hours up to the newest record."""
    if len(records) < 2:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" '
                f'aria-label="no data yet"><text x="{_W // 2}" y="{_H // 2}" '
                'text-anchor="middle" font-size="14">not enough records yet</text></svg>')
    end = records[-1].interval_end
    start = end - _DAY
    bars: list[tuple[int, int, bool]] = []
    for prev, cur in itertools.pairwise(records):
        if cur.interval_end <= start:
            continue
        used = max(0, cur.energy_wh - prev.energy_wh)
        bars.append((cur.interval_end, used, bool(cur.flags & Flags.RELAY_OPEN)))
    top = max([b[1] for b in bars] + [1])
    plot_w, plot_h = _W - _PAD_L - 4, _H - _PAD_B - _PAD_T
    slot = plot_w / (_DAY / interval)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" '
             f'aria-label="energy per interval, last 24 hours" font-size="11">',
             f'<text x="2" y="{_PAD_T + 10}">{top} Wh</text>',
             f'<text x="2" y="{_PAD_T + plot_h}">0</text>',
             f'<line x1="{_PAD_L}" y1="{_PAD_T + plot_h}" x2="{_W - 4}" y2="{_PAD_T + plot_h}" '
             'stroke="#888"/>']
    for interval_end, used, relay_open in bars:
        x = _PAD_L + (interval_end - interval - start) / interval * slot
        h = used / top * plot_h
        fill = "#c0392b" if relay_open else "#2e86c1"
        width = max(1.0, slot - 1)
        parts.append(f'<rect x="{x:.1f}" y="{_PAD_T + plot_h - h:.1f}" width="{width:.1f}" '
                     f'height="{h:.1f}" fill="{fill}"><title>{_hhmm(interval_end)} {used} Wh'
                     f'{" (relay open)" if relay_open else ""}</title></rect>')
    for k in range(0, 25, 6):
        t = start + k * 3600
        x = _PAD_L + k * 3600 / interval * slot
        parts.append(f'<text x="{x:.0f}" y="{_H - 6}" text-anchor="middle">{_hhmm(t)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _hhmm(t: int) -> str:
    return time.strftime("%H:%M", time.gmtime(t))
