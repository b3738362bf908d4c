"""Prometheus metrics of a running bridge (real Synapse, the simulator in both generations)."""

from __future__ import annotations

import secrets

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from waldur_bridge.waldur import WaldurError

from .helpers import BridgeEnv


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(REGISTRY).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_metrics_names_queue_actions_sweeps_failures_and_holds(
    bridge_env: BridgeEnv,
) -> None:
    sim = bridge_env.sim
    suffix = secrets.token_hex(3)
    org = sim.add_customer("Metered Org")
    project = sim.add_project(org, "Metered")
    users = [sim.add_user(f"metered{i}{suffix}", f"Metered {i}") for i in range(6)]
    for user in users:
        sim.grant(user, project, "PROJECT.MEMBER")
    before = scrape()
    # Rooms only: with spaces on, the organization's space would hold the same removals too.
    await bridge_env.start(**{"bridge.spaces.enabled": False})
    await bridge_env.sweep()
    room = await bridge_env.portal_room(project)
    after = scrape()

    # Our metrics all carry the prefix; none of the old unprefixed names is left.
    ours = {name for name, _ in after if "waldur" in name}
    assert ours and all(name.startswith("waldur_bridge_") for name in ours), ours

    # Idle: the queue reads 0, not the last size it had while busy.
    assert value(after, "waldur_bridge_sync_queue_size") == 0
    invites = "waldur_bridge_membership_actions_total"
    assert value(after, invites, action="invite", outcome="done") - value(
        before, invites, action="invite", outcome="done"
    ) >= len(users)
    assert value(after, invites, action="join", outcome="done") > value(
        before, invites, action="join", outcome="done"
    )
    assert value(after, "waldur_bridge_last_good_sweep_timestamp_seconds") > 0
    assert value(after, "waldur_bridge_sweeps_total", outcome="ok") > value(
        before, "waldur_bridge_sweeps_total", outcome="ok"
    )
    assert value(after, "waldur_bridge_waldur_requests_total") > 0

    # A Waldur failure is counted once the retries are spent.
    failures = value(after, "waldur_bridge_waldur_request_failures_total")
    rule = sim.faults.fail("/api/projects/", status=503)
    with pytest.raises(WaldurError):
        await bridge_env.bridge.sync.sweep()
    sim.faults.remove(rule)
    failed = scrape()
    assert value(failed, "waldur_bridge_waldur_request_failures_total") == failures + 1
    assert value(failed, "waldur_bridge_sweeps_total", outcome="failed") > value(
        after, "waldur_bridge_sweeps_total", outcome="failed"
    )

    # A mass removal held for an admin shows in the gauge, and leaves it when released.
    for user in users[:5]:
        sim.revoke(user, project, "PROJECT.MEMBER")
    await bridge_env.sweep()
    assert len(await bridge_env.in_room(room)) == 7  # the bot and six members: held
    assert value(scrape(), "waldur_bridge_held_removals") == 5
    await bridge_env.bridge.sync.approve_held(project)
    await bridge_env.settle()
    assert value(scrape(), "waldur_bridge_held_removals") == 0
