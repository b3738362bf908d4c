"""deploy/monitoring/: the dashboard and the alert rules are well formed, every expression is
valid PromQL, and the alerts the operators need are there."""

from __future__ import annotations

import promql_parser
import pytest

from tests.monitoring_files import alert_rules, dashboard, expressions, metric_names


@pytest.mark.parametrize(("where", "expr"), expressions())
def test_every_expression_is_promql_over_bridge_metrics(where: str, expr: str) -> None:
    try:
        promql_parser.parse(expr)
    except ValueError as e:
        pytest.fail(f"{where}: {e}: {expr}")
    assert metric_names(expr), f"{where} names no waldur_bridge_* metric"


def test_promql_check_can_fail() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(waldur_bridge_sweeps_total[5m])")


def test_dashboard_shape() -> None:
    data = dashboard()
    panels = data["panels"]
    assert data["uid"] and data["title"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["type"] in {"stat", "timeseries"}
        assert panel["targets"] and panel["datasource"]["type"] == "prometheus"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in (
        "rooms",
        "members",
        "membership changes",
        "waldur requests",
        "sweep",
        "queue",
        "latency",
        "held",
        "active",
    ):
        assert topic in titles, topic


def test_alert_rules_shape() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert names == {
        "WaldurBridgeWaldurAccessLost",
        "WaldurBridgeSweepsFailing",
        "WaldurBridgeSweepLate",
        "WaldurBridgeRemovalsHeld",
        "WaldurBridgeNoActiveInstance",
        "WaldurBridgeWebHooksSilent",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert rule["for"][-1] in "smh"
