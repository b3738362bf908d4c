"""Live checks of everything the bridge depends on, each ok or failed with a reason and a fix.

Tokens never appear; only `sha256:<12 hex>` fingerprints, the way Waldur's own diagnostics
show them, so a report can be pasted into a ticket.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mautrix.errors import MatrixRequestError, MUnknownToken
from mautrix.types import EventType, RoomID, UserID

from .db import BridgeInstance, Cursor, CustomerSpace, HeldRemoval, Portal
from .db.base import now_ms
from .db.portal import ACTIVE
from .db.upgrade.v00_latest_revision import LATEST_REVISION
from .leadership import (
    HEARTBEAT_FORGET_MS,
    HEARTBEAT_VISIBLE_MS,
    LEADER_KEY,
    describe_instances,
)
from .messages import relative_time
from .startup import ping_bridge
from .sync.changes import WATCHED_EVENTS
from .waldur import WaldurAuthError, WaldurError, WaldurProtocolError

if TYPE_CHECKING:
    from .__main__ import WaldurBridge

CHECK_TIMEOUT = 10.0
# Clocks further apart than this make grant expiry and the events poll misjudge times.
MAX_CLOCK_SKEW = 30.0
# Harmless requests in the rate-limit burst, and how long after a watched event Waldur has to
# deliver its web hook before the hooks count as silent.
RATE_LIMIT_BURST = 12
WEBHOOK_GRACE = 120.0
WEBHOOK_WINDOW = 3600.0
# Removals held longer than this need an admin's decision.
HELD_TOO_LONG = 3600.0


def fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


class CheckFailed(Exception):
    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


async def run_diagnostics(bridge: WaldurBridge) -> list[Check]:
    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("Homeserver reachable", lambda: _homeserver(bridge)),
        ("AS token accepted", lambda: _whoami(bridge)),
        ("Homeserver reaches the bridge", lambda: _ping(bridge)),
        ("Bot can act", lambda: _bot(bridge)),
        ("Waldur reachable, token valid", lambda: _waldur(bridge)),
        ("Waldur web hook registered", lambda: _webhook(bridge)),
        ("Events poll", lambda: _events(bridge)),
        ("Database", lambda: _database(bridge)),
        ("Instances", lambda: describe_instances()),
        ("Rooms", lambda: _rooms()),
        ("Encryption", lambda: _encryption(bridge)),
        ("Clock against Waldur", lambda: _waldur_clock(bridge)),
        ("Clock against the homeserver", lambda: _homeserver_clock(bridge)),
        ("Namespaces match the templates", lambda: _namespaces(bridge)),
        ("Homeserver does not rate-limit the bridge", lambda: _rate_limits(bridge)),
        ("Sweeps", lambda: _sweeps(bridge)),
        ("Web hooks arrive", lambda: _webhook_silence(bridge)),
        ("Waldur generation and visibility", lambda: _waldur_generation(bridge)),
        ("Database round trip", lambda: _database_round_trip(bridge)),
        ("High availability", lambda: _high_availability(bridge)),
        ("Held removals", lambda: _held_removals()),
        ("Spaces consistent", lambda: _spaces(bridge)),
        ("Own Matrix accounts exist", lambda: _own_accounts(bridge)),
        ("Sign-in provider", lambda: _signin(bridge)),
    ]

    async def run(name: str, check: Callable[[], Awaitable[str]]) -> Check:
        try:
            detail = await asyncio.wait_for(check(), CHECK_TIMEOUT)
        except CheckFailed as e:
            return Check(name, False, e.detail, e.fix)
        except TimeoutError:
            return Check(name, False, f"no answer within {CHECK_TIMEOUT:.0f} s", "")
        except Exception as e:
            return Check(name, False, f"{type(e).__name__}: {e}", "")
        return Check(name, True, detail)

    results = await asyncio.gather(*(run(name, check) for name, check in checks))
    # Failures first (in their list order), then the checks that passed.
    return [c for c in results if not c.ok] + [c for c in results if c.ok]


async def _homeserver(bridge: WaldurBridge) -> str:
    try:
        versions = await bridge.az.intent.versions()
    except Exception as e:
        raise CheckFailed(
            f"{bridge.config['homeserver.address']} did not answer /versions ({e})",
            "Check homeserver.address and that the homeserver runs.",
        ) from e
    return f"{bridge.config['homeserver.address']} speaks {spec_versions(versions.versions)}"


def spec_versions(versions: Iterable[Any]) -> str:
    """The homeserver's spec versions as ``version`` and ``diagnose`` both show them."""
    ordered = sorted(versions)
    if not ordered:
        return "no spec version"
    newest = ", ".join(str(v) for v in ordered[-3:])
    return f"{newest} ({len(ordered)} spec versions in all)"


async def _whoami(bridge: WaldurBridge) -> str:
    token = fingerprint(bridge.config["appservice.as_token"])
    try:
        user_id = (await bridge.az.intent.whoami()).user_id
    except MUnknownToken as e:
        raise CheckFailed(
            f"the homeserver does not know the AS token {token}",
            "Install registration.yaml in the homeserver (regenerate it with -g if lost) "
            "and restart the homeserver.",
        ) from e
    except MatrixRequestError as e:
        raise CheckFailed(f"whoami failed: {e.errcode} {e.message}") from e
    return f"acts as {user_id} (AS token {token})"


async def _ping(bridge: WaldurBridge) -> str:
    hs_token = fingerprint(bridge.config["appservice.hs_token"])
    try:
        duration = await ping_bridge(bridge.az.intent, bridge.az.id)
    except MatrixRequestError as e:
        raise CheckFailed(
            f"ping failed: {e.errcode} {e.message}",
            "Check appservice.address (the homeserver must reach it) and the HS token "
            f"{hs_token} in the registration.",
        ) from e
    return f"round trip {duration} ms (HS token {hs_token})"


def _lost_since(bridge: WaldurBridge) -> str:
    """How long the sync loops have been without Waldur, as a suffix ("" when they are not)."""
    access = bridge.waldur_access
    if not access.lost:
        return ""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(access.since))
    return f"; the sync loops lost access ({access.state}) at {since}"


async def _bot(bridge: WaldurBridge) -> str:
    rooms = await bridge.az.intent.get_joined_rooms()
    management = bridge.management.room_id
    extra = f"; management room {management}" if management else "; no management room set"
    return f"{bridge.az.bot_mxid} is in {len(rooms)} room(s){extra}"


async def _waldur(bridge: WaldurBridge) -> str:
    token = fingerprint(bridge.config["waldur.token"])
    started = time.monotonic()
    try:
        me = await bridge.waldur.me()
    except WaldurAuthError as e:
        raise CheckFailed(
            f"Waldur refused the token {token}: {e}{_lost_since(bridge)}",
            "Create a new token for the service account and set token_lifetime to null.",
        ) from e
    except WaldurProtocolError as e:
        # Waldur leaves is_staff and is_active out of a plain account's own record.
        raise CheckFailed(
            f"Waldur's record of the token's account ({token}) lacks fields a staff account "
            f"sees: {e}",
            "Use a staff (or support, read-only) account's token: others see only part of Waldur.",
        ) from e
    except WaldurError as e:
        raise CheckFailed(
            f"{bridge.config['waldur.url']} unreachable: {e}{_lost_since(bridge)}",
            "Check waldur.url and the network path to Waldur.",
        ) from e
    took = (time.monotonic() - started) * 1000
    if not (me.is_staff or me.is_support):
        raise CheckFailed(
            f"token {token} belongs to {me.username}, who is neither staff nor support",
            "Use a staff (or support, read-only) account: others see only part of Waldur.",
        )
    role = "staff" if me.is_staff else "support"
    lifetime = (
        "token does not expire"
        if me.token_lifetime is None
        else f"token expires after {me.token_lifetime} s idle: set token_lifetime to null"
    )
    return f"{bridge.config['waldur.url']} as {me.username} ({role}), {took:.0f} ms; {lifetime}"


async def _webhook(bridge: WaldurBridge) -> str:
    if not bridge.config["waldur.webhook.enabled"]:
        return "web hooks are off; changes arrive by the events poll and sweeps"
    base = bridge.config["waldur.webhook.public_url"] or bridge.config["appservice.address"]
    prefix = base.rstrip("/") + bridge.config["waldur.webhook.path_prefix"].rstrip("/") + "/"
    try:
        hooks = await bridge.waldur.list_hooks()
    except WaldurError as e:
        raise CheckFailed(f"could not list web hooks: {e}") from e
    ours = [h for h in hooks if h.destination_url.startswith(prefix)]
    expected = base.rstrip("/") + bridge.config.webhook_path
    if any(h.destination_url == expected and h.is_active for h in ours):
        received = bridge.webhook.received if bridge.webhook else 0
        return f"registered and active; {received} received since start"
    if ours:
        raise CheckFailed(
            "a web hook points at this bridge but with another secret or inactive",
            "Delete it in Waldur and set waldur.webhook.register: true, or update its URL.",
        )
    raise CheckFailed(
        "no web hook in Waldur points at this bridge",
        "Set waldur.webhook.register: true, or create one (event groups permissions, projects, "
        "users) whose URL is appservice.address + the web hook path.",
    )


async def _events(bridge: WaldurBridge) -> str:
    if not bridge.config["waldur.events.enabled"]:
        return "events poll is off"
    cursor = await Cursor.get("events")
    poller = bridge.sync.poller
    if cursor is None:
        raise CheckFailed("the events poll has not completed yet", "Wait for the first poll.")
    lag = time.time() - cursor.position
    limit = poller.interval * 3 + poller.overlap
    if poller.errors or lag > limit:
        raise CheckFailed(
            f"cursor lags {lag:.0f} s behind now; {poller.errors} failed poll(s) in a row",
            "Check the Waldur checks above; the poll resumes by itself.",
        )
    return f"cursor {lag:.0f} s behind now (overlap {poller.overlap:.0f} s)"


async def _database(bridge: WaldurBridge) -> str:
    version = await bridge.db.fetchval("SELECT version FROM version")
    if version != LATEST_REVISION:
        raise CheckFailed(
            f"schema at version {version}, code expects {LATEST_REVISION}",
            "Restart the bridge so it upgrades the schema.",
        )
    return f"{bridge.db.scheme.value} reachable, schema version {version}"


async def _rooms() -> str:
    counts = await Portal.count_by_state()
    detail = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no portals yet"
    if counts.get("error"):
        raise CheckFailed(detail, "See `rooms --state error` and `retry <project>`.")
    return detail


async def _encryption(bridge: WaldurBridge) -> str:
    config = bridge.config
    if not config["bridge.encryption.allow"]:
        return "off (bridge.encryption.allow is false)"
    e2ee = bridge.matrix.e2ee
    if e2ee is None:
        raise CheckFailed("allowed in the config but not running", "See the start-up log.")
    device = getattr(e2ee.client, "device_id", None) or "unknown"
    default = "new portals encrypted" if config["bridge.encryption.default"] else "opt-in"
    return f"on, bot device {device}; {default}"


def _ago(seconds: float) -> str:
    now = datetime.now(UTC)
    return relative_time(datetime.fromtimestamp(now.timestamp() - seconds, UTC), now)


def _skew(offset: float, other: str, fix: str) -> str:
    if abs(offset) > MAX_CLOCK_SKEW:
        side = "ahead of" if offset > 0 else "behind"
        raise CheckFailed(f"{other}'s clock is {abs(offset):.0f} s {side} this machine's", fix)
    return f"{other}'s clock is within {max(1, round(abs(offset)))} s of this machine's"


async def _waldur_clock(bridge: WaldurBridge) -> str:
    probe = await bridge.waldur.probe("/api/users/me/")
    if probe.server_time is None:
        raise CheckFailed(
            "Waldur's answer has no Date header", "Check the proxy in front of Waldur."
        )
    # The Date header has whole seconds: up to one second of the difference is rounding.
    return _skew(
        probe.server_time - probe.local_time,
        "Waldur",
        "Run NTP (chrony, systemd-timesyncd) on both machines: grant expiry is judged by this "
        "clock and the events poll asks Waldur for events by time.",
    )


async def _homeserver_clock(bridge: WaldurBridge) -> str:
    api = bridge.az.intent.api
    url = bridge.config["homeserver.address"].rstrip("/") + "/_matrix/client/versions"
    sent = time.time()
    async with api.session.get(url) as response:
        await response.read()
        date = response.headers.get("Date")
    local = (sent + time.time()) / 2
    if not date:
        raise CheckFailed(
            "the homeserver's answer has no Date header",
            "Check the reverse proxy in front of the homeserver; it should pass Date on.",
        )
    offset = email.utils.parsedate_to_datetime(date).timestamp() - local
    return _skew(
        offset,
        "The homeserver",
        "Run NTP on both machines: the homeserver stamps events, the bridge compares times.",
    )


def _probe_localpart() -> str:
    return "diagnose" + secrets.token_hex(4)


async def _namespaces(bridge: WaldurBridge) -> str:
    """The homeserver lets the bridge act as a puppet and hold an alias built from the
    configured templates: what the registration it loaded reserves, asked of it directly."""
    config = bridge.config
    domain = config["homeserver.domain"]
    puppet = f"@{config['bridge.username_template'].format(userid=_probe_localpart())}:{domain}"
    try:
        await bridge.az.intent.user(UserID(puppet)).whoami()
    except MatrixRequestError as e:
        # Synapse: "has not registered this user" means the namespace matches.
        if "cannot masquerade" in (e.message or "") or e.errcode == "M_EXCLUSIVE":
            raise CheckFailed(
                f"the homeserver does not let the bridge act as {puppet}: {e.message}",
                "Regenerate registration.yaml with -g after changing "
                "bridge.username_template, install it and restart the homeserver.",
            ) from e
        if "not registered" not in (e.message or ""):
            raise CheckFailed(
                f"could not tell: {e.errcode} {e.message}",
                "Compare the namespaces of the registration the homeserver loaded with "
                "bridge.username_template and bridge.alias_template.",
            ) from e
    rooms = [bridge.management.room_id] if bridge.management.room_id else []
    rooms = rooms or await bridge.az.intent.get_joined_rooms()
    if not rooms:
        return f"puppets ({puppet.split(':')[0]}…) in the namespace; no room to test an alias with"
    localpart = config["bridge.alias_template"].format(groupname=_probe_localpart())
    alias = f"#{localpart}:{domain}"
    try:
        # mautrix takes the localpart and adds the server name.
        await bridge.az.intent.add_room_alias(RoomID(rooms[0]), localpart)
    except MatrixRequestError as e:
        raise CheckFailed(
            f"the homeserver refused the alias {alias}: {e.message}",
            "Regenerate registration.yaml with -g after changing bridge.alias_template, "
            "install it and restart the homeserver.",
        ) from e
    await bridge.az.intent.remove_room_alias(localpart)
    return "puppets and room aliases from the templates are in the registration's namespaces"


async def _rate_limits(bridge: WaldurBridge) -> str:
    """A burst of profile reads of the bot (rate-limited per user by Synapse unless the
    registration says ``rate_limited: false``)."""
    intent = bridge.az.intent
    started = time.monotonic()
    results = await asyncio.gather(
        *(intent.get_profile(intent.mxid) for _ in range(RATE_LIMIT_BURST)),
        return_exceptions=True,
    )
    limited = [r for r in results if isinstance(r, MatrixRequestError) and r.http_status == 429]
    if limited:
        raise CheckFailed(
            f"{len(limited)} of {RATE_LIMIT_BURST} quick requests were refused with 429",
            "Set rate_limited: false in registration.yaml (the bridge writes it so with -g), "
            "install it and restart the homeserver.",
        )
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise CheckFailed(
            f"{len(failed)} of {RATE_LIMIT_BURST} requests failed: {failed[0]}",
            "See `Homeserver reachable` and `AS token accepted` above.",
        )
    took = (time.monotonic() - started) * 1000
    return f"{RATE_LIMIT_BURST} quick requests answered in {took:.0f} ms, none refused"


async def _sweeps(bridge: WaldurBridge) -> str:
    interval = float(bridge.config["waldur.sweep_interval"])
    last = bridge.sync.last_sweep
    if not last:
        raise CheckFailed(
            "no sweep has succeeded since the bridge started",
            "See the Waldur checks; the bridge tries again by itself.",
        )
    age = time.time() - last["finished"]
    read = float(last["read_seconds"])
    if age > 2 * interval + 60:
        raise CheckFailed(
            f"the last good sweep ended {_ago(age)}; one is due every {interval:.0f} s",
            "See the Waldur checks and the log: sweeps keep failing.",
        )
    if read > interval / 2:
        raise CheckFailed(
            f"the last sweep took {read:.0f} s to read Waldur, over half the interval "
            f"({interval:.0f} s)",
            "Raise waldur.sweep_interval, or waldur.page_size to need fewer requests.",
        )
    return (
        f"last good sweep {_ago(age)} read {last['projects']} projects in {read:.1f} s "
        f"(every {interval:.0f} s)"
    )


async def _webhook_silence(bridge: WaldurBridge) -> str:
    """Waldur logged events the bridge watches, and no web hook came after them."""
    receiver = bridge.webhook
    if not bridge.config["waldur.webhook.enabled"] or receiver is None:
        return "web hooks are off"
    # At most the last hour of events: silent hooks show there, and a week without any is not
    # read page by page.
    since = max(receiver.last_received_at or receiver.started_at, time.time() - WEBHOOK_WINDOW)
    until = time.time() - WEBHOOK_GRACE
    if until <= since:
        return _webhook_summary(receiver)
    events = await bridge.waldur.list_events(since, WATCHED_EVENTS)
    missed = [e for e in events if since < e.created.timestamp() <= until]
    if missed:
        last = (
            "no web hook yet"
            if receiver.last_received_at is None
            else (f"the last web hook came {_ago(time.time() - receiver.last_received_at)}")
        )
        raise CheckFailed(
            f"Waldur logged {len(missed)} watched event(s) (first: {missed[0].event_type}) "
            f"since then; {last}",
            "Check the web hook in Waldur (`Waldur web hook registered` above) and that "
            "Waldur reaches the bridge's address; the events poll and sweeps cover meanwhile.",
        )
    return _webhook_summary(receiver)


def _webhook_summary(receiver: Any) -> str:
    if receiver.last_received_at is None:
        return "none received yet, and Waldur logged no watched event to send"
    return (
        f"{receiver.received} received, the last {_ago(time.time() - receiver.last_received_at)}"
    )


async def _waldur_generation(bridge: WaldurBridge) -> str:
    """7.x or current from the shape of a grant item; how many users the token sees."""
    client = bridge.waldur
    # Read raw: Waldur leaves fields out of a non-staff account's own record.
    me, grants, users = await asyncio.gather(
        client.probe("/api/users/me/"),
        client.probe("/api/user-permissions/"),
        client.probe("/api/users/"),
    )
    account = me.items[0] if me.items else {}
    if not grants.items:
        generation = "unknown (no grants to look at)"
    elif "is_active" in grants.items[0]:
        generation = "current (grants say is_active)"
    else:
        generation = "7.x (revoked grants listed as expired)"
    seen = "?" if users.count is None else str(users.count)
    if not (account.get("is_staff") or account.get("is_support")):
        raise CheckFailed(
            f"Waldur {generation}; the token's account {account.get('username', '?')} sees "
            f"{seen} user(s), "
            "only those it shares a project with: reads stay incomplete and nobody is removed",
            "Give the bridge a staff (or support) account's token.",
        )
    return f"Waldur {generation}; staff view: all {seen} user(s)"


async def _database_round_trip(bridge: WaldurBridge) -> str:
    """A row written, read back and deleted, the way the events poll keeps its cursor."""
    started = time.monotonic()
    name = f"diagnose-{secrets.token_hex(6)}"
    try:
        await Cursor(name, 1.0, [name]).save()
        read = await Cursor.get(name)
    finally:
        await bridge.db.execute("DELETE FROM waldur_cursor WHERE name=$1", name)
    took = (time.monotonic() - started) * 1000
    if read is None or read.seen != [name]:
        raise CheckFailed("a row written was not read back", "Check the database server.")
    if took > 1000:
        raise CheckFailed(
            f"a write and read back took {took:.0f} ms", "Check the database server's load."
        )
    return f"write, read back and delete in {took:.0f} ms"


async def _high_availability(bridge: WaldurBridge) -> str:
    """This instance acts (holds the PostgreSQL lock, or the SQLite file), and every standby
    that sent heartbeats still does."""
    leadership = bridge.leadership
    if not leadership.shared:
        holder = "single instance (SQLite): this one holds the database"
        if not leadership.active:
            raise CheckFailed("this instance is not active", "See the start-up log.")
    else:
        high, low = (LEADER_KEY >> 32) & 0xFFFFFFFF, LEADER_KEY & 0xFFFFFFFF
        pid = await bridge.db.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype='advisory' AND granted "
            "AND classid::bigint=$1 AND objid::bigint=$2",
            high,
            low,
        )
        ours = leadership.lock_backend_pid()
        if not leadership.active or pid is None or pid != ours:
            raise CheckFailed(
                f"this instance does not hold the lock (holder: PostgreSQL PID {pid})",
                "See the start-up log; a standby takes over when the active instance goes.",
            )
        holder = f"this instance holds the lock (PostgreSQL PID {pid})"
    now = now_ms()
    rows = await BridgeInstance.seen_within(HEARTBEAT_FORGET_MS)
    standby = [r for r in rows if r.role != "active"]
    lost = [r for r in standby if now - r.heartbeat_at > HEARTBEAT_VISIBLE_MS]
    if lost:
        names = ", ".join(
            f"{r.host} (PID {r.pid}, last seen {_ago((now - r.heartbeat_at) / 1000)})"
            for r in lost
        )
        raise CheckFailed(
            f"{holder}; standby gone: {names}",
            "Restart the standby: without it nothing takes over when this instance stops.",
        )
    waiting = ", ".join(f"{r.host} (PID {r.pid})" for r in standby) or "none"
    return f"{holder}; standby: {waiting}"


async def _held_removals() -> str:
    held = await HeldRemoval.all()
    if not held:
        return "none waiting"
    oldest = min(h.created_at for h in held)
    age = (now_ms() - oldest) / 1000
    rooms = len({h.project_uuid for h in held})
    detail = f"{len(held)} waiting in {rooms} room(s), the oldest since {_ago(age)}"
    if age > HELD_TOO_LONG:
        raise CheckFailed(detail, "See `held`, then `approve` or `reject` each room.")
    return detail


async def _spaces(bridge: WaldurBridge) -> str:
    """Every active room is a child of its organization's space, as the homeserver has it."""
    if not bridge.config["bridge.spaces.enabled"]:
        return "spaces are off"
    spaces = {s.customer_uuid: s for s in await CustomerSpace.all() if s.room_id}
    portals = [p for p in await Portal.all() if p.room_id and p.state == ACTIVE]
    missing: list[str] = []
    checked = 0
    for customer_uuid, space in spaces.items():
        rooms = [p for p in portals if p.customer_uuid == customer_uuid]
        if not rooms:
            continue
        state = await bridge.az.intent.get_state(RoomID(space.room_id))
        children = {
            str(e.state_key)
            for e in state
            if e.type == EventType.SPACE_CHILD and e.content.serialize().get("via")
        }
        checked += len(rooms)
        missing += [f"{p.name} ({space.name})" for p in rooms if p.room_id not in children]
    without = [p for p in portals if p.customer_uuid not in spaces]
    if missing:
        raise CheckFailed(
            f"{len(missing)} room(s) missing from their organization's space: "
            + ", ".join(missing[:5]),
            "Run `sync <organization>` to put them back.",
        )
    extra = f"; {len(without)} room(s) of organizations without a space yet" if without else ""
    return f"{checked} room(s) in {len(spaces)} space(s) all listed as children{extra}"


async def _own_accounts(bridge: WaldurBridge) -> str:
    """Own accounts (template mode, links) the bridge found missing, asked about again.

    A few missing are people who have not logged in yet; half or more suggest a template that
    maps Waldur users to the wrong Matrix IDs.
    """
    accounts = bridge.sync.accounts
    mode = bridge.config["bridge.user_mapping.mode"]
    known = accounts.missing
    if known:
        # Asked again now (the sweeps would, within one interval), not read from memory.
        accounts.forget_missing()
        still = sorted(await accounts.missing_of(known))
    else:
        still = []
    asked = accounts.asked
    if not asked:
        return (
            f"{mode} mode: no own account to invite yet"
            if mode == "template"
            else ("puppets only (no own accounts linked)")
        )
    if not still:
        return f"all {asked} own account(s) the bridge asked about exist"
    named = ", ".join(still[:10]) + (f" and {len(still) - 10} more" if len(still) > 10 else "")
    detail = f"{len(still)} of {asked} own account(s) do not exist yet: {named}"
    if 2 * len(still) >= asked:
        raise CheckFailed(
            detail,
            "Check bridge.user_mapping.template against the IDs people really have; accounts "
            "that are only not created yet are invited after their first login.",
        )
    return detail + " (invited after their first login)"


def format_report(checks: list[Check]) -> str:
    ok = sum(1 for c in checks if c.ok)
    lines = [f"**Diagnostics: {ok} of {len(checks)} checks ok**", ""]
    for check in checks:
        mark = "✅" if check.ok else "❌"
        line = f"- {mark} **{check.name}**: {check.detail}"
        if check.fix:
            line += f" — *Fix:* {check.fix}"
        lines.append(line)
    return "\n".join(lines)


async def _signin(bridge: WaldurBridge) -> str:
    """The issuer answers at its public URL with itself as issuer, and the signing key is
    published there (what the homeserver fetches at each sign-in)."""
    import aiohttp

    service = bridge.signin
    if service is None:
        return "off (bridge.signin.enabled is false)"
    issuer = service.settings.issuer
    ring = await service.start()
    url = f"{issuer}/.well-known/openid-configuration"
    fix = (
        "bridge.signin.public_url must be the URL at which browsers and the homeserver reach "
        "the bridge's web server (appservice.port), through your reverse proxy if there is one."
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url, allow_redirects=False) as resp:
                discovery = await resp.json(content_type=None) if resp.status == 200 else None
                status = resp.status
            jwks_url = discovery.get("jwks_uri") if isinstance(discovery, dict) else None
            keys: Any = None
            if isinstance(jwks_url, str):
                async with http.get(jwks_url, allow_redirects=False) as resp:
                    keys = await resp.json(content_type=None) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise CheckFailed(f"{url} cannot be fetched: {e}", fix) from None
    if not isinstance(discovery, dict) or discovery.get("issuer") != issuer:
        said = f"HTTP {status}" if discovery is None else f"issuer {discovery.get('issuer')!r}"
        raise CheckFailed(f"{url} answered {said}, expected issuer {issuer}", fix)
    kid = ring.signing.kid
    published = [k.get("kid") for k in (keys or {}).get("keys", []) if isinstance(k, dict)]
    if kid not in published:
        raise CheckFailed(
            f"the signing key {kid} is not in {jwks_url}",
            "Check that the reverse proxy passes /oidc/ to this bridge instance.",
        )
    return f"issuer {issuer}, RS256 key {kid} published ({len(published)} key(s))"
