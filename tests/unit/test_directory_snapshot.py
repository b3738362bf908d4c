"""The sweep's bulk read: listings streamed page by page into compact records give the same
snapshot, and the same desired teams, as whole listings; a listing that breaks changes nothing.

Against the Waldur simulator over loopback HTTP (both generations), with small pages so that
every listing spans many of them."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from waldur_bridge.sync.directory import WaldurDirectory, to_grant, to_project, to_user
from waldur_bridge.sync.policy import MembershipPolicy, desired_team, effective
from waldur_bridge.waldur import WaldurClient, WaldurError
from waldur_simulator import WaldurSimulator, seed_bulk

PAGE = 7


@pytest.fixture(params=["7.0", "current"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[tuple[WaldurSimulator, dict]]:
    sim = WaldurSimulator(request.param, seed=3)
    await sim.start()
    seeded = seed_bulk(sim, projects=40, grants=400, users=90, customers=4, seed=5)
    projects, users = seeded["projects"], seeded["users"]
    # Some of what the planner must tell apart: expired, expiring, inactive, deleted.
    sim.grant(users[0], projects[1], "PROJECT.MEMBER", sim.now() - timedelta(days=1))
    sim.grant(users[1], projects[2], "PROJECT.MEMBER", sim.now() + timedelta(days=3))
    sim.deactivate_user(users[2])
    yield sim, seeded
    await sim.stop()


def client_for(sim: WaldurSimulator, **kw: object) -> WaldurClient:
    return WaldurClient(sim.url, sim.staff_token, page_size=PAGE, **kw)  # type: ignore[arg-type]


async def test_streamed_snapshot_equals_whole_listings(world) -> None:
    sim, seeded = world
    async with client_for(sim) as client:
        directory = WaldurDirectory(client)
        snapshot = await directory.snapshot()
        # The reference: the same data from whole listings, converted after the fact.
        projects = {p.uuid: to_project(p) for p in await client.list_projects()}
        users = await client.list_users()
        grants = [to_grant(g) for g in await client.list_all_grants()]
    assert snapshot.projects == projects
    assert len(projects) == len(seeded["projects"])
    assert snapshot.users == {u.uuid: to_user(u) for u in users}
    assert snapshot.emails == {u.uuid: u.email for u in users}
    by_scope: dict[str, list] = defaultdict(list)
    for grant in grants:
        by_scope[grant.scope_uuid].append(grant)
    assert {k: sorted(snapshot.grants_of(k), key=repr) for k in snapshot.grants_by_scope} == {
        k: sorted(v, key=repr) for k, v in by_scope.items()
    }
    assert sum(map(len, snapshot.grants_by_scope.values())) == len(grants) > 400
    # Every listing spans pages: the requests are the pages of three listings, no more.
    pages = sum(-(-n // PAGE) for n in (len(projects), len(users), len(grants)))
    assert snapshot.requests == pages

    # The plan's input per project is the same as from whole listings.
    policy, now = MembershipPolicy(), datetime.now(UTC)
    user_map = {u.uuid: to_user(u) for u in users}
    for uuid, project in projects.items():
        view = snapshot.view(uuid)
        assert desired_team(project, view.grants, view.users, policy, now) == desired_team(
            project, grants, user_map, policy, now
        )
    teams = [desired_team(p, grants, user_map, policy, now) for p in projects.values()]
    assert sum(map(len, teams)) > 300  # not vacuous: most grants put someone in a room

    # Where each person holds grants (user events find their rooms through this).
    for grant in grants:
        if grant.scope_type == "project":
            assert grant.scope_uuid in directory.projects_of_user[grant.user_uuid]
        elif grant.scope_type == "customer":
            assert grant.scope_uuid in directory.customers_of_user[grant.user_uuid]


async def test_snapshot_records_share_their_strings(world) -> None:
    """The memory bound: each uuid and role name is held once, not once per grant."""
    sim, _ = world
    async with client_for(sim) as client:
        snapshot = await WaldurDirectory(client).snapshot()
    roles: dict[str, int] = {}
    checked = 0
    for scope_uuid in snapshot.grants_by_scope:
        grants = snapshot.grants_of(scope_uuid)
        for grant in grants:
            assert grant.scope_uuid is grants[0].scope_uuid
            roles.setdefault(grant.role_name, id(grant.role_name))
            assert id(grant.role_name) == roles[grant.role_name]
            user = snapshot.users[grant.user_uuid]
            assert grant.user_uuid is user.uuid
            checked += 1
        project = snapshot.projects.get(scope_uuid)
        if project is not None:
            assert project.uuid is grants[0].scope_uuid
    assert checked > 400
    # Kept as plain tuples, which the garbage collector does not track (no pauses per sweep).
    rows = [row for rows in snapshot.grants_by_scope.values() for row in rows]
    gc.collect()
    assert type(rows[0]) is tuple and not any(map(gc.is_tracked, rows))


@pytest.mark.parametrize("listing", ["/api/user-permissions/", "/api/users/", "/api/projects/"])
async def test_a_listing_breaking_midway_changes_nothing(world, listing: str) -> None:
    sim, seeded = world
    async with client_for(sim, retry_attempts=0) as client:
        directory = WaldurDirectory(client)
        before = await directory.snapshot()
        kept = (directory.users, directory.projects, directory.projects_of_user)
        # A grant revoked meanwhile: a complete read would take it away.
        user, project, role = _some_grant(sim, seeded)
        sim.revoke(user, project, role)
        sim.faults.fail_page(listing, 3)
        with pytest.raises(WaldurError):
            await directory.snapshot()
        assert directory.last_snapshot is before
        assert directory.users is kept[0] and directory.projects is kept[1]
        assert directory.projects_of_user is kept[2]
        assert _holds(before, user, project, role)
        # Once Waldur answers again the next sweep sees the revocation.
        after = await directory.snapshot()
    assert directory.last_snapshot is after
    assert not _holds(after, user, project, role)


def _holds(snapshot, user: str, project: str, role: str) -> bool:
    now = datetime.now(UTC)
    return any(
        g.user_uuid == user and g.role_name == role and effective(g, now)
        for g in snapshot.grants_of(project)
    )


def _some_grant(sim: WaldurSimulator, seeded: dict) -> tuple[str, str, str]:
    projects = set(seeded["projects"])
    for grant in sim.grants.values():
        if grant.scope.uuid in projects and grant.is_active and grant.expiration_time is None:
            return grant.user.uuid, grant.scope.uuid, grant.role.name
    raise AssertionError("no project grant in the seeded world")


async def test_sweep_pages_wait_while_a_project_is_read(world) -> None:
    """A web hook's read of one project goes before the sweep's next pages (a sweep must not
    hold up the person waiting for a room)."""
    sim, seeded = world
    project = seeded["projects"][0]
    listings = {"/api/projects/", "/api/users/", "/api/user-permissions/"}
    async with client_for(sim) as client:
        directory = WaldurDirectory(client)
        await directory.snapshot()
        sim.faults.delay(0.5, f"/api/projects/{project}/", times=2)  # slow Waldur
        read = asyncio.create_task(directory.read_project(project))
        await asyncio.sleep(0.1)  # the read is in flight
        sim.reset_request_log()
        sweep = asyncio.create_task(directory.snapshot())
        await read
        read_done = time.time()
        pages_meanwhile = [r for r in sim.request_log if r.path in listings]
        snapshot = await sweep
    # At most the first page of each listing and the one read ahead after it (without the
    # wait, dozens of pages go by in that half second).
    assert len(pages_meanwhile) <= 6
    assert all(r.at <= read_done for r in pages_meanwhile)
    assert snapshot.requests > 3 * 10 and directory.last_snapshot is snapshot
