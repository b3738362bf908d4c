"""The PromQL of deploy/monitoring/ (Grafana dashboard and Prometheus alert rules), read for
the tests: each expression, and the metric names it uses."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ruamel.yaml import YAML

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
DASHBOARD = MONITORING / "waldur-bridge-dashboard.json"
ALERTS = MONITORING / "waldur-bridge-alerts.yml"

_NAME = re.compile(r"\bwaldur_bridge_[a-zA-Z0-9_]+")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def alert_rules() -> list[dict]:
    data = YAML(typ="safe").load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and alert rule."""
    found = [
        (f"panel {p['title']}", t["expr"]) for p in dashboard()["panels"] for t in p["targets"]
    ]
    found += [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    return found


def metric_names(expr: str) -> set[str]:
    return set(_NAME.findall(expr))
