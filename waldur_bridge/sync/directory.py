"""What the bridge knows of Waldur: bulk snapshots from sweeps and fresh per-project reads.

Everything here converts the Waldur client's records into the planner's plain records, and
marks a read incomplete whenever any part of it failed, so that the planner holds removals.

The listings must agree: a grant whose holder is missing from the users listing (a service
account that lost staff sees fewer users) makes the read incomplete. Only a 404 on a direct read
of the user, or `is_active: false`, takes that person's access away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from sys import intern

from ..waldur import WaldurClient, WaldurError, WaldurNotFound
from ..waldur.records import Project, RoleGrant, User
from .policy import Grant, ProjectInfo, WaldurUser, canonical_uuid, unknown_holders

log = logging.getLogger("waldur.sync.directory")


# The planner's records keep their strings interned: at 100,000 grants the same few thousand
# user, project and organization uuids and a handful of role names would otherwise be held once
# per grant (a third of a sweep's memory).


def to_grant(grant: RoleGrant) -> Grant:
    return Grant(
        user_uuid=intern(grant.user_uuid),
        role_name=intern(grant.role_name),
        scope_type=intern(grant.scope_type),
        scope_uuid=intern(grant.scope_uuid),
        expiration_time=grant.expiration_time,
        is_active=grant.is_active,
    )


def to_user(user: User) -> WaldurUser:
    return WaldurUser(
        uuid=intern(user.uuid),
        username=user.username,
        full_name=user.full_name,
        is_active=user.is_active,
    )


def to_project(project: Project) -> ProjectInfo:
    return ProjectInfo(
        uuid=intern(project.uuid),
        customer_uuid=intern(project.customer_uuid),
        name=project.name,
        description=project.description or "",
        customer_name=intern(project.customer_name or ""),
        removed=project.is_removed,
        image=project.image,
    )


@dataclass
class ProjectView:
    """Everything needed to plan one project's room."""

    project: ProjectInfo
    grants: list[Grant]
    users: dict[str, WaldurUser]
    emails: dict[str, str]
    complete: bool
    problems: list[str] = field(default_factory=list)
    # Users Waldur confirmed deleted (404 on a direct read): their grants count for nothing.
    gone: frozenset[str] = frozenset()
    # Read in bulk by a sweep (possibly seconds old) rather than fresh for this project.
    from_snapshot: bool = False


# A grant as the snapshot keeps it: Grant's fields in order, in a plain tuple. The garbage
# collector stops tracking tuples of strings, so 100,000 of them cost no collector time; as
# objects they made each full collection of a sweep pause the event loop for 0.3-0.7 s.
GrantRow = tuple[str, str, str, str, datetime | None, bool | None]


def grant_row(grant: RoleGrant) -> GrantRow:
    return (
        intern(grant.user_uuid),
        intern(grant.role_name),
        intern(grant.scope_type),
        intern(grant.scope_uuid),
        grant.expiration_time,
        grant.is_active,
    )


@dataclass
class Snapshot:
    """One consistent bulk read of Waldur: every project, grant and user."""

    projects: dict[str, ProjectInfo]
    grants_by_scope: dict[str, tuple[GrantRow, ...]]
    users: dict[str, WaldurUser]
    emails: dict[str, str]
    taken_at: float
    requests: int

    gone: frozenset[str] = frozenset()

    def grants_of(self, scope_uuid: str) -> list[Grant]:
        """The grants on one project or organization."""
        return [Grant(*row) for row in self.grants_by_scope.get(scope_uuid, ())]

    def view(self, project_uuid: str) -> ProjectView:
        """The project as the snapshot saw it; incomplete when a grant holder is missing from
        the users listing (the caller then reads the project fresh)."""
        project = self.projects[project_uuid]
        grants = [*self.grants_of(project.uuid), *self.grants_of(project.customer_uuid)]
        missing = unknown_holders(grants, self.users, self.gone, datetime.now(UTC))
        problems = [_missing_problem(missing)] if missing else []
        return ProjectView(
            project,
            grants,
            self.users,
            self.emails,
            complete=not problems,
            problems=problems,
            gone=self.gone,
            from_snapshot=True,
        )


def _missing_problem(missing: set[str]) -> str:
    sample = ", ".join(sorted(missing)[:3])
    return (
        f"{len(missing)} grant holder(s) missing from Waldur's users listing ({sample}); "
        "nobody is removed until a direct read confirms them"
    )


class ProjectGone(Exception):
    """Waldur confirmed that the project does not exist (404) or is soft-deleted."""


class WaldurDirectory:
    """Caches users and projects between reads; reads Waldur through the client."""

    def __init__(self, client: WaldurClient) -> None:
        self.client = client
        self.users: dict[str, WaldurUser] = {}
        self.emails: dict[str, str] = {}
        self.projects: dict[str, ProjectInfo] = {}
        # Users whose cached record may be stale (an event named them): re-read before use.
        self.dirty_users: set[str] = set()
        # Where each user holds grants, from the last sweep: lets a user event find rooms.
        self.projects_of_user: dict[str, set[str]] = defaultdict(set)
        self.customers_of_user: dict[str, set[str]] = defaultdict(set)
        self.last_snapshot: Snapshot | None = None
        # Users a direct read answered 404 for; forgotten once a listing shows them again.
        self.gone_users: set[str] = set()
        # Called with a user's UUID when Waldur confirms them deactivated or deleted.
        self.on_user_lost: Callable[[str], None] | None = None
        # Reads of single projects in flight (web hooks, events, admins). A sweep's listings
        # fetch their next page only when there are none, so that Waldur answers the person
        # waiting for a room before the next of the sweep's hundreds of pages.
        self._project_reads = 0
        self._no_project_reads = asyncio.Event()
        self._no_project_reads.set()

    def mark_user_dirty(self, user_uuid: str) -> None:
        self.dirty_users.add(canonical_uuid(user_uuid))

    def projects_of_customer(self, customer_uuid: str) -> list[str]:
        return [p.uuid for p in self.projects.values() if p.customer_uuid == customer_uuid]

    async def snapshot(self) -> Snapshot:
        """Read every project, grant and user in a few paginated listings; all or nothing.

        The listings are consumed page by page into compact records, so a sweep never holds
        the raw answers of 100,000 grants at once. Nothing here changes until all three
        listings have ended without error: an incomplete read keeps the previous state.
        """
        started = self.client.stats.requests
        projects: dict[str, ProjectInfo] = {}
        users: dict[str, WaldurUser] = {}
        emails: dict[str, str] = {}
        grants_by_scope: defaultdict[str, list[GrantRow]] = defaultdict(list)
        projects_of_user: defaultdict[str, set[str]] = defaultdict(set)
        customers_of_user: defaultdict[str, set[str]] = defaultdict(set)

        async def read_projects() -> None:
            async for page in self.client.iter_projects():
                for record in page:
                    if not record.is_removed:
                        project = to_project(record)
                        projects[project.uuid] = project
                await self._no_project_reads.wait()

        async def read_users() -> None:
            async for page in self.client.iter_users():
                for record in page:
                    user = to_user(record)
                    users[user.uuid] = user
                    emails[user.uuid] = record.email or ""
                await self._no_project_reads.wait()

        async def read_grants() -> None:
            async for page in self.client.iter_all_grants():
                for row in map(grant_row, page):
                    user_uuid, _, scope_type, scope_uuid, _, _ = row
                    grants_by_scope[scope_uuid].append(row)
                    if scope_type == "project":
                        projects_of_user[user_uuid].add(scope_uuid)
                    elif scope_type == "customer":
                        customers_of_user[user_uuid].add(scope_uuid)
                await self._no_project_reads.wait()

        await _all_or_none(read_projects(), read_users(), read_grants())
        self.gone_users -= users.keys()
        snapshot = Snapshot(
            projects=projects,
            grants_by_scope={scope: tuple(rows) for scope, rows in grants_by_scope.items()},
            users=users,
            emails=emails,
            taken_at=time.time(),
            requests=self.client.stats.requests - started,
            gone=frozenset(self.gone_users),
        )
        for user in snapshot.users.values():
            if not user.is_active:
                self._lost(user.uuid)
        self._warn_missing_holders(snapshot)
        self.projects_of_user = projects_of_user
        self.customers_of_user = customers_of_user
        self.users = dict(users)
        self.emails = dict(emails)
        self.projects = dict(projects)
        self.dirty_users.clear()
        self.last_snapshot = snapshot
        return snapshot

    async def read_project(self, project_uuid: str) -> ProjectView:
        """A fresh read of one project, its grants and its people.

        Raises ProjectGone when Waldur confirms the project is deleted, and WaldurError when the
        project itself or its own grants cannot be read (nothing can be planned then). Failures
        of the organization's grants or of user records give an incomplete view instead.
        """
        self._project_reads += 1
        self._no_project_reads.clear()
        try:
            return await self._read_project(project_uuid)
        finally:
            self._project_reads -= 1
            if not self._project_reads:
                self._no_project_reads.set()

    async def _read_project(self, project_uuid: str) -> ProjectView:
        known = self.projects.get(project_uuid)
        # With the organization known from earlier reads, all three reads go out at once (the
        # latency of a web hook to a join); a moved project is caught below and re-read.
        customer_read = (
            asyncio.ensure_future(self._customer_grants(known.customer_uuid))
            if known is not None
            else None
        )
        try:
            project_record, project_grants = await asyncio.gather(
                self.client.get_project(project_uuid),
                self.client.list_project_grants(project_uuid),
            )
        except WaldurNotFound as e:
            await _discard(customer_read)
            self.projects.pop(project_uuid, None)
            raise ProjectGone(project_uuid) from e
        except BaseException:
            await _discard(customer_read)
            raise
        project = to_project(project_record)
        if project.removed:
            await _discard(customer_read)
            self.projects.pop(project_uuid, None)
            raise ProjectGone(project_uuid)
        self.projects[project.uuid] = project
        if customer_read is None or known is None or known.customer_uuid != project.customer_uuid:
            await _discard(customer_read)
            customer_read = asyncio.ensure_future(self._customer_grants(project.customer_uuid))
        customer_grants, problem = await customer_read
        problems: list[str] = [problem] if problem else []
        grants = [to_grant(g) for g in project_grants] + customer_grants
        for grant in grants:
            if grant.scope_type == "project":
                self.projects_of_user[grant.user_uuid].add(grant.scope_uuid)
        await self._refresh_users({g.user_uuid for g in grants}, problems)
        missing = unknown_holders(grants, self.users, self.gone_users, datetime.now(UTC))
        if missing:
            problems.append(_missing_problem(missing))
        return ProjectView(
            project,
            grants,
            self.users,
            self.emails,
            complete=not problems,
            problems=problems,
            gone=frozenset(self.gone_users),
        )

    @staticmethod
    def _warn_missing_holders(snapshot: Snapshot) -> None:
        grants = (Grant(*row) for rows in snapshot.grants_by_scope.values() for row in rows)
        missing = unknown_holders(grants, snapshot.users, snapshot.gone, datetime.now(UTC))
        if missing:
            log.warning(
                "Waldur's users listing lacks %d holder(s) of role grants: their rooms are read "
                "one by one and nobody is removed until a direct read confirms them. Check that "
                "the bridge's Waldur account is staff (or support); others see fewer users",
                len(missing),
            )

    def _lost(self, user_uuid: str) -> None:
        if self.on_user_lost is not None:
            self.on_user_lost(user_uuid)

    async def _customer_grants(self, customer_uuid: str) -> tuple[list[Grant], str | None]:
        try:
            return [
                to_grant(g) for g in await self.client.list_customer_grants(customer_uuid)
            ], None
        except WaldurError as e:
            return [], f"organization roles: {e}"

    async def _refresh_users(self, user_uuids: Iterable[str], problems: list[str]) -> None:
        needed = [u for u in user_uuids if u not in self.users or u in self.dirty_users]
        if not needed:
            return

        async def fetch(uuid: str) -> None:
            try:
                user = await self.client.get_user(uuid)
            except WaldurNotFound:
                # Confirmed deleted: holds no access. Drop what we knew.
                self.users.pop(uuid, None)
                self.dirty_users.discard(uuid)
                self.gone_users.add(uuid)
                self._lost(uuid)
                return
            except WaldurError as e:
                problems.append(f"user {uuid}: {e}")
                return
            self.users[user.uuid] = to_user(user)
            self.emails[user.uuid] = user.email or ""
            self.dirty_users.discard(user.uuid)
            self.gone_users.discard(user.uuid)
            if not user.is_active:
                self._lost(user.uuid)

        await asyncio.gather(*(fetch(u) for u in needed))


async def _all_or_none(*reads: Awaitable[None]) -> None:
    """Run the reads concurrently; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(read) for read in reads]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _discard(task: asyncio.Future | None) -> None:
    """Cancel a read whose answer is no longer wanted, without leaving it unawaited."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except BaseException:
        pass
