"""A real Synapse on loopback for the integration tests, the demo and the benchmarks.

Synapse lives in its own venv (``scripts/install-synapse.sh``) because it drags in Twisted and
friends; this module only needs the path of that venv's python. The configuration follows
``reference/synapse-for-tests.md`` section 7: one client listener, no federation, SQLite in the
work directory and relaxed rate limits for the test users.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYTHON_ENV = "WALDUR_BRIDGE_SYNAPSE_PYTHON"
VENV_DIRNAME = ".venv-synapse"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

# Effectively unlimited: AS users with rate_limited:false are exempt anyway, the tests' real
# users are not (rc_login's default allows 5 logins, then 0.003/s).
_UNLIMITED = {"per_second": 10000, "burst_count": 100000}
_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_login": {k: _UNLIMITED for k in ("address", "account", "failed_attempts")},
    "rc_admin_redaction": _UNLIMITED,
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_invites": {k: _UNLIMITED for k in ("per_room", "per_user", "per_issuer")},
    "rc_3pid_validation": _UNLIMITED,
    "rc_third_party_invite": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_room_creation": _UNLIMITED,
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
}


class SynapseNotInstalled(RuntimeError):
    """No python with Synapse was found; the message says how to install one."""


class SynapseStartError(RuntimeError):
    """Synapse exited or did not answer in time; the message carries the tail of its logs."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_synapse_python(python: str | None = None) -> str:
    """The interpreter that runs Synapse: the argument, ``$WALDUR_BRIDGE_SYNAPSE_PYTHON``, or
    ``.venv-synapse/bin/python`` in the repository (next to this package) or in the CWD."""
    explicit = python or os.environ.get(PYTHON_ENV)
    if explicit:
        candidates = [Path(explicit)]
    else:
        repo = Path(__file__).resolve().parents[2]
        candidates = [d / VENV_DIRNAME / "bin" / "python" for d in (repo, Path.cwd())]
    for candidate in candidates:
        if candidate.exists():
            # Not resolved: a venv's python must be run through its venv path.
            return str(candidate)
    tried = ", ".join(str(c) for c in candidates)
    raise SynapseNotInstalled(
        f"no Synapse python found (tried {tried}). Install one with `make synapse` "
        f"(scripts/install-synapse.sh) or point {PYTHON_ENV} at a python that can "
        "`import synapse`."
    )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path.name}: missing)"
    return f"--- {path.name} (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


class LocalSynapse:
    """One Synapse process with its data in ``workdir``.

    The process is a plain ``subprocess.Popen`` in its own session rather than an asyncio
    subprocess: that is not tied to an event loop, so a session-wide synchronous pytest fixture
    and per-test event loops can share one instance. ``start()``/``stop()`` are the async
    spellings of ``start_blocking()``/``stop_blocking()``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        server_name: str = "localhost",
        port: int | None = None,
        registration_path: Path | None = None,
        python: str | None = None,
        default_room_version: str | None = None,
        metrics_port: int | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.python = find_synapse_python(python)
        self.workdir = Path(workdir).resolve()
        self.server_name = server_name
        # Chosen now so that url is known before start (e.g. for the bridge config).
        self.port = port or free_port()
        self.registration_path = registration_path
        self.default_room_version = default_room_version
        # A Prometheus listener (benchmarks read Synapse's CPU by servlet and background job).
        self.metrics_port = metrics_port
        # Top-level keys added to homeserver.yaml (e.g. oidc_providers, sso); set before start,
        # since Synapse reads its config only then.
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        # Random per instance; kept across restarts of the same instance.
        self.shared_secret = secrets.token_hex(32)
        self._macaroon_secret = secrets.token_hex(32)
        self._form_secret = secrets.token_hex(32)
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: Any = None
        self._started_at = 0.0
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "homeserver.log"

    @property
    def output_path(self) -> Path:
        # stdout/stderr: config errors are printed there before logging is set up.
        return self.workdir / "synapse.out"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- configuration ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        d = self.workdir
        cfg: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": f"{self.url}/",
            "pid_file": str(d / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    # No "federation" resource: no federation listener. The client resource
                    # also serves /_synapse/admin (shared-secret registration).
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
            "log_config": str(d / "log.config"),
            "media_store_path": str(d / "media_store"),
            "signing_key_path": str(d / "signing.key"),
            "registration_shared_secret": self.shared_secret,
            "macaroon_secret_key": self._macaroon_secret,
            "form_secret": self._form_secret,
            "report_stats": False,  # mandatory: Synapse refuses to start without it
            "enable_metrics": False,
            "enable_registration": False,
            "trusted_key_servers": [],  # never contact matrix.org
            "suppress_key_server_warning": True,
            "federation_domain_whitelist": [],
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            "app_service_config_files": (
                [str(Path(self.registration_path).resolve())] if self.registration_path else []
            ),
            # Appservice end-to-bridge encryption needs to-device messages and the transaction
            # extensions. Device masquerading is built in since Synapse 1.8x; the key is kept
            # for older versions and ignored by newer ones.
            "experimental_features": {
                "msc3202_device_masquerading": True,
                "msc3202_transaction_extensions": True,
                "msc2409_to_device_messages_enabled": True,
            },
            **_RATE_LIMITS,
        }
        if self.metrics_port:
            cfg["enable_metrics"] = True
            cfg["listeners"].append(
                {"port": self.metrics_port, "type": "metrics", "bind_addresses": ["127.0.0.1"]}
            )
        if self.default_room_version:
            cfg["default_room_version"] = str(self.default_room_version)
        cfg.update(self.extra_config)
        return cfg

    def log_config(self) -> dict[str, Any]:
        # WARNING only: INFO logs every request, which costs CPU in benchmarks.
        return {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                    "%(request)s - %(message)s"
                }
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filename": str(self.log_path),
                    "encoding": "utf8",
                }
            },
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }

    def write_config(self) -> Path:
        """Write homeserver.yaml and log.config. JSON is valid YAML and keeps the output
        deterministic without a YAML dependency."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "log.config").write_text(json.dumps(self.log_config(), indent=2) + "\n")
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        return self.config_path

    # --- process control -------------------------------------------------------------------

    def _spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"Synapse is already running at {self.url}")
        self.write_config()
        self._output = self.output_path.open("ab")
        # Synapse generates the missing signing key itself at start (checked with 1.163).
        self._proc = subprocess.Popen(
            [self.python, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: signals from the terminal skip it
        )
        # A crashed test run must not leave Synapse behind.
        atexit.register(self._kill_now)
        self._started_at = time.monotonic()

    def _ready(self) -> bool:
        """True once /versions answers 200; raises if the process has exited."""
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise self._start_error(f"Synapse exited with code {self._proc.returncode}")
        try:
            with urllib.request.urlopen(f"{self.url}/_matrix/client/versions", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _start_error(self, reason: str) -> SynapseStartError:
        return SynapseStartError(
            f"{reason} ({self.url}, workdir {self.workdir})\n"
            f"{_tail(self.log_path)}\n{_tail(self.output_path)}"
        )

    def _startup_timed_out(self, timeout: float) -> None:
        if time.monotonic() - self._started_at > timeout:
            self._kill_now()
            raise self._start_error(f"Synapse did not answer within {timeout:.0f} s")

    def start_blocking(self, timeout: float = START_TIMEOUT) -> None:
        self._spawn()
        while not self._ready():
            self._startup_timed_out(timeout)
            time.sleep(0.05)
        self.startup_seconds = time.monotonic() - self._started_at

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        self._spawn()
        while not await asyncio.to_thread(self._ready):
            self._startup_timed_out(timeout)
            await asyncio.sleep(0.05)
        self.startup_seconds = time.monotonic() - self._started_at

    def _signal(self, sig: int) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def _finish(self) -> None:
        atexit.unregister(self._kill_now)
        if self._output is not None:
            self._output.close()
            self._output = None

    def _kill_now(self) -> None:
        if self.running:
            self._signal(signal.SIGKILL)
            assert self._proc is not None
            self._proc.wait()
        self._finish()

    def stop_blocking(self, timeout: float = STOP_TIMEOUT) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
        self._finish()

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self._proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                await asyncio.to_thread(self._proc.wait)
        self._finish()

    async def __aenter__(self) -> LocalSynapse:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> LocalSynapse:
        self.start_blocking()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_blocking()

    # --- users -----------------------------------------------------------------------------

    def register_user_blocking(
        self, localpart: str, password: str, admin: bool = False
    ) -> tuple[str, str]:
        """Create a user with the shared-secret admin API; returns (user_id, access_token)."""
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        with urllib.request.urlopen(endpoint, timeout=10) as resp:
            nonce = json.load(resp)["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode()]))
        mac.update(b"\x00admin" if admin else b"\x00notadmin")
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        request = urllib.request.Request(
            endpoint,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                result = json.load(resp)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise RuntimeError(f"registering {localpart!r} failed: {e.code} {detail}") from e
        return result["user_id"], result["access_token"]

    async def register_user(
        self, localpart: str, password: str, admin: bool = False
    ) -> tuple[str, str]:
        # urllib in a thread: no aiohttp session to own, and it works from any event loop.
        return await asyncio.to_thread(self.register_user_blocking, localpart, password, admin)


# --- "Continue with Waldur": the bridge as the homeserver's OpenID Connect provider -----------

OIDC_IDP_ID = "waldur"
OIDC_CLIENT_ID = "synapse"


def oidc_provider_config(
    issuer: str, client_secret: str, *, site_name: str = "Waldur"
) -> dict[str, Any]:
    """Synapse's ``oidc_providers`` entry for the bridge's sign-in provider (README snippet).

    Discovery is lazy enough: Synapse 1.163 preloads the metadata in the background at start
    (a CRITICAL line when the bridge is not up yet) and fetches it again at the first login.
    """
    entry: dict[str, Any] = {
        "idp_id": OIDC_IDP_ID,
        "idp_name": site_name,
        "issuer": issuer,
        "client_id": OIDC_CLIENT_ID,
        "client_secret": client_secret,
        "scopes": ["openid", "profile"],
        "allow_existing_users": True,
        "enable_registration": False,
        "user_mapping_provider": {
            "config": {
                "localpart_template": "{{ user.preferred_username }}",
                "display_name_template": "{{ user.name }}",
            }
        },
    }
    if issuer.startswith("http://"):
        # Plain http on loopback (tests, demo): Synapse's checks of the discovery document
        # insist on https otherwise.
        entry["skip_verification"] = True
    return entry


def require_oidc(python: str) -> None:
    """Synapse's OIDC support needs authlib (the oidc extra); say so before Synapse refuses
    to start over the missing requirement."""
    probe = subprocess.run(
        [python, "-c", "import authlib"], capture_output=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        raise SynapseNotInstalled(
            f"{python} has Synapse without its oidc extra (authlib), which the sign-in "
            "provider's tests and the demo need: run `make synapse` (scripts/install-synapse.sh "
            "installs matrix-synapse[oidc]) or pip install 'matrix-synapse[oidc]' there."
        )


def oidc_callback(synapse_url: str) -> str:
    return f"{synapse_url.rstrip('/')}/_synapse/client/oidc/callback"


# --- an appservice registration for tests ------------------------------------------------------


def default_registration(
    as_port: int, tokens: dict[str, str], server_name: str = "localhost"
) -> dict[str, Any]:
    """The bridge's registration as the tests assume it until the bridge's own ``-g`` output
    replaces it: id ``waldur``, ghosts ``@waldur_*``, the bot ``@waldurbot``, aliases
    ``#waldur_*``, all exclusive. ``tokens`` holds as_token, hs_token and sender_localpart."""
    domain = server_name.replace(".", "\\.")
    return {
        "id": "waldur",
        "url": f"http://127.0.0.1:{as_port}",
        "as_token": tokens["as_token"],
        "hs_token": tokens["hs_token"],
        "sender_localpart": tokens["sender_localpart"],
        "rate_limited": False,
        "namespaces": {
            "users": [
                {"regex": f"^@waldur_.*:{domain}$", "exclusive": True},
                {"regex": f"^@waldurbot:{domain}$", "exclusive": True},
            ],
            "aliases": [{"regex": f"^#waldur_.*:{domain}$", "exclusive": True}],
            "rooms": [],
        },
    }


def write_registration(path: Path, registration: dict[str, Any]) -> Path:
    # JSON is valid YAML, so Synapse and the bridge can both read it.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(registration, indent=2) + "\n")
    return path


@dataclass
class AppserviceHomeserver:
    """A running Synapse that knows one appservice registration (what the test fixture gives)."""

    synapse: LocalSynapse
    registration: dict[str, Any]
    registration_path: Path
    as_port: int

    @property
    def url(self) -> str:
        return self.synapse.url

    @property
    def server_name(self) -> str:
        return self.synapse.server_name

    @property
    def shared_secret(self) -> str:
        return self.synapse.shared_secret

    @property
    def as_id(self) -> str:
        return str(self.registration["id"])

    @property
    def as_token(self) -> str:
        return str(self.registration["as_token"])

    @property
    def hs_token(self) -> str:
        return str(self.registration["hs_token"])

    @property
    def sender_localpart(self) -> str:
        return str(self.registration["sender_localpart"])

    async def register_user(
        self, localpart: str, password: str, admin: bool = False
    ) -> tuple[str, str]:
        return await self.synapse.register_user(localpart, password, admin)
