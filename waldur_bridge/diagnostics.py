"""Live checks of everything the bridge depends on, each ok or failed with a reason and a fix.

Tokens never appear; only `sha256:<12 hex>` fingerprints, the way Waldur's own diagnostics
show them, so a report can be pasted into a ticket.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mautrix.errors import MatrixRequestError, MUnknownToken

from .db import Cursor, Portal
from .db.upgrade.v00_latest_revision import LATEST_REVISION
from .leadership import describe_instances
from .startup import ping_bridge
from .waldur import WaldurAuthError, WaldurError

if TYPE_CHECKING:
    from .__main__ import WaldurBridge

CHECK_TIMEOUT = 10.0


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

    return list(await asyncio.gather(*(run(name, check) for name, check in checks)))


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
