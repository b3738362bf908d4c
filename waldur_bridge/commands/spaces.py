"""Admin commands about organization spaces: `spaces`, and `sync` of an organization."""

from __future__ import annotations

from .. import messages as fmt
from ..db import SpaceMember
from ..portal import Portal
from ..sync.policy import canonical_uuid
from ..sync.spaces import APPROVE
from ..waldur import Customer, WaldurError, WaldurNotFound
from .admin import _UUID, MAX_LISTED, admin_command, one_arg, run
from .handler import SECTION_ROOMS, SECTION_SAFETY, CommandError, WaldurCommandEvent, parse_args


def _md(text: object) -> str:
    return fmt.escape_markdown(str(text))


@admin_command(
    name="spaces",
    help_section=SECTION_ROOMS,
    help_text="List organization spaces",
    help_args="[text]",
)
async def spaces(evt: WaldurCommandEvent) -> None:
    service = evt.bridge.sync.spaces
    if not service.enabled:
        await evt.reply("Spaces are off (`bridge.spaces.enabled: false`).")
        return
    positional, _ = parse_args(evt.args)
    text = " ".join(positional).casefold()
    known = sorted(service.spaces.values(), key=lambda s: (s.row.state, s.name.casefold()))
    if text:
        known = [s for s in known if text in s.name.casefold()]
    if not known:
        await evt.reply("No spaces match." if text else "No spaces yet: they follow the portals.")
        return
    portals = await Portal.all()
    lines = [f"**{len(known)} space(s)**", ""]
    for space in known[:MAX_LISTED]:
        rooms = sum(1 for p in portals if p.customer_uuid == space.customer_uuid and p.is_active)
        members = len(await SpaceMember.for_project(space.project_uuid))
        name = _md(space.name) or "(unnamed)"
        lines.append(
            f"- {name} `{space.customer_uuid}` {space.row.state}, {rooms} room(s), "
            f"{members} member(s) {space.room_id}"
        )
    if len(known) > MAX_LISTED:
        lines.append(f"- … and {len(known) - MAX_LISTED} more (narrow with text)")
    await evt.reply("\n".join(lines))


async def resolve_customer(evt: WaldurCommandEvent, query: str) -> Customer | None:
    """An organization by UUID, exact name or abbreviation; None when nothing matches."""
    client = evt.bridge.waldur
    try:
        if _UUID.match(query):
            return await client.get_customer(canonical_uuid(query))
        customers = await client.list_customers()
    except WaldurNotFound:
        return None
    except WaldurError as e:
        raise CommandError(f"Could not read organizations from Waldur: {_md(e)}") from e
    folded = query.casefold()
    matches = [c for c in customers if folded in (c.name.casefold(), c.abbreviation.casefold())]
    return matches[0] if len(matches) == 1 else None


async def sync_organization(evt: WaldurCommandEvent, customer: Customer) -> None:
    """Reconcile every portal of the organization, then its space (read afresh)."""
    service = evt.bridge.sync
    portals = [p for p in await Portal.all() if p.customer_uuid == customer.uuid and p.room_id]
    for portal in portals:
        service.drift.forget(portal.room_id or "")
        await service.sync_now(portal.project_uuid)
    space = service.spaces.spaces.get(customer.uuid)
    if space is not None:
        service.drift.forget(space.room_id)
    await service.spaces.sync_now(customer.uuid, "admin")
    space = service.spaces.spaces.get(customer.uuid)
    where = f" and its space {space.room_id}" if space is not None else ""
    await evt.reply(
        f"**{_md(customer.name)}**: {len(portals)} room(s){where} are in sync with Waldur."
    )


@admin_command(
    name="approve-space",
    help_section=SECTION_SAFETY,
    help_text="Carry out a space's held removals",
    help_args="<organization>",
)
async def approve_space(evt: WaldurCommandEvent) -> None:
    query, _ = one_arg(evt, "approve-space <organization>")
    customer = await resolve_customer(evt, query)
    if customer is None:
        raise CommandError(f"No organization matches `{_md(query)}`.")
    spaces = evt.bridge.sync.spaces
    if customer.uuid not in spaces.spaces:
        raise CommandError(f"**{_md(customer.name)}** has no space.")
    await run(evt, spaces.sync_now(customer.uuid, APPROVE))
    await evt.reply(f"The space of **{_md(customer.name)}** is in sync; held removals are done.")
