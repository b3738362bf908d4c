"""Every metric that the Grafana dashboard and the alert rules of deploy/monitoring/ name is
one a running bridge exports (real Synapse, the simulator), so the files cannot drift."""

from __future__ import annotations

import secrets

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.monitoring_files import expressions, metric_names

from .helpers import BridgeEnv

SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def exported() -> set[str]:
    """Family and sample names of a scrape of this process (the bridge runs in it)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def is_exported(name: str, names: set[str]) -> bool:
    if name in names:
        return True
    return any(name.endswith(s) and name[: -len(s)] in names for s in SUFFIXES)


async def test_dashboard_and_alerts_name_only_exported_metrics(bridge_env: BridgeEnv) -> None:
    sim = bridge_env.sim
    s = secrets.token_hex(3)
    org = sim.add_customer("Watched Org")
    project = sim.add_project(org, "Watched")
    sim.grant(sim.add_user(f"watched{s}", "Watched One"), project, "PROJECT.ADMIN")
    await bridge_env.start()
    await bridge_env.register_webhook()
    await bridge_env.sweep()
    await bridge_env.portal_room(project)
    # A web hook about the project: the hint-to-action histogram gets a value.
    sim.grant(sim.add_user(f"later{s}", "Later One"), project, "PROJECT.MEMBER")
    await bridge_env.settle()
    await bridge_env.sweep()

    names = exported()
    used = {name for _, expr in expressions() for name in metric_names(expr)}
    assert len(used) >= 12
    missing = sorted(n for n in used if not is_exported(n, names))
    assert not missing, f"named in deploy/monitoring/ but not exported: {missing}"
    # The new gauges carry this bridge's values.
    samples = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for family in text_string_to_metric_families(generate_latest(REGISTRY).decode())
        for x in family.samples
    }
    assert samples[("waldur_bridge_portals", (("state", "active"),))] >= 1
    assert samples[("waldur_bridge_room_members", ())] >= 2
    assert samples[("waldur_bridge_waldur_access_ok", ())] == 1
    assert samples[("waldur_bridge_hint_to_action_seconds_count", ())] >= 1
    assert samples[("waldur_bridge_sweep_seconds_count", ())] >= 2
    # A name the bridge does not export is caught.
    assert not is_exported("waldur_bridge_no_such_metric_total", names)
