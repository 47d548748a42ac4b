"""Configuration: defaults, clear errors naming the key, and the README listing every key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from listserver.config import SETTINGS, load_config, parse_config
from listserver.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_fill_every_key(tmp_path: Path) -> None:
    cfg = parse_config({"list": [{"name": "blog"}]}, root=tmp_path)
    assert cfg.smtp["port"] == 8025 and cfg.http["port"] == 8080
    assert cfg.database_url == f"sqlite:///{tmp_path}/var/listserver.sqlite3"
    assert cfg.lists["blog"].language == "en" and cfg.lists["blog"].title == "blog"


@pytest.mark.parametrize("data, named", [
    ({"smtp": {"prot": 25}}, "smtp.prot: unknown key"),
    ({"smtp": {"port": "25"}}, "smtp.port: must be of type int"),
    ({"smtp": {"port": 99999}}, "smtp.port: 99999 must be a port number"),
    ({"outbound": {"transport": "pigeon"}}, "outbound.transport: 'pigeon' must be one of"),
    ({"list": [{"name": "blog", "language": "de"}]}, "list[0].language"),
    ({"list": [{"name": "blog", "timezone": "Mars/Olympus"}]}, "list[0].timezone"),
    ({"list": [{"title": "x"}]}, "list[0].name: required"),
    ({"list": [{"name": "Blog Posts"}]}, "list[0].name"),
    ({"list": [{"name": "blog", "authors": ["not an address"]}]}, "list[0].authors"),
    ({"lists": []}, "lists: unknown section"),
])
def test_bad_values_name_the_key(tmp_path: Path, data: dict, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, root=tmp_path)
    assert named in str(info.value)


def test_cli_exit_status_2_and_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('[smtp]\nport = "x"\n')
    result = subprocess.run([sys.executable, "-m", "listserver.cli", "--config", str(bad),
                             "held", "blog"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "listserver: smtp.port: must be of type int, not str"]


def test_post_secret_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTSERVER_POST_SECRET_BLOG", "fromenv")
    cfg = parse_config({"list": [{"name": "blog", "post_secret": "infile"}]}, root=tmp_path)
    assert cfg.lists["blog"].post_secret == "fromenv"


def test_shipped_config_is_valid() -> None:
    cfg = load_config(ROOT / "config.toml")
    assert cfg.lists["blog"].language == "nb" and cfg.lists["blog"].authors


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for s in SETTINGS:
        prefix = "[[list]]" if s.section == "list" else f"[{s.section}]"
        assert f"`{prefix} {s.key}`" in readme, f"README does not document {prefix} {s.key}"
