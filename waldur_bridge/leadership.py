"""Which instance acts: with PostgreSQL any number of instances run, exactly one is active (it
holds a session-level advisory lock on a dedicated connection) and the others wait as standbys;
with SQLite only one process may use the database file.

A standby answers `/_matrix/mau/live` but not `/_matrix/mau/ready`, and answers every other
request (transactions, web hooks, provisioning) with 503, so the homeserver keeps its
transactions and retries them; it makes no homeserver writes and reads nothing from Waldur.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from mautrix.api import Method, Path
from mautrix.errors import MatrixRequestError
from mautrix.util.opt_prometheus import Counter, Gauge
from yarl import URL

from .db import BridgeInstance
from .db.base import now_ms

if TYPE_CHECKING:
    from .__main__ import WaldurBridge

log = logging.getLogger("waldur.leadership")

ACTIVE = Gauge("waldur_bridge_active", "1 while this instance is the active one, else 0")
TAKEOVERS = Counter("waldur_bridge_takeovers_total", "Times this instance became the active one")


def _lock_key(name: str) -> int:
    # A fixed 64-bit key derived from a name, so no other application's small integer keys
    # collide with it. Advisory locks are per database, so deployments on other databases
    # never see each other's lock.
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


LEADER_KEY = _lock_key("waldur-matrix-bridge leadership")
MIGRATION_KEY = _lock_key("waldur-matrix-bridge schema upgrade")

# Exit codes: another process already uses the SQLite file; this instance lost leadership.
EXIT_SQLITE_IN_USE = 13
EXIT_STEPPED_DOWN = 75  # EX_TEMPFAIL: the supervisor restarts it, and it comes back as a standby

HEARTBEAT_INTERVAL = 5.0
# Instances whose last heartbeat is older than this are not listed as running.
HEARTBEAT_VISIBLE_MS = int(HEARTBEAT_INTERVAL * 3 * 1000)
# Rows of instances that died without a clean stop are dropped after a day.
HEARTBEAT_FORGET_MS = 24 * 3600 * 1000

# The dedicated lock connection tells the database server to notice a vanished peer within about
# ten seconds (lost node, cut network), so its lock is freed for a standby in that time.
LOCK_CONNECTION_SETTINGS = {
    "application_name": "waldur-bridge leadership",
    "tcp_keepalives_idle": "4",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
}

# The probes a standby answers: alive, not ready.
LIVE = "/_matrix/mau/live"
READY = "/_matrix/mau/ready"


class AnotherInstance(RuntimeError):
    """Another process holds the SQLite database."""


@dataclass(frozen=True)
class Instance:
    """This process, as other instances and `diagnose` see it."""

    host: str
    pid: int
    address: str
    instance_id: str = field(default="")
    started_at: int = field(default_factory=now_ms)

    @classmethod
    def this_process(cls, address: str) -> Instance:
        host, pid = socket.gethostname(), os.getpid()
        return cls(host, pid, address, f"{host}:{pid}:{os.urandom(3).hex()}")

    def describe(self) -> str:
        return f"host {self.host}, PID {self.pid}"


def sqlite_path(database_url: str) -> str | None:
    """The file of a `sqlite:` database URL (as mautrix reads it), None for memory or others."""
    url = URL(database_url)
    if url.scheme not in ("sqlite", "sqlite3"):
        return None
    path = url.path
    if not path or path == ":memory:" or "mode=memory" in url.query_string:
        return None
    return path


def is_postgres(database_url: str) -> bool:
    return URL(database_url).scheme in ("postgres", "postgresql")


class SqliteInstanceLock:
    """An exclusive lock file next to the SQLite database (`<database>.lock`).

    flock(2) rather than a row in the database: the kernel drops the lock when the process dies,
    also on kill -9, so a crash never leaves a stale lock behind, and nothing has to judge
    whether a recorded PID is still alive. The file only carries the holder's host and PID for
    the error message. SQLite itself cannot be shared between hosts, so a host-local lock is
    enough.
    """

    def __init__(self, database_path: str) -> None:
        self.database_path = database_path
        self.path = f"{database_path}.lock"
        self._fd: int | None = None

    def acquire(self, instance: Instance) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AnotherInstance(
                f"Another waldur-bridge instance ({holder}) already uses the SQLite database "
                f"{self.database_path}; stop it first. Several instances need PostgreSQL "
                "(appservice.database: postgres://...)."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{instance.describe()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            # Closing drops the lock; the file stays (removing it would race a new holder).
            os.close(self._fd)
            self._fd = None


class Leadership:
    """Decides and tracks whether this instance is the active one."""

    def __init__(
        self,
        database_url: str,
        instance: Instance,
        *,
        lock_wait: float = 10.0,
        check_interval: float = 2.0,
        on_lost: Callable[[], None] = lambda: None,
        on_active: Callable[[], None] = lambda: None,
    ) -> None:
        self.database_url = database_url
        self.instance = instance
        self.lock_wait = lock_wait
        self.check_interval = check_interval
        self.on_lost = on_lost
        self.on_active = on_active
        self.active = False
        self.shared = is_postgres(database_url)
        path = sqlite_path(database_url)
        self._sqlite_lock = SqliteInstanceLock(path) if path else None
        self._conn: Any = None  # asyncpg.Connection holding the leader lock
        self._watch_task: asyncio.Task | None = None
        self._heartbeat_task: asyncio.Task | None = None
        self._released = False
        ACTIVE.set(0)

    # region database claim (before the schema upgrade)

    @contextlib.asynccontextmanager
    async def claim_database(self) -> AsyncIterator[None]:
        """SQLite: take the file lock or raise AnotherInstance. PostgreSQL: let one instance at a
        time upgrade the schema, so instances started together do not race."""
        if self._sqlite_lock is not None:
            self._sqlite_lock.acquire(self.instance)
        if not self.shared:
            yield
            return
        conn = await self._connect()
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_KEY)
            yield
        finally:
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_KEY)
            await conn.close()

    async def _connect(self, **settings: str) -> Any:
        import asyncpg

        return await asyncpg.connect(
            self.database_url,
            server_settings={**LOCK_CONNECTION_SETTINGS, **settings},
            timeout=10,
        )

    # endregion
    # region becoming active

    async def wait_until_active(self) -> None:
        """Return once this instance is the active one (at once without PostgreSQL)."""
        self._start_heartbeats()
        if self.shared:
            await self._acquire_leader_lock()
        self.active = True
        ACTIVE.set(1)
        TAKEOVERS.inc()
        with contextlib.suppress(Exception):
            await self._heartbeat()  # diagnose shows the new role at once
        if self.shared:
            log.info("This instance (%s) is now the active one", self.instance.describe())
        self.on_active()

    async def _acquire_leader_lock(self) -> None:
        import asyncpg

        # The standby waits inside pg_advisory_lock: the database grants the lock the moment
        # the active instance's session ends (a clean stop, or its process killed), with no
        # polling delay. lock_timeout ends each wait after lock_wait seconds, so a dead
        # database connection is noticed and replaced.
        logged_waiting = False
        last_problem = ""
        backoff = 1.0
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await self._connect(
                        lock_timeout=f"{int(self.lock_wait * 1000)}ms"
                    )
                got = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_KEY)
                if not got:
                    if not logged_waiting:
                        log.info(
                            "Another instance is active; this one (%s) waits as a standby",
                            self.instance.describe(),
                        )
                        logged_waiting = True
                    await self._conn.execute("SELECT pg_advisory_lock($1)", LEADER_KEY)
            except asyncpg.LockNotAvailableError:
                continue  # lock_timeout: the connection works, wait again
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                problem = f"{type(e).__name__}: {e}"
                if problem != last_problem:
                    log.warning(
                        "Standby cannot reach the database to check for leadership (%s); "
                        "retrying. Check appservice.database and the database server.",
                        problem,
                    )
                    last_problem = problem
                await self._close_conn()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            break
        if last_problem:
            log.info("The database is reachable again")
        self._conn.add_termination_listener(self._on_connection_closed)
        self._watch_task = asyncio.create_task(self._watch(), name="leadership-watch")

    # endregion
    # region keeping it

    def _on_connection_closed(self, _conn: Any) -> None:
        self._lose("the database closed the connection that holds the leader lock")

    async def _watch(self) -> None:
        """Check the lock connection often: a cut network shows up here before the database
        server frees the lock for another instance (its keepalive settings give ~10 s)."""
        q = """
            SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                           AND pid = pg_backend_pid() AND classid = $1 AND objid = $2)
        """
        classid, objid = (LEADER_KEY >> 32) & 0xFFFFFFFF, LEADER_KEY & 0xFFFFFFFF
        while self.active:
            await asyncio.sleep(self.check_interval)
            try:
                held = await asyncio.wait_for(
                    self._conn.fetchval(q, classid, objid), self.check_interval
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._lose(f"the leader lock connection failed a check ({type(e).__name__}: {e})")
                return
            if not held:
                self._lose("the database no longer lists the leader lock as held")
                return

    def _lose(self, reason: str) -> None:
        if not self.active or self._released:
            return
        self.active = False
        ACTIVE.set(0)
        log.error(
            "Stepping down: %s. This instance stops acting at once and exits (code %d) so that "
            "its supervisor restarts it as a standby; check the database connection.",
            reason,
            EXIT_STEPPED_DOWN,
        )
        self.on_lost()

    # endregion
    # region heartbeats (for diagnose)

    def _start_heartbeats(self) -> None:
        if self._heartbeat_task is None:
            self._heartbeat_task = asyncio.create_task(self._heartbeats(), name="heartbeats")

    async def _heartbeat(self) -> None:
        i = self.instance
        role = "active" if self.active else "standby"
        await BridgeInstance.beat(i.instance_id, i.host, i.pid, i.address, role, i.started_at)

    async def _heartbeats(self) -> None:
        beats = 0
        while True:
            try:
                await self._heartbeat()
                if beats % 100 == 0:
                    await BridgeInstance.forget_older_than(HEARTBEAT_FORGET_MS)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Only diagnose reads these rows; the lock decides who acts.
                log.debug("Heartbeat not written: %s", e)
            beats += 1
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    # endregion
    def lock_backend_pid(self) -> int | None:
        """The PostgreSQL backend PID of the connection holding (or waiting for) the lock, for
        diagnose to compare with the lock's holder in pg_locks."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return None
        return conn.get_server_pid()

    # region stepping down on purpose

    def stand_down(self) -> None:
        """Stop accepting work at once (a clean stop begins); the lock is kept until release."""
        if self.active:
            self.active = False
            ACTIVE.set(0)
        if self._heartbeat_task is not None:
            # The pool closes during the stop; the row goes in release().
            self._heartbeat_task.cancel()

    async def release(self) -> None:
        """Free the lock (last step of a clean stop), so a standby takes over."""
        self._released = True
        self.stand_down()
        for task in (self._watch_task, self._heartbeat_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._watch_task = self._heartbeat_task = None
        if self._conn is not None and not self._conn.is_closed():
            # Through the lock connection: the bridge's pool is closed by now.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._conn.execute(
                        "DELETE FROM bridge_instance WHERE instance_id=$1",
                        self.instance.instance_id,
                    ),
                    5,
                )
        await self._close_conn()
        if self._sqlite_lock is not None:
            self._sqlite_lock.release()

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.remove_termination_listener(self._on_connection_closed)
        with contextlib.suppress(Exception):
            # Closing the session frees its advisory locks on the server.
            await asyncio.wait_for(conn.close(), 5)
        if not conn.is_closed():
            conn.terminate()

    # endregion


# region wiring into the bridge


def standby_gate(leadership: Leadership) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware: only the active instance handles requests besides the probes."""

    @web.middleware
    async def gate(request: web.Request, handler: Callable) -> web.StreamResponse:
        if leadership.active or request.path == LIVE:
            return await handler(request)
        if request.path == READY:
            # mautrix answers 500 before it is ready; load balancers expect 503 from a standby.
            return web.json_response({}, status=503)
        # The homeserver keeps a refused transaction and retries it; nothing is recorded here.
        return web.json_response(
            {"errcode": "M_UNKNOWN", "error": "This bridge instance is a standby; try again."},
            status=503,
            headers={"Retry-After": "5"},
        )

    return gate


async def ping_until_reachable(bridge: WaldurBridge, grace: float) -> int | None:
    """Ping the homeserver until it reaches this instance (or grace runs out).

    Behind a readiness-routing load balancer the homeserver reaches a new active instance only
    after the balancer has seen it ready; a successful ping also makes Synapse retry the
    transactions it queued during the takeover at once instead of after its backoff. When grace
    runs out, the framework's own start-up check reports the problem. Returns the round trip
    in ms, None when the homeserver was not reached.
    """
    deadline = time.monotonic() + grace
    delay = 0.5
    told = False
    intent = bridge.az.intent
    while True:
        try:
            # Without the client's own retries (4 s, 8 s, ...): this loop paces the attempts.
            resp = await intent.api.request(
                Method.POST, Path.v1.appservice[bridge.az.id].ping, content={}, retry_count=0
            )
            duration = int(resp.get("duration_ms") or -1)
        except MatrixRequestError as e:
            if e.errcode in ("M_UNKNOWN_TOKEN", "M_FORBIDDEN", "M_UNRECOGNIZED"):
                return None  # not a reachability problem: the start-up check names it
            problem = f"{e.errcode} {e.message}"
        except Exception as e:
            problem = f"{type(e).__name__}: {e}"
        else:
            log.info("The homeserver reaches this instance (ping round trip %s ms)", duration)
            return duration
        if time.monotonic() + delay > deadline:
            return None
        if not told:
            log.info(
                "Waiting for the homeserver to reach this instance through appservice.address "
                "(%s); a load balancer routes to it once it reports ready",
                problem,
            )
            told = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def install(bridge: WaldurBridge) -> Leadership:
    """Create the bridge's Leadership and hook it into the appservice and its start-up."""
    config = bridge.config
    leadership = Leadership(
        config["appservice.database"],
        Instance.this_process(config["appservice.address"]),
        lock_wait=float(config["high_availability.lock_wait"]),
        check_interval=float(config["high_availability.check_interval"]),
        on_lost=lambda: _stop_after_losing(bridge),
        on_active=lambda: setattr(bridge.az, "ready", True),
    )
    bridge.az.app.middlewares.append(standby_gate(leadership))
    original_wait = bridge.matrix.wait_for_connection
    grace = float(config["high_availability.ping_grace"])

    async def wait_for_connection() -> None:
        # Everything that needs the homeserver, or needs it to reach this instance, starts here:
        # a standby waits with its HTTP server up (live, not ready) until it is the active one.
        if config["metrics.enabled"] and getattr(bridge, "_automatic_prometheus", False):
            bridge.start_prometheus()  # so a standby reports waldur_bridge_active 0 too
            bridge._automatic_prometheus = False
        await leadership.wait_until_active()
        if leadership.shared:
            # The start-up check then skips its own ping: Synapse 1.163 answers a ping that
            # comes while it still retries the queued transactions with 502 (its force_retry
            # cancels a timer twice).
            bridge.reachable_ping_ms = await ping_until_reachable(bridge, grace)
        await original_wait()

    bridge.matrix.wait_for_connection = wait_for_connection  # type: ignore[method-assign]
    return leadership


_step_downs: set[asyncio.Future] = set()


def _stop_after_losing(bridge: WaldurBridge) -> None:
    bridge.az.ready = False
    # Another instance may be active already: cut the reconciles in progress now rather than
    # letting them finish as a clean stop does.
    if hasattr(bridge, "sync"):
        task = asyncio.ensure_future(bridge.sync.stop(grace=0))
        _step_downs.add(task)  # a reference, so the task is not collected before it ran
        task.add_done_callback(_step_downs.discard)
    start_task = getattr(bridge, "_start_task", None)
    if start_task is not None and not start_task.done():
        start_task.cancel()
    stop_task = getattr(bridge, "_stop_task", None)
    if stop_task is not None and not stop_task.done():
        stop_task.set_result(EXIT_STEPPED_DOWN)


async def describe_instances() -> str:
    """The active instance and the standbys that sent a heartbeat lately, for diagnose."""
    rows = await BridgeInstance.seen_within(HEARTBEAT_VISIBLE_MS)
    active = [r for r in rows if r.role == "active"]
    standby = [r for r in rows if r.role != "active"]

    def name(r: Any) -> str:
        return f"{r.host} (PID {r.pid})"

    parts = [
        "active: " + (", ".join(map(name, active)) if active else "none"),
        "standby: " + (", ".join(map(name, standby)) if standby else "none"),
    ]
    return "; ".join(parts)


# endregion
