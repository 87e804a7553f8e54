"""The systemd units in deploy/systemd are valid, hardened, and start the command as the CLI
parses it, with the example configuration files the CLI loads.

``systemd-analyze verify`` checks the files as systemd would load them (it needs the ExecStart
binary to exist: the test points it at this virtualenv's ``gridcloud``, which is what
/opt/gridcloud/bin/gridcloud is on a server); ``systemd-analyze security --offline`` scores the
sandbox.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gridcloud.api.config import load_api_config
from gridcloud.cli import build_parser
from gridcloud.config import load_config
from gridcloud.pipeline import load_pipeline_config

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
ETC = ROOT / "deploy" / "etc" / "gridcloud"
INSTALLED = "/opt/gridcloud/bin/gridcloud"
GRIDCLOUD = Path(sys.executable).parent / "gridcloud"

#: unit file -> the name it is verified under (a template needs an instance)
NAMES = {
    "gridcloud-serve.service": "gridcloud-serve.service",
    "gridcloud-api@.service": "gridcloud-api@8081.service",
    "gridcloud-pipeline.service": "gridcloud-pipeline.service",
    "gridcloud-maintenance.service": "gridcloud-maintenance.service",
    "gridcloud-maintenance.timer": "gridcloud-maintenance.timer",
}

HARDENING = {
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
}

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed (Debian: systemd)")


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def local_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with ExecStart pointing at this virtualenv's gridcloud."""
    folder = tmp_path_factory.mktemp("units")
    for source, name in NAMES.items():
        text = (UNITS / source).read_text()
        assert INSTALLED in text or source.endswith(".timer")
        (folder / name).write_text(text.replace(INSTALLED, str(GRIDCLOUD)))
    return folder


def test_every_unit_file_is_tested() -> None:
    """No unit in deploy/systemd escapes these checks."""
    assert sorted(p.name for p in UNITS.iterdir()) == sorted(NAMES)


def test_systemd_analyze_verify_is_clean(local_units: Path) -> None:
    """systemd-analyze verify prints nothing and succeeds for every unit."""
    out = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in
                                                                 local_units.iterdir())],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr


@pytest.mark.parametrize("source", sorted(n for n in NAMES if n.endswith(".service")))
def test_units_are_hardened(source: str, local_units: Path) -> None:
    """The sandbox settings are there, LimitNOFILE is raised, and systemd's own exposure score
    calls the result OK (below 2.0 of 10)."""
    found = settings((UNITS / source).read_text())
    for key, value in HARDENING.items():
        assert found.get(key) == [value], f"{source}: {key}={value} missing"
    assert int(found["LimitNOFILE"][0]) >= 65536
    out = subprocess.run(["systemd-analyze", "security", "--offline=true",
                          str(local_units / NAMES[source])],
                         capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert score is not None, out.stdout + out.stderr
    assert float(score.group(1)) < 2.0, out.stdout


@pytest.mark.parametrize("source", ["gridcloud-serve.service", "gridcloud-api@.service",
                                    "gridcloud-pipeline.service"])
def test_execstart_parses_and_its_config_loads(source: str) -> None:
    """The ExecStart command line is one the CLI accepts, and the example config it names
    (deploy/etc/gridcloud) loads; the serve key is read from the unit's credential."""
    found = settings((UNITS / source).read_text())
    argv = shlex.split(found["ExecStart"][0].replace("%i", "8081"))
    assert argv[0] == INSTALLED
    args = build_parser().parse_args(argv[1:])
    config_file = ETC / Path(args.config).name
    if args.command == "serve":
        config = load_config(config_file)
        assert str(config.key).startswith("/run/credentials/gridcloud-serve.service/")
        assert "server.key:" + "/etc/gridcloud/pki/server.key" in found["LoadCredential"]
        assert config.listen.startswith("haproxy:")  # behind HAProxy with PROXY v2
        assert config.metrics_listen
    elif args.command == "pipeline":
        assert load_pipeline_config(config_file).metrics_listen
    else:
        assert load_api_config(config_file).metrics_listen


def test_maintenance_unit_runs_backup_then_retention() -> None:
    """The nightly unit's two commands are ones the CLI accepts, backup before retention (the
    archive is written before a partition is dropped)."""
    starts = settings((UNITS / "gridcloud-maintenance.service").read_text())["ExecStart"]
    parsed = [build_parser().parse_args(shlex.split(line.replace("${GRIDCLOUD_KEEP_DAYS}",
                                                                 "1095"))[1:])
              for line in starts]
    assert [a.command for a in parsed] == ["backup", "retention"]
    assert parsed[1].archive is not None and parsed[1].keep_days == 1095


def test_pipeline_unit_runs_the_pipeline_command() -> None:
    """gridcloud-pipeline.service starts ``gridcloud pipeline --config ...`` (the command comes
    with the pipeline work; once it exists, the CLI must accept this line)."""
    argv = shlex.split(settings((UNITS / "gridcloud-pipeline.service").read_text())
                       ["ExecStart"][0])
    assert argv[1:3] == ["pipeline", "--config"]
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if "pipeline" in commands:
        parser.parse_args(argv[1:])
