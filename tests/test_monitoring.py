"""deploy/alerts.yml and deploy/grafana-dashboard.json: promtool accepts the rules and
passes their unit tests, and every query names only metrics that exist.

"Exist" means: a metric ssmd's collectors put in a prometheus-client registry (read
from the registry, not from a list kept here), or one of the few metrics of Prometheus
itself and node_exporter that `OTHER_EXPORTERS` names.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from ssmd.archiver.metrics import archiver_metrics
from ssmd.archiver.service import ArchiverStatus
from ssmd.connector.discovery import DiscoveryStats
from ssmd.connector.metrics import connector_metrics, discovery_metrics
from ssmd.connector.rest import RestStats
from ssmd.metrics import FunctionCollector
from tests.metrics_probe import idle_publisher

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "tests" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"

# Not ssmd's own: Prometheus's scrape health, node_exporter's filesystem metrics (disk
# space), and node_exporter's systemd collector (the sync timer's unit).
OTHER_EXPORTERS = re.compile(
    r"up|node_filesystem_(avail|size|readonly)_bytes|node_filesystem_readonly"
    r"|node_systemd_unit_state|node_systemd_timer_last_trigger_seconds"
)

# The names a family is exposed under, by type, as prometheus-client writes them.
_EXPOSED_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
}

# Grafana's interval variables, replaced by a duration so the query parses as PromQL.
_GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")
_LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*),\s*\w+\)$")

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None,
    reason="promtool is not installed (Debian: apt-get install prometheus; .ci/run does it)",
)


def ssmd_metric_names() -> set[str]:
    """Every metric name ssmd's collectors expose, read from a registry (in Trio: the
    publisher's clock needs it)."""
    publisher = idle_publisher("kalshi")
    registry = CollectorRegistry()
    registry.register(FunctionCollector(lambda: connector_metrics("kalshi", publisher, [])))
    registry.register(FunctionCollector(lambda: archiver_metrics("kalshi", ArchiverStatus())))
    registry.register(
        FunctionCollector(
            lambda: discovery_metrics("kalshi", DiscoveryStats(), RestStats(), 300.0, 0, {}, [])
        )
    )
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in _EXPOSED_SUFFIXES[family.type]
    }


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (raises on one it cannot parse)."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next(
                (m.value for m in node.matchers.matchers if m.name == "__name__"), None
            )
            assert name, f"a selector without a metric name in {expr!r}"
            names.add(name)
        return True

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


def unknown_metrics(exprs: dict[str, str], exported: set[str]) -> dict[str, set[str]]:
    """For each named expression, the metrics it uses that nobody exports."""
    unknown = {
        where: {
            name
            for name in metric_names(expr)
            if name not in exported and not OTHER_EXPORTERS.fullmatch(name)
        }
        for where, expr in exprs.items()
    }
    return {where: names for where, names in unknown.items() if names}


def rule_exprs(rules: dict[str, Any]) -> dict[str, str]:
    return {
        rule.get("alert") or rule["record"]: rule["expr"]
        for group in rules["groups"]
        for rule in group["rules"]
    }


def dashboard_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    exprs = {
        f"panel {panel['title']!r} {target['refId']}": _GRAFANA_INTERVALS.sub("5m", target["expr"])
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets", [])
    }
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = _LABEL_VALUES.match(query)
            assert match, f"variable {variable['name']}: not label_values(metric, label): {query}"
            exprs[f"variable {variable['name']}"] = match["metric"]
    return exprs


def load_rules() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return rules


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


async def test_the_registry_knows_ssmd_metrics() -> None:
    exported = ssmd_metric_names()
    for name in (
        "ssmd_received_messages_total",
        "ssmd_publish_ack_seconds_bucket",
        "ssmd_connections_up",
        "ssmd_archived_messages_total",
        "ssmd_archive_fsync_seconds_count",
    ):
        assert name in exported
    assert "ssmd_received_messages" not in exported  # a counter is exposed as _total


async def test_every_rule_names_only_exported_metrics() -> None:
    exprs = rule_exprs(load_rules())
    assert len(exprs) >= 10
    assert unknown_metrics(exprs, ssmd_metric_names()) == {}


async def test_every_dashboard_query_names_only_exported_metrics() -> None:
    exprs = dashboard_exprs(load_dashboard())
    assert len(exprs) >= 20
    assert unknown_metrics(exprs, ssmd_metric_names()) == {}


async def test_a_rule_naming_a_missing_metric_is_caught() -> None:
    rules = load_rules()
    rules["groups"][0]["rules"][0]["expr"] = "rate(ssmd_recieved_messages_total[5m]) > 0"
    dashboard = load_dashboard()
    dashboard["panels"][1]["targets"][0]["expr"] = "node_filesystem_free_inodes"
    exported = ssmd_metric_names()
    assert unknown_metrics(rule_exprs(rules), exported) == {
        "SsmdDown": {"ssmd_recieved_messages_total"}
    }
    assert list(unknown_metrics(dashboard_exprs(dashboard), exported).values()) == [
        {"node_filesystem_free_inodes"}
    ]


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    alerts = set(rule_exprs(load_rules()))
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == alerts
    assert quiet == alerts


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert promtool is not None
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, cwd=DEPLOY
    )


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_dashboard_imports_into_grafana() -> None:
    """What Grafana needs to import it: unique panel ids, a datasource on every query
    (the data source variable), refIds unique within a panel."""
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "job", "feed"} <= variables
    for panel in panels:
        targets = panel.get("targets", [])
        assert len({target["refId"] for target in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
