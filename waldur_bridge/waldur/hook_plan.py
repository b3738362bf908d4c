"""Which of Waldur's web hooks are the bridge's own, and what to do with them.

The bridge's hooks are marked by their URL's path, which ends in the fixed prefix and the
secret (``waldur.webhook.path_prefix`` + ``/`` + ``waldur.webhook.secret``): nobody else knows
the secret, so a hook with that path is this bridge's whatever host it names. When
``appservice.address`` (or ``waldur.webhook.public_url``) changes, the old hook is moved to the
new URL in place and any further copies are deleted, instead of leaving hooks that post to a
dead address. Hooks with another path (another bridge's, an operator's) are never touched.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from yarl import URL

from .records import WebHook

__all__ = ["HookPlan", "plan_hooks", "shown_origin"]


@dataclass(frozen=True)
class HookPlan:
    keep: WebHook | None = None  # already right: nothing to do
    update: WebHook | None = None  # the bridge's hook, to be set to the URL, types and active
    create: bool = False  # the bridge has no hook yet
    stale: tuple[WebHook, ...] = ()  # further copies of the bridge's hook: to delete


def _path(url: str) -> str:
    try:
        return URL(url).path
    except ValueError:
        return ""


def plan_hooks(hooks: Iterable[WebHook], url: str, wanted: Collection[str]) -> HookPlan:
    """What to change so that exactly one active hook posts ``wanted`` to ``url``."""
    mark = _path(url)
    ours = [h for h in hooks if mark and _path(h.destination_url).endswith(mark)]
    if not ours:
        return HookPlan(create=True)
    # The one at the right URL (and active) stays; otherwise the first one is moved.
    ours.sort(key=lambda h: (h.destination_url != url, not h.is_active))
    first, rest = ours[0], tuple(ours[1:])
    right = (
        first.destination_url == url and first.is_active and set(first.event_types) == set(wanted)
    )
    if right:
        return HookPlan(keep=first, stale=rest)
    return HookPlan(update=first, stale=rest)


def shown_origin(url: str) -> str:
    """A hook URL for a log line: its origin only (the path holds the secret)."""
    try:
        return str(URL(url).origin())
    except ValueError:
        return "(unparsable URL)"
