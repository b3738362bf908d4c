"""Membership sync: feeds (sweeps, events poll, web hooks) into one coalescing per-project queue,
whose worker reconciles the project's portal."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from mautrix.errors import MatrixRequestError

from ..db import HeldRemoval, PortalMember, portal as states
from ..duplicates import DuplicateFinder
from ..messages import (
    alias_conflict_report,
    duplicates_report,
    order_notice as fmt_order_notice,
    role_notices,
    room_closed_notice,
)
from ..metrics import (
    HINT_TO_ACTION,
    HINTS,
    RECONCILE_TIME,
    RECONCILES,
    SWEEP_TIME,
    SWEEPS,
    RoomFacts,
    mark_good_sweep,
    register_live,
)
from ..portal import Portal
from ..room_creation import AliasConflict
from ..waldur import Event, WaldurError, WaldurNotFound
from ..waldur.hook_plan import plan_hooks, shown_origin
from .accounts import AccountCheck
from .changes import (
    CUSTOMER_EVENTS,
    ORDER_EVENTS,
    USER_EVENTS,
    WATCHED_EVENTS,
    WEBHOOK_EVENTS,
    EventsPoller,
    Hint,
    hint_from_event,
)
from .directory import ProjectGone, ProjectView, WaldurDirectory
from .drift import DriftGuard
from .executor import PlanExecutor
from .expiry import ExpiryTimers
from .failures import EXPECTED_FAILURES, HomeserverWritesFailed, IncompleteRead
from .planner import CurrentRoom, Plan, roles_text
from .policy import MembershipPolicy, ProjectInfo, canonical_uuid
from .progress import InitialSyncProgress
from .queue import LEADING, CoalescingQueue
from .reconciler import Reconciler, Result
from .sessions import SessionCloser
from .spaces import ORGANIZATION_CHANGED, SpaceSync

if TYPE_CHECKING:
    from ..__main__ import WaldurBridge

log = logging.getLogger("waldur.sync")


# User events after which the person's puppet sessions may have to be logged out.
SESSION_EVENTS = frozenset({"user_deactivated", "user_deletion_succeeded", "user_activated"})

# Reasons a project can be queued for; anything but SWEEP needs a fresh read of Waldur.
SWEEP = "sweep"
CREATE = "create"
REACTIVATE = "reactivate"
CLOSE = "close"
EXPIRY = "expiry"

# Room IDs named in the start-up duplicates line; the management room's report lists all.
_LISTED_IN_LOG = 5


def policy_from_config(config) -> MembershipPolicy:
    return MembershipPolicy(
        organization_roles=frozenset(config["bridge.membership.organization_roles"] or ()),
        power_levels=dict(config["bridge.membership.power_levels"] or {}),
        default_power_level=int(config["bridge.membership.default_power_level"]),
        never_kick=tuple(config["bridge.membership.never_kick"] or ()),
        max_removal_share=float(config["bridge.membership.max_removal_share"]),
        max_removal_min=int(config["bridge.membership.max_removal_min"]),
        dry_run_removals=bool(config["bridge.membership.dry_run_removals"]),
        reinvite_after_leave=bool(config["bridge.membership.reinvite_after_leave"]),
        remove_moderator_added=bool(config["bridge.membership.remove_moderator_added"]),
    )


# Rooms reconciled at once per homeserver write allowed at once. With as many rooms as writes,
# rooms start and end in waves and the last, partial wave leaves Synapse half idle; four times
# as many made the first sync of 20 rooms x 10 members about 15 % faster (benchmarks/).
ROOMS_PER_WRITE = 4


class SyncService:
    def __init__(self, bridge: WaldurBridge) -> None:
        self.bridge = bridge
        self.config = bridge.config
        self.policy = policy_from_config(self.config)
        self.directory = WaldurDirectory(bridge.waldur)
        self.sessions = SessionCloser(bridge.waldur)
        self.directory.on_user_lost = self.sessions.user_lost
        self.expiry = ExpiryTimers(lambda project: self.request_project(project, EXPIRY))
        self.executor = PlanExecutor(self.config["bridge.membership.concurrency"])
        # Own accounts (template mode, and links in any mode) are checked before their first
        # invite; puppets are the bridge's own and always exist.
        self.accounts = AccountCheck(
            bridge.az,
            self.config["homeserver.domain"],
            bridge.notify_admins if self.config["bridge.management_room"] else None,
        )
        self.reconciler = Reconciler(
            self.config,
            self.policy,
            self.executor,
            accounts=self.accounts,
            known_users=lambda: (self.directory.users, self.directory.emails),
        )
        # Each room's membership changes go one at a time, so more rooms are in flight than
        # writes: the write limit (the executor's) is shared round robin by every room in
        # flight, and a few rooms with long queues of joins never leave the homeserver idle.
        self.queue = CoalescingQueue(
            self._reconcile_worker,
            concurrency=ROOMS_PER_WRITE * self.config["bridge.membership.concurrency"],
            base_delay=5.0,
            settle=float(self.config["bridge.membership.settle_seconds"]),
            max_wait=float(self.config["bridge.membership.settle_max_wait"]),
            name="reconcile",
            expected=EXPECTED_FAILURES,
            lead=True,
            on_done=lambda project_uuid: self.spaces.portal_run_done(project_uuid),
        )
        self.poller = EventsPoller(
            bridge.waldur,
            self.handle_event,
            interval=self.config["waldur.events.interval"],
            overlap=self.config["waldur.events.overlap"],
            already_reported=bridge.waldur_access.reported,
        )
        self.create_mode = self.config["bridge.portals.create"]
        self.create_customers = {
            canonical_uuid(c) for c in self.config["bridge.portals.customers"] or ()
        }
        self._tasks: list[asyncio.Task] = []
        self._sweep_lock = asyncio.Lock()
        self._sweeps = 0
        self.last_sweep: dict[str, float | int | str] = {}
        self._reported_holds: dict[str, frozenset[str]] = {}
        # Last state told to each order's room, so a change reported twice is told once.
        self._order_states: dict[str, str] = {}
        # For the metrics: rooms by state (counted at each sweep), members of each room (at
        # each reconcile), and when a hint about a project first came in (hint-to-action).
        self.portal_counts: dict[str, int] = {}
        self.room_members: dict[str, int] = {}
        self._hinted_at: dict[str, float] = {}
        register_live(
            lambda: self.queue.size,
            lambda: bridge.waldur.stats,
            lambda: sum(self.executor.held.values()),
            self._room_facts,
        )
        self.spaces = SpaceSync(bridge, self)
        self.drift = DriftGuard(bridge, self)
        # The first sweep's progress, for the operator's log; invites made by createRoom.
        self.progress: InitialSyncProgress | None = None
        self._created_invites: dict[str, int] = {}

    def _room_facts(self) -> RoomFacts:
        held = self.executor.held_since.values()
        return RoomFacts(
            portals=self.portal_counts,
            members=sum(self.room_members.values()),
            oldest_held_age=time.time() - min(held) if held else 0.0,
            waldur_access_ok=not self.bridge.waldur_access.lost,
        )

    # region lifecycle

    async def start(self) -> None:
        await self.spaces.start()
        self.queue.start()
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="waldur-sweep"))
        if self.config["waldur.events.enabled"]:
            self._tasks.append(asyncio.create_task(self.poller.run(), name="waldur-events"))
        if self.config["waldur.webhook.enabled"] and self.config["waldur.webhook.register"]:
            self._tasks.append(asyncio.create_task(self.register_webhook(), name="waldur-hook"))

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the feeds; the reconciles in progress may finish within grace seconds."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.queue.stop(grace)
        await self.sessions.stop()
        await self.accounts.stop()
        await self.spaces.stop()
        self.expiry.cancel_all()

    async def wait_idle(self, timeout: float | None = None) -> None:
        await self.queue.wait_idle(timeout)
        # Portal reconciles queue their organization's space; spaces queue nothing back.
        await self.spaces.wait_idle(timeout)

    # endregion
    # region feeds

    def request_project(
        self,
        project_uuid: str,
        reason: str,
        *,
        hint: bool = False,
        background: bool = False,
        signature: str | None = None,
    ) -> None:
        """Queue a reconcile. Hints (web hooks, events) lead at once and their removals settle
        (`signature`: what the hint says, so repeats settle); sweeps run in the background;
        anything else (admins) runs as soon as a slot is free."""
        self.queue.request(
            canonical_uuid(project_uuid),
            reason,
            hint=hint,
            background=background,
            signature=signature,
        )

    async def handle_event(self, event: Event, source: str) -> None:
        """A web hook or a polled event: look again at what it names, nothing more."""
        HINTS.labels(source=source).inc()
        if event.event_type in ORDER_EVENTS:
            if self.config["bridge.commands.order_notices"]:
                await self.order_notice(event)
            return
        if event.event_type not in WATCHED_EVENTS:
            return
        await self.handle_hint(hint_from_event(event), source)

    async def handle_hint(self, hint: Hint, source: str) -> None:
        reason = f"{source}:{hint.event_type}"
        if hint.event_type in CUSTOMER_EVENTS:
            # The organization's name, description or image: its space reads them again. Its
            # rooms' bridge info names it too and follows with the next sweep (no read per
            # project of a large organization for a rename).
            for customer_uuid in hint.customer_uuids:
                self.spaces.request(customer_uuid, ORGANIZATION_CHANGED)
            return
        projects = set(hint.project_uuids)
        # A role event names its project (or organization): that is where to look. The person's
        # other rooms change only with events about the person (deactivation, renames) or with
        # an admin's link/unlink.
        whole_person = hint.event_type in USER_EVENTS or source == "admin"
        for user_uuid in hint.user_uuids:
            self.directory.mark_user_dirty(user_uuid)
            if hint.event_type in SESSION_EVENTS:
                self.sessions.check(user_uuid)
            if not whole_person:
                continue
            projects |= self.directory.projects_of_user.get(user_uuid, set())
            for customer_uuid in self.directory.customers_of_user.get(user_uuid, set()):
                projects |= set(self.directory.projects_of_customer(customer_uuid))
            for member_project in await self._portals_with_member(user_uuid):
                projects.add(member_project)
        for customer_uuid in hint.customer_uuids:
            projects |= set(self.directory.projects_of_customer(customer_uuid))
            projects |= {
                p.project_uuid for p in await Portal.all() if p.customer_uuid == customer_uuid
            }
        # The same event from a hook and the poll, or a thousand copies of one hook, say the
        # same: one leading run is enough for them.
        signature = f"{hint.event_type}:{','.join(sorted(hint.user_uuids))}"
        now = time.monotonic()
        for project_uuid in projects:
            if source != "admin":
                self._hinted_at.setdefault(canonical_uuid(project_uuid), now)
            self.request_project(project_uuid, reason, hint=source != "admin", signature=signature)

    async def handle_hint_for_user(self, user_uuid: str, reason: str) -> None:
        """Someone's mapping changed (link, unlink): look again at every room they belong in."""
        hint = Hint(frozenset(), frozenset(), frozenset({canonical_uuid(user_uuid)}), reason)
        await self.handle_hint(hint, "admin")

    @staticmethod
    async def _portals_with_member(user_uuid: str) -> set[str]:
        rows = await PortalMember.db.fetch(
            "SELECT project_uuid FROM portal_member WHERE waldur_user_uuid=$1", user_uuid
        )
        return {row["project_uuid"] for row in rows}

    async def register_webhook(self) -> None:
        """Make sure Waldur has exactly one active web hook of this bridge, at its current
        address (see waldur.hook_plan: its own are marked by the path and the secret)."""
        base = self.config["waldur.webhook.public_url"] or self.config["appservice.address"]
        url = base.rstrip("/") + self.config.webhook_path
        wanted = sorted(WEBHOOK_EVENTS)
        delay = 5.0
        while True:
            try:
                await self._apply_hook_plan(url, wanted)
                return
            except WaldurError as e:
                level = logging.DEBUG if self.bridge.waldur_access.reported(e) else logging.WARNING
                log.log(level, "Could not register the web hook in Waldur (%s); retrying", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 600)

    async def _apply_hook_plan(self, url: str, wanted: list[str]) -> None:
        waldur = self.bridge.waldur
        plan = plan_hooks(await waldur.list_hooks(), url, wanted)
        for stale in plan.stale:
            try:
                await waldur.delete_hook(stale.uuid)
            except WaldurNotFound:
                pass  # gone already
            log.info(
                "Deleted a stale copy of the bridge's Waldur web hook (it posted to %s)",
                shown_origin(stale.destination_url),
            )
        if plan.keep is not None:
            log.info("Waldur web hook already registered")
        elif plan.update is not None:
            old = plan.update
            await waldur.update_hook(old.uuid, wanted, destination_url=url, is_active=True)
            changes = []
            if old.destination_url != url:
                changes.append(
                    f"moved from {shown_origin(old.destination_url)} to {shown_origin(url)}"
                )
            if not old.is_active:
                changes.append("activated")
            if set(old.event_types) != set(wanted):
                # An older registration (by event group, or by an earlier version) posted
                # other types than the bridge reads.
                changes.append(
                    f"set to the {len(wanted)} event types it acts on "
                    f"(it had {len(old.event_types)})"
                )
            log.info("Updated the bridge's Waldur web hook: %s", "; ".join(changes))
        else:
            await waldur.create_hook(url, wanted)
            log.info("Registered the bridge's web hook in Waldur (%d event types)", len(wanted))

    # endregion
    # region sweeps

    async def _sweep_loop(self) -> None:
        interval = self.config["waldur.sweep_interval"]
        failures = 0
        while True:
            try:
                await self.sweep()
                failures = 0
                delay = interval
            except WaldurError as e:
                failures += 1
                delay = min(interval, 15 * 2**failures)
                # Lost access is logged once by waldur_access; each failed try only at DEBUG.
                level = logging.DEBUG if self.bridge.waldur_access.reported(e) else logging.WARNING
                log.log(
                    level, "Sweep failed (%s); nobody is removed. Next try in %.0f s", e, delay
                )
            await asyncio.sleep(delay)

    async def sweep(self) -> int:
        """Read Waldur in bulk and queue every portal (and every project that should have one).

        Returns how many projects were queued. A failed listing raises and queues nothing.
        """
        async with self._sweep_lock:
            started = time.monotonic()
            try:
                snapshot = await self.directory.snapshot()
            except WaldurError:
                SWEEPS.labels(outcome="failed").inc()
                raise
            self._sweeps += 1
            # Accounts missing at the last look are asked about again: a first login since
            # then is invited within this sweep.
            self.accounts.forget_missing()
            queued: set[str] = set()
            for portal in await Portal.all():
                if portal.state == states.DISABLED:
                    continue
                queued.add(portal.project_uuid)
            for project in snapshot.projects.values():
                if self.wants_portal(project):
                    queued.add(project.uuid)
            if self._sweeps == 1:
                self.progress = InitialSyncProgress(queued)
                self._tasks.append(
                    asyncio.create_task(self._after_initial_sync(), name="waldur-initial-sync")
                )
            for project_uuid in queued:
                self.request_project(project_uuid, SWEEP, background=True)
            await self.spaces.on_sweep()
            SWEEPS.labels(outcome="ok").inc()
            SWEEP_TIME.observe(time.monotonic() - started)
            mark_good_sweep()
            self.portal_counts = await Portal.count_by_state()
            self.last_sweep = {
                "finished": time.time(),
                "projects": len(snapshot.projects),
                "portals": len(queued),
                "waldur_requests": snapshot.requests,
                "read_seconds": round(time.monotonic() - started, 3),
            }
            log.info(
                "Sweep read %d projects and %d users in %d requests; %d portals queued",
                len(snapshot.projects),
                len(snapshot.users),
                snapshot.requests,
                len(queued),
            )
            return len(queued)

    async def _after_initial_sync(self) -> None:
        assert self.progress is not None
        await self.progress.report(self.config["bridge.portals.progress_interval"])
        # The rooms the first sync created, for the metrics (sweeps count them again).
        self.portal_counts = await Portal.count_by_state()
        await self.report_duplicates()

    async def report_duplicates(self) -> None:
        """Tell the admins about duplicate project rooms an older version left behind."""
        try:
            leftovers = await DuplicateFinder(self.bridge).find()
        except MatrixRequestError as e:
            log.warning("Could not look for duplicate project rooms: %s", e)
            return
        if not leftovers:
            return
        shown = ", ".join(x.room_id for x in leftovers[:_LISTED_IN_LOG])
        if len(leftovers) > _LISTED_IN_LOG:
            shown += f" and {len(leftovers) - _LISTED_IN_LOG} more"
        log.warning(
            "Found %d duplicate project room(s) (%s); `duplicates` in the management room "
            "lists them, `duplicates --tidy` closes them",
            len(leftovers),
            shown,
        )
        report = duplicates_report(
            [
                (x.room_id, x.project_name, x.project_uuid, x.kept_room_id, x.holds_alias)
                for x in leftovers
            ],
            tidy_hint=any(x.tidiable for x in leftovers),
        )
        await self.bridge.notify_admins(report.markdown)

    def wants_portal(self, project: ProjectInfo) -> bool:
        if self.create_mode == "all":
            return True
        if self.create_mode == "customers":
            return project.customer_uuid in self.create_customers
        return False

    # endregion
    # region reconcile

    async def _view(self, project_uuid: str, reasons: frozenset[str]) -> ProjectView:
        snapshot = self.directory.last_snapshot
        if reasons == {SWEEP} and snapshot is not None and project_uuid in snapshot.projects:
            view = snapshot.view(project_uuid)
            if view.complete:
                return view
            # The listings disagree (a grant holder missing from the users listing): a fresh
            # read of the project reads those users directly.
        return await self.directory.read_project(project_uuid)

    async def _reconcile_worker(self, project_uuid: str, reasons: frozenset[str]) -> None:
        started = time.monotonic()
        try:
            result = await self._reconcile(project_uuid, reasons)
        except Exception:
            RECONCILES.labels(outcome="failed").inc()
            self._created_invites.pop(project_uuid, None)
            if self.progress is not None:
                self.progress.room_failed(project_uuid)
            raise
        else:
            RECONCILES.labels(outcome="ok").inc()
            if result is not None:
                self.room_members[project_uuid] = result.members
            hinted = self._hinted_at.pop(project_uuid, None)
            if hinted is not None:
                HINT_TO_ACTION.observe(time.monotonic() - hinted)
            invited = self._created_invites.pop(project_uuid, None)
            if self.progress is not None:
                self.progress.reconciled(project_uuid, result, invited)
        finally:
            RECONCILE_TIME.observe(time.monotonic() - started)

    async def _reconcile(self, project_uuid: str, reasons: frozenset[str]) -> Result | None:
        portal = await Portal.get_by_project(project_uuid)
        if portal is not None and portal.state == states.DISABLED and REACTIVATE not in reasons:
            closing = sorted(r for r in reasons if r.startswith(f"{CLOSE}:"))
            if closing and portal.room_id:
                await self._close(portal, closing[0].split(":", 1)[1])
            return None
        try:
            view = await self._view(project_uuid, reasons)
        except ProjectGone:
            if portal is not None and portal.room_id and portal.state != states.DISABLED:
                await self.disable(portal, "the project was deleted in Waldur")
            return None
        created_state: CurrentRoom | None = None
        if portal is None or not portal.room_id:
            # A recorded intent (state creating) is finished whatever the mode: an admin's
            # `create` may have been cut short by a crash.
            resume = portal is not None and portal.state == states.CREATING and bool(portal.alias)
            if not (CREATE in reasons or resume or self.wants_portal(view.project)):
                return None
            creation = await self._create_portal(view)
            if creation is None:
                return None
            portal, created_state = creation
        elif portal.state != states.ACTIVE:
            portal.state = states.ACTIVE
            portal.error = None
            await portal.save()
        # Sweeps after the first plan from the state store the homeserver's pushes keep; the
        # first sweep after start and every change Waldur reports read the room fresh.
        cached = reasons == {SWEEP} and self._sweeps > 1

        async def refresh() -> ProjectView:
            # A sweep's snapshot may be seconds old (a role change half done): kick only if a
            # fresh read of the project still says so.
            return await self.directory.read_project(project_uuid)

        # A change notice while the project's hints settle: what cannot flap now, the rest in
        # the settled run.
        leading = LEADING in reasons
        try:
            result = await self.reconciler.reconcile(
                portal,
                view,
                cached_state=cached,
                refresh=refresh if view.from_snapshot else None,
                current=created_state,
                defer_removals=leading,
            )
        except ProjectGone:
            if portal.room_id and portal.state != states.DISABLED:
                await self.disable(portal, "the project was deleted in Waldur")
            return None
        view = result.view or view
        if leading and result.plan.deferred:
            log.debug(
                "%s: removals and demotions of %s wait for the settled run",
                project_uuid,
                ", ".join(result.plan.deferred),
            )
            self.queue.settle_later(project_uuid)
        self.expiry.schedule(project_uuid, view.grants)
        await self.spaces.after_portal(portal, view, result, reasons)
        await self._report_holds(portal, result)
        await self._role_notices(portal, result)
        if result.outcome.failed:
            raise HomeserverWritesFailed(
                f"{result.outcome.failed} homeserver write(s) failed: "
                + "; ".join(result.outcome.errors[:3])
            )
        if not view.complete:
            raise IncompleteRead("; ".join(view.problems))
        return result

    async def _create_portal(self, view: ProjectView) -> tuple[Portal, CurrentRoom | None] | None:
        """Create (or adopt) the project's room with its team invited at their levels.

        Returns the portal and, for a room made just now, its state as created (nothing is
        read back); None when the alias is held by a room that is not this project's.
        """
        project = view.project
        portal = await Portal.get_by_project(project.uuid, project.customer_uuid)
        assert portal is not None
        portal.customer_uuid = project.customer_uuid
        desired, puppets, displaynames, signatures, user_uuids = await self.reconciler.desired(
            view
        )
        # Accounts and names first, while the puppets are in no room: cheapest then, and the
        # invites carry the names.
        await self.executor.prepare_puppets(puppets, displaynames)
        bot = str(self.bridge.az.bot_mxid)
        missing = await self.reconciler.missing_accounts(desired, None)
        invitees, levels = self.reconciler.initial_team(
            desired, bot, self.config["homeserver.domain"], missing
        )
        try:
            async with self.executor.slots:
                created = await portal.create_room(
                    project.name,
                    self.reconciler.topic_for(project),
                    invitees,
                    levels,
                    customer_name=project.customer_name,
                    puppet_names={user_id: displaynames.get(user_id, "") for user_id in puppets},
                )
        except AliasConflict as e:
            await self._report_alias_conflict(portal, e)
            return None
        except Exception as e:
            portal.state = states.ERROR
            portal.error = str(e)[:500]
            await portal.save()
            raise
        if created.adopted:
            return portal, None
        await self.spaces.room_created(portal, created.room)
        invited = {
            user_id: f"{roles_text(desired.members[user_id].roles)}; invited with the new room"
            for user_id in created.room.invited
        }
        await self.executor.record_creation(
            portal, invited, levels, role_signatures=signatures, user_uuids=user_uuids
        )
        self._created_invites[project.uuid] = len(invited)
        log.info(
            "Created portal %s for project %s (%s) with %d invited",
            portal.room_id,
            project.name,
            project.uuid,
            len(invited),
        )
        return portal, self.reconciler.created_room_state(created)

    async def _report_alias_conflict(self, portal: Portal, conflict: AliasConflict) -> None:
        """The alias holds a room this project cannot adopt: no second room, an admin looks."""
        error = str(conflict)[:500]
        repeated = portal.state == states.ERROR and portal.error == error
        portal.state = states.ERROR
        portal.error = error
        await portal.save()
        if repeated:
            return
        log.warning(
            "Not creating a room for project %s: %s. Free the alias (or fix the registration) "
            "and use `retry` in the management room",
            portal.project_uuid,
            error,
        )
        report = alias_conflict_report(
            portal.name, portal.project_uuid, conflict.alias, conflict.room_id, conflict.reason
        )
        await self.bridge.notify_admins(report.markdown)

    async def create_portal(self, project_uuid: str, wait: bool = False) -> None:
        """Admin action: create (or re-sync) the room of one project regardless of the mode."""
        if wait:
            await self.queue.request_and_wait(canonical_uuid(project_uuid), CREATE)
        else:
            self.request_project(project_uuid, CREATE)

    async def sync_now(self, project_uuid: str, reason: str = "admin") -> None:
        await self.queue.request_and_wait(canonical_uuid(project_uuid), reason)

    async def reactivate(self, portal: Portal) -> None:
        await self.queue.request_and_wait(portal.project_uuid, REACTIVATE)

    async def preview(self, project_uuid: str) -> Plan:
        """What a reconcile would do now, without doing it (for --dry-run)."""
        portal = await Portal.get_by_project(project_uuid)
        if portal is None or not portal.room_id:
            raise ValueError("this project has no room yet")
        try:
            view = await self.directory.read_project(project_uuid)
        except ProjectGone:
            view = ProjectView(self._gone_project(portal), [], {}, {}, complete=True)
            return await self.reconciler.preview(portal, view, active=False)
        return await self.reconciler.preview(portal, view)

    async def approve_held(self, project_uuid: str) -> Result:
        """Carry out held removals after a fresh read (those who regained a role stay)."""
        portal = await Portal.get_by_project(project_uuid)
        if portal is None or not portal.is_active:
            raise ValueError("this project has no active room")
        view = await self.directory.read_project(project_uuid)
        if not view.complete:
            raise IncompleteRead("; ".join(view.problems))
        unguarded = dataclasses.replace(self.policy, max_removal_share=1.0)
        result = await self.reconciler.reconcile(portal, view, policy=unguarded)
        self._reported_holds.pop(project_uuid, None)
        return result

    async def reject_held(self, project_uuid: str) -> list[str]:
        """Keep the people whose removal was held: they stay until an admin says otherwise
        or their Waldur roles change (they are treated like people a moderator added)."""
        held = await HeldRemoval.all(project_uuid)
        for item in held:
            member = await PortalMember.get(project_uuid, item.mxid)
            member = member or PortalMember(project_uuid=project_uuid, mxid=item.mxid)
            member.added_by = "moderator"
            await member.save()
        await HeldRemoval.clear_project(project_uuid)
        self.reconciler.forget_held(project_uuid)
        self.executor.held.pop(project_uuid, None)
        self._reported_holds.pop(project_uuid, None)
        return [h.mxid for h in held]

    @staticmethod
    def _gone_project(portal: Portal) -> ProjectInfo:
        return ProjectInfo(
            uuid=portal.project_uuid,
            customer_uuid=portal.customer_uuid,
            name=portal.name,
            description="",
            customer_name="",
        )

    async def disable(self, portal: Portal, reason: str) -> Result:
        """Close a portal: a notice, every managed member removed, the room and state kept."""
        log.info(
            "Disabling portal %s of project %s: %s", portal.room_id, portal.project_uuid, reason
        )
        # Marked first, so that no run that starts meanwhile invites anyone back.
        portal.state = states.DISABLED
        portal.error = None
        await portal.save()
        self.reconciler.forget_held(portal.project_uuid)
        try:
            await portal.send_reply(room_closed_notice(reason))
        except Exception as e:
            log.warning("Could not post the closing notice in %s: %s", portal.room_id, e)
        result = await self._close(portal, reason)
        await self.spaces.portal_closed(portal)
        self.room_members.pop(portal.project_uuid, None)
        self.portal_counts = await Portal.count_by_state()
        return result

    async def _close(self, portal: Portal, reason: str) -> Result:
        view = ProjectView(self._gone_project(portal), [], {}, {}, complete=True)
        result = await self.reconciler.reconcile(
            portal, view, active=False, inactive_reason=reason
        )
        if result.outcome.failed:
            # The queue retries the removals that failed; the room stays closed meanwhile.
            self.request_project(portal.project_uuid, f"{CLOSE}:{reason}")
        return result

    async def _role_notices(self, portal: Portal, result: Result) -> None:
        if not self.config["bridge.commands.role_notices"]:
            return
        for notice in role_notices(result.role_changes):
            try:
                await portal.send_reply(notice)
            except Exception as e:
                log.warning("Could not post a role notice in %s: %s", portal.room_id, e)

    async def order_notice(self, event: Event) -> None:
        """An order event: read the order through the REST API; tell its room if it moved."""
        order_uuid = event.context.get("order_uuid", "")
        if not order_uuid or order_uuid in ("None", ""):
            return
        try:
            order = await self.bridge.waldur.get_order(order_uuid)
        except WaldurError as e:
            log.info("Order %s from an event could not be read: %s", order_uuid, e)
            return
        previous = self._order_states.get(order.uuid)
        if previous == order.state:
            return  # the same change reported twice (web hook and events poll)
        self._order_states[order.uuid] = order.state
        if len(self._order_states) > 10_000:
            self._order_states.pop(next(iter(self._order_states)))
        portal = await Portal.get_by_project(order.project_uuid)
        if portal is None or not portal.is_active:
            return
        await portal.send_reply(fmt_order_notice(order, previous))

    async def _report_holds(self, portal: Portal, result: Result) -> None:
        held = frozenset(k.user_id for k in result.plan.held)
        if held == self._reported_holds.get(portal.project_uuid, frozenset()):
            return
        self._reported_holds[portal.project_uuid] = held
        if not held:
            return
        names = ", ".join(sorted(held))
        message = (
            f"Held {len(held)} removal(s) from **{portal.name}** ({portal.project_uuid}): "
            f"more than the configured share of its members would go at once. "
            f"Waiting: {names}. Use `held`, `approve` or `reject` here."
        )
        log.warning("Mass removal held in %s: %s", portal.project_uuid, names)
        await self.bridge.notify_admins(message)

    # endregion
    # region membership events from the homeserver

    async def on_member_left(
        self, portal: Portal, user_id: str, voluntarily: bool, how: str = "left the room"
    ) -> None:
        outcome = await PortalMember.record_left(portal.project_uuid, user_id, voluntarily)
        if outcome == "look":
            self.request_project(portal.project_uuid, "member-kicked", hint=True)
        elif outcome == "declined":
            await self.executor.record_decline(portal, user_id, how)

    async def ask_back(self, portal: Portal, user_id: str, asked_by: str) -> bool:
        """A person who declined asks to come back (or an admin asks for them): the decline is
        forgotten and the room reconciled, which invites them if they hold a role. False when
        no decline was recorded (the reconcile runs all the same)."""
        cleared = await PortalMember.clear_decline(portal.project_uuid, user_id)
        if cleared:
            await self.executor.record_undecline(portal, user_id, asked_by)
        self.request_project(portal.project_uuid, "asked-back")
        return cleared

    async def on_member_invited(self, portal: Portal, user_id: str, inviter: str) -> None:
        if inviter != portal.az.bot_mxid:
            await PortalMember.record_moderator_invite(portal.project_uuid, user_id)

    # endregion
