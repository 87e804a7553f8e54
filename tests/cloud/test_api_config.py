"""``gridcloud api`` settings: the TOML file, flags over it, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from gridcloud import cli
from gridcloud.api.config import ApiConfig, load_api_config
from gridcloud.config import ConfigError


def test_the_file_sets_and_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "api.toml"
    path.write_text('[api]\nlisten = "tcp:9000"\nrate_limit = 5.0\n'
                    '[database]\ndsn = "dbname=x"\npool_size = 2\n')
    config = load_api_config(path)
    assert (config.listen, config.rate_limit, config.dsn, config.pool_size) == (
        "tcp:9000", 5.0, "dbname=x", 2)
    args = cli.build_parser().parse_args(["api", "--config", str(path), "--listen", "tcp:9001"])
    merged = cli._api_config(args)
    assert (merged.listen, merged.dsn, merged.max_page) == ("tcp:9001", "dbname=x", 1000)


@pytest.mark.parametrize(("text", "message"), [
    ("[api]\nlisten = 8080\n", "[api] listen: must be a string"),
    ("[api]\nlisen = 'tcp:1'\n", "unknown key(s) lisen"),
    ("[server]\nlisten = 'tcp:1'\n", "[server]: unknown section"),
    ("[api]\nrate_burst = 1.5\n", "must be a whole number"),
])
def test_mistakes_in_the_file_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "api.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        load_api_config(path)


def test_a_missing_database_or_a_zero_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match="dsn"):
        ApiConfig().validate()
    with pytest.raises(ConfigError, match="rate_limit"):
        ApiConfig(dsn="dbname=x", rate_limit=0).validate()


def test_gridcloud_api_without_a_database_exits_2(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.DSN_ENV, raising=False)
    assert cli.main(["api"]) == 2
    assert "dsn" in capsys.readouterr().err
