"""Room-command replies and notices: wording, limits and escaping in both renderings."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from waldur_bridge.messages import (
    MemberLine,
    Reply,
    error_reply,
    escape_markdown,
    help_reply,
    members_reply,
    no_access_reply,
    not_linked_reply,
    order_notice,
    order_state_label,
    order_type_label,
    orders_reply,
    role_notice,
    role_title,
    status_reply,
)
from waldur_bridge.waldur import Order, Resource

EVIL_PROJECT = "<script>alert(1)</script> **x**"
BACKTICK_NAME = "a`b"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ALL_STATES = (
    "pending-consumer",
    "pending-provider",
    "pending-project",
    "pending-start-date",
    "executing",
    "done",
    "erred",
    "canceled",
    "rejected",
)
ALLOWED_TAGS = {"strong", "ul", "li", "p", "code"}


def make_order(
    n: int = 0,
    *,
    state: str = "done",
    type: str = "Create",
    resource_name: str = "vm1",
    offering_name: str = "Cloud VM",
    full_name: str = "Alice Smith",
    username: str = "alice",
    error_message: str = "",
    created: datetime | None = None,
) -> Order:
    return Order(
        uuid=f"{n:032x}",
        created=created or T0 + timedelta(days=n),
        state=state,
        type=type,
        resource_name=resource_name,
        offering_name=offering_name,
        project_uuid="ab" * 16,
        created_by_full_name=full_name,
        created_by_username=username,
        consumer_reviewed_by_full_name=None,
        error_message=error_message,
    )


def make_resource(name: str, n: int = 0, offering_name: str = "Cloud VM") -> Resource:
    return Resource(
        uuid=f"{n:032x}",
        name=name,
        state="Erred",
        project_uuid="ab" * 16,
        offering_name=offering_name,
        created=T0,
    )


class _TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(fragment: str) -> _TagCollector:
    parser = _TagCollector()
    parser.feed(fragment)
    parser.close()
    return parser


def assert_html_safe(reply: Reply) -> str:
    """Only our own tags appear in the HTML; returns its text content."""
    parsed = parse_html(reply.html)
    assert set(parsed.tags) <= ALLOWED_TAGS, parsed.tags
    assert "<script" not in reply.html
    return "".join(parsed.text)


def render_markdown(text: str) -> str:
    commonmark = pytest.importorskip("commonmark")
    return commonmark.commonmark(text)


# --- help and one-liners --------------------------------------------------------------------


def test_help_lists_commands_and_prefix_form() -> None:
    reply = help_reply("!waldur")
    for name in ("help", "status", "orders", "members"):
        assert f"- `!{name}` — " in reply.markdown
        assert f"<li><code>!{name}</code> — " in reply.html
    assert "`!waldur status`" in reply.markdown
    assert "<code>!waldur status</code>" in reply.html
    assert "- `!why <project>` — in a direct chat with the bot" in reply.markdown
    # The prefix note is its own paragraph, not a continuation of the last bullet.
    assert "\n\nEach also works as" in reply.markdown
    assert_html_safe(reply)


def test_help_escapes_a_hostile_prefix() -> None:
    reply = help_reply("<b>`x")
    assert "<b>" not in reply.html
    assert "<code>&lt;b&gt;`x status</code>" in reply.html
    assert "`` <b>`x status ``" in reply.markdown
    assert_html_safe(reply)


def test_one_line_replies() -> None:
    for reply in (no_access_reply(), not_linked_reply()):
        assert "\n" not in reply.markdown
        assert "Waldur" in reply.markdown
        assert_html_safe(reply)
    assert "no role" in no_access_reply().markdown
    assert "not linked" in not_linked_reply().markdown


def test_error_reply_names_the_command_safely() -> None:
    reply = error_reply("status")
    assert (
        reply.markdown
        == "Sorry, I could not reach Waldur to answer `!status`. Please try again later."
    )
    assert "<code>!status</code>" in reply.html
    hostile = error_reply("<img src=x>`")
    assert "<img" not in hostile.html
    assert_html_safe(hostile)
    assert "try again later" in error_reply("").markdown


# --- status ---------------------------------------------------------------------------------


def test_status_all_clear() -> None:
    reply = status_reply("Alpha", [], 0, [], {"Creating": 0, "Updating": 0, "Terminating": 0})
    assert reply.markdown.startswith("**Alpha** — status: all clear.")
    assert "\n" not in reply.markdown
    assert reply.html.startswith("<strong>Alpha</strong> — status: all clear.")


def test_status_errored_limit_pending_groups_and_progress() -> None:
    errored = [make_resource(f"vm{i}", i) for i in range(7)]
    pending = [
        make_order(1, state="pending-provider", resource_name="db"),
        make_order(2, state="pending-consumer", resource_name="web", type="Terminate"),
        make_order(3, state="pending-consumer", resource_name="", offering_name="Storage"),
        make_order(4, state="pending-project", resource_name="x"),
        make_order(5, state="pending-start-date", resource_name="y", type="Update"),
    ]
    reply = status_reply(
        "Alpha", errored[:5], 9, pending, {"Creating": 2, "Updating": 0, "Terminating": 1}
    )
    lines = reply.markdown.splitlines()
    assert lines[0] == "**Alpha** — status:"
    assert lines[1] == "- **9 resources errored:** vm0, vm1, vm2, vm3, vm4, +4 more"
    assert lines[2] == (
        "- **2 orders** waiting for the organization's approval: web (Terminate), Storage (Create)"
    )
    assert lines[3] == "- **1 order** waiting for the project's approval: x (Create)"
    assert lines[4] == "- **1 order** waiting for the provider's approval: db (Create)"
    assert lines[5] == "- **1 order** waiting for its start date: y (Update)"
    assert lines[6:] == ["- 2 resources being created", "- 1 resource being terminated"]
    assert "updated" not in reply.markdown
    text = assert_html_safe(reply)
    assert "9 resources errored: vm0, vm1, vm2, vm3, vm4, +4 more" in text
    assert reply.html.count("<li>") == 7


def test_status_shows_at_most_five_names_even_if_given_more() -> None:
    errored = [make_resource(f"r{i}", i) for i in range(8)]
    reply = status_reply("P", errored, 8, [], {})
    assert "r4, +3 more" in reply.markdown
    assert "r5" not in reply.markdown
    # A total lower than the list (racing counts) never gives "+-N more".
    assert "+" not in status_reply("P", errored[:2], 0, [], {}).markdown.split("errored:")[1]


# --- orders ---------------------------------------------------------------------------------


def test_orders_lines_newest_first_limited_to_five() -> None:
    orders = [make_order(i, resource_name=f"vm{i}") for i in range(7)]
    reply = orders_reply("Alpha", orders)
    lines = reply.markdown.splitlines()
    assert lines[0] == "**Alpha** — last 5 orders:"
    assert lines[1] == "- **Create** vm6 — done · by Alice Smith · 2025-03-07"
    assert [line.split(" ")[2] for line in lines[1:]] == ["vm6", "vm5", "vm4", "vm3", "vm2"]
    assert_html_safe(reply)


@pytest.mark.parametrize("state", ALL_STATES)
def test_every_order_state_is_words(state: str) -> None:
    label = order_state_label(state)
    assert label != state or state in {"done", "canceled", "rejected"}
    assert "-" not in label and "unknown" not in label
    line = orders_reply("P", [make_order(state=state)]).markdown.splitlines()[1]
    assert f"— {label} ·" in line


@pytest.mark.parametrize(
    ("raw", "word"),
    [
        ("Create", "Create"),
        ("Update", "Update"),
        ("Terminate", "Terminate"),
        ("Restore", "Restore"),
        (1, "Create"),
        (2, "Update"),
        (3, "Terminate"),
        (4, "Restore"),
        ("3", "Terminate"),
    ],
)
def test_order_types_are_words(raw: object, word: str) -> None:
    assert order_type_label(raw) == word


def test_order_state_ints_and_unknown_states() -> None:
    assert order_state_label(8) == "waiting for the project's approval"
    assert order_state_label(1) == "waiting for the organization's approval"
    assert order_state_label("pending-somebody") == "pending-somebody"
    assert order_state_label(42) == "42"
    line = orders_reply("P", [make_order(state="pending-somebody")]).markdown
    assert "pending-somebody" in line and "unknown" not in line


def test_order_line_fallbacks_and_error() -> None:
    order = make_order(
        resource_name="", offering_name="Block storage", full_name="", username="bob",
        state="erred", error_message="quota\nexceeded",
    )  # fmt: skip
    line = orders_reply("P", [order]).markdown.splitlines()[1]
    assert line == (
        "- **Create** Block storage — failed · by bob · 2025-03-01 · error: quota exceeded"
    )
    anonymous = make_order(resource_name="", offering_name="", full_name="", username="")
    line = orders_reply("P", [anonymous]).markdown.splitlines()[1]
    assert line == "- **Create** (unnamed resource) — done · 2025-03-01"
    assert orders_reply("P", [make_order()]).markdown.startswith("**P** — last order:")


def test_no_orders() -> None:
    reply = orders_reply("Alpha", [])
    assert reply.markdown == "**Alpha** — no orders yet."
    assert reply.html == "<strong>Alpha</strong> — no orders yet."


# --- members and roles ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "title"),
    [
        ("PROJECT.ADMIN", "Project Admin"),
        ("PROJECT.MANAGER", "Project Manager"),
        ("PROJECT.MEMBER", "Project Member"),
        ("CUSTOMER.OWNER", "Organization Owner"),
        ("CUSTOMER.MANAGER", "Organization Manager"),
        ("CUSTOMER.SUPPORT", "Organization Support"),
        ("CUSTOMER.READER", "Organization Reader"),
        ("PROJECT.gpu-users.MEMBER", "Project Member (gpu-users)"),
        ("OFFERING.MANAGER", "Manager"),
        ("CALL.REVIEWER", "Reviewer"),
        ("PROJECT.DATA_STEWARD", "Data Steward"),
        ("", "Role"),
    ],
)
def test_role_titles(role: str, title: str) -> None:
    assert role_title(role) == title


def test_members_sorted_with_roles_room_state_and_expiry() -> None:
    members = [
        MemberLine("zoe Young", ("PROJECT.MEMBER",), "none"),
        MemberLine("Bob Brown", ("PROJECT.ADMIN", "CUSTOMER.OWNER"), "invite"),
        MemberLine(
            "alice Smith", ("PROJECT.lab.MEMBER",), "join", datetime(2025, 6, 30, 23, tzinfo=UTC)
        ),
        MemberLine("Carol", ("PROJECT.MANAGER",), "leave"),
    ]
    reply = members_reply("Alpha", members)
    lines = reply.markdown.splitlines()
    assert lines[0] == "**Alpha** — Waldur team: 4 people, 1 in the room"
    assert lines[1:] == [
        "- **alice Smith** — Project Member (lab) · in the room · until 2025-06-30",
        "- **Bob Brown** — Project Admin, Organization Owner · invited",
        "- **Carol** — Project Manager · not in the room",
        "- **zoe Young** — Project Member · not in the room",
    ]
    assert "@" not in reply.markdown
    text = assert_html_safe(reply)
    assert "alice Smith — Project Member (lab) · in the room · until 2025-06-30" in text


def test_members_empty_and_capped() -> None:
    assert "no one holds a role" in members_reply("P", []).markdown
    many = [MemberLine(f"user{i:03}", ("PROJECT.MEMBER",), "join") for i in range(60)]
    reply = members_reply("P", many)
    assert reply.markdown.splitlines()[-1] == "- +10 more"
    assert "60 people, 60 in the room" in reply.markdown


# --- notices --------------------------------------------------------------------------------


def test_role_notice() -> None:
    assert role_notice("Alice Smith", "PROJECT.ADMIN", True).markdown == (
        "Alice Smith now has the role Project Admin."
    )
    lost = role_notice("", "PROJECT.x.MEMBER", False)
    assert lost.markdown == "Someone no longer has the role Project Member (x)."
    assert_html_safe(role_notice("<i>x</i>", "PROJECT.<b>.MEMBER", True))


def test_order_notice() -> None:
    done = order_notice(make_order(state="done"), "executing")
    assert done.markdown == (
        "Order for vm1 (Create) is now done (was in progress). Requested by Alice Smith."
    )
    pending = order_notice(make_order(state="pending-provider", type="Terminate"), None)
    assert pending.markdown.startswith(
        "Order for vm1 (Terminate) is now waiting for the provider's approval."
    )
    failed = order_notice(make_order(state="erred", error_message="boom"), "executing")
    assert "has failed (was in progress)" in failed.markdown
    assert failed.markdown.endswith("Error: boom")
    odd = order_notice(make_order(state="paused", type=2), "paused")  # type: ignore[arg-type]
    assert odd.markdown.startswith("Order for vm1 (Update) is now in state paused.")


# --- escaping -------------------------------------------------------------------------------


def hostile_replies() -> list[Reply]:
    evil_resource = make_resource(BACKTICK_NAME)
    evil_order = make_order(
        resource_name=BACKTICK_NAME, full_name=EVIL_PROJECT, state="pending-consumer"
    )
    return [
        status_reply(EVIL_PROJECT, [evil_resource], 1, [evil_order], {"Creating": 1}),
        orders_reply(EVIL_PROJECT, [evil_order]),
        members_reply(EVIL_PROJECT, [MemberLine(BACKTICK_NAME, ("PROJECT.MEMBER",), "join")]),
        order_notice(evil_order, None),
        role_notice(EVIL_PROJECT, "PROJECT.ADMIN", True),
    ]


@pytest.mark.parametrize("index", range(5))
def test_hostile_names_are_inert_in_html(index: int) -> None:
    reply = hostile_replies()[index]
    text = assert_html_safe(reply)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; **x**" in reply.html or BACKTICK_NAME in text
    if index in (0, 1, 4):
        # The name comes back verbatim as text, not as markup.
        assert EVIL_PROJECT in text


@pytest.mark.parametrize("index", range(5))
def test_hostile_names_are_inert_in_markdown(index: int) -> None:
    reply = hostile_replies()[index]
    assert "<script>" not in reply.markdown
    assert "\\<script\\>alert(1)\\</script\\> \\*\\*x\\*\\*" in reply.markdown or (
        "a\\`b" in reply.markdown
    )
    if index < 3:
        assert "a\\`b" in reply.markdown
    # A CommonMark renderer turns the body into our structure only: no raw HTML, no extra bold.
    rendered = render_markdown(reply.markdown)
    tags = set(re.findall(r"<([a-z0-9]+)", rendered))
    assert tags <= ALLOWED_TAGS, tags
    assert "<script" not in rendered
    assert rendered.count("<strong>") == reply.html.count("<strong>")
    assert "<code>" not in rendered


def test_markdown_body_renders_the_same_text_as_the_html() -> None:
    for reply in hostile_replies():
        from_body = "".join(parse_html(render_markdown(reply.markdown)).text)
        from_html = "".join(parse_html(reply.html).text)
        # Block tags add line breaks in one and not the other: compare without whitespace.
        assert re.sub(r"\s", "", from_body) == re.sub(r"\s", "", from_html)


def test_project_header_escaped_in_both() -> None:
    reply = orders_reply(EVIL_PROJECT, [])
    assert reply.markdown == (
        "**\\<script\\>alert(1)\\</script\\> \\*\\*x\\*\\*** — no orders yet."
    )
    assert reply.html == (
        "<strong>&lt;script&gt;alert(1)&lt;/script&gt; **x**</strong> — no orders yet."
    )


def test_escape_markdown_details() -> None:
    assert escape_markdown("vm_01") == "vm_01"
    assert escape_markdown("_x_") == "\\_x\\_"
    assert escape_markdown("[a](http://e)") == "\\[a\\](http://e)"
    assert escape_markdown("a|b~c\\") == "a\\|b\\~c\\\\"


def test_values_are_kept_on_one_line_and_shortened() -> None:
    name = "line1\n# heading\r\n- item\u202e" + "x" * 200
    reply = orders_reply(name, [])
    assert "\n" not in reply.markdown
    assert "\u202e" not in reply.markdown and "\u202e" not in reply.html
    assert "…" in reply.markdown
    assert len(reply.markdown) < 130


def test_role_change_is_one_notice() -> None:
    from waldur_bridge.messages import role_change_notice, role_notices

    notice = role_change_notice("Alice Smith", ["PROJECT.MEMBER"], ["PROJECT.ADMIN"])
    assert notice.markdown == "Alice Smith is now Project Member (was Project Admin)."
    changes = [
        ("Alice Smith", "PROJECT.MEMBER", True),
        ("Alice Smith", "PROJECT.ADMIN", False),
        ("Bob Baker", "PROJECT.MEMBER", True),
        ("Carol Chen", "PROJECT.ADMIN", False),
    ]
    assert [n.markdown for n in role_notices(changes)] == [
        "Alice Smith is now Project Member (was Project Admin).",
        role_notice("Bob Baker", "PROJECT.MEMBER", True).markdown,
        role_notice("Carol Chen", "PROJECT.ADMIN", False).markdown,
    ]
    hostile = role_change_notice("<b>x</b>", ["PROJECT.MEMBER"], [])
    assert "<b>" not in hostile.html


def test_error_reply_says_what_went_wrong() -> None:
    assert "could not reach Waldur" in error_reply("status").markdown
    rejected = error_reply("status", "rejected").markdown
    assert "rejected the bridge's request" in rejected and "reach" not in rejected
    assert "credentials" in error_reply("orders", "refused").markdown
    assert "missing" in error_reply("orders", "incomplete").markdown
