"""The provisioning API: a Waldur user logs in as their own puppet with their Waldur token.

Mounted on the appservice's HTTP server at ``bridge.provisioning.prefix``:

``POST <prefix>/v1/login``
    ``Authorization: Token <waldur token>`` (or ``Bearer``), optional JSON body
    ``{"device_name": "..."}``. The token is checked with Waldur's ``/api/users/me/`` *as that
    user* (never with the bridge's staff token); the user's puppet is created if needed, and the
    appservice logs in as it, which makes a new device. Answers 200 ``{"homeserver", "user_id",
    "access_token", "device_id"}``.
``GET <prefix>/v1/whoami``
    The same token check; answers ``{"waldur_user_uuid", "user_id", "mapping", "can_log_in"}``
    without creating anything.
``POST <prefix>/v1/logout``
    ``Authorization: Bearer <access token from a login>``: ends that session (its device), if
    the token belongs to a puppet of this bridge.

After each login the puppet's surplus and idle devices are pruned (``max_devices``,
``device_max_idle_days``). The answer's ``homeserver`` is ``bridge.provisioning.homeserver_url``
when set (a public URL), else ``homeserver.address``. Browsers may call the API from the origins
in ``cors_origins``.

Waldur's own Matrix app handed out deterministic passwords and stored tokens in plain text; here
nothing secret is stored or logged: the Waldur token lives only for the request, and the issued
access token only in the answer (``Cache-Control: no-store``). Every error is JSON
``{"errcode", "error"}``; unexpected failures answer 500 with a reference that is also logged.

Rate limits (in memory, sliding windows of an hour): ``rate_limit_per_hour`` logins per Waldur
user, and as many failed authentications per client address (an IPv6 /64 counts as one address)
before that address is refused outright, so tokens cannot be guessed at Waldur's expense. The
address is the TCP peer, or behind one of ``trusted_proxies`` the address in ``X-Forwarded-For``
(see ``proxy.py``); from anyone else that header is ignored.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from mautrix.api import Method, Path
from mautrix.errors import MatrixConnectionError, MatrixRequestError

from .. import identity
from ..db import Puppet as DBPuppet, User as DBUser
from ..puppet import Puppet
from ..waldur import (
    WaldurAuthError,
    WaldurClient,
    WaldurError,
    WaldurUnavailable,
    normalize_uuid,
)
from .devices import DeviceHygiene
from .proxy import (
    PrivateSession,
    client_key,
    cors_middleware,
    parse_networks,
    request_client,
)

if TYPE_CHECKING:
    from ..__main__ import WaldurBridge

__all__ = [
    "ProvisioningAPI",
    "ProvisioningError",
    "SlidingWindowLimiter",
    "client_key",
    "mount_provisioning",
    "parse_authorization",
]

log = logging.getLogger("waldur.web.provisioning")

WINDOW = 3600.0
MAX_BODY = 4096
MAX_DEVICE_NAME = 100  # Synapse's limit for device display names
DEFAULT_DEVICE_NAME = "Waldur"
# DRF tokens are 40 hex characters; personal access tokens may differ. Anything printable without
# spaces is passed on to Waldur, within a sane length.
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,512}")
_SCHEMES = frozenset({"token", "bearer"})


class ProvisioningError(Exception):
    """An answer other than success: status, a Matrix-style errcode and a message for people."""

    def __init__(
        self,
        status: int,
        errcode: str,
        message: str,
        *,
        retry_after: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode
        self.message = message
        self.retry_after = retry_after
        self.extra = dict(extra or {})

    def response(self) -> web.Response:
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.message, **self.extra}
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            seconds = max(1, math.ceil(self.retry_after))
            headers["Retry-After"] = str(seconds)
            body["retry_after_ms"] = seconds * 1000
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Token realm="waldur"'
        return web.json_response(body, status=self.status, headers=headers)


# region pieces without the bridge (unit-tested)


@dataclass(frozen=True, slots=True)
class WaldurUser:
    """The caller as ``/api/users/me/`` shows them to themselves.

    Not ``waldur.User``: Waldur hides ``is_active`` (and ``is_staff``) from ordinary users, and
    accepts tokens of active users only, so an accepted token with no ``is_active`` is active.
    """

    uuid: str
    username: str
    full_name: str
    email: str
    is_active: bool

    @classmethod
    def from_me(cls, data: Any) -> WaldurUser:
        # The answer holds the caller's token: messages name fields, never the data.
        if not isinstance(data, dict):
            raise ValueError("/api/users/me/ did not answer a JSON object")
        try:
            uuid = normalize_uuid(data.get("uuid"))  # type: ignore[arg-type]
        except ValueError:
            raise ValueError("/api/users/me/ has no valid uuid") from None
        username = data.get("username")
        if not isinstance(username, str) or not username:
            raise ValueError("/api/users/me/ has no username")
        texts = {k: data.get(k) or "" for k in ("full_name", "email")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise ValueError("/api/users/me/ has a full_name or email that is not a string")
        return cls(
            uuid=uuid,
            username=username,
            full_name=texts["full_name"],
            email=texts["email"],
            is_active=data.get("is_active") is not False,
        )


class SlidingWindowLimiter:
    """At most ``limit`` hits per key in any ``window`` seconds.

    Memory stays bounded: keys whose hits have all expired are dropped once more than
    ``max_keys`` are held, and if that is not enough the oldest keys go first (a flood of fresh
    keys loosens the limit for old ones rather than exhausting memory).
    """

    def __init__(
        self,
        limit: int,
        window: float = WINDOW,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be at least 1 and window positive")
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def __len__(self) -> int:
        return len(self._hits)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def retry_after(self, key: str) -> float:
        """0 if one more hit is allowed now, else the seconds until it will be."""
        now = self.clock()
        hits = self._recent(key, now)
        if hits is None or len(hits) < self.limit:
            return 0.0
        return max(hits[-self.limit] + self.window - now, 0.001)

    def hit(self, key: str) -> None:
        now = self.clock()
        hits = self._recent(key, now)
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._evict(now)
            hits = self._hits[key] = deque()
        hits.append(now)
        # Only the last `limit` hits decide anything.
        while len(hits) > self.limit:
            hits.popleft()

    def acquire(self, key: str) -> float:
        """Take a hit if allowed (returns 0), else return the seconds to wait and take none."""
        wait = self.retry_after(key)
        if wait == 0:
            self.hit(key)
        return wait

    def _evict(self, now: float) -> None:
        for key in list(self._hits):
            self._recent(key, now)
        while len(self._hits) >= self.max_keys:
            del self._hits[next(iter(self._hits))]


def parse_authorization(header: str | None) -> str:
    """The token from ``Token <t>`` or ``Bearer <t>``; raises ProvisioningError otherwise.

    Error messages never repeat the header: it may hold a token.
    """
    if header is None or not header.strip():
        raise ProvisioningError(
            401,
            "M_MISSING_TOKEN",
            "Send your Waldur API token in the Authorization header: 'Token <token>'.",
        )
    parts = header.split()  # as DRF: any whitespace between scheme and token
    if len(parts) != 2 or parts[0].lower() not in _SCHEMES:
        raise ProvisioningError(
            400,
            "M_INVALID_PARAM",
            "The Authorization header must be 'Token <waldur token>' or 'Bearer <waldur token>'.",
        )
    token = parts[1]
    if not _TOKEN_RE.fullmatch(token):
        raise ProvisioningError(
            400, "M_INVALID_PARAM", "The Waldur token in the Authorization header is malformed."
        )
    return token


def parse_device_name(body: bytes) -> str:
    """The device name from the optional JSON body."""
    if not body.strip():
        return DEFAULT_DEVICE_NAME
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProvisioningError(400, "M_NOT_JSON", "The body must be JSON (or empty).") from None
    if not isinstance(data, dict):
        raise ProvisioningError(400, "M_BAD_JSON", "The body must be a JSON object.")
    name = data.get("device_name")
    if name is None:
        return DEFAULT_DEVICE_NAME
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_DEVICE_NAME:
        raise ProvisioningError(
            400,
            "M_INVALID_PARAM",
            f"device_name must be a non-empty string of at most {MAX_DEVICE_NAME} characters.",
        )
    return name.strip()


MAS_HINT = (
    "The homeserver delegates logins to Matrix Authentication Service, which refuses "
    "appservice logins (M_APPSERVICE_LOGIN_UNSUPPORTED): use bridge.user_mapping.mode: template "
    "so people use their own Matrix accounts, or turn the provisioning API off "
    "(bridge.provisioning.enabled: false)"
)


def login_refusal(status: int, errcode: str | None) -> ProvisioningError:
    """What a caller is told when the homeserver refuses ``m.login.application_service``."""
    if errcode == "M_APPSERVICE_LOGIN_UNSUPPORTED":
        return ProvisioningError(
            501,
            "WB_LOGIN_UNSUPPORTED",
            "This homeserver uses Matrix Authentication Service, which does not allow the "
            "bridge to log people in. Ask the operator to map Waldur users to their own Matrix "
            "accounts (template mapping mode) and log in to your own account instead.",
        )
    return ProvisioningError(502, "WB_HOMESERVER_FAILED", "The homeserver refused the login.")


_STATUS_ERRCODES = {
    400: "M_BAD_JSON",
    404: "M_UNRECOGNIZED",
    405: "M_UNRECOGNIZED",
    413: "M_TOO_LARGE",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every answer JSON and ``no-store``; unexpected errors become 500 with a logged reference."""
    try:
        response = await handler(request)
    except ProvisioningError as e:
        response = e.response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        errcode = _STATUS_ERRCODES.get(e.status, "M_UNKNOWN")
        response = web.json_response({"errcode": errcode, "error": e.reason}, status=e.status)
        if "Allow" in e.headers:
            response.headers["Allow"] = e.headers["Allow"]
    except Exception:
        reference = secrets.token_hex(6)
        # The traceback goes to the log only. Request headers are never logged (they hold the
        # token); the path and method are enough to find the request.
        log.exception(
            "Provisioning request %s %s failed (reference %s)",
            request.method,
            request.path,
            reference,
        )
        response = web.json_response(
            {
                "errcode": "M_UNKNOWN",
                "error": f"Internal error (reference {reference} in the bridge's log).",
                "reference": reference,
            },
            status=500,
        )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


# endregion
# region the API


class ProvisioningAPI:
    def __init__(self, bridge: WaldurBridge, *, clock: Callable[[], float] = time.monotonic):
        self.bridge = bridge
        config = bridge.config
        limit = int(config["bridge.provisioning.rate_limit_per_hour"])
        if limit < 1:
            log.warning("bridge.provisioning.rate_limit_per_hour is %d; using 1", limit)
            limit = 1
        self.logins = SlidingWindowLimiter(limit, WINDOW, clock=clock)
        self.failures = SlidingWindowLimiter(limit, WINDOW, clock=clock)
        self.homeserver_address = str(config["homeserver.address"]).rstrip("/")
        # What clients are told to use: the public URL, when the bridge reaches the homeserver
        # by an internal address.
        self.homeserver = str(
            config["bridge.provisioning.homeserver_url"] or self.homeserver_address
        ).rstrip("/")
        self.trusted_proxies = parse_networks(config["bridge.provisioning.trusted_proxies"] or ())
        self.devices = DeviceHygiene(
            # The intent exists only once the appservice runs: looked up at each prune.
            lambda mxid: bridge.az.intent.user(mxid),
            max_devices=config["bridge.provisioning.max_devices"],
            max_idle_days=config["bridge.provisioning.device_max_idle_days"],
        )
        self.mode = config["bridge.user_mapping.mode"]
        self.mxid_template = config["bridge.user_mapping.template"]
        self.displayname_template = config["bridge.displayname_template"]
        self._session = PrivateSession()
        origins = config["bridge.provisioning.cors_origins"] or ()
        # CORS outermost, so error answers carry its headers too (a browser shows them).
        self.app = web.Application(middlewares=[cors_middleware(origins), error_middleware])
        self.app.router.add_post("/v1/login", self.login)
        self.app.router.add_post("/v1/logout", self.logout)
        self.app.router.add_get("/v1/whoami", self.whoami)
        self.app.on_cleanup.append(self._close)

    async def _close(self, _app: web.Application) -> None:
        await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        return self._session.get()

    # region handlers

    def _client(self, request: web.Request) -> str:
        return request_client(request, self.trusted_proxies)

    async def login(self, request: web.Request) -> web.Response:
        client = self._client(request)
        token = self._token(request, client)
        device_name = parse_device_name(await self._read_body(request))
        me = await self._waldur_user(token, client)
        mapping, own_mxid = await self._mapping(me)
        if mapping != "puppet":
            how = (
                "an administrator linked your Waldur account to it"
                if mapping == "linked"
                else "this deployment maps Waldur users to their own Matrix accounts"
            )
            raise ProvisioningError(
                409,
                "WB_NOT_PUPPETED",
                f"There is no bridge account to log in as: {how}. Log in to your own Matrix "
                "account with your homeserver's usual login instead.",
                extra={"user_id": own_mxid, "mapping": mapping},
            )
        wait = self.logins.acquire(me.uuid)
        if wait:
            log.info("Provisioning login of Waldur user %s refused: rate limit", me.uuid)
            raise ProvisioningError(
                429, "M_LIMIT_EXCEEDED", "Too many logins for this user.", retry_after=wait
            )
        displayname = self._displayname(me)
        puppet = await Puppet.get_for_waldur_user(me.uuid, me.username, displayname)
        try:
            await puppet.ensure_ready(displayname)
        except (MatrixRequestError, MatrixConnectionError) as e:
            log.warning("Could not prepare puppet %s for a login: %s", puppet.mxid, e)
            raise ProvisioningError(
                502, "WB_HOMESERVER_FAILED", "The homeserver failed to set up your account."
            ) from None
        session = await self._appservice_login(puppet.mxid, device_name)
        log.info(
            "Waldur user %s logged in as %s from %s (new device %s)",
            me.uuid,
            puppet.mxid,
            client,
            session["device_id"],
        )
        await self.devices.prune(puppet.mxid, keep=session["device_id"])
        await self.bridge.sync.spaces.join_invited(puppet, "logged in")
        return web.json_response({"homeserver": self.homeserver, **session})

    async def logout(self, request: web.Request) -> web.Response:
        """End one session that a login gave out: ``Authorization: Bearer <its access token>``."""
        client = self._client(request)
        wait = self.failures.retry_after(client)
        if wait:
            raise ProvisioningError(
                429,
                "M_LIMIT_EXCEEDED",
                "Too many failed attempts from this address.",
                retry_after=wait,
            )
        header = request.headers.get("Authorization", "")
        scheme, _, access_token = header.partition(" ")
        access_token = access_token.strip()
        if scheme.lower() != "bearer" or not _TOKEN_RE.fullmatch(access_token):
            self.failures.hit(client)
            raise ProvisioningError(
                401,
                "M_MISSING_TOKEN",
                "Send the Matrix access token to end as 'Authorization: Bearer <token>'.",
            )
        whoami = await self._as_session_holder("GET", "/account/whoami", access_token, client)
        user_id, device_id = whoami.get("user_id"), whoami.get("device_id")
        if not isinstance(user_id, str) or await DBPuppet.get_by_mxid(user_id) is None:
            # Someone's own account: not ours to log out.
            raise ProvisioningError(
                403, "WB_NOT_PUPPETED", "That token is not of an account this bridge manages."
            )
        await self._as_session_holder("POST", "/logout", access_token, client)
        log.info("Logged out device %s of %s (provisioning logout)", device_id, user_id)
        return web.json_response({"user_id": user_id, "device_id": device_id, "logged_out": True})

    async def _as_session_holder(
        self, method: str, path: str, access_token: str, client: str
    ) -> dict[str, Any]:
        """A client-server call made with the caller's own access token (never logged)."""
        url = f"{self.homeserver_address}/_matrix/client/v3{path}"
        headers = {"Authorization": f"Bearer {access_token}"}
        try:
            async with self._http().request(
                method, url, headers=headers, json={} if method == "POST" else None
            ) as resp:
                data = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("Provisioning logout: the homeserver did not answer %s: %s", path, e)
            raise ProvisioningError(
                503, "WB_HOMESERVER_FAILED", "The homeserver cannot be reached; try again later."
            ) from None
        if status == 401:
            self.failures.hit(client)
            raise ProvisioningError(
                401, "M_UNKNOWN_TOKEN", "The homeserver does not know that access token."
            )
        if status != 200 or not isinstance(data, dict):
            log.warning(
                "Provisioning logout: the homeserver answered %s with HTTP %s", path, status
            )
            raise ProvisioningError(
                502, "WB_HOMESERVER_FAILED", "The homeserver refused the logout."
            )
        return data

    async def whoami(self, request: web.Request) -> web.Response:
        client = self._client(request)
        token = self._token(request, client)
        me = await self._waldur_user(token, client)
        mapping, mxid = await self._mapping(me)
        return web.json_response(
            {
                "waldur_user_uuid": me.uuid,
                "waldur_username": me.username,
                "user_id": mxid,
                "mapping": mapping,
                "can_log_in": mapping == "puppet",
            }
        )

    # endregion
    # region steps

    def _token(self, request: web.Request, client: str) -> str:
        wait = self.failures.retry_after(client)
        if wait:
            log.info("Provisioning request from %s refused: too many failed attempts", client)
            raise ProvisioningError(
                429,
                "M_LIMIT_EXCEEDED",
                "Too many failed attempts from this address.",
                retry_after=wait,
            )
        try:
            return parse_authorization(request.headers.get("Authorization"))
        except ProvisioningError:
            self.failures.hit(client)
            raise

    @staticmethod
    async def _read_body(request: web.Request) -> bytes:
        too_large = ProvisioningError(413, "M_TOO_LARGE", f"The body exceeds {MAX_BODY} bytes.")
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise too_large
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        if len(body) > MAX_BODY:
            raise too_large
        return body

    async def _waldur_user(self, token: str, client: str) -> WaldurUser:
        """Who the token belongs to, asked of Waldur with that very token."""
        cfg = self.bridge.config
        waldur = WaldurClient(
            cfg["waldur.url"],
            token,
            timeout=cfg["waldur.timeout"],
            # Someone is waiting: one quick retry at most, then tell them to come back.
            retry_attempts=min(int(cfg["waldur.retry.attempts"]), 1),
            backoff_initial=min(float(cfg["waldur.retry.backoff_initial"]), 0.5),
            backoff_max=min(float(cfg["waldur.retry.backoff_max"]), 2.0),
            session=self._http(),
            user_agent=f"{self.bridge.name}/{self.bridge.version}",
        )
        try:
            me = WaldurUser.from_me(await waldur.get_json("/api/users/me/"))
        except WaldurAuthError as e:
            self.failures.hit(client)
            if "inactive or deleted" in e.message:
                log.info("Provisioning: refused a token of an inactive Waldur user (%s)", client)
                raise ProvisioningError(
                    403, "M_USER_DEACTIVATED", "Your Waldur account is not active."
                ) from None
            log.info("Provisioning: Waldur rejected a token from %s", client)
            raise ProvisioningError(
                401,
                "M_UNKNOWN_TOKEN",
                "Waldur rejected the token (wrong, revoked or expired); get a fresh one.",
            ) from None
        except WaldurUnavailable as e:
            log.warning("Provisioning: cannot check a token, Waldur is unavailable: %s", e)
            raise ProvisioningError(
                503,
                "WB_WALDUR_UNAVAILABLE",
                "Waldur cannot be reached to check the token; try again later.",
                retry_after=30,
            ) from None
        except (WaldurError, ValueError) as e:
            log.warning("Provisioning: Waldur answered /api/users/me/ unexpectedly: %s", e)
            raise ProvisioningError(
                502, "WB_WALDUR_FAILED", "Waldur gave an unexpected answer; try again later."
            ) from None
        if not me.is_active:
            self.failures.hit(client)
            raise ProvisioningError(
                403, "M_USER_DEACTIVATED", "Your Waldur account is not active."
            )
        return me

    async def _mapping(self, me: WaldurUser) -> tuple[str, str | None]:
        """How the user appears in Matrix: ("linked" | "template" | "puppet", their ID or None).

        The same precedence as the sync: an admin's explicit link wins over the mode.
        """
        linked = await DBUser.get_by_waldur_user(me.uuid)
        if linked is not None:
            return "linked", linked.mxid
        if self.mode == "template":
            mxid = identity.template_mxid(
                self.mxid_template, username=me.username, user_uuid=me.uuid, email=me.email
            )
            return "template", mxid
        puppet = await DBPuppet.get_by_waldur_user(me.uuid)
        return "puppet", puppet.mxid if puppet is not None else None

    def _displayname(self, me: WaldurUser) -> str:
        # As the sync names puppets, so a login never renames one back and forth.
        name = self.displayname_template.format(
            full_name=me.full_name or me.username, username=me.username, email=me.email
        )
        return name.strip() or me.username

    async def _appservice_login(self, mxid: str, device_name: str) -> dict[str, str]:
        """A new device and access token for a puppet (``m.login.application_service``)."""
        api = self.bridge.az.intent.api
        try:
            data = await api.request(
                Method.POST,
                Path.v3.login,
                {
                    "type": "m.login.application_service",
                    "identifier": {"type": "m.id.user", "user": mxid},
                    "initial_device_display_name": device_name,
                },
                # The body holds no secret; mautrix logs requests, never answers (the token).
                retry_count=0,
            )
        except MatrixRequestError as e:
            refusal = login_refusal(e.http_status, e.errcode)
            log.warning(
                "The homeserver refused the appservice login of %s: HTTP %s %s%s",
                mxid,
                e.http_status,
                e.errcode,
                f". {MAS_HINT}" if refusal.errcode == "WB_LOGIN_UNSUPPORTED" else "",
            )
            raise refusal from None
        except MatrixConnectionError as e:
            log.warning("The homeserver is unreachable for the login of %s: %s", mxid, e)
            raise ProvisioningError(
                503, "WB_HOMESERVER_FAILED", "The homeserver cannot be reached; try again later."
            ) from None
        access_token = data.get("access_token") if isinstance(data, dict) else None
        device_id = data.get("device_id") if isinstance(data, dict) else None
        user_id = data.get("user_id") if isinstance(data, dict) else None
        if not isinstance(access_token, str) or not isinstance(device_id, str) or user_id != mxid:
            # Never log `data`: it may hold the access token.
            log.warning("The homeserver's login answer for %s lacks fields or names another", mxid)
            raise ProvisioningError(
                502, "WB_HOMESERVER_FAILED", "The homeserver gave an unexpected login answer."
            )
        return {"user_id": mxid, "access_token": access_token, "device_id": device_id}

    # endregion


def mount_provisioning(bridge: WaldurBridge) -> ProvisioningAPI:
    prefix = "/" + str(bridge.config["bridge.provisioning.prefix"]).strip("/")
    api = ProvisioningAPI(bridge)
    bridge.az.app.add_subapp(prefix, api.app)
    log.debug("Provisioning API mounted at %s", prefix)
    return api


# endregion
