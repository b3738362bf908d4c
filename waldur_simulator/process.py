"""The Waldur simulator in a child process, driven through a pipe.

Benchmarks use it so that the bridge's memory and CPU are measured alone: a seeded world of
100,000 grants costs the simulator hundreds of MB, and serving its listings costs CPU that
would otherwise be counted as the bridge's. Every control call of `WaldurSimulator`
(`grant`, `add_hook`, `drain_hooks`, ...) is available through `call`, plus `seed_bulk` and
`stats` (request counts, busy time, the child's RSS and CPU).
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import os
import resource
from multiprocessing.connection import Connection
from typing import Any

from .seed import seed_bulk
from .server import WaldurSimulator


class SimulatorError(RuntimeError):
    """A control call failed in the child process (its message names the call)."""


class SimulatorProcess:
    """`await start()`, then `await call("grant", user, project, role)`; `await stop()`."""

    def __init__(
        self, generation: str = "current", *, seed: int | None = None, hook_delay: float = 0.05
    ) -> None:
        self.generation = generation
        self._options = {"seed": seed, "hook_delay": hook_delay}
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        self.url = ""
        self.staff_token = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, timeout: float = 60) -> str:
        # spawn: a fresh interpreter, nothing of the parent's event loop or memory inherited.
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=_child_main,
            args=(child, self.generation, self._options),
            name="waldur-simulator",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._conn = parent
        info = await self._receive(timeout)
        self.url, self.staff_token = info["url"], info["staff_token"]
        return self.url

    async def call(self, method: str, *args: Any, timeout: float = 600, **kwargs: Any) -> Any:
        """Run `method` on the child's simulator (awaited if a coroutine) and return its result."""
        if self._conn is None:
            raise SimulatorError("the simulator process is not running")
        async with self._lock:  # one call at a time: replies come back in order
            self._conn.send((method, args, kwargs))
            return await self._receive(timeout)

    async def drain_hooks(self, timeout: float = 15.0) -> None:
        """Wait for every web hook delivery scheduled so far (as `WaldurSimulator`)."""
        await self.call("drain_hooks", timeout, timeout=timeout + 30)

    async def _receive(self, timeout: float) -> Any:
        assert self._conn is not None
        conn = self._conn
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(conn.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, timeout)
        finally:
            loop.remove_reader(conn.fileno())
        try:
            status, value = conn.recv()
        except EOFError:
            raise SimulatorError("the simulator process exited (see its output above)") from None
        if status == "error":
            raise SimulatorError(value)
        return value

    async def stop(self) -> None:
        if self._conn is not None:
            try:
                await self.call("shutdown", timeout=30)
            except (SimulatorError, OSError, EOFError, TimeoutError):
                pass
            self._conn.close()
            self._conn = None
        if self._process is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._process.join, 10)
            if self._process.is_alive():
                self._process.kill()
            self._process = None


def _child_main(conn: Connection, generation: str, options: dict[str, Any]) -> None:
    asyncio.run(_serve(conn, generation, options))


async def _serve(conn: Connection, generation: str, options: dict[str, Any]) -> None:
    sim = WaldurSimulator(generation, **options)
    await sim.start()
    conn.send(("ok", {"url": sim.url, "staff_token": sim.staff_token}))
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple[str, tuple, dict]] = asyncio.Queue()

    def readable() -> None:
        try:
            commands.put_nowait(conn.recv())
        except (EOFError, OSError):
            commands.put_nowait(("shutdown", (), {}))

    loop.add_reader(conn.fileno(), readable)
    try:
        while True:
            method, args, kwargs = await commands.get()
            if method == "shutdown":
                conn.send(("ok", None))
                return
            try:
                result = _extra(sim, method, args, kwargs)
                if result is _NOT_EXTRA:
                    result = getattr(sim, method)(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                conn.send(("ok", result))
            except Exception as e:
                conn.send(("error", f"{method}: {type(e).__name__}: {e}"))
    finally:
        loop.remove_reader(conn.fileno())
        await sim.stop()


_NOT_EXTRA = object()


def _extra(sim: WaldurSimulator, method: str, args: tuple, kwargs: dict) -> Any:
    """Calls that are not simulator methods: bulk seeding and accounting."""
    if method == "seed_bulk":
        return seed_bulk(sim, *args, **kwargs)
    if method == "stats":
        times = os.times()
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        return {
            "request_counts": dict(sim.request_counts),
            "requests": sim.total_requests,
            "busy_seconds": sum(r.duration for r in sim.request_log),
            "rss_mb": round(rss, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpu_seconds": round(times.user + times.system, 2),
        }
    return _NOT_EXTRA
