"""Membership sync: feeds (sweeps, events poll, web hooks) into one coalescing per-project queue,
whose worker reconciles the project's portal."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from mautrix.util.opt_prometheus import Counter, Gauge, Histogram

from ..db import HeldRemoval, PortalMember, portal as states
from ..messages import order_notice as fmt_order_notice, role_notice, room_closed_notice
from ..portal import Portal
from ..waldur import Event, WaldurError
from .changes import (
    ORDER_EVENTS,
    USER_EVENTS,
    WATCHED_EVENTS,
    WEBHOOK_GROUPS,
    EventsPoller,
    Hint,
    hint_from_event,
)
from .directory import ProjectGone, ProjectView, WaldurDirectory
from .executor import PlanExecutor
from .planner import Plan
from .policy import MembershipPolicy, ProjectInfo, canonical_uuid
from .queue import CoalescingQueue
from .reconciler import Reconciler, Result

if TYPE_CHECKING:
    from ..__main__ import WaldurBridge

log = logging.getLogger("waldur.sync")

RECONCILES = Counter("waldur_reconciles_total", "Portal reconciles", ["outcome"])
RECONCILE_TIME = Histogram("waldur_reconcile_seconds", "Time to reconcile one portal")
SWEEPS = Counter("waldur_sweeps_total", "Full sweeps of Waldur", ["outcome"])
QUEUE_SIZE = Gauge("waldur_sync_queue_size", "Projects waiting to be reconciled")
HINTS = Counter("waldur_change_hints_total", "Change hints received", ["source"])

# Reasons a project can be queued for; anything but SWEEP needs a fresh read of Waldur.
SWEEP = "sweep"
CREATE = "create"
REACTIVATE = "reactivate"
CLOSE = "close"


class IncompleteRead(Exception):
    """Part of Waldur's answer was missing: additions were made, removals wait for a retry."""


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


class SyncService:
    def __init__(self, bridge: WaldurBridge) -> None:
        self.bridge = bridge
        self.config = bridge.config
        self.policy = policy_from_config(self.config)
        self.directory = WaldurDirectory(bridge.waldur)
        self.executor = PlanExecutor(self.config["bridge.membership.concurrency"])
        self.reconciler = Reconciler(self.config, self.policy, self.executor)
        # Rooms are reconciled in parallel (each room's membership changes one at a time), so
        # the homeserver write limit is also the number of rooms in flight.
        self.queue = CoalescingQueue(
            self._reconcile_worker,
            concurrency=self.config["bridge.membership.concurrency"],
            base_delay=5.0,
            name="reconcile",
            # A sweep's routine runs yield to what Waldur just reported (web hooks, events).
            background=frozenset({SWEEP}),
        )
        self.poller = EventsPoller(
            bridge.waldur,
            self.handle_event,
            interval=self.config["waldur.events.interval"],
            overlap=self.config["waldur.events.overlap"],
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

    # region lifecycle

    async def start(self) -> None:
        self.queue.start()
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="waldur-sweep"))
        if self.config["waldur.events.enabled"]:
            self._tasks.append(asyncio.create_task(self.poller.run(), name="waldur-events"))
        if self.config["waldur.webhook.enabled"] and self.config["waldur.webhook.register"]:
            self._tasks.append(asyncio.create_task(self.register_webhook(), name="waldur-hook"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.queue.stop()

    async def wait_idle(self, timeout: float | None = None) -> None:
        await self.queue.wait_idle(timeout)

    # endregion
    # region feeds

    def request_project(self, project_uuid: str, reason: str) -> None:
        self.queue.request(canonical_uuid(project_uuid), reason)
        QUEUE_SIZE.set(self.queue.size)

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
        projects = set(hint.project_uuids)
        # A role event names its project (or organization): that is where to look. The person's
        # other rooms change only with events about the person (deactivation, renames) or with
        # an admin's link/unlink.
        whole_person = hint.event_type in USER_EVENTS or source == "admin"
        for user_uuid in hint.user_uuids:
            self.directory.mark_user_dirty(user_uuid)
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
        for project_uuid in projects:
            self.request_project(project_uuid, reason)

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
        """Make sure Waldur has exactly one active web hook pointing at this bridge."""
        base = self.config["waldur.webhook.public_url"] or self.config["appservice.address"]
        url = base.rstrip("/") + self.config.webhook_path
        delay = 5.0
        while True:
            try:
                hooks = await self.bridge.waldur.list_hooks()
                if any(h.destination_url == url and h.is_active for h in hooks):
                    log.info("Waldur web hook already registered")
                    return
                await self.bridge.waldur.create_hook(url, (), event_groups=WEBHOOK_GROUPS)
                log.info("Registered the bridge's web hook in Waldur")
                return
            except WaldurError as e:
                log.warning("Could not register the web hook in Waldur (%s); retrying", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 600)

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
                log.warning("Sweep failed (%s); nobody is removed. Next try in %.0f s", e, delay)
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
            queued: set[str] = set()
            for portal in await Portal.all():
                if portal.state == states.DISABLED:
                    continue
                queued.add(portal.project_uuid)
            for project in snapshot.projects.values():
                if self.wants_portal(project):
                    queued.add(project.uuid)
            for project_uuid in queued:
                self.request_project(project_uuid, SWEEP)
            SWEEPS.labels(outcome="ok").inc()
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
            return snapshot.view(project_uuid)
        return await self.directory.read_project(project_uuid)

    async def _reconcile_worker(self, project_uuid: str, reasons: frozenset[str]) -> None:
        started = time.monotonic()
        try:
            await self._reconcile(project_uuid, reasons)
        except Exception:
            RECONCILES.labels(outcome="failed").inc()
            raise
        else:
            RECONCILES.labels(outcome="ok").inc()
        finally:
            RECONCILE_TIME.observe(time.monotonic() - started)
            QUEUE_SIZE.set(self.queue.size)

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
        if portal is None or not portal.room_id:
            if not (CREATE in reasons or self.wants_portal(view.project)):
                return None
            portal = await self._create_portal(view)
        elif portal.state != states.ACTIVE:
            portal.state = states.ACTIVE
            portal.error = None
            await portal.save()
        # Sweeps after the first plan from the state store the homeserver's pushes keep; the
        # first sweep after start and every change Waldur reports read the room fresh.
        cached = reasons == {SWEEP} and self._sweeps > 1
        result = await self.reconciler.reconcile(portal, view, cached_state=cached)
        await self._report_holds(portal, result)
        await self._role_notices(portal, result)
        if result.outcome.failed:
            raise RuntimeError(
                f"{result.outcome.failed} homeserver write(s) failed: "
                + "; ".join(result.outcome.errors[:3])
            )
        if not view.complete:
            raise IncompleteRead("; ".join(view.problems))
        return result

    async def _create_portal(self, view: ProjectView) -> Portal:
        project = view.project
        portal = await Portal.get_by_project(project.uuid, project.customer_uuid)
        assert portal is not None
        portal.customer_uuid = project.customer_uuid
        try:
            await portal.create_room(project.name, self.reconciler.topic_for(project))
        except Exception as e:
            portal.state = states.ERROR
            portal.error = str(e)[:500]
            await portal.save()
            raise
        log.info(
            "Created portal %s for project %s (%s)", portal.room_id, project.name, project.uuid
        )
        return portal

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
        return await self._close(portal, reason)

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
        for name, role, gained in result.role_changes:
            try:
                await portal.send_reply(role_notice(name, role, gained))
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

    async def on_member_left(self, portal: Portal, user_id: str, voluntarily: bool) -> None:
        member = await PortalMember.get(portal.project_uuid, user_id)
        if member is None:
            return
        if voluntarily:
            member.left_voluntarily = True
            await member.save()
        else:
            # Kicked by a moderator: the next reconcile decides (it re-invites anyone entitled).
            self.request_project(portal.project_uuid, "member-kicked")

    async def on_member_invited(self, portal: Portal, user_id: str, inviter: str) -> None:
        if inviter == portal.az.bot_mxid:
            return
        member = await PortalMember.get(portal.project_uuid, user_id)
        if member is None:
            member = PortalMember(project_uuid=portal.project_uuid, mxid=user_id)
        elif member.added_by == "bridge" and not member.left_voluntarily:
            return
        member.added_by = "moderator"
        member.left_voluntarily = False
        await member.save()

    # endregion
