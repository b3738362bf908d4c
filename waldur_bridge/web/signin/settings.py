"""``bridge.signin``: what the sign-in provider serves, read and checked once.

Every problem is one line that names the key and the fix. A client's secret may come from the
environment instead of the file, like the other secrets (see ``secret_sources``): the key
``bridge.signin.clients.<client_id>.client_secret`` becomes the variable
``WALDUR_BRIDGE_BRIDGE_SIGNIN_CLIENTS_<CLIENT_ID>_CLIENT_SECRET`` (or ``..._FILE``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

METHODS = ("password", "token")
# Loopback hosts where plain http is allowed: browsers treat them as secure contexts, so the
# homeserver's Secure cookies still travel (see README).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._~-]{1,100}$")
MIN_SECRET_LENGTH = 16


def secret_key(client_id: str) -> str:
    return f"bridge.signin.clients.{client_id}.client_secret"


@dataclass(frozen=True)
class SigninClient:
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]


@dataclass(frozen=True)
class SigninSettings:
    enabled: bool
    public_url: str
    site_name: str
    methods: tuple[str, ...]
    clients: Mapping[str, SigninClient]

    @property
    def issuer(self) -> str:
        return f"{self.public_url}/oidc"


def _url_problem(key: str, url: str, *, what: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{key}: {url!r} is not an http(s) URL; {what}."
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
        return (
            f"{key}: {url!r} uses plain http; use https (http is allowed only on localhost "
            "and 127.0.0.1: Synapse's sign-in cookies are Secure)."
        )
    if parts.query or parts.fragment:
        return f"{key}: {url!r} must not have a query or fragment."
    return None


def read_settings(
    get: Callable[[str, Any], Any], secret: Callable[[str], str | None]
) -> tuple[SigninSettings, list[str]]:
    """The settings and the problems with them (``get`` reads the config, ``secret`` the
    environment's client secrets). Problems are only reported when sign-in is enabled."""
    enabled = get("bridge.signin.enabled", False) is True
    problems: list[str] = []
    public_url = get("bridge.signin.public_url", None)
    if not isinstance(public_url, str) or not public_url.strip():
        problems.append(
            "bridge.signin.public_url: set it to the URL at which browsers reach the bridge's "
            "web server (for example https://bridge.example.org); the issuer is "
            "<public_url>/oidc."
        )
        public_url = ""
    else:
        public_url = public_url.strip().rstrip("/")
        problem = _url_problem(
            "bridge.signin.public_url", public_url, what="for example https://bridge.example.org"
        )
        if problem:
            problems.append(problem)
    site_name = get("bridge.signin.site_name", "Waldur")
    if not isinstance(site_name, str) or not site_name.strip():
        problems.append("bridge.signin.site_name: must be a non-empty name, e.g. 'Acme Waldur'.")
        site_name = "Waldur"
    methods_raw = get("bridge.signin.methods", list(METHODS))
    methods: list[str] = []
    if not isinstance(methods_raw, list) or not methods_raw:
        problems.append("bridge.signin.methods: must list password, token or both.")
    else:
        for method in methods_raw:
            if method not in METHODS:
                problems.append(
                    f"bridge.signin.methods: {method!r} is not one of {', '.join(METHODS)}."
                )
            elif method not in methods:
                methods.append(method)
    clients: dict[str, SigninClient] = {}
    raw_clients = get("bridge.signin.clients", [])
    if not isinstance(raw_clients, list) or not raw_clients:
        problems.append(
            "bridge.signin.clients: list at least one client (the homeserver), each with "
            "client_id, client_secret and redirect_uris."
        )
        raw_clients = []
    for index, entry in enumerate(raw_clients):
        key = f"bridge.signin.clients[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{key}: must be a map with client_id, client_secret, redirect_uris.")
            continue
        unknown = sorted(set(entry) - {"client_id", "client_secret", "redirect_uris"})
        if unknown:
            problems.append(
                f"{key}.{unknown[0]}: not a known setting (client_id, client_secret, "
                "redirect_uris)."
            )
        client_id = entry.get("client_id")
        if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
            problems.append(
                f"{key}.client_id: must be 1-100 letters, digits or ._~- (e.g. synapse)."
            )
            continue
        if client_id in clients:
            problems.append(f"{key}.client_id: {client_id!r} is listed twice.")
            continue
        client_secret = secret(secret_key(client_id)) or entry.get("client_secret")
        if not isinstance(client_secret, str) or len(client_secret) < MIN_SECRET_LENGTH:
            problems.append(
                f"{key}.client_secret: must be at least {MIN_SECRET_LENGTH} characters (e.g. "
                "from `openssl rand -hex 32`), in the file or in the environment as "
                f"WALDUR_BRIDGE_{re.sub(r'[^A-Za-z0-9]', '_', secret_key(client_id)).upper()}."
            )
            continue
        uris = entry.get("redirect_uris")
        if not isinstance(uris, list) or not uris:
            problems.append(
                f"{key}.redirect_uris: list the exact redirect URIs, for Synapse "
                "https://<homeserver>/_synapse/client/oidc/callback."
            )
            continue
        bad = [u for u in uris if not isinstance(u, str) or _url_problem("", u, what="")]
        if bad:
            problems.append(
                f"{key}.redirect_uris: {bad[0]!r} is not an https URL (http only on localhost), "
                "without query or fragment."
            )
            continue
        clients[client_id] = SigninClient(client_id, client_secret, tuple(uris))
    settings = SigninSettings(
        enabled=enabled,
        public_url=public_url,
        site_name=site_name.strip(),
        methods=tuple(methods) or METHODS,
        clients=clients,
    )
    return settings, problems if enabled else []
