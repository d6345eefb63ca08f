"""The one registry of roles: which sections enable and are needed, in what order."""

from __future__ import annotations

import pytest

from ssmd.cli.main import main
from ssmd.config import ConfigError, parse_config
from ssmd.roles import ROLE_NAMES, configured_roles, resolve_roles, role

FULL = {
    "env": "prod",
    "connector": {"channels": ["trade"]},
    "archiver": {"consumer": "a", "filter": "prod.kalshi.json.>"},
    "storage": {"path": "/tmp/a"},
    "sync": {"destination": "file:///tmp/b"},
}


def test_every_configured_role_runs_in_start_order_the_connector_first() -> None:
    config = parse_config(FULL)
    assert configured_roles(config) == ["connector", "archiver", "sync"]
    assert resolve_roles(["sync", "archiver", "connector"], config, "f") == [
        "connector",
        "archiver",
        "sync",
    ]


def test_the_connector_stops_before_the_archiver() -> None:
    assert role("connector").stop_stage < role("archiver").stop_stage


@pytest.mark.parametrize(
    ("data", "roles", "key", "message"),
    [
        ({"env": "prod"}, [], "", "no role to run"),
        (FULL, ["recorder"], "", "unknown role 'recorder'"),
        (
            {"env": "prod", "archiver": FULL["archiver"]},
            ["archiver"],
            "storage",
            "section [storage] is required for --role archiver",
        ),
        ({"env": "prod"}, ["connector"], "connector", "section [connector] is required"),
    ],
)
def test_a_role_without_its_sections_is_a_config_error(
    data: dict[str, object], roles: list[str], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_roles(roles, parse_config(data), "ssmd.toml")
    assert caught.value.key == key
    assert message in str(caught.value)


def test_the_cli_reads_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"role to run ({', '.join(ROLE_NAMES)})" in help_text
