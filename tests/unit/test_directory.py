"""The directory against the Waldur simulator (both generations): listings must agree before
anyone loses access; only a 404 on a direct read or `is_active: false` takes it away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from waldur_bridge.sync.directory import WaldurDirectory
from waldur_bridge.sync.policy import MembershipPolicy, desired_team
from waldur_bridge.waldur import WaldurClient
from waldur_simulator import WaldurSimulator


@pytest.fixture(params=["7.0", "current"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[WaldurSimulator]:
    simulator = WaldurSimulator(request.param)
    await simulator.start()
    yield simulator
    await simulator.stop()


async def test_users_missing_from_the_listing_make_the_read_incomplete(
    sim: WaldurSimulator,
) -> None:
    org = sim.add_customer("Org")
    project = sim.add_project(org, "Apollo")
    alice = sim.add_user("alice", "Alice")
    bob = sim.add_user("bob", "Bob")
    sim.grant(alice, project, "PROJECT.ADMIN")
    sim.grant(bob, project, "PROJECT.MEMBER")
    lost: list[str] = []
    async with WaldurClient(sim.url, sim.staff_token, retry_attempts=1) as client:
        directory = WaldurDirectory(client)
        directory.on_user_lost = lost.append

        def team(view) -> set[str]:
            now = datetime.now(UTC)
            return set(
                desired_team(view.project, view.grants, view.users, MembershipPolicy(), now)
            )

        # The users listing is empty, the grants intact: the bulk view removes nobody.
        sim.faults.hide_users()
        snapshot = await directory.snapshot()
        view = snapshot.view(project)
        assert not view.complete and "missing from Waldur's users listing" in view.problems[0]
        # A fresh read of the project reads the missing users directly: complete again.
        view = await directory.read_project(project)
        assert view.complete and team(view) == {alice, bob}

        # Bob is confirmed gone (404 on a direct read): the read is complete without him.
        sim.faults.fail(f"/api/users/{bob}/", status=404)
        await directory.snapshot()
        view = await directory.read_project(project)
        assert view.complete and team(view) == {alice}
        assert lost == [bob]

        # A direct read that fails is not a "no": incomplete.
        sim.faults.clear()
        sim.faults.hide_users()
        sim.faults.fail(f"/api/users/{alice}/", status=503)
        await directory.snapshot()
        view = await directory.read_project(project)
        assert not view.complete and any(alice in p for p in view.problems)

        # Inactive: no access, complete, reported as lost (for the logout of her sessions).
        sim.faults.clear()
        sim.deactivate_user(alice)
        snapshot = await directory.snapshot()
        view = snapshot.view(project)
        assert view.complete and team(view) == {bob}
        assert alice in lost
