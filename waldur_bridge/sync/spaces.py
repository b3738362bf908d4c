"""Organization spaces: one space per Waldur organization with portals, its portals as children,
its members the union of the portals' teams; and the portals' own decorations (avatar, bridge
info) that follow Waldur.

Membership goes through the same planner and executor as portals, so the same safety rules hold:
an incomplete picture (a portal not reconciled yet, or read incompletely) removes nobody, mass
removals are held, never_kick is honoured, every change is audited. Links, avatars and bridge
info are remembered per room (`portal_decoration`, `customer_space`): a steady sweep writes
nothing; rooms are read once after a start (or on an admin's `sync`) and repaired where the
homeserver differs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mautrix.errors import MatrixRequestError
from mautrix.types import EventType, Membership, RoomCreatePreset, RoomID, UserID

from .. import room_meta
from ..avatars import Avatars
from ..db import CustomerSpace, PortalDecoration, SpaceMember, portal as states
from ..db.space import ACTIVE, CLOSED
from ..portal import PROJECT_STATE_EVENT, Portal
from ..puppet import Puppet
from ..room_creation import NewRoom, room_state, send_create, state_content
from ..space import CUSTOMER_STATE_EVENT, Space
from ..waldur import Customer, WaldurError
from .failures import EXPECTED_FAILURES, HomeserverWritesFailed
from .planner import DesiredMember, DesiredRoom, Kick, roles_text
from .policy import MembershipPolicy, role_power_level
from .queue import CoalescingQueue

if TYPE_CHECKING:
    from ..__main__ import WaldurBridge
    from .directory import ProjectView
    from .reconciler import Result
    from .service import SyncService

log = logging.getLogger("waldur.sync.spaces")

SWEEP = "sweep"
# Reasons that read the space and its portals' links from the homeserver again (an admin's
# sync, a change made by hand); otherwise links are read once after a start.
VERIFY_REASONS = frozenset({"admin", "drift"})
# An admin approved the space's held removals: this run has no mass-removal guard.
APPROVE = "approve"
# Waldur reported a change of the organization itself: its fields are read again.
ORGANIZATION_CHANGED = "organization-changed"
FRESH_REASONS = frozenset({"admin", ORGANIZATION_CHANGED})
BRIDGE_INFO_TYPES = ("m.bridge", "uk.half-shot.bridge")
CLOSED_CAUSE = "the organization has no project rooms left"
# A decoration's space room for a portal created with no space link: there is neither a
# parent nor a child event to read before linking it.
CREATED_UNLINKED = ""


def state_type(name: str) -> EventType:
    return EventType.find(name, t_class=EventType.Class.STATE)


@dataclass
class PortalTeam:
    """A portal's wanted members, from its last reconcile."""

    customer_uuid: str
    customer_name: str
    complete: bool
    members: dict[str, DesiredMember]
    puppets: dict[str, Puppet] = field(default_factory=dict)
    displaynames: dict[str, str] = field(default_factory=dict)
    user_uuids: dict[str, str] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)


class SpaceSync:
    def __init__(self, bridge: WaldurBridge, service: SyncService) -> None:
        self.bridge = bridge
        self.service = service
        config = bridge.config
        self.enabled = bool(config["bridge.spaces.enabled"])
        self.join_puppets = bool(config["bridge.spaces.join_puppets"])
        self.server_name = str(config["homeserver.domain"])
        self.federate = bool(config["bridge.portals.federate"])
        self.queue = CoalescingQueue(
            self._worker,
            concurrency=max(1, min(4, int(config["bridge.membership.concurrency"]))),
            base_delay=5.0,
            name="spaces",
            expected=EXPECTED_FAILURES,
        )
        self.avatars = Avatars(
            bridge.waldur, bridge.az, config["bridge.avatars.allowed_hosts"] or ()
        )
        self.teams: dict[str, PortalTeam] = {}
        self.customers: dict[str, Customer] = {}
        self.spaces: dict[str, Space] = {}
        self.by_room: dict[str, str] = {}
        self.decorations: dict[str, PortalDecoration] = {}
        # Rooms whose links were read from the homeserver since the start.
        self._verified: set[str] = set()
        self._reported_holds: dict[str, frozenset[str]] = {}
        # Organizations whose space is still to be made, waiting for their portals in flight.
        self._awaiting: set[str] = set()

    # region lifecycle

    async def start(self) -> None:
        for row in await CustomerSpace.all():
            self._remember(Space(row, self.bridge))
        self.decorations = await PortalDecoration.all()
        self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()

    async def wait_idle(self, timeout: float | None = None) -> None:
        await self.queue.wait_idle(timeout)

    def _remember(self, space: Space) -> None:
        self.spaces[space.customer_uuid] = space
        self.by_room[space.room_id] = space.customer_uuid

    def space_of_room(self, room_id: str) -> Space | None:
        customer = self.by_room.get(room_id)
        return self.spaces.get(customer) if customer else None

    def request(self, customer_uuid: str, reason: str) -> None:
        if self.enabled:
            self.queue.request(customer_uuid, reason)

    async def sync_now(self, customer_uuid: str, reason: str = "admin") -> None:
        if self.enabled:
            await self.queue.request_and_wait(customer_uuid, reason)

    # endregion
    # region names

    def customer_name(self, customer_uuid: str) -> str:
        customer = self.customers.get(customer_uuid)
        if customer is not None:
            return customer.name
        for team in self.teams.values():
            if team.customer_uuid == customer_uuid and team.customer_name:
                return team.customer_name
        space = self.spaces.get(customer_uuid)
        return space.name if space is not None else ""

    def portal_parent_state(self, portal: Portal) -> list[dict[str, Any]]:
        """The parent link a new portal is created with, when the organization's space exists
        (the child event follows once the room exists; bridge info is the portal's own)."""
        space = self.spaces.get(portal.customer_uuid)
        if not (self.enabled and space is not None and space.is_active):
            return []
        return [
            {
                "type": room_meta.SPACE_PARENT,
                "state_key": space.room_id,
                "content": room_meta.parent_content(self.server_name),
            }
        ]

    # endregion
    # region portal hooks

    async def room_created(self, portal: Portal, room: NewRoom) -> None:
        """A new portal already carries its bridge info, and its parent link when the space
        existed: remembered, so that neither is read back nor written again."""
        parent = next(
            (
                str(event.get("state_key"))
                for event in room.extra_state
                if event.get("type") == room_meta.SPACE_PARENT
            ),
            None,
        )
        decoration = PortalDecoration(
            project_uuid=portal.project_uuid,
            # The child event is still to come: no order yet.
            space_room_id=CREATED_UNLINKED if parent is None else parent,
            bridge_info_hash=room_meta.content_hash(dict(room.bridge_info)),
        )
        await decoration.save()
        self.decorations[portal.project_uuid] = decoration

    async def after_portal(
        self, portal: Portal, view: ProjectView, result: Result, reasons: frozenset[str]
    ) -> None:
        """After a portal's reconcile: its avatar and bridge info; its team for the space."""
        if not portal.is_active:
            return
        if reasons & VERIFY_REASONS:
            await self.repair(portal)
        await self.decorate(portal, view, verify=bool(reasons & VERIFY_REASONS))
        if not self.enabled or result.team is None:
            return
        desired = result.team.desired
        team = PortalTeam(
            customer_uuid=portal.customer_uuid,
            customer_name=view.project.customer_name,
            complete=desired.complete,
            members=dict(desired.members),
            puppets=result.team.puppets,
            displaynames=result.team.displaynames,
            user_uuids=result.team.user_uuids,
            signatures=result.team.signatures,
        )
        previous = self.teams.get(portal.project_uuid)
        self.teams[portal.project_uuid] = team
        decoration = self.decorations.get(portal.project_uuid)
        space = self.spaces.get(portal.customer_uuid)
        linked = (
            space is not None
            and decoration is not None
            and decoration.space_room_id == space.room_id
            and decoration.child_order == room_meta.child_order(portal.name, portal.project_uuid)
        )
        changed = (
            previous is None
            or previous.members != team.members
            or previous.complete != team.complete
            or previous.customer_uuid != team.customer_uuid
        )
        if changed or not linked or reasons - {SWEEP}:
            if space is None and portal.customer_uuid in self._busy_customers(portal.project_uuid):
                # The space is made once, after the last of its organization's portals in
                # flight, with their whole team invited by its createRoom (one batch for the
                # homeserver instead of an invite event each).
                self._awaiting.add(portal.customer_uuid)
            else:
                self.request(portal.customer_uuid, "portal")
        if previous is not None and previous.customer_uuid != team.customer_uuid:
            self.request(previous.customer_uuid, "portal-moved")

    def portal_run_done(self, project_uuid: str) -> None:
        """A portal's run ended: a space waiting for its organization's portals goes ahead once
        none of them is in flight (a sweep asks for every space anyway)."""
        if not self._awaiting:
            return
        for customer_uuid in sorted(self._awaiting - self._busy_customers()):
            self._awaiting.discard(customer_uuid)
            self.request(customer_uuid, "portal")

    def _busy_customers(self, exclude: str | None = None) -> set[str]:
        """Organizations with a portal running or due to run soon (not one waiting out a retry)."""
        projects = self.service.directory.projects
        return {
            projects[key].customer_uuid
            for key in self.service.queue.busy()
            if key != exclude and key in projects
        }

    async def portal_closed(self, portal: Portal) -> None:
        """A portal was disabled or its project deleted: it leaves the space."""
        self.teams.pop(portal.project_uuid, None)
        if not self.enabled:
            return
        decoration = self.decorations.get(portal.project_uuid)
        space = self.spaces.get(portal.customer_uuid)
        if space is not None and portal.room_id:
            await self._unlink(space, portal.room_id, decoration)
        self.request(portal.customer_uuid, "portal-closed")

    async def repair(self, portal: Portal) -> None:
        """An admin's sync (or a change by hand): read what the bridge owns and put back what
        differs: name, topic, join rules, the project link (membership and levels are the
        reconcile's)."""
        room_id = portal.room_id or ""
        owned = {
            "m.room.name": {"name": portal.name},
            "m.room.topic": {"topic": portal.topic},
            "m.room.join_rules": {"join_rule": "invite"},
            str(PROJECT_STATE_EVENT): {
                "project_uuid": portal.project_uuid,
                "customer_uuid": portal.customer_uuid,
            },
        }
        for event_type, wanted in owned.items():
            current = await self._read_state(room_id, event_type, "") or {}
            if {k: current.get(k) for k in wanted} != wanted:
                await self._write_state(room_id, event_type, wanted, "")
                log.info("Restored %s in %s", event_type, room_id)

    async def decorate(self, portal: Portal, view: ProjectView, verify: bool = False) -> None:
        """The portal's avatar and MSC2346 bridge info, written only when they changed."""
        room_id = portal.room_id or ""
        decoration = self.decorations.get(portal.project_uuid)
        if decoration is None:
            decoration = PortalDecoration(project_uuid=portal.project_uuid)
        elif verify:
            decoration.bridge_info_hash = None  # read it again below
        changed = await self.avatars.sync(room_id, view.project.image, decoration)
        content = portal.bridge_info_content(
            view.project.name, view.project.customer_name, decoration.avatar_mxc
        )
        digest = room_meta.content_hash(content)
        if decoration.bridge_info_hash != digest:
            wanted = {t: content for t in BRIDGE_INFO_TYPES}
            current: dict[str, Any] = {}
            if decoration.bridge_info_hash is None:
                # Never recorded (a room from before this was kept): read before writing.
                for evt in BRIDGE_INFO_TYPES:
                    current[evt] = await self._read_state(
                        room_id, evt, portal.bridge_info_state_key
                    )
            for evt in room_meta.missing_or_changed(wanted, current):
                await self._write_state(room_id, evt, content, portal.bridge_info_state_key)
            decoration.bridge_info_hash = digest
            changed = True
        if changed or portal.project_uuid not in self.decorations:
            await decoration.save()
            self.decorations[portal.project_uuid] = decoration

    # endregion
    # region sweeps

    async def on_sweep(self) -> int:
        """Read every organization (names, descriptions, images) and queue every space."""
        if not self.enabled:
            return 0
        try:
            customers = await self.bridge.waldur.list_customers()
        except WaldurError as e:
            log.warning("Could not list organizations for their spaces (%s); next sweep", e)
            return 0
        self.customers = {c.uuid: c for c in customers}
        wanted = {t.customer_uuid for t in self.teams.values()} | set(self.spaces)
        for customer_uuid in wanted:
            self.request(customer_uuid, SWEEP)
        return len(wanted)

    # endregion
    # region reconcile of one space

    async def _worker(self, customer_uuid: str, reasons: frozenset[str]) -> None:
        await self.reconcile(customer_uuid, reasons)

    async def _portals_of(self, customer_uuid: str) -> list[Portal]:
        # One indexed query per space rather than every portal row per space.
        rows = await CustomerSpace.db.fetch(
            "SELECT project_uuid FROM portal WHERE customer_uuid=$1 AND state=$2",
            customer_uuid,
            states.ACTIVE,
        )
        portals = [await Portal.get_by_project(row["project_uuid"]) for row in rows]
        return [p for p in portals if p is not None and p.is_active]

    async def reconcile(self, customer_uuid: str, reasons: frozenset[str]) -> None:
        portals = await self._portals_of(customer_uuid)
        space = self.spaces.get(customer_uuid)
        if not portals:
            if space is not None and not space.is_closed:
                await self._close(space)
            return
        verify = bool(reasons & VERIFY_REASONS) or (
            space is not None and space.room_id not in self._verified
        )
        customer = await self._customer(customer_uuid, fresh=bool(reasons & FRESH_REASONS))
        created_children: dict[str, dict[str, Any]] = {}
        if space is None:
            space, created_children = await self._create(customer_uuid, customer, portals)
        elif space.is_closed:
            space.row.state = ACTIVE
            await space.row.save()
            log.info("Reopened the space of %s (%s)", space.name, customer_uuid)
        await self._decorate_space(space, customer, verify)
        await self._link(space, portals, verify, created_children)
        self._verified.add(space.room_id)
        cached = reasons == {SWEEP} and not verify
        await self._reconcile_members(
            space, portals, customer, cached=cached, approved=APPROVE in reasons
        )

    async def _customer(self, customer_uuid: str, fresh: bool) -> Customer | None:
        customer = self.customers.get(customer_uuid)
        if customer is not None and not fresh:
            return customer
        try:
            customer = await self.bridge.waldur.get_customer(customer_uuid)
        except WaldurError as e:
            log.info(
                "Organization %s could not be read (%s); using what is known", customer_uuid, e
            )
            return self.customers.get(customer_uuid)
        self.customers[customer_uuid] = customer
        return customer

    async def _create(
        self, customer_uuid: str, customer: Customer | None, portals: list[Portal]
    ) -> tuple[Space, dict[str, dict[str, Any]]]:
        """The new (or adopted) space, and the child links it was created with (room ID ->
        content), which the link step then does not write again."""
        name = customer.name if customer else self.customer_name(customer_uuid)
        topic = (customer.description if customer else "") or ""
        intent = self.bridge.az.intent
        bot = str(intent.mxid)
        room_version = await self.bridge.room_versions.for_new_room()
        info = self._space_info(customer_uuid, name, None)
        state_key = f"waldur://customer/{customer_uuid}"
        # The team known now comes with the space: puppets invited in the initial state (one
        # batch for the homeserver), everyone at their level; the reconcile that follows joins
        # them and invites anyone else.
        wanted, team = self.desired_members(portals)
        invited = {u: team.displaynames.get(u, "") for u in wanted.members if u in team.puppets}
        levels = {
            u: m.power_level for u, m in wanted.members.items() if m.power_level and u != bot
        }
        # The organization's rooms that exist now are its children from the first state on.
        children = {
            p.room_id: room_meta.child_content(
                self.server_name, room_meta.child_order(p.name, p.project_uuid)
            )
            for p in portals
            if p.room_id
        }
        creation: dict[str, Any] = {
            "preset": RoomCreatePreset.PRIVATE,
            "name": name,
            "topic": topic,
            "room_version": room_version,
            "creation_content": {
                "type": "m.space",
                **({} if self.federate else {"m.federate": False}),
            },
            "power_level_override": room_meta.space_power_levels(bot, room_version, levels),
            "initial_state": [
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "shared"},
                },
                {
                    "type": CUSTOMER_STATE_EVENT,
                    "state_key": "",
                    "content": {"customer_uuid": customer_uuid},
                },
                *({"type": t, "state_key": state_key, "content": info} for t in BRIDGE_INFO_TYPES),
                *(
                    {"type": room_meta.SPACE_CHILD, "state_key": room_id, "content": child}
                    for room_id, child in children.items()
                ),
            ],
        }
        alias = self.bridge.config["bridge.alias_template"].format(
            groupname=f"org_{customer_uuid}"
        )
        adopted = False
        # The bridge-wide homeserver write limit, after the rooms' writes waiting for it.
        writes = self.service.executor.slots
        try:
            async with writes.later():
                room_id, in_state = await send_create(intent, creation, invited, alias)
        except MatrixRequestError as e:
            if e.errcode not in ("M_ROOM_IN_USE", "M_EXCLUSIVE", "M_INVALID_PARAM"):
                raise
            in_state = False
            adopted_id = await self._adopt(alias, customer_uuid)
            if adopted_id is not None:
                room_id, adopted = adopted_id, True
            else:
                log.warning("Space alias %s unavailable (%s), creating without", alias, e)
                async with writes.later():
                    room_id, in_state = await send_create(intent, creation, invited)
        if not in_state:
            invited = {}  # the reconcile that follows invites them
        row = CustomerSpace(
            customer_uuid=customer_uuid,
            room_id=room_id,
            name=name,
            topic=topic,
            state=ACTIVE,
            bridge_info_hash=room_meta.content_hash(info),
        )
        await row.save()
        space = Space(row, self.bridge)
        self._remember(space)
        self._awaiting.discard(customer_uuid)
        if adopted:
            return space, {}  # its members and levels are read by the reconcile that follows
        log.info(
            "Created the space %s of organization %s (%s) with %d invited",
            room_id,
            name,
            customer_uuid,
            len(invited),
        )
        await self.service.executor.record_creation(
            space,  # type: ignore[arg-type]
            {
                u: f"{roles_text(wanted.members[u].roles)}; invited with the new space"
                for u in invited
            },
            levels,
            role_signatures=team.signatures,
            user_uuids=team.user_uuids,
        )
        return space, children

    async def _adopt(self, alias: str, customer_uuid: str) -> RoomID | None:
        """A space created before a crash lost its row: find it by alias and link state."""
        intent = self.bridge.az.intent
        try:
            room_id = (
                await intent.resolve_room_alias(f"#{alias}:{self.server_name}")  # type: ignore[arg-type]
            ).room_id
            link = await self._read_state(room_id, CUSTOMER_STATE_EVENT, "")
        except MatrixRequestError:
            return None
        if (link or {}).get("customer_uuid") != customer_uuid:
            return None
        await intent.ensure_joined(room_id)
        log.info("Adopted the existing space %s of organization %s", room_id, customer_uuid)
        return room_id

    def _space_info(self, customer_uuid: str, name: str, avatar: str | None) -> dict[str, Any]:
        return room_meta.bridge_info(
            bot=str(self.bridge.az.bot_mxid),
            channel_id=customer_uuid,
            channel_name=name,
            channel_avatar=avatar,
            network_id=customer_uuid,
            network_name=name,
            network_avatar=avatar,
        )

    async def _decorate_space(self, space: Space, customer: Customer | None, verify: bool) -> None:
        row = space.row
        changed = False
        if customer is not None:
            changed |= await self.avatars.sync(space.room_id, customer.image, row)
        name = customer.name if customer else row.name
        info = self._space_info(space.customer_uuid, name, row.avatar_mxc)
        digest = room_meta.content_hash(info)
        if row.bridge_info_hash != digest or verify:
            current: dict[str, Any] = {}
            if verify or row.bridge_info_hash is None:
                for evt in BRIDGE_INFO_TYPES:
                    current[evt] = await self._read_state(
                        space.room_id, evt, space.bridge_info_state_key
                    )
            wanted = {t: info for t in BRIDGE_INFO_TYPES}
            for evt in room_meta.missing_or_changed(wanted, current):
                await self._write_state(space.room_id, evt, info, space.bridge_info_state_key)
            if row.bridge_info_hash != digest:
                row.bridge_info_hash = digest
                changed = True
        if changed:
            await row.save()

    async def _link(
        self,
        space: Space,
        portals: list[Portal],
        verify: bool,
        created: Mapping[str, dict[str, Any]],
    ) -> None:
        """Children in the space and parents in the portals, for the active portals; dead
        children emptied. Read from the homeserver only when verifying. `created`: the child
        links the space was just created with."""
        children: dict[str, dict[str, Any] | None] = {}
        if verify:
            for event in await self._read_full_state(space.room_id):
                if event.get("type") == room_meta.SPACE_CHILD:
                    children[str(event.get("state_key"))] = event.get("content") or {}
        wanted_rooms = {p.room_id for p in portals if p.room_id}
        for portal in sorted(portals, key=lambda p: p.project_uuid):
            room_id = portal.room_id or ""
            order = room_meta.child_order(portal.name, portal.project_uuid)
            decoration = self.decorations.get(portal.project_uuid) or PortalDecoration(
                project_uuid=portal.project_uuid
            )
            if (
                not verify
                and decoration.space_room_id == space.room_id
                and decoration.child_order == order
            ):
                continue
            child = room_meta.child_content(self.server_name, order)
            parent = room_meta.parent_content(self.server_name)
            known = decoration.space_room_id == space.room_id
            child_now = children.get(room_id) if verify else created.get(room_id)
            if not verify and decoration.space_room_id == CREATED_UNLINKED:
                parent_now = None  # created before the space: no link to read
            elif verify or not known:
                parent_now = await self._read_state(room_id, room_meta.SPACE_PARENT, space.room_id)
                if not verify and room_id not in created:
                    child_now = await self._read_state(
                        space.room_id, room_meta.SPACE_CHILD, room_id
                    )
            else:
                parent_now = parent  # written before; only the order changed
            if dict(child_now or {}) != child:
                await self._write_state(space.room_id, room_meta.SPACE_CHILD, child, room_id)
            if dict(parent_now or {}) != parent:
                await self._write_state(room_id, room_meta.SPACE_PARENT, parent, space.room_id)
            decoration.space_room_id = space.room_id
            decoration.child_order = order
            await decoration.save()
            self.decorations[portal.project_uuid] = decoration
        if verify:
            for room_id in room_meta.dead_links(wanted_rooms, children):
                if await Portal.get_by_room(room_id) is None:
                    continue  # a room an admin added by hand: not ours to remove
                await self._write_state(space.room_id, room_meta.SPACE_CHILD, {}, room_id)
                log.info("Removed %s from the space %s (no active portal)", room_id, space.room_id)

    async def _unlink(
        self, space: Space, room_id: str, decoration: PortalDecoration | None
    ) -> None:
        try:
            await self._write_state(space.room_id, room_meta.SPACE_CHILD, {}, room_id)
            await self._write_state(room_id, room_meta.SPACE_PARENT, {}, space.room_id)
        except MatrixRequestError as e:
            log.warning("Could not unlink %s from the space %s: %s", room_id, space.room_id, e)
        if decoration is not None:
            decoration.space_room_id = None
            decoration.child_order = None
            await decoration.save()
        log.info("Room %s left the space %s", room_id, space.room_id)

    def desired_members(self, portals: list[Portal]) -> tuple[DesiredRoom, PortalTeam]:
        teams = [self.teams.get(p.project_uuid) for p in portals]
        return merge_teams(teams, self.service.policy)

    async def _reconcile_members(
        self,
        space: Space,
        portals: list[Portal],
        customer: Customer | None,
        cached: bool,
        *,
        active: bool = True,
        approved: bool = False,
    ) -> None:
        reconciler = self.service.reconciler
        if active:
            room, merged = self.desired_members(portals)
            room = DesiredRoom(
                complete=room.complete,
                active=True,
                members=room.members,
                name=customer.name if customer else None,
                topic=(customer.description or "") if customer else None,
                join_puppets=self.join_puppets,
            )
        else:
            room = DesiredRoom(
                complete=True, active=False, members={}, inactive_reason=CLOSED_CAUSE
            )
            merged = PortalTeam("", "", True, {})
        records = await SpaceMember.for_project(space.project_uuid)
        policy = self.service.policy
        if approved:
            policy = dataclasses.replace(policy, max_removal_share=1.0)
        plan = await reconciler._plan(
            space,  # type: ignore[arg-type]
            room,
            merged.signatures,
            policy,
            records,  # type: ignore[arg-type]
            cached,
        )
        outcome = await reconciler.executor.execute(
            space,  # type: ignore[arg-type]
            plan,
            puppets=merged.puppets,
            displaynames=merged.displaynames,
            role_signatures=merged.signatures,
            user_uuids=merged.user_uuids,
            verify_joins=cached,
            later=True,
        )
        await self._report_holds(space, plan.held)
        if active and room.complete:
            # Someone who declined the space and lost every role: a new grant is a change of
            # roles and brings a new invite (as in rooms).
            for user_id, record in records.items():
                if (
                    user_id not in merged.signatures
                    and record.left_voluntarily
                    and record.role_signature
                ):
                    record.role_signature = ""
                    await record.save()
        if outcome.failed:
            raise HomeserverWritesFailed(
                f"{outcome.failed} homeserver write(s) in the space failed: "
                + "; ".join(outcome.errors[:3])
            )

    async def _report_holds(self, space: Space, held: tuple[Kick, ...]) -> None:
        """Tell the admins once per distinct set of held removals."""
        people = frozenset(k.user_id for k in held)
        if people == self._reported_holds.get(space.customer_uuid, frozenset()):
            return
        self._reported_holds[space.customer_uuid] = people
        if not people:
            return
        names = ", ".join(sorted(people))
        log.warning("Mass removal held in the space of %s: %s", space.name, names)
        await self.bridge.notify_admins(
            f"Held {len(people)} removal(s) from the space **{space.name}** "
            f"({space.customer_uuid}): more than the configured share of its members would go "
            f"at once. Waiting: {names}. Use `approve-space {space.customer_uuid}` here to "
            "remove them; until then they stay."
        )

    async def _close(self, space: Space) -> None:
        """No portals left: children emptied, managed members removed, the room kept."""
        log.info("Closing the space of %s (%s): %s", space.name, space.customer_uuid, CLOSED_CAUSE)
        for event in await self._read_full_state(space.room_id):
            if event.get("type") == room_meta.SPACE_CHILD and room_meta.is_live_link(
                event.get("content")
            ):
                await self._write_state(
                    space.room_id, room_meta.SPACE_CHILD, {}, str(event.get("state_key"))
                )
        await self._reconcile_members(space, [], None, cached=False, active=False)
        space.row.state = CLOSED
        await space.row.save()

    # endregion
    # region membership events in spaces

    async def on_member_left(
        self, space: Space, user_id: str, voluntarily: bool, how: str = "left the space"
    ) -> None:
        outcome = await SpaceMember.record_left(space.project_uuid, user_id, voluntarily)
        if outcome == "look":
            self.request(space.customer_uuid, "member-kicked")
        elif outcome == "declined":
            await self.service.executor.record_decline(space, user_id, how)  # type: ignore[arg-type]

    async def join_invited(self, puppet: Puppet, how: str) -> list[str]:
        """A person came in as their puppet (`how`: "signed in", ...): it joins the spaces the
        bridge invited it to and did not join (bridge.spaces.join_puppets: false). Returns the
        space rooms joined; a failure is logged and stops nothing."""
        if not self.enabled:
            return []
        keys = await SpaceMember.brought_in(puppet.mxid)
        store = self.bridge.az.state_store
        joined: list[str] = []
        for space in list(self.spaces.values()):
            if space.is_closed or space.project_uuid not in keys:
                continue
            room_id = RoomID(space.room_id)
            cause = f"its person {how}; puppets join spaces then (join_puppets: false)"
            try:
                membership = await store.get_membership(room_id, UserID(puppet.mxid))
                if membership != Membership.INVITE:
                    continue
                if await self.service.executor.join_now(space, puppet, cause):  # type: ignore[arg-type]
                    joined.append(space.room_id)
            except Exception as e:
                # The person gets in all the same; the space's invite stays for their client.
                log.warning("Could not join %s to the space %s: %s", puppet.mxid, room_id, e)
        return joined

    async def on_member_invited(self, space: Space, user_id: str, inviter: str) -> None:
        if inviter != self.bridge.az.bot_mxid:
            await SpaceMember.record_moderator_invite(space.project_uuid, user_id)

    # endregion
    # region homeserver helpers

    async def _read_state(self, room_id: str, event_type: str, state_key: str) -> dict | None:
        return await state_content(self.bridge.az.intent, room_id, event_type, state_key)

    async def _read_full_state(self, room_id: str) -> list[dict[str, Any]]:
        return await room_state(self.bridge.az.intent, room_id)

    async def _write_state(
        self, room_id: str, event_type: str, content: dict[str, Any], state_key: str
    ) -> None:
        await self.bridge.az.intent.send_state_event(
            RoomID(room_id), state_type(event_type), content, state_key=state_key
        )
        self.service.executor.writes += 1

    # endregion


def merge_teams(
    teams: Iterable[PortalTeam | None], policy: MembershipPolicy
) -> tuple[DesiredRoom, PortalTeam]:
    """The space's wanted members: the union of its portals' teams (None: a portal whose team
    is not known yet). Complete only when every team is known and was read completely, so an
    incomplete picture removes nobody. Levels come from organization roles only: a project
    admin moderates the project's room, not the organization's space."""
    merged = PortalTeam("", "", True, {})
    roles: dict[str, set[str]] = {}
    complete = True
    for team in teams:
        if team is None:
            complete = False
            continue
        complete &= team.complete
        for user_id, member in team.members.items():
            roles.setdefault(user_id, set()).update(member.roles)
            merged.members.setdefault(user_id, member)
            for source, target in (
                (team.puppets, merged.puppets),
                (team.displaynames, merged.displaynames),
                (team.user_uuids, merged.user_uuids),
            ):
                if user_id in source:
                    target[user_id] = source[user_id]  # type: ignore[index]
    members: dict[str, DesiredMember] = {}
    for user_id, first in sorted(merged.members.items()):
        user_roles = tuple(sorted(roles[user_id]))
        level = max(
            (role_power_level(r, policy) for r in user_roles if r in policy.organization_roles),
            default=0,
        )
        members[user_id] = DesiredMember(
            user_id=user_id,
            user_uuid=first.user_uuid,
            power_level=level,
            roles=user_roles,
            join_as_puppet=first.join_as_puppet,
        )
        merged.signatures[user_id] = "|".join(user_roles)
    merged.members = members
    merged.complete = complete
    return DesiredRoom(complete=complete, active=True, members=members), merged
