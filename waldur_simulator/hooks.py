"""Web hook delivery the way Waldur's Celery task does it: one plain POST per active hook, no
signature, no retries, failures only logged (a hook sent while the receiver is down is lost for
good). The current generation delivers after a short delay, in the background, so the HTTP
request that caused the event has answered first (Celery on commit); 7.0 posts inside the
request (the server waits for the delivery before answering)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp

from .models import Event, Hook
from .state import SimulatorState

log = logging.getLogger(__name__)

# What `requests.post(url, json=payload)` sends from Waldur's worker.
_HEADERS = {
    "User-Agent": "python-requests/2.32.3",
    "Accept-Encoding": "gzip, deflate",
    "Accept": "*/*",
    "Connection": "keep-alive",
}

# Event types Waldur 7.0 records but never delivers to web hooks.
_NOT_HOOKED_70 = frozenset({"user_deactivated"})


@dataclass
class HookDelivery:
    hook_uuid: str
    url: str
    event_type: str
    status: int | None  # HTTP status; None when the POST failed
    error: str | None
    at: float


class HookDispatcher:
    def __init__(self, state: SimulatorState, *, delay: float = 0.05, timeout: float = 10.0):
        self.state = state
        self.delay = delay
        self.timeout = timeout
        # Waldur 7.0 sometimes never delivers organization-scope role events (on-commit race).
        self.drop_customer_role_events = False
        self.stats = {"delivered": 0, "failed": 0, "dropped": 0}
        self.deliveries: deque[HookDelivery] = deque(maxlen=10_000)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )
        self.state.listeners.append(self.on_event)

    async def stop(self) -> None:
        if self.on_event in self.state.listeners:
            self.state.listeners.remove(self.on_event)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def drain(self, timeout: float = 15.0) -> None:
        """Wait until every delivery scheduled so far has finished."""
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=deadline - time.monotonic())

    @property
    def pending(self) -> int:
        return len(self._tasks)

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        return set(self._tasks)

    async def wait_for(self, tasks: set[asyncio.Task[None]]) -> None:
        """Wait for these deliveries (bounded by the POST timeout, like Waldur's worker)."""
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout + self.delay)

    def on_event(self, event: Event) -> None:
        hooks = [
            h
            for h in self.state.hooks.values()
            if h.is_active and event.event_type in h.event_types and self._visible(h, event)
        ]
        if not hooks or self._session is None:
            return
        if self.state.generation == "7.0" and event.event_type in _NOT_HOOKED_70:
            # Seen live on 7.0.7: logged (the events API has it) but never posted to hooks.
            self.stats["dropped"] += len(hooks)
            return
        if (
            self.drop_customer_role_events
            and event.event_type.startswith("role_")
            and event.context.get("scope_type") == "customer"
        ):
            self.stats["dropped"] += len(hooks)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # changed from a thread without the server's loop
            self.stats["dropped"] += len(hooks)
            return
        task = loop.create_task(self._deliver(event, hooks))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _visible(self, hook: Hook, event: Event) -> bool:
        # Waldur sends only events whose feed scopes the hook owner may see; staff see all.
        return self.state.can_see_all(hook.user) or hook.user.uuid in event.feeds

    async def _deliver(self, event: Event, hooks: list[Hook]) -> None:
        await asyncio.sleep(self.delay)
        payload = {
            "created": event.created.isoformat(),  # "+00:00", unlike the events API's "Z"
            "message": event.message,
            "context": event.context,
            "event_type": event.event_type,
        }
        for hook in hooks:  # one task per event, hooks in turn, like process_event
            await self._post(hook, event, payload)
            hook.last_published = self.state.now()

    async def _post(self, hook: Hook, event: Event, payload: dict[str, object]) -> None:
        assert self._session is not None
        headers = dict(_HEADERS)
        if hook.content_type == "form":
            # requests' data=dict iterates a nested dict, so context degrades to its keys.
            pairs: list[tuple[str, str]] = []
            for key, value in payload.items():
                values = list(value) if isinstance(value, dict) else [value]
                pairs.extend((key, str(v)) for v in values)
            body = urlencode(pairs).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.post(
                hook.destination_url, data=body, headers=headers
            ) as resp:
                await resp.read()
                status: int | None = resp.status
                error = None
            self.stats["delivered"] += 1
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
            self.stats["failed"] += 1
            log.warning(
                "web hook %s to %s failed: %s", event.event_type, hook.destination_url, error
            )
        self.deliveries.append(
            HookDelivery(
                hook.uuid, hook.destination_url, event.event_type, status, error, time.time()
            )
        )
