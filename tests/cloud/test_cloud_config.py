"""gridcloud.config: the serve config file and its validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gridcloud.config import ConfigError, ServerConfig, load_config

EXAMPLE = """
[server]
listen = "tcp:7400:interface=0.0.0.0"
cert = "pki/server.pem"
key = "/etc/gridcloud/server.key"
ca = "pki/ca.pem"
heartbeat_interval = 120
tls_resumption = "tickets"

[database]
dsn = "host=db.internal dbname=grid user=gridcloud"
pool_size = 8

[ingest]
max_pending_uploads = 3
"""


def test_config_file_is_read_with_paths_relative_to_it(tmp_path: Path) -> None:
    """Every section is read; relative paths are taken relative to the file's folder."""
    path = tmp_path / "cloud.toml"
    path.write_text(EXAMPLE)
    config = load_config(path).validate()
    assert config.listen == "tcp:7400:interface=0.0.0.0"
    assert config.cert == tmp_path / "pki" / "server.pem"
    assert config.key == Path("/etc/gridcloud/server.key")
    assert (config.heartbeat_interval, config.pool_size, config.max_pending_uploads) == (120, 8, 3)
    assert config.tls_resumption == "tickets"
    assert config.hello_timeout == ServerConfig().hello_timeout  # defaults fill the rest


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nlisten = 7400\n", "[server] listen: must be a string, got 7400"),
        ("[server]\nheartbeat_interval = 'often'\n",
         "[server] heartbeat_interval: must be a number"),
        ("[server]\nmax_in_flight = 2.5\n", "[server] max_in_flight: must be a whole number"),
        ("[server]\ncolour = 'blue'\n", "[server]: unknown key(s) colour"),
        ("[cache]\nsize = 1\n", "[cache]: unknown section"),
        ("[server\n", "cloud.toml: not valid TOML"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    """A wrong type, an unknown key or section, or bad TOML is a ConfigError naming it."""
    path = tmp_path / "cloud.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_validation_requires_certificates_and_database() -> None:
    """The settings that have no safe default must be given; numbers must be positive."""
    with pytest.raises(ConfigError, match="missing setting: cert"):
        ServerConfig(dsn="x").validate()
    complete = ServerConfig(cert=Path("c"), key=Path("k"), ca=Path("a"), dsn="x")
    assert complete.validate() is complete
    with pytest.raises(ConfigError, match="pool_size must be positive"):
        complete.with_overrides(pool_size=0).validate()
    with pytest.raises(ConfigError, match="tls_resumption"):
        complete.with_overrides(tls_resumption="maybe").validate()
    assert complete.with_overrides(pool_size=None, listen="tcp:1").listen == "tcp:1"


RELEASES = """
[releases]
folder = "releases"
keyring = "/etc/gridcloud/rauc-keyring.pem"
compatible = ["gridedge-beaglebone-black", "gridedge-qemu-ci"]
max_bundle_mb = 64
deltas_from = 2
"""


def test_the_releases_section_is_read_by_serve_and_api_alike(tmp_path: Path) -> None:
    """[releases] is one record for both processes; relative folder, list of compatibles."""
    from gridcloud.api.config import load_api_config

    serve = tmp_path / "cloud.toml"
    serve.write_text(EXAMPLE + RELEASES)
    api = tmp_path / "api.toml"
    api.write_text('[api]\nlisten = "tcp:8080"\n' + RELEASES)
    releases = load_config(serve).validate().releases
    assert releases == load_api_config(api).releases
    assert releases.folder == tmp_path / "releases" and releases.enabled
    assert releases.compatible == ("gridedge-beaglebone-black", "gridedge-qemu-ci")
    assert (releases.max_bytes, releases.deltas_from) == (64 << 20, 2)
    assert releases.keyring == Path("/etc/gridcloud/rauc-keyring.pem")
    bare = tmp_path / "bare.toml"
    bare.write_text(EXAMPLE)
    assert not load_config(bare).releases.enabled  # off without the section


@pytest.mark.parametrize(("text", "message"), [
    ('[releases]\ncompatible = "one"\n', "[releases] compatible: must be a list of strings"),
    ('[releases]\nfolder = "r"\ncompatible = ["x"]\n', "keyring: required when folder is set"),
    ('[releases]\nfolder = "r"\nkeyring = "k"\n', "name at least one compatible string"),
    ('[releases]\nfolder = "r"\nkeyring = "k"\ncompatible = ["x"]\nmax_bundle_mb = 0\n',
     "max_bundle_mb must be positive"),
    ('[releases]\nfolders = "r"\n', "unknown key(s) folders"),
])
def test_bad_releases_settings_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    """A wrong type, a folder without keyring or compatibles, a zero size, a typo: refused."""
    path = tmp_path / "cloud.toml"
    path.write_text(EXAMPLE + text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path).validate()
