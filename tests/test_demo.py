"""Tests of tools/demo.py, the runner behind `make demo`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_whole_stack_and_readings_reach_postgresql(tmp_path: Path) -> None:
    """The demo brings up PostgreSQL, cloud, gridsim, edge and API; readings land in PostgreSQL
    and come out of the API."""
    state = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "demo.py"), "--state", str(state),
         "--meters", "50", "--for", "20"],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    counts = re.findall(r"demo: (\d+) readings from (\d+) meters", result.stdout)
    assert counts, result.stdout
    readings, meters = map(int, counts[-1])
    assert readings > 0 and 0 < meters <= 50
    # The HTTP API ran with the demo key the banner prints, and its curl line returns readings.
    assert re.search(r"API key +gck_", result.stdout), result.stdout
    assert "demo: the HTTP API returned 5 readings of demo-edge-1" in result.stdout, result.stdout
    # The banner names the unit's web page and the first-login token, which is the one on disk.
    token = (state / "edge" / "web" / "provisioning-token").read_text().strip()
    assert re.search(r"web page +https://127\.0\.0\.1:\d+/", result.stdout), result.stdout
    assert f"provisioning token {token}" in result.stdout
    # Everything was stopped: a second start reuses the state (certificates, journal, database).
    assert (state / "edge" / "tls" / "edge.pem").exists()
    assert not (state / "pg" / "data" / "postmaster.pid").exists()
