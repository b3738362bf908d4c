"""Start-up checks against the homeserver: each mistake an operator can make ends in one line
that names the setting and the fix, never a traceback or a request flood.

mautrix's own ``wait_for_connection`` retries ``/versions`` with no pause when it answers
M_FORBIDDEN (tens of thousands of requests a minute with a wrong ``homeserver.domain``) and logs
a traceback every 10 s when the registration is missing. ``install`` routes the bridge's start
through ``connect`` below instead, and turns a busy port into one line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from mautrix.api import HTTPAPI, Method, Path
from mautrix.appservice import IntentAPI
from mautrix.errors import (
    MatrixConnectionError,
    MatrixRequestError,
    MForbidden,
    MUnknownToken,
)
from mautrix.types import SpecVersions, VersionsResponse
from yarl import URL

if TYPE_CHECKING:
    from .__main__ import WaldurBridge
    from .config import Config

log = logging.getLogger("mau.startup")

# Exit codes (mautrix's own: 11 configuration, 16 homeserver connection, 18 old homeserver,
# 25 database).
EXIT_CONFIG = 11
EXIT_HOMESERVER = 16
EXIT_LISTEN = 17
EXIT_METRICS = 19
EXIT_DATABASE = 25

# Up to this many new keys are named in the log line; more (a partial config) are counted.
SHOWN_ADDED_KEYS = 10

# URL schemes of appservice.database that mautrix has a driver for and the bridge supports.
DATABASE_SCHEMES = ("postgres", "postgresql", "sqlite", "sqlite3")

# Waits between start-up attempts while the homeserver is away or does not know the
# registration yet: doubling from FIRST_RETRY up to MAX_RETRY seconds, for as long as it takes
# (a homeserver and its bridge are often started together).
FIRST_RETRY = 2.0
MAX_RETRY = 300.0
# One start-up request (the homeserver may accept the connection and never answer).
REQUEST_TIMEOUT = 30.0
# Waits before the second and third try of the start-up ping.
PING_RETRY_WAITS = (1.0, 2.0)

REGISTRATION_MISSING = (
    "The homeserver does not know this appservice: it refused appservice.as_token "
    "(M_UNKNOWN_TOKEN). Install the registration file (waldur-bridge -g writes it) in the "
    "homeserver: for Synapse list it under app_service_config_files in homeserver.yaml and "
    "restart Synapse; for Conduit or Tuwunel send `!admin appservices register` with the file's "
    "contents to the admin room."
)


class StartupError(Exception):
    """A mistake that retrying cannot fix: log the message and exit."""

    def __init__(self, message: str, code: int = EXIT_HOMESERVER) -> None:
        super().__init__(message)
        self.code = code


class NotYet(Exception):
    """A condition that can clear on its own (homeserver down, registration being installed)."""


def backoff(first: float = FIRST_RETRY, cap: float = MAX_RETRY) -> Iterator[float]:
    wait = first
    while True:
        yield wait
        wait = min(wait * 2, cap)


def fail(error: StartupError) -> NoReturn:
    log.critical("%s", error)
    # SystemExit passes through mautrix's `except Exception` handlers (which would log a
    # traceback); the bridge's run loop stops the database and exits with the code.
    raise SystemExit(error.code)


def save_config(config: Config) -> None:
    """Write the validated config (only now: a failed validation leaves the file alone)."""
    for secret in config.secrets.values():
        log.info("%s comes from %s, not from the config file", secret.key, secret.source)
    try:
        written = config.save_validated()
    except OSError as e:
        log.warning(
            "Could not write the updated config to %s (%s); running with it in memory",
            config.path,
            e.strerror or e,
        )
        return
    if not config.added_keys:
        return
    if written and len(config.added_keys) <= SHOWN_ADDED_KEYS:
        log.info(
            "New settings with their defaults, added to %s: %s",
            config.path,
            ", ".join(config.added_keys),
        )
    elif written:
        log.info(
            "%d settings with their defaults added to %s (a partial config was filled in)",
            len(config.added_keys),
            config.path,
        )
    else:
        # With -n (a read-only, minimal config) this comes on every start: a count, not the list.
        count = len(config.added_keys)
        log.info(
            "%d %s the defaults (not in the config file); `--show-defaults` lists them",
            count,
            "key uses" if count == 1 else "keys use",
        )


def shown_database_url(url: str) -> str:
    """appservice.database for a log line: the password as ***."""
    try:
        parsed = URL(url)
        return str(parsed.with_password("***")) if parsed.password else url
    except ValueError:
        return "(unparsable URL)"


def check_database_scheme(config: Config) -> None:
    """A scheme mautrix has no driver for ends in KeyError deep inside it: say it here."""
    url = str(config["appservice.database"])
    scheme = url.partition(":")[0].lower()
    if scheme in DATABASE_SCHEMES:
        return
    fail(
        StartupError(
            f"appservice.database {shown_database_url(url)} (from "
            f"{config.value_source('appservice.database')}): {scheme or 'no'} scheme is not "
            "supported. Use postgres://user:password@host/database (PostgreSQL, needed for "
            "several instances) or sqlite:file.db.",
            EXIT_DATABASE,
        )
    )


def metrics_failed(host: str, port: Any, error: Exception) -> NoReturn:
    """One line for a metrics listener that cannot start (port taken or not a port)."""
    if isinstance(error, OverflowError):
        reason = "not a port number (1 to 65535)"
    else:
        reason = getattr(error, "strerror", None) or str(error)
    fail(
        StartupError(
            f"Cannot serve metrics on {host}:{port} (metrics.hostname:metrics.listen_port): "
            f"{reason}. Choose a free port from 1 to 65535 for metrics.listen_port (each "
            "instance on one host needs its own) and an address of this host for "
            "metrics.hostname, or set metrics.enabled to false.",
            EXIT_METRICS,
        )
    )


def database_failed(bridge: WaldurBridge, error: Exception) -> NoReturn:
    """One line for a database that cannot be opened or upgraded (mautrix logs a traceback)."""
    shown = shown_database_url(str(bridge.config["appservice.database"]))
    explanation = getattr(error, "explanation", None)
    detail = f"{type(error).__name__}: {error}".rstrip(": ")
    fail(
        StartupError(
            f"Cannot open the database (appservice.database {shown}): {detail}. "
            + (f"{explanation} " if explanation else "")
            + "Check appservice.database (for PostgreSQL: host, port, user, password, database) "
            "and that the database server runs.",
            EXIT_DATABASE,
        )
    )


def install(bridge: WaldurBridge) -> None:
    """Route mautrix's start-up steps (listen, then connect) through the checks here."""
    listen = bridge.az.start

    async def start_appservice(host: str, port: int) -> None:
        try:
            await listen(host, port)
        except OSError as e:
            await bridge.az.stop()
            fail(
                StartupError(
                    f"Cannot listen on {host}:{port} (appservice.hostname:appservice.port): "
                    f"{e.strerror or e}. Another process (another bridge?) may use the port: "
                    "stop it, or choose another appservice.port and update the url in the "
                    "registration.",
                    EXIT_LISTEN,
                )
            )

    async def wait_for_connection() -> None:
        await connect(bridge)

    bridge.az.start = start_appservice  # type: ignore[method-assign]
    bridge.matrix.wait_for_connection = wait_for_connection  # type: ignore[method-assign]


async def connect(bridge: WaldurBridge) -> None:
    """Check the homeserver until it answers, then check it knows and reaches this bridge."""
    log.info("Checking the homeserver at %s", bridge.config["homeserver.address"])
    waits = backoff()
    last_problem = ""
    while True:
        try:
            await asyncio.wait_for(_check_homeserver(bridge), REQUEST_TIMEOUT)
            break
        except StartupError as e:
            fail(e)
        except (NotYet, TimeoutError) as e:
            problem = str(e) or (
                f"homeserver.address {bridge.config['homeserver.address']}: no answer within "
                f"{REQUEST_TIMEOUT:.0f} s."
            )
            wait = next(waits)
            # The explanation once per change; later attempts only say they are still waiting.
            if problem != last_problem:
                log.error("%s Retrying in %.0f s, then with growing waits.", problem, wait)
                last_problem = problem
            else:
                log.info("Homeserver check failed again; next try in %.0f s", wait)
            await asyncio.sleep(wait)
    await _check_reachable(bridge)
    try:
        bridge.matrix.media_config = await bridge.az.intent.get_media_repo_config()
    except Exception as e:
        log.warning("Could not read the homeserver's media limits (%s); using defaults", e)


async def _check_homeserver(bridge: WaldurBridge) -> None:
    address = bridge.config["homeserver.address"]
    intent = bridge.az.intent
    try:
        versions = await intent.api.request(Method.GET, Path.versions, retry_count=0)
        bridge.matrix.versions = VersionsResponse.deserialize(versions)
    except MUnknownToken as e:
        raise NotYet(REGISTRATION_MISSING) from e
    except MForbidden:
        pass  # some homeservers check the user_id here too: whoami below says why
    except MatrixConnectionError as e:
        raise NotYet(f"Cannot connect to homeserver.address {address}: {e}.") from e
    except MatrixRequestError as e:
        if e.http_status >= 500:
            raise NotYet(
                f"homeserver.address {address} answered HTTP {e.http_status} "
                f"{e.errcode or ''} {e.message or ''}".rstrip()
                + "."
            ) from e
        raise StartupError(
            f"homeserver.address {address} answered /versions with HTTP {e.http_status} "
            f"{e.errcode} {e.message}: is it the homeserver's client-server API URL?"
        ) from e
    await bridge.matrix.check_versions()
    try:
        await intent.api.request(Method.GET, Path.v3.account.whoami, retry_count=0)
    except MUnknownToken as e:
        raise NotYet(REGISTRATION_MISSING) from e
    except MForbidden as e:
        await _explain_forbidden(bridge, e)
    except MatrixConnectionError as e:
        raise NotYet(f"Cannot connect to homeserver.address {address}: {e}.") from e


async def _explain_forbidden(bridge: WaldurBridge, error: MForbidden) -> None:
    """The homeserver refuses to let the AS token act as the bot: find out why, in one line."""
    bot = bridge.az.bot_mxid
    domain = bridge.config["homeserver.domain"]
    # Without ?user_id the homeserver answers with the registration's own sender: its ID shows
    # the homeserver's real server name and the bot localpart the registration names.
    plain = HTTPAPI(
        base_url=bridge.az.intent.api.base_url,
        token=bridge.az.as_token,
        client_session=bridge.az.intent.api.session,
    )
    try:
        sender = (await plain.request(Method.GET, Path.v3.account.whoami, retry_count=0))[
            "user_id"
        ]
    except MUnknownToken as e:
        raise NotYet(REGISTRATION_MISSING) from e
    except (MatrixRequestError, KeyError):
        sender = ""
    localpart, _, server_name = sender.removeprefix("@").partition(":")
    if server_name and server_name != domain:
        raise StartupError(
            f"homeserver.domain is {domain!r}, but the homeserver's server name is "
            f"{server_name!r} (it calls this appservice's bot {sender}), so the bot {bot} is "
            "outside the registration's namespace. Set homeserver.domain to "
            f"{server_name!r}, or regenerate the registration with -g and install it."
        ) from error
    if localpart and localpart != bridge.config["appservice.bot_username"]:
        raise StartupError(
            f"appservice.bot_username is {bridge.config['appservice.bot_username']!r}, but the "
            f"installed registration's sender_localpart is {localpart!r}. Set "
            "appservice.bot_username to match, or regenerate the registration with -g and "
            "install it."
        ) from error
    # Right domain and bot: the account may only be missing. One registration attempt.
    try:
        await bridge.az.intent.ensure_registered()
        await bridge.az.intent.api.request(Method.GET, Path.v3.account.whoami, retry_count=0)
    except MatrixRequestError as e:
        raise StartupError(
            f"The homeserver does not let this appservice act as its bot {bot}: "
            f"{e.errcode} {e.message}. Check homeserver.domain and appservice.bot_username "
            "against the registration, or regenerate it with -g and install it."
        ) from e


async def _check_reachable(bridge: WaldurBridge) -> None:
    """The homeserver pings the bridge (MSC2659): proof that transactions will arrive."""
    versions = bridge.matrix.versions
    if not (
        versions.supports("fi.mau.msc2659.stable") or versions.supports_at_least(SpecVersions.V17)
    ):
        log.info("The homeserver cannot ping appservices; not checking that it reaches the bridge")
        return
    if bridge.reachable_ping_ms is not None:
        # Already proven on becoming the active instance (high availability): a second ping
        # now would only race the homeserver's retries of the queued transactions.
        return
    address = bridge.config["appservice.address"]
    try:
        duration = await _ping_with_retries(bridge)
    except MForbidden as e:
        fail(
            StartupError(
                f"The homeserver refused to ping appservice {bridge.az.id!r}: {e.message}. "
                "appservice.id must be the id in the installed registration: fix it, or "
                "regenerate the registration with -g and install it."
            )
        )
    except MatrixRequestError as e:
        answer = f"HTTP {e.http_status} {e.errcode or ''} {e.message or ''}".strip().rstrip(".")
        if _bridge_refused_token(e):
            hint = (
                "The bridge refused the homeserver's token: appservice.hs_token must be the "
                "hs_token in the installed registration"
            )
        else:
            hint = (
                "Set appservice.address to a URL at which the homeserver reaches this bridge "
                "(from the homeserver's host or container), regenerate the registration with "
                "-g, install it and restart the homeserver"
            )
        fail(
            StartupError(
                f"The homeserver cannot reach this bridge (appservice.address {address}, and "
                f"the url in the installed registration): it answered {answer}. {hint}."
            )
        )
    except MatrixConnectionError as e:
        fail(StartupError(f"Lost the homeserver at homeserver.address while pinging: {e}."))
    except TimeoutError:
        fail(
            StartupError(
                f"The homeserver did not answer the appservice ping within "
                f"{REQUEST_TIMEOUT:.0f} s: check that it reaches this bridge at "
                f"appservice.address {address}."
            )
        )
    log.info("The homeserver reaches the bridge (round trip %d ms)", duration)


async def _ping_with_retries(bridge: WaldurBridge) -> int:
    """Ping, trying again a few times when the homeserver's request to the bridge failed: a
    homeserver that really cannot reach the bridge fails every try within seconds, while a
    one-off failure (Synapse racing its own retries of queued transactions) passes."""
    for wait in PING_RETRY_WAITS:
        try:
            return await _ping_once(bridge)
        except MForbidden:
            raise
        except MatrixRequestError as e:
            if _bridge_refused_token(e):
                raise
            log.debug("Ping failed (%s); trying again in %.0f s", e, wait)
            await asyncio.sleep(wait)
    return await _ping_once(bridge)


async def _ping_once(bridge: WaldurBridge) -> int:
    txn_id = bridge.az.intent.api.get_txn_id()
    return await asyncio.wait_for(
        ping_bridge(bridge.az.intent, bridge.az.id, txn_id, retry_count=0), REQUEST_TIMEOUT
    )


def _bridge_refused_token(error: MatrixRequestError) -> bool:
    text = f"{error.message or ''} {error.text if hasattr(error, 'text') else ''}"
    return error.errcode == "M_BAD_STATUS" and ("401" in text or "403" in text)


async def ping_bridge(
    intent: IntentAPI,
    appservice_id: str,
    txn_id: str | None = None,
    *,
    retry_count: int | None = None,
) -> int:
    """Ask the homeserver to ping this appservice; the round trip in milliseconds (0 or more).

    mautrix's ``appservice_ping`` returns ``duration_ms or -1``, so a sub-millisecond round trip
    (Synapse rounds down to 0) would read as -1, the value that looks like a failure.
    """
    resp: dict[str, Any] = await intent.api.request(
        Method.POST,
        Path.v1.appservice[appservice_id].ping,
        content={"transaction_id": txn_id} if txn_id is not None else {},
        retry_count=retry_count,
    )
    duration = resp.get("duration_ms")
    return int(duration) if isinstance(duration, (int, float)) else 0
