"""Pure formatting of room-command replies and room notices; no I/O and no mautrix imports.

Every reply comes in two renderings built side by side, never by running a Markdown renderer:
``markdown`` for the event ``body`` and ``html`` for ``formatted_body``. Text that comes from
Waldur or from the sender (names, error messages, the command word) goes through ``_value`` or
``_code``, which escape it for both: backslash escapes in the body, ``html.escape(quote=True)`` in
the HTML.
Values are also put on one line (control and bidi characters become spaces) and shortened, so a
name can never start a line of its own, fake a list item or blow up the event size.

A sender should still set ``m.mentions`` (``{}``) on these events: reply bodies contain display
names and project names, and legacy push rules would otherwise treat them as mentions.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .waldur.records import Order, Resource

__all__ = [
    "AuditLine",
    "MemberLine",
    "Reply",
    "audit_reply",
    "error_reply",
    "help_reply",
    "members_reply",
    "no_access_reply",
    "not_linked_reply",
    "order_notice",
    "order_state_label",
    "order_type_label",
    "orders_reply",
    "role_change_notice",
    "role_notice",
    "role_notices",
    "role_title",
    "status_reply",
]

# How much of one reply shows; the rest is summarised as "+N more".
MAX_ERRORED_NAMES = 5
MAX_ORDER_NAMES = 5
MAX_ORDERS = 5
MAX_MEMBERS = 50
# Longest value shown, in characters, before it is cut with an ellipsis.
NAME_LIMIT = 80
ERROR_LIMIT = 200
COMMAND_LIMIT = 32

# Order states as Waldur's API spells them; the DB ints map in from older servers too.
ORDER_STATE_LABELS: dict[str, str] = {
    "pending-consumer": "waiting for the organization's approval",
    "pending-provider": "waiting for the provider's approval",
    "pending-project": "waiting for the project's approval",
    "pending-start-date": "waiting for its start date",
    "executing": "in progress",
    "done": "done",
    "erred": "failed",
    "canceled": "canceled",
    "rejected": "rejected",
}
_ORDER_STATE_INTS: dict[int, str] = {
    1: "pending-consumer",
    2: "executing",
    3: "done",
    4: "erred",
    5: "canceled",
    6: "rejected",
    7: "pending-provider",
    8: "pending-project",
}
# What "Order for X (Create) ..." continues with in a notice.
_ORDER_NOTICE_PHRASES: dict[str, str] = {
    "executing": "is now in progress",
    "done": "is now done",
    "erred": "has failed",
    "canceled": "was canceled",
    "rejected": "was rejected",
}
# The order in which !status lists pending groups: who has to act, roughly first to last.
_PENDING_STATES = ("pending-consumer", "pending-project", "pending-provider", "pending-start-date")

ORDER_TYPE_LABELS: dict[str, str] = {
    "create": "Create",
    "update": "Update",
    "terminate": "Terminate",
    "restore": "Restore",
}
_ORDER_TYPE_INTS: dict[int, str] = {1: "Create", 2: "Update", 3: "Terminate", 4: "Restore"}

_IN_PROGRESS_LABELS: dict[str, str] = {
    "Creating": "being created",
    "Updating": "being updated",
    "Terminating": "being terminated",
}

_ROLE_TITLES: dict[str, str] = {
    "PROJECT.ADMIN": "Project Admin",
    "PROJECT.MANAGER": "Project Manager",
    "PROJECT.MEMBER": "Project Member",
    "CUSTOMER.OWNER": "Organization Owner",
    "CUSTOMER.MANAGER": "Organization Manager",
    "CUSTOMER.SUPPORT": "Organization Support",
    "CUSTOMER.READER": "Organization Reader",
}

_MEMBERSHIP_LABELS: dict[str, str] = {
    "join": "in the room",
    "invite": "invited",
    "knock": "asked to join",
    "ban": "banned from the room",
    "declined": "declined",
    "no-account": "no Matrix account yet",
}
_NOT_IN_ROOM = "not in the room"

_COMMANDS: tuple[tuple[str, str], ...] = (
    ("help", "show this list"),
    ("status", "errored resources, orders waiting for approval, work in progress"),
    ("orders", "the last five orders of this project"),
    ("members", "the project's team in Waldur, with roles and who is in the room"),
    ("rooms", "in a direct chat with the bot: the project rooms your Waldur roles give you"),
    ("join <project>", "in a direct chat with the bot: be invited again to a room you declined"),
    ("why <project>", "in a direct chat with the bot: why you are in that project's room, or not"),
)


@dataclass(frozen=True, slots=True)
class Reply:
    """One message: ``markdown`` is the plain ``body``, ``html`` the ``formatted_body``."""

    markdown: str
    html: str


@dataclass(frozen=True, slots=True)
class MemberLine:
    """One person of the project's Waldur team as ``!members`` shows them."""

    display_name: str
    roles: tuple[str, ...]
    # The Matrix membership in the portal room (join, invite, none, leave), or the bridge's
    # word for why someone is out: declined, no-account.
    membership: str
    expires: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditLine:
    """One row of the audit log as ``audit`` shows it."""

    when: datetime
    action: str  # invite, join, kick, power-levels, set-name, set-topic, ...
    target: str | None
    room: str  # the project's name (or its UUID when the room is gone)
    cause: str
    outcome: str  # done, failed, held, dry-run
    detail: str = ""


# --- times ----------------------------------------------------------------------------------


def relative_time(when: datetime, now: datetime) -> str:
    """``3 h ago``, ``in 2 d``, ``just now``: how people read times in a chat."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (now - when).total_seconds()
    span = abs(seconds)
    if span < 45:
        return "just now"
    if span < 3570:  # 59.5 min: an hour reads "1 h", not "60 min"
        amount, unit = max(1, round(span / 60)), "min"
    elif span < 48 * 3600:
        amount, unit = round(span / 3600), "h"
    else:
        amount, unit = round(span / 86400), "d"
    return f"{amount} {unit} ago" if seconds > 0 else f"in {amount} {unit}"


# --- escaping -----------------------------------------------------------------------------------

# Always escaped in the body. Characters that only matter at the start of a line (# - + . and
# digits) cannot matter here: a value never starts a line. ( ) ! only matter after [ or before
# [, which is escaped.
_MD_SPECIAL = frozenset("\\`*[]<>~|")
# Line and paragraph separators, and the bidi controls that could reorder the text around a name.
_FORCED_SPACE = frozenset("\u2028\u2029\u200e\u200f\u061c") | frozenset(
    chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
)
_SPACES_RE = re.compile(r"\s+")


def _clean(value: object, limit: int = NAME_LIMIT) -> str:
    """Put ``value`` on one trimmed line of at most ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    text = "".join(
        " " if ch in _FORCED_SPACE or unicodedata.category(ch) == "Cc" else ch for ch in text
    )
    text = _SPACES_RE.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def escape_markdown(text: str) -> str:
    """Backslash-escape ``text`` so that Markdown shows it literally (for a value mid-line)."""
    out: list[str] = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        if ch in _MD_SPECIAL:
            out.append("\\" + ch)
        elif ch == "_":
            # An underscore between two letters or digits can neither open nor close emphasis;
            # leave it bare so that names like vm_01 stay readable in the plain body.
            intraword = 0 < i < last and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append(ch if intraword else "\\_")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Frag:
    """A piece of a reply, already safe in both renderings."""

    md: str
    html: str


def _text(text: str) -> _Frag:
    """Trusted text written here, free of Markdown markup; HTML-escaped all the same."""
    return _Frag(text, html.escape(text, quote=False))


def _value(value: object, fallback: str = "(unnamed)", limit: int = NAME_LIMIT) -> _Frag:
    """A value from Waldur or from the sender, escaped for both renderings."""
    clean = _clean(value, limit) or fallback
    return _Frag(escape_markdown(clean), html.escape(clean, quote=True))


def _code(value: object, limit: int = NAME_LIMIT) -> _Frag:
    """A value as a code span; a fence longer than any backtick run inside keeps it closed."""
    clean = _clean(value, limit)
    longest = max((len(run) for run in re.findall(r"`+", clean)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if "`" in clean or (clean.startswith(" ") and clean.endswith(" ")) else ""
    return _Frag(
        f"{fence}{pad}{clean}{pad}{fence}", f"<code>{html.escape(clean, quote=True)}</code>"
    )


def _cat(*parts: _Frag | str) -> _Frag:
    frags = [_text(p) if isinstance(p, str) else p for p in parts]
    return _Frag("".join(f.md for f in frags), "".join(f.html for f in frags))


def _join(parts: Iterable[_Frag], sep: str = ", ") -> _Frag:
    items = list(parts)
    sep_html = html.escape(sep, quote=False)
    return _Frag(sep.join(f.md for f in items), sep_html.join(f.html for f in items))


def _bold(*parts: _Frag | str) -> _Frag:
    inner = _cat(*parts)
    return _Frag(f"**{inner.md}**", f"<strong>{inner.html}</strong>")


def _reply(header: _Frag, items: Sequence[_Frag] = (), footer: _Frag | None = None) -> Reply:
    """A header line, then a bullet list, then an optional closing paragraph."""
    md_lines = [header.md, *(f"- {item.md}" for item in items)]
    html_out = header.html
    if items:
        html_out += "<ul>" + "".join(f"<li>{item.html}</li>" for item in items) + "</ul>"
    if footer is not None:
        # A blank line, or Markdown would continue the last bullet with this paragraph.
        md_lines += ["", footer.md]
        html_out += f"<p>{footer.html}</p>"
    return Reply("\n".join(md_lines), html_out)


def _line(frag: _Frag) -> Reply:
    return Reply(frag.md, frag.html)


# --- labels -------------------------------------------------------------------------------------


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _state_key(state: object) -> str:
    """The API string for ``state``: DB ints from older servers map to their names."""
    number = _as_int(state)
    if number is not None:
        return _ORDER_STATE_INTS.get(number, str(number))
    return str(state).strip().lower() if isinstance(state, str) else str(state)


def order_state_label(state: object) -> str:
    """``state`` in words; a state this bridge does not know is shown as Waldur sent it."""
    key = _state_key(state)
    return ORDER_STATE_LABELS.get(key, _clean(state) or "unknown state")


def order_type_label(order_type: object) -> str:
    """``Create``, ``Update``, ``Terminate`` or ``Restore``, from the API string or an old int."""
    number = _as_int(order_type)
    if number is not None:
        return _ORDER_TYPE_INTS.get(number, str(number))
    text = _clean(order_type)
    return ORDER_TYPE_LABELS.get(text.lower(), text or "Order")


def role_title(role_name: str) -> str:
    """A readable title for a Waldur role name (plain text: escape it where it is shown)."""
    name = _clean(role_name)
    known = _ROLE_TITLES.get(name.upper())
    if known is not None:
        return known
    segments = [s for s in name.split(".") if s]
    if not segments:
        return "Role"
    if len(segments) >= 3:
        # Custom roles: PROJECT.<slug>.MEMBER -> "Project Member (<slug>)".
        base = _ROLE_TITLES.get(f"{segments[0]}.{segments[-1]}".upper())
        if base is not None:
            return f"{base} ({'.'.join(segments[1:-1])})"
    words = re.sub(r"[_\-\s]+", " ", segments[-1]).strip()
    return words.title() if words else name


def _date(value: date | datetime | None) -> str | None:
    if value is None:
        return None
    return (value.date() if isinstance(value, datetime) else value).isoformat()


def _order_subject(order: Order) -> _Frag:
    """The resource name, else the offering name."""
    name = _clean(order.resource_name) or _clean(order.offering_name)
    return _value(name, fallback="(unnamed resource)")


def _requester(order: Order) -> str:
    return _clean(order.created_by_full_name) or _clean(order.created_by_username)


def _resource_name(resource: Resource) -> _Frag:
    name = _clean(resource.name) or _clean(resource.offering_name)
    return _value(name, fallback="(unnamed resource)")


def _names_with_more(names: Sequence[_Frag], total: int, limit: int) -> _Frag:
    shown = list(names[:limit])
    more = max(total, len(names)) - len(shown)
    if more > 0:
        shown.append(_text(f"+{more} more"))
    return _join(shown)


def _header(project_name: str, rest: str) -> _Frag:
    return _cat(_bold(_value(project_name, fallback="(unnamed project)")), rest)


# --- replies ------------------------------------------------------------------------------------


def help_reply(prefix: str) -> Reply:
    """The command list; ``prefix`` is the bot's word form, as in ``<prefix> status``."""
    items = [_cat(_code(f"!{name}"), f" — {what}") for name, what in _COMMANDS]
    footer: _Frag | None = None
    word = _clean(prefix, COMMAND_LIMIT)
    if word:
        footer = _cat(
            "Each also works as ",
            _code(f"{word} status"),
            ", ",
            _code(f"{word} orders"),
            " and so on.",
        )
    return _reply(_bold("Commands"), items, footer)


def status_reply(
    project_name: str,
    errored: Sequence[Resource],
    errored_total: int,
    pending_orders: Sequence[Order],
    in_progress: Mapping[str, int],
) -> Reply:
    """``!status``: errored resources, orders waiting for approval, resources being changed."""
    items: list[_Frag] = []

    total = max(errored_total, len(errored))
    if total > 0:
        names = _names_with_more([_resource_name(r) for r in errored], total, MAX_ERRORED_NAMES)
        label = f"{_plural(total, 'resource')} errored:"
        items.append(_cat(_bold(label), " ", names))

    groups: dict[str, list[Order]] = {}
    for order in pending_orders:
        groups.setdefault(_state_key(order.state), []).append(order)
    ordered = [s for s in _PENDING_STATES if s in groups] + [
        s for s in groups if s not in _PENDING_STATES
    ]
    for state in ordered:
        orders = groups[state]
        subjects = [_cat(_order_subject(o), f" ({order_type_label(o.type)})") for o in orders]
        names = _names_with_more(subjects, len(orders), MAX_ORDER_NAMES)
        label = _value(order_state_label(state))
        items.append(_cat(_bold(_plural(len(orders), "order")), " ", label, ": ", names))

    known = [k for k in _IN_PROGRESS_LABELS if k in in_progress]
    for key in known + sorted(k for k in in_progress if k not in _IN_PROGRESS_LABELS):
        count = in_progress[key]
        if count > 0:
            words = _IN_PROGRESS_LABELS.get(key) or _clean(key).lower()
            items.append(_cat(_plural(count, "resource"), " ", _value(words)))

    if not items:
        return _line(
            _header(
                project_name,
                " — status: all clear. No errored resources, no orders waiting for approval,"
                " nothing in progress.",
            )
        )
    return _reply(_header(project_name, " — status:"), items)


def orders_reply(project_name: str, orders: Sequence[Order]) -> Reply:
    """``!orders``: the five newest orders, newest first."""
    newest = sorted(orders, key=lambda o: o.created, reverse=True)[:MAX_ORDERS]
    if not newest:
        return _line(_header(project_name, " — no orders yet."))
    items: list[_Frag] = []
    for order in newest:
        parts: list[_Frag | str] = [
            _bold(_value(order_type_label(order.type))),
            " ",
            _order_subject(order),
            " — ",
            _value(order_state_label(order.state)),
        ]
        who = _requester(order)
        if who:
            parts += [" · by ", _value(who)]
        day = _date(order.created)
        if day:
            parts += [" · ", day]
        if _state_key(order.state) == "erred" and _clean(order.error_message):
            parts += [" · error: ", _value(order.error_message, limit=ERROR_LIMIT)]
        items.append(_cat(*parts))
    heading = "last order:" if len(newest) == 1 else f"last {len(newest)} orders:"
    return _reply(_header(project_name, f" — {heading}"), items)


def members_reply(project_name: str, members: Sequence[MemberLine]) -> Reply:
    """``!members``: the Waldur team as it stands, sorted by name, with room state and expiry."""
    if not members:
        return _line(_header(project_name, " — no one holds a role on this project in Waldur."))
    people = sorted(
        members, key=lambda m: (_clean(m.display_name).casefold(), _clean(m.display_name))
    )
    joined = sum(1 for m in people if m.membership == "join")
    items: list[_Frag] = []
    for member in people[:MAX_MEMBERS]:
        titles = list(dict.fromkeys(role_title(r) for r in member.roles))
        parts: list[_Frag | str] = [
            _bold(_value(member.display_name, fallback="(no name)")),
            " — ",
            _join(_value(t) for t in titles) if titles else "no role",
            " · ",
            _MEMBERSHIP_LABELS.get(member.membership, _NOT_IN_ROOM),
        ]
        until = _date(member.expires)
        if until:
            parts.append(f" · until {until}")
        items.append(_cat(*parts))
    if len(people) > MAX_MEMBERS:
        items.append(_text(f"+{len(people) - MAX_MEMBERS} more"))
    heading = f" — Waldur team: {_plural(len(people), 'person', 'people')}, {joined} in the room"
    return _reply(_header(project_name, heading), items)


def no_access_reply() -> Reply:
    return _line(
        _text("You have no role on this room's project in Waldur, so I can't show its data.")
    )


def not_linked_reply() -> Reply:
    return _line(
        _text("This room is not linked to an active Waldur project, so I have nothing to show.")
    )


# What went wrong with Waldur, in the words a room member reads (see error_reply).
_WALDUR_PROBLEMS = {
    "unreachable": ("Sorry, I could not reach Waldur", ". Please try again later."),
    "refused": (
        "Sorry, Waldur refused the bridge's credentials",
        ". An admin needs to check the bridge's Waldur token.",
    ),
    "rejected": (
        "Sorry, Waldur rejected the bridge's request",
        ". This is a bridge problem, not yours: an admin can find the details in its log.",
    ),
    "garbled": (
        "Sorry, Waldur's answer was not in a form I can use",
        ". An admin can find the details in the bridge's log.",
    ),
    "incomplete": (
        "Sorry, part of Waldur's answer was missing",
        ". Please try again in a minute.",
    ),
}


def error_reply(command: str, problem: str = "unreachable") -> Reply:
    """Waldur failed while running ``command``; ``problem`` says how (a key of
    ``_WALDUR_PROBLEMS``): a 400 is not "could not reach Waldur"."""
    word = _clean(command, COMMAND_LIMIT).lstrip("!")
    what = _cat(" to answer ", _code(f"!{word}")) if word else _text("")
    opening, closing = _WALDUR_PROBLEMS.get(problem, _WALDUR_PROBLEMS["unreachable"])
    return _line(_cat(opening, what, closing))


def role_notice(full_name: str, role_name: str, gained: bool) -> Reply:
    """A room notice that someone gained or lost a role on the project."""
    who = _value(full_name, fallback="Someone")
    title = _value(role_title(role_name))
    if gained:
        return _line(_cat(who, " now has the role ", title, "."))
    return _line(_cat(who, " no longer has the role ", title, "."))


def role_change_notice(full_name: str, gained: list[str], lost: list[str]) -> Reply:
    """One notice for a role change (Waldur revokes, then grants): "Alice is now Project
    Member (was Project Admin).", never a "lost" and a "gained" notice."""
    who = _value(full_name, fallback="Someone")
    parts: list[_Frag | str] = [who, " is now "]
    for i, role in enumerate(gained):
        parts += [", " if i else "", _value(role_title(role))]
    if lost:
        parts.append(" (was ")
        for i, role in enumerate(lost):
            parts += [", " if i else "", _value(role_title(role))]
        parts.append(")")
    parts.append(".")
    return _line(_cat(*parts))


def role_notices(changes: Iterable[tuple[str, str, bool]]) -> list[Reply]:
    """The notices for one reconcile's role changes, (name, role, gained) each. Someone who
    lost a role and gained another in the same read changed role: one notice, not two."""
    by_person: dict[str, tuple[list[str], list[str]]] = {}
    for name, role, gained in changes:
        by_person.setdefault(name, ([], []))[0 if gained else 1].append(role)
    notices = []
    for name, (gained, lost) in by_person.items():
        if gained and lost:
            notices.append(role_change_notice(name, gained, lost))
        else:
            notices += [role_notice(name, role, bool(gained)) for role in gained or lost]
    return notices


def order_notice(order: Order, old_state: str | None) -> Reply:
    """A room notice that an order changed state, e.g. "Order for vm1 (Create) is now done."."""
    key = _state_key(order.state)
    phrase = _ORDER_NOTICE_PHRASES.get(key)
    parts: list[_Frag | str] = [
        "Order for ",
        _order_subject(order),
        " (",
        _value(order_type_label(order.type)),
        ") ",
    ]
    if phrase is not None:
        parts.append(phrase)
    elif key in ORDER_STATE_LABELS:
        parts += ["is now ", _value(ORDER_STATE_LABELS[key])]
    else:
        parts += ["is now in state ", _value(order_state_label(order.state))]
    if old_state is not None and _state_key(old_state) != key:
        parts += [" (was ", _value(order_state_label(old_state)), ")"]
    parts.append(".")
    who = _requester(order)
    if who:
        parts += [" Requested by ", _value(who), "."]
    if key == "erred" and _clean(order.error_message):
        parts += [" Error: ", _value(order.error_message, limit=ERROR_LIMIT)]
    return _line(_cat(*parts))


def room_closed_notice(reason: str) -> Reply:
    """The last notice in a room the bridge stops managing; ``reason`` is the bridge's own text."""
    return _line(_cat("This room was closed: ", _value(reason, fallback="no reason given"), "."))


def room_reopened_notice() -> Reply:
    return _line(_text("This room was reopened."))


def unknown_command_reply(word: str, prefix: str | None) -> Reply:
    """The answer to a command word the bot does not know, pointing at ``help`` (bare where
    commands take no prefix: ``prefix`` None)."""
    return _line(
        _cat(
            "Unknown command ",
            _code(_clean(word, COMMAND_LIMIT)),
            ". Send ",
            _code(f"{prefix} help" if prefix else "help"),
            " for the list.",
        )
    )


def waldur_access_lost_notice(problem: str, fix: str) -> str:
    """Management-room report (Markdown) when the bridge stops getting answers from Waldur."""
    return (
        f"**Waldur access lost:** {escape_markdown(_clean(problem, ERROR_LIMIT))} "
        f"{escape_markdown(fix)} Until it is back, rooms are not changed and nobody is removed."
    )


def waldur_access_back_notice(down_seconds: float) -> str:
    minutes = max(1, round(down_seconds / 60))
    return (
        f"**Waldur access is back** after about {_plural(minutes, 'minute')}; "
        "rooms are being brought up to date."
    )


# --- audit log ----------------------------------------------------------------------------------

_AUDIT_VERBS = {
    "invite": "invited",
    "join": "joined",
    "kick": "removed",
    "power-levels": "power levels",
    "set-name": "renamed",
    "set-topic": "new topic",
    "decline": "declined",
    "undecline": "asked back in",
}
_AUDIT_OUTCOMES = {"failed": "FAILED", "held": "held for an admin", "dry-run": "dry run only"}
MAX_AUDIT_LINES = 30


def audit_reply(
    subject: str,
    since: str | None,
    lines: Sequence[AuditLine],
    total: int,
    now: datetime | None = None,
) -> Reply:
    """``audit``: the newest membership actions about a project or a person, with causes.

    With ``now``, times read relative to it ("3 h ago"); without, exact in UTC."""
    span = f" since {since}" if since else ""
    if not lines:
        return _line(_cat("No audit entries for ", _value(subject), f"{span}."))
    items: list[_Frag] = []
    for entry in lines[:MAX_AUDIT_LINES]:
        when = relative_time(entry.when, now) if now else entry.when.strftime("%Y-%m-%d %H:%M")
        parts: list[_Frag | str] = [
            when,
            " · ",
            _bold(_AUDIT_VERBS.get(entry.action, entry.action)),
        ]
        if entry.target:
            parts += [" ", _value(entry.target, limit=ERROR_LIMIT)]
        parts += [" · ", _value(entry.room)]
        if entry.cause:
            parts += [" · ", _value(entry.cause, limit=ERROR_LIMIT)]
        if entry.outcome != "done":
            parts += [" · ", _AUDIT_OUTCOMES.get(entry.outcome, entry.outcome)]
            if entry.detail:
                parts += [": ", _value(entry.detail, limit=ERROR_LIMIT)]
        items.append(_cat(*parts))
    shown = min(len(lines), MAX_AUDIT_LINES)
    header = _cat(
        _bold("Audit log of ", _value(subject)),
        f"{span} ({'newest' if now else 'UTC, newest'} first): "
        f"{_plural(total, 'entry', 'entries')}",
    )
    footer = None
    if total > shown:
        footer = _text(f"Showing the newest {shown}; narrow it with --since.")
    return _reply(header, items, footer)


# --- management room reports ----------------------------------------------------------------


def alias_conflict_report(
    project_name: str, project_uuid: str, alias: str, room_id: str | None, reason: str
) -> Reply:
    """The project's alias holds a room the bridge cannot adopt, so it creates none."""
    parts: list[_Frag | str] = [
        "No room for ",
        _bold(_value(project_name)),
        " (",
        _code(project_uuid),
        "): its alias ",
        _code(alias),
    ]
    if room_id:
        parts += [" points to ", _code(room_id)]
    parts += [
        ": ",
        _value(reason, limit=ERROR_LIMIT),
        ". Free the alias (or fix the registration's alias namespace), then send ",
        _code(f"retry {project_uuid}"),
        ".",
    ]
    return _line(_cat(*parts))


def duplicate_closed_notice(kept_room_id: str, alias: str) -> Reply:
    """The last notice in a duplicate project room that an admin closed."""
    return _line(
        _cat(
            "This room duplicated the project's room and is closed. The project's room is ",
            _code(alias),
            " (",
            _code(kept_room_id),
            ").",
        )
    )


def duplicates_report(
    leftovers: Sequence[tuple[str, str, str, str | None, bool]], tidy_hint: bool
) -> Reply:
    """Duplicate project rooms: (room ID, project name, project UUID, kept room, holds alias)."""
    if not leftovers:
        return _line(_text("No duplicate project rooms."))
    items = []
    for room_id, name, project_uuid, kept, holds_alias in leftovers:
        parts: list[_Frag | str] = [
            _code(room_id),
            " of ",
            _bold(_value(name)),
            " (",
            _code(project_uuid),
            ")",
        ]
        if kept is None:
            parts.append(
                ": the project has no room yet; creating it adopts a room under its alias"
            )
        else:
            parts += [": duplicate of ", _code(kept)]
        if holds_alias:
            parts.append("; holds the project's alias")
        items.append(_cat(*parts))
    header = _text(f"{_plural(len(leftovers), 'duplicate project room')}:")
    footer = (
        _cat("Send ", _code("duplicates --tidy"), " to close the duplicates.")
        if tidy_hint
        else None
    )
    return _reply(header, items, footer)


def duplicates_tidied_reply(closed: Sequence[tuple[str, str, int, bool]], skipped: int) -> Reply:
    """What `duplicates --tidy` did: (room ID, project name, people removed, alias moved)."""
    items = [
        _cat(
            "closed ",
            _code(room_id),
            " of ",
            _bold(_value(name)),
            f": {_plural(removed, 'person', 'people')} removed",
            "; alias moved to the project's room" if moved else "",
        )
        for room_id, name, removed, moved in closed
    ]
    footer = (
        _text(f"{_plural(skipped, 'room')} left alone: their projects have no room yet.")
        if skipped
        else None
    )
    return _reply(_text(f"Closed {_plural(len(closed), 'duplicate room')}."), items, footer)
