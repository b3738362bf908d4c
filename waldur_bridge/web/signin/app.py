"""The sign-in provider's HTTP endpoints, under ``/oidc`` on the appservice's web server.

``GET  /oidc/.well-known/openid-configuration``  discovery
``GET  /oidc/jwks``                               the public signing keys
``GET  /oidc/authorize``                          the sign-in page (or an error page)
``POST /oidc/authorize``                          the form: check with Waldur, then back to
                                                  the client with a code
``POST /oidc/token``                              code (+ PKCE verifier) for tokens
``GET|POST /oidc/userinfo``                       the claims, for a bearer access token

A request from a client that is not configured, or naming a redirect URI that is not one of
its configured URIs exactly, gets an error page and never a redirect.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
from aiohttp import web
from authlib.oauth2.rfc6749.errors import OAuth2Error
from mautrix.errors import MatrixConnectionError, MatrixRequestError

from ...db import AuditEntry, Portal as DBPortal, Puppet as DBPuppet, User as DBUser
from ..devices import DeviceHygiene
from ..provisioning import WaldurUser
from ..proxy import PrivateSession, parse_networks, request_client
from . import credentials, pages
from .credentials import Refused
from .guards import CsrfTokens, FailureLimits
from .keys import KeyRing, KeyStore
from .server import FormRequest, Provider, SignedInUser
from .settings import SigninSettings

if TYPE_CHECKING:
    from ...__main__ import WaldurBridge

log = logging.getLogger("waldur.web.signin")

BROWSER_COOKIE = "waldur_signin"
MAX_FORM = 16 * 1024
AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "response_mode",
)


class Stop(Exception):
    """End the visit with a page (no form, no redirect)."""

    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.title = title
        self.text = text


class SigninService:
    def __init__(
        self,
        bridge: WaldurBridge,
        settings: SigninSettings,
        *,
        rooms_of: Callable[[str], Any] | None = None,
    ) -> None:
        self.bridge = bridge
        self.settings = settings
        self.keys = KeyStore()
        self._ring: KeyRing | None = None
        self.provider = Provider(settings, self._signing_key)
        config = bridge.config
        self.csrf = CsrfTokens(str(config["appservice.hs_token"]).encode())
        self.limits = FailureLimits()
        self.trusted_proxies = parse_networks(config["bridge.provisioning.trusted_proxies"] or ())
        self.secure_cookie = settings.public_url.startswith("https://")
        self.mode = config["bridge.user_mapping.mode"]
        self.displayname_template = config["bridge.displayname_template"]
        # Each sign-in gives the puppet a new device (Synapse makes it): before the code goes
        # out, the puppet's devices are tidied as after a provisioning login, leaving room for
        # the new one within bridge.provisioning.max_devices.
        max_devices = int(config["bridge.provisioning.max_devices"])
        self.devices = DeviceHygiene(
            lambda mxid: bridge.az.intent.user(mxid),
            max_devices=max(max_devices - 1, 1) if max_devices else 0,
            max_idle_days=config["bridge.provisioning.device_max_idle_days"],
        )
        self._session = PrivateSession()
        self._warned_password_disabled = False
        self.app = web.Application()
        r = self.app.router
        r.add_get("/.well-known/openid-configuration", self.discovery)
        r.add_get("/jwks", self.jwks)
        r.add_get("/authorize", self.authorize_page)
        r.add_post("/authorize", self.authorize_submit)
        r.add_post("/token", self.token)
        r.add_get("/userinfo", self.userinfo)
        r.add_post("/userinfo", self.userinfo)
        self.app.on_cleanup.append(self._close)

    async def start(self) -> KeyRing:
        """Load (at first start: create) the signing key."""
        self._ring = await self.keys.ring()
        return self._ring

    def _signing_key(self) -> Any:
        assert self._ring is not None, "the signing key is loaded before any token is made"
        return self._ring.signing

    async def _close(self, _app: web.Application) -> None:
        await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        return self._session.get()

    def _address(self, request: web.Request) -> str:
        return request_client(request, self.trusted_proxies)

    # region discovery, keys, token, userinfo

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(self.provider.discovery())

    async def jwks(self, request: web.Request) -> web.Response:
        ring = await self.keys.ring()
        return web.json_response(ring.jwks())

    async def token(self, request: web.Request) -> web.Response:
        await self.start()
        form = await request.post()
        data = {k: v for k, v in form.items() if isinstance(v, str)}
        oauth = FormRequest("POST", f"{self.settings.issuer}/token", dict(request.headers), data)
        status, body, headers = self.provider.create_token_response(oauth)
        if status != 200:
            log.info(
                "Sign-in token request refused from %s: %s",
                self._address(request),
                body.get("error") if isinstance(body, dict) else status,
            )
        response = web.json_response(body, status=status)
        for name, value in headers:
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    async def userinfo(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        claims = self.provider.userinfo(token.strip()) if scheme.lower() == "bearer" else None
        if claims is None:
            return web.json_response(
                {"error": "invalid_token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return web.json_response(claims, headers={"Cache-Control": "no-store"})

    # endregion
    # region the sign-in page

    def _page(self, body: str, status: int = 200) -> web.Response:
        return web.Response(
            text=body, status=status, content_type="text/html", headers=pages.PAGE_HEADERS
        )

    def _stop_page(self, stop: Stop) -> web.Response:
        return self._page(
            pages.message_page(self.settings.site_name, stop.title, stop.text), stop.status
        )

    def _validate(self, params: dict[str, str]) -> tuple[FormRequest, Any]:
        """The authorization request checked by authlib; Stop with a page when it is bad."""
        oauth = FormRequest("GET", f"{self.settings.issuer}/authorize", {}, params)
        try:
            grant = self.provider.get_consent_grant(oauth)
        except OAuth2Error as e:
            log.info(
                "Sign-in request refused (client %r): %s %s",
                params.get("client_id"),
                e.error,
                e.description or "",
            )
            raise Stop(
                400,
                "This sign-in link is not valid",
                "The application that sent you here is not set up for this sign-in, or its "
                f"link is damaged ({e.description or e.error}). Go back and try again; if it "
                "keeps happening, tell the site's administrators.",
            ) from None
        return oauth, grant

    def _form(
        self,
        request: web.Request,
        query: str,
        browser: str,
        *,
        error: str | None = None,
        username: str = "",
        failed_method: str | None = None,
    ) -> pages.SigninForm:
        return pages.SigninForm(
            site_name=self.settings.site_name,
            methods=self.settings.methods,
            request=query,
            csrf=self.csrf.issue(browser, query),
            action=f"{self.settings.issuer}/authorize",
            error=error,
            username=username,
            failed_method=failed_method,
        )

    def _with_browser_cookie(self, response: web.Response, browser: str) -> web.Response:
        response.set_cookie(
            BROWSER_COOKIE,
            browser,
            path=urlsplit(self.settings.issuer).path,
            httponly=True,
            secure=self.secure_cookie,
            samesite="Lax",
            max_age=3600,
        )
        return response

    async def authorize_page(self, request: web.Request) -> web.Response:
        params = {k: v for k, v in request.query.items() if k in AUTHORIZE_PARAMS}
        try:
            self._validate(params)
        except Stop as stop:
            return self._stop_page(stop)
        query = urlencode(params)
        browser = request.cookies.get(BROWSER_COOKIE) or secrets.token_urlsafe(24)
        form = self._form(request, query, browser)
        return self._with_browser_cookie(self._page(pages.signin_page(form)), browser)

    async def authorize_submit(self, request: web.Request) -> web.Response:
        too_large = Stop(413, "Too much data", "The form was too large.")
        # The appservice's application made the request object, so its 1 MiB limit applies,
        # not this sub-application's: the form's own limit is checked here.
        if request.content_length is None or request.content_length > MAX_FORM:
            return self._stop_page(too_large)
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            return self._stop_page(too_large)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        query = fields.get("request", "")
        params = {k: v for k, v in parse_qsl(query) if k in AUTHORIZE_PARAMS}
        try:
            oauth, grant = self._validate(params)
        except Stop as stop:
            return self._stop_page(stop)
        browser = request.cookies.get(BROWSER_COOKIE, "")
        address = self._address(request)
        method = fields.get("method", "")
        username = fields.get("username", "").strip()[: credentials.MAX_FIELD]
        if not self.csrf.check(fields.get("csrf", ""), browser, query):
            log.info("Sign-in form from %s refused: missing or stale CSRF token", address)
            browser = browser or secrets.token_urlsafe(24)
            page = pages.signin_page(
                self._form(
                    request,
                    query,
                    browser,
                    error="This page was open too long or came from elsewhere; sign in again.",
                )
            )
            return self._with_browser_cookie(self._page(page, 400), browser)

        def again(message: str, status: int = 401) -> web.Response:
            page = pages.signin_page(
                self._form(
                    request,
                    query,
                    browser,
                    error=message,
                    username=username if method == "password" else "",
                    failed_method=method,
                )
            )
            return self._page(page, status)

        if method not in self.settings.methods:
            return again("Choose one of the ways to sign in below.", 400)
        limited_name = username if method == "password" else None
        wait = self.limits.wait(address, limited_name)
        if wait:
            log.info(
                "Sign-in from %s refused: too many failed attempts (%s)",
                address,
                f"username {username!r}" if limited_name else "address",
            )
            minutes = max(1, round(wait / 60))
            return again(
                f"Too many failed sign-ins; try again in about {minutes} minute"
                f"{'s' if minutes != 1 else ''}.",
                429,
            )
        try:
            me = await self._check_with_waldur(method, fields, username)
        except Refused as refused:
            if refused.counts:
                self.limits.failed(address, limited_name)
            log.info(
                "Sign-in from %s refused (%s, method %s%s)",
                address,
                refused.kind,
                method,
                f", username {username!r}" if username and method == "password" else "",
            )
            if refused.kind == "password_disabled":
                # The operator can fix this for everyone: say it once per start.
                if not self._warned_password_disabled:
                    self._warned_password_disabled = True
                    log.warning(
                        "Waldur refuses password sign-in (local sign-in is disabled there): "
                        "set bridge.signin.methods to [token]"
                    )
                if "token" in self.settings.methods:
                    return again(refused.message, 401)
                return self._stop_page(
                    Stop(
                        403,
                        "Password sign-in is off",
                        f"{self.settings.site_name} does not allow signing in with a password. "
                        "Ask the site's administrators to offer sign-in with an API token.",
                    )
                )
            if refused.kind == "inactive":
                return self._stop_page(Stop(403, "Your account is not active", refused.message))
            return again(refused.message, 503 if refused.kind == "unavailable" else 401)
        try:
            user = await self._puppet_for(me)
        except Stop as stop:
            log.info("Sign-in of Waldur user %s from %s stopped: %s", me.uuid, address, stop.title)
            return self._stop_page(stop)
        await self.start()
        status, _body, headers = self.provider.create_authorization_response(
            oauth, grant_user=user, grant=grant
        )
        location = dict(headers).get("Location")
        if status != 302 or not location:
            return self._stop_page(
                Stop(400, "This sign-in link is not valid", "Go back and try again.")
            )
        client_id = params.get("client_id", "")
        log.info(
            "Waldur user %s signed in as %s (client %s, method %s, from %s)",
            me.uuid,
            user.mxid,
            client_id,
            method,
            address,
        )
        await AuditEntry(
            action="signin",
            outcome="done",
            target=user.mxid,
            cause=f"Waldur user {me.uuid} signed in",
            detail=f"client {client_id}, method {method}, from {address}",
        ).insert()
        return web.Response(
            status=302, headers={"Location": location, "Cache-Control": "no-store"}
        )

    # endregion
    # region steps

    async def _check_with_waldur(
        self, method: str, fields: dict[str, str], username: str
    ) -> WaldurUser:
        cfg = self.bridge.config
        site = self.settings.site_name
        if method == "password":
            password = fields.get("password", "")
            if not username or not password:
                raise Refused("missing", "Enter your username and password.")
            if len(password) > credentials.MAX_FIELD:
                raise Refused("invalid", "Wrong username or password.", counts=True)
            token = await credentials.token_for_password(
                self._http(),
                str(cfg["waldur.url"]).rstrip("/"),
                username,
                password,
                timeout=float(cfg["waldur.timeout"]),
                site_name=site,
            )
        else:
            token = fields.get("token", "").strip()
            if not token:
                raise Refused("missing", f"Paste your {site} API token.")
            if len(token) > credentials.MAX_FIELD or any(c.isspace() for c in token):
                raise Refused("invalid", f"{site} did not accept that token.", counts=True)
        return await credentials.user_for_token(
            self._http(),
            cfg,
            token,
            site_name=site,
            user_agent=f"{self.bridge.name}/{self.bridge.version}",
        )

    async def _puppet_for(self, me: WaldurUser) -> SignedInUser:
        """The person's puppet, ready on the homeserver; Stop when there is none to enter."""
        site = self.settings.site_name
        linked = await DBUser.get_by_waldur_user(me.uuid)
        if linked is not None or self.mode != "puppet":
            raise Stop(
                409,
                "Use your own Matrix account",
                f"This site connects your {site} account to your own Matrix account"
                + (f" ({linked.mxid})" if linked is not None else "")
                + ". Sign in to it with your homeserver's usual sign-in.",
            )
        row = await DBPuppet.get_by_waldur_user(me.uuid)
        if row is None or not await self._has_rooms(row.mxid):
            raise Stop(
                403,
                "You have no project rooms yet",
                f"Your {site} account has no role in a project that has a chat room, so there "
                "is nothing to open yet. When someone adds you to a project, its room appears "
                "here within seconds; come back then.",
            )
        from ...puppet import Puppet

        displayname = self._displayname(me)
        puppet = await Puppet.get_for_waldur_user(me.uuid, me.username, displayname)
        try:
            # The homeserver accepts the sign-in only for an account the bridge created.
            await puppet.ensure_ready(displayname)
        except (MatrixRequestError, MatrixConnectionError) as e:
            log.warning("Sign-in: could not prepare puppet %s: %s", puppet.mxid, e)
            raise Stop(
                503,
                "The chat server is not answering",
                "Your account could not be prepared; try again in a minute.",
            ) from None
        await self.devices.prune(puppet.mxid, keep="")
        # Their organizations' spaces are there when they land (the bridge left them invited).
        await self.bridge.sync.spaces.join_invited(puppet, "signed in")
        return SignedInUser(
            uuid=me.uuid,
            username=me.username,
            full_name=me.full_name,
            email=me.email,
            mxid=puppet.mxid,
        )

    async def _has_rooms(self, mxid: str) -> bool:
        """Whether the puppet is in at least one active project room (asked of the
        homeserver: the rooms the person will see)."""
        try:
            joined = await self.bridge.az.intent.user(mxid).get_joined_rooms()
        except (MatrixRequestError, MatrixConnectionError) as e:
            log.info("Sign-in: cannot list the rooms of %s: %s", mxid, e)
            return False
        for room_id in joined:
            portal = await DBPortal.get_by_room(room_id)
            if portal is not None and portal.state == "active":
                return True
        return False

    def _displayname(self, me: WaldurUser) -> str:
        # As the sync names puppets, so a sign-in never renames one back and forth.
        name = self.displayname_template.format(
            full_name=me.full_name or me.username, username=me.username, email=me.email
        )
        return name.strip() or me.username

    # endregion


def mount_signin(bridge: WaldurBridge, settings: SigninSettings) -> SigninService:
    service = SigninService(bridge, settings)
    bridge.az.app.add_subapp("/oidc", service.app)
    log.info("Sign-in provider at %s (clients: %s)", settings.issuer, ", ".join(settings.clients))
    return service
