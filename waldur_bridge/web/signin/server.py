"""The OpenID Connect authorization server, on authlib's framework-neutral core.

authlib has no aiohttp integration, so this module gives its ``AuthorizationServer`` what a
framework integration would: a request wrapper built from an already-read request (form and
query as a dict), and responses as plain ``(status, body, headers)`` tuples that the web layer
turns into aiohttp answers. authlib does the protocol: client authentication
(``client_secret_basic``, ``client_secret_post``), the authorization-code grant, PKCE (RFC 7636,
S256 only and required), the OpenID Connect ID token (``OpenIDCode``, signed RS256 through
joserfc, authlib's JOSE library) and the bearer token answer. What is kept here is storage:

- authorization codes: in memory, single use, 60 seconds. Redeeming one removes it at once,
  before anything else is checked, so a code is never accepted twice (a failed attempt spends
  it too);
- access tokens: in memory, five minutes, good only for the userinfo endpoint.

Nothing here is persisted: a restart (or the other instance taking over) only ends sign-ins
that were half-way, which the person repeats.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Request, grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import RSAKey

from .settings import SigninClient, SigninSettings


class _NoIssuedTokens(logging.Filter):
    """authlib logs each issued token at DEBUG ("Issue token {...access_token...}"); no
    secret goes into any log line, at any level."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Issue token", "Grant token"))


logging.getLogger("authlib.oauth2.rfc6749.grants.authorization_code").addFilter(_NoIssuedTokens())

CODE_TTL = 60.0
ACCESS_TOKEN_TTL = 300
ID_TOKEN_TTL = 300
NONCE_TTL = 600.0
SCOPES = ("openid", "profile", "email")

Response = tuple[int, Any, list[tuple[str, str]]]


@dataclass(frozen=True)
class SignedInUser:
    """The person a code or token stands for: what Waldur said, and their puppet."""

    uuid: str
    username: str
    full_name: str
    email: str
    mxid: str

    @property
    def localpart(self) -> str:
        return self.mxid.removeprefix("@").split(":", 1)[0]


def user_claims(user: SignedInUser) -> dict[str, str]:
    """The claims of an ID token and of userinfo.

    ``sub`` is the Waldur user's UUID (stable across renames), ``preferred_username`` the
    puppet's localpart, so the homeserver's ``localpart_template`` is
    ``{{ user.preferred_username }}`` and maps onto the account the bridge already made.
    """
    claims = {
        "sub": user.uuid,
        "preferred_username": user.localpart,
        "name": user.full_name or user.username,
    }
    if user.email:
        claims["email"] = user.email
    return claims


class Client(ClientMixin):
    def __init__(self, config: SigninClient) -> None:
        self.config = config

    def get_client_id(self) -> str:
        return self.config.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Never guessed: the request must name one of the configured URIs exactly.
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        asked = (scope or "").split()
        return " ".join(s for s in SCOPES if s in asked)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.config.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(
            self.config.client_secret.encode(), str(client_secret).encode()
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: SignedInUser
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time


@dataclass
class ExpiringStore:
    """Values that vanish after ``ttl`` seconds; ``take`` removes as it reads."""

    ttl: float
    clock: Callable[[], float] = time.monotonic
    _items: dict[str, tuple[float, Any]] = field(default_factory=dict)

    def put(self, key: str, value: Any) -> None:
        self._purge()
        self._items[key] = (self.clock() + self.ttl, value)

    def get(self, key: str) -> Any:
        item = self._items.get(key)
        if item is None or item[0] <= self.clock():
            return None
        return item[1]

    def take(self, key: str) -> Any:
        item = self._items.pop(key, None)
        if item is None or item[0] <= self.clock():
            return None
        return item[1]

    def __len__(self) -> int:
        self._purge()
        return len(self._items)

    def _purge(self) -> None:
        now = self.clock()
        for key in [k for k, (expires, _) in self._items.items() if expires <= now]:
            del self._items[key]


class FormRequest(OAuth2Request):
    """An HTTP request as authlib sees it: method, URI, headers and the parameters (query for
    the authorization endpoint, form body for the token endpoint), read by the web layer."""

    def __init__(
        self, method: str, uri: str, headers: Mapping[str, str], data: Mapping[str, str]
    ) -> None:
        super().__init__(method, uri, headers=dict(headers))
        self._data = dict(data)
        self.payload = BasicOAuth2Payload(self._data)

    @property
    def args(self) -> dict[str, str]:
        return self._data

    @property
    def form(self) -> dict[str, str]:
        return self._data


class S256Challenge(CodeChallenge):
    """PKCE is required of every client, with S256 (``plain`` would defeat its purpose)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge (S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
    server: Provider

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        user: SignedInUser = request.user
        self.server.codes.put(
            code,
            AuthorizationCode(
                code=code,
                client_id=request.client.get_client_id(),
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope or "",
                user=user,
                nonce=data.get("nonce") or None,
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                auth_time=int(time.time()),
                expires_at=self.server.codes.clock() + CODE_TTL,
            ),
        )
        nonce = data.get("nonce")
        if nonce:
            self.server.nonces.put(f"{request.client.get_client_id()} {nonce}", True)

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        # Taken, not read: the code is spent whatever happens next.
        found: AuthorizationCode | None = self.server.codes.take(code)
        if found is None or found.client_id != client.get_client_id():
            return None
        return found

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        self.server.codes.take(authorization_code.code)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> SignedInUser:
        return authorization_code.user


class IdToken(OpenIDCode):
    def __init__(self, server: Provider) -> None:
        super().__init__(require_nonce=False)
        self.server = server

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return bool(self.server.nonces.get(f"{request.payload.client_id} {nonce}"))

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return self.server.signing_key()

    def get_client_algorithm(self, client: Client) -> str:
        return "RS256"

    def get_encode_header(self, client: Client) -> dict[str, str]:
        return {"alg": "RS256", "kid": self.server.signing_key().kid or ""}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        return {
            "iss": self.server.settings.issuer,
            "aud": [client.get_client_id()],
            "exp": int(time.time()) + ID_TOKEN_TTL,
        }

    def generate_user_info(self, user: SignedInUser, scope: str) -> dict[str, str]:
        return user_claims(user)


@dataclass(frozen=True)
class AccessGrant:
    user: SignedInUser
    client_id: str
    scope: str


class Provider(AuthorizationServer):
    def __init__(
        self,
        settings: SigninSettings,
        signing_key: Callable[[], RSAKey],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.settings = settings
        self.signing_key = signing_key
        self.codes = ExpiringStore(CODE_TTL, clock)
        self.nonces = ExpiringStore(NONCE_TTL, clock)
        self.access_tokens = ExpiringStore(float(ACCESS_TOKEN_TTL), clock)
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda **_: secrets.token_urlsafe(32),
                expires_generator=ACCESS_TOKEN_TTL,
            ),
        )
        self.register_grant(CodeGrant, [S256Challenge(required=True), IdToken(self)])

    def validate_requested_scope(self, scope: str | None) -> None:
        # Unknown scopes are dropped (Client.get_allowed_scope), not refused; openid is a must.
        if "openid" not in (scope or "").split():
            raise InvalidRequestError("The scope must include openid.")

    # region what a framework integration provides

    def query_client(self, client_id: str) -> Client | None:
        config = self.settings.clients.get(client_id)
        return Client(config) if config is not None else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        self.access_tokens.put(
            token["access_token"],
            AccessGrant(request.user, request.client.get_client_id(), token.get("scope", "")),
        )

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        assert isinstance(request, OAuth2Request)
        return request

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError("no JSON endpoints")

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        return status, body, list(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    # endregion

    def userinfo(self, access_token: str) -> dict[str, str] | None:
        grant: AccessGrant | None = self.access_tokens.get(access_token)
        return user_claims(grant.user) if grant is not None else None

    def discovery(self) -> dict[str, Any]:
        issuer = self.settings.issuer
        return {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "userinfo_endpoint": f"{issuer}/userinfo",
            "jwks_uri": f"{issuer}/jwks",
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "preferred_username", "name", "email", "iss", "aud"],
        }
