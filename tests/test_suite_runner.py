"""Tests of tools/suite.py, the two side-by-side pytest sessions of ``make test``, run on a
small project of their own (real pytest processes, no PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "tools" / "suite.py"

PROJECT = {
    "pyproject.toml": '[tool.pytest.ini_options]\nmarkers = ["fleet: long"]\n'
                      'addopts = "-p no:cacheprovider"\n',
    "test_fleet.py": "import pytest, time\n\n@pytest.mark.fleet\n"
                     "def test_long():\n    time.sleep(1)\n    print('FLEET-RAN')\n"
                     "    assert {fleet_ok}\n",
    "test_rest.py": "def test_quick():\n    print('REST-RAN')\n    assert {rest_ok}\n",
}


def run(tmp_path: Path, *args: str, fleet_ok: bool = True, rest_ok: bool = True
        ) -> subprocess.CompletedProcess[str]:
    for name, text in PROJECT.items():
        (tmp_path / name).write_text(text.format(fleet_ok=fleet_ok, rest_ok=rest_ok))
    # the venv's plugins (schemathesis, hypothesis...) only slow these small runs down
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, str(SUITE), "-s", *args], cwd=tmp_path, text=True,
                          capture_output=True, timeout=120, env=env)


def test_both_sessions_run_and_the_fleet_output_comes_whole_after_the_rest(
        tmp_path: Path) -> None:
    done = run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.count("REST-RAN") == 1 and out.count("FLEET-RAN") == 1
    assert out.index("REST-RAN") < out.index("===== fleet session") < out.index("FLEET-RAN")
    assert "1 passed, 1 deselected" in out.split("===== fleet session")[1]
    assert (tmp_path / "var" / "test-fleet.log").read_text().count("FLEET-RAN") == 1


@pytest.mark.parametrize(("fleet_ok", "rest_ok"), [(False, True), (True, False)])
def test_a_failure_in_either_session_fails_the_run(tmp_path: Path, fleet_ok: bool,
                                                   rest_ok: bool) -> None:
    done = run(tmp_path, fleet_ok=fleet_ok, rest_ok=rest_ok)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed" in done.stdout


def test_a_session_with_nothing_to_run_is_no_failure_but_two_are(tmp_path: Path) -> None:
    done = run(tmp_path, "test_rest.py")  # the fleet session finds nothing there
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REST-RAN" in done.stdout and "FLEET-RAN" not in done.stdout
    done = run(tmp_path, "-k", "no_such_test")
    assert done.returncode == 5, done.stdout + done.stderr
