"""`WaldurSimulator`: the state and control API plus an aiohttp server, fault injection,
request accounting and web hook delivery."""

from __future__ import annotations

import email.utils
import re
import time
from collections import Counter, deque
from dataclasses import dataclass

from aiohttp import web

from .app import Handler, WaldurApi
from .faults import DroppedConnection, Faults
from .hooks import HookDelivery, HookDispatcher
from .state import SimulatorState

_UUID_IN_PATH = re.compile(r"/[0-9a-fA-F]{32}(?=/)|/[0-9a-fA-F-]{36}(?=/)")


@dataclass
class RequestRecord:
    method: str
    path: str
    query: str
    status: int  # 0 when the connection was dropped
    duration: float
    at: float


class WaldurSimulator(SimulatorState):
    """A simulated Waldur. Use the control API (inherited from SimulatorState) to change it."""

    def __init__(
        self,
        generation: str = "current",
        *,
        seed: int | None = None,
        hook_delay: float | None = None,
        hook_timeout: float = 10.0,
    ) -> None:
        super().__init__(generation, seed=seed)
        self.faults = Faults()
        self.request_log: deque[RequestRecord] = deque(maxlen=200_000)
        # "GET /api/projects/{uuid}/list_users/" -> count, for benchmark reports.
        self.request_counts: Counter[str] = Counter()
        if hook_delay is None:
            # 7.0 posts within the request (about 20 ms); the current one after commit.
            hook_delay = 0.02 if generation == "7.0" else 0.05
        self.hook_dispatcher = HookDispatcher(self, delay=hook_delay, timeout=hook_timeout)
        self.api = WaldurApi(self)
        self._runner: web.AppRunner | None = None
        self.url = ""
        # Seconds the Date header of every answer is off by (a skewed server clock).
        self.date_offset = 0.0

    # ------------------------------------------------------------------ lifecycle

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_middleware, self.api.auth_middleware])
        app.add_routes(self.api.routes())
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 = any free port); returns and sets `.url`."""
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        await self.hook_dispatcher.start()
        return self.url

    async def stop(self) -> None:
        await self.hook_dispatcher.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WaldurSimulator:
        if not self.url:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ hooks

    @property
    def drop_customer_role_hooks(self) -> bool:
        """Reproduce 7.0's lost hook deliveries for organization-scope role events."""
        return self.hook_dispatcher.drop_customer_role_events

    @drop_customer_role_hooks.setter
    def drop_customer_role_hooks(self, value: bool) -> None:
        self.hook_dispatcher.drop_customer_role_events = value

    @property
    def hook_stats(self) -> dict[str, int]:
        return self.hook_dispatcher.stats

    @property
    def hook_deliveries(self) -> deque[HookDelivery]:
        return self.hook_dispatcher.deliveries

    async def drain_hooks(self, timeout: float = 15.0) -> None:
        """Wait for every web hook delivery scheduled so far."""
        await self.hook_dispatcher.drain(timeout)

    # ------------------------------------------------------------------ accounting

    @property
    def total_requests(self) -> int:
        return sum(self.request_counts.values())

    def reset_request_log(self) -> None:
        self.request_log.clear()
        self.request_counts.clear()

    @web.middleware
    async def _record_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        started = time.perf_counter()
        status = 0
        try:
            response = await self.faults.apply(request)
            if response is None:
                before = set(self.hook_dispatcher.tasks)
                response = await handler(request)
                if self.generation == "7.0" and request.method != "GET":
                    # Seen live on 7.0.7: hooks are posted inside the API request (15-26 ms
                    # after the change), so the caller's answer waits for them.
                    await self.hook_dispatcher.wait_for(self.hook_dispatcher.tasks - before)
            status = response.status
            if self.date_offset:
                # A server whose clock is off: its Date header says so (diagnose reads it).
                response.headers["Date"] = email.utils.formatdate(
                    time.time() + self.date_offset, usegmt=True
                )
            return response
        except DroppedConnection:
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPInternalServerError() from None  # never written: socket is gone
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            key = f"{request.method} {_UUID_IN_PATH.sub('/{uuid}', request.path)}"
            self.request_counts[key] += 1
            self.request_log.append(
                RequestRecord(
                    request.method,
                    request.path,
                    request.query_string,
                    status,
                    time.perf_counter() - started,
                    time.time(),
                )
            )
