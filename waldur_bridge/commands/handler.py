"""The command plumbing: replies as threaded notices, the commands mautrix ships that do not
fit this bridge removed, per-room rate limits and argument parsing."""

from __future__ import annotations

import shlex
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mautrix.bridge.commands import CommandEvent, CommandProcessor, HelpSection
from mautrix.bridge.commands.handler import command_handlers
from mautrix.types import (
    EventID,
    Format,
    InReplyTo,
    MessageType,
    RelatesTo,
    TextMessageEventContent,
)
from mautrix.util import markdown

from ..messages import Reply

if TYPE_CHECKING:
    from ..__main__ import WaldurBridge
    from ..portal import Portal
    from ..user import User

SECTION_ROOM = HelpSection("Project room", 0, "")
SECTION_ROOMS = HelpSection("Portals", 10, "")
SECTION_PEOPLE = HelpSection("People", 20, "")
SECTION_SAFETY = HelpSection("Held removals", 30, "")
SECTION_BRIDGE = HelpSection("Bridge", 40, "")

# mautrix registers these on import. They are about remote-network logins, relays, avatars or
# manual portal surgery, none of which this bridge has; the built-in unbridge is not even
# admin-only. Our own help, version and unknown-command replace theirs.
UNWANTED_BUILTINS = (
    "cancel",
    "unbridge",
    "delete-portal",
    "set-pl",
    "set-avatar",
    "remove-avatar",
    "set-displayname",
    "remove-displayname",
    "clean-rooms",
    "discard-megolm-session",
    "login-matrix",
    "logout-matrix",
    "ping-matrix",
    "open-manhole",
    "close-manhole",
    "set-relay",
    "unset-relay",
)


def remove_builtins() -> None:
    for name in UNWANTED_BUILTINS:
        command_handlers.pop(name, None)


class CommandError(Exception):
    """A command cannot go on; the message is shown to the sender as is (Markdown)."""


class RateLimiter:
    """At most `limit` replies per room in any 60 seconds."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._sent: dict[str, deque[float]] = defaultdict(deque)

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        sent = self._sent[key]
        while sent and now - sent[0] >= self.window:
            sent.popleft()
        if len(sent) >= self.limit:
            return False
        sent.append(now)
        return True


def parse_args(args: list[str]) -> tuple[list[str], dict[str, str | bool]]:
    """Positional arguments and --options (`--reason "text"`, `--dry-run`), quotes honoured."""
    try:
        words = shlex.split(" ".join(args))
    except ValueError as e:
        raise CommandError(f"Could not read the arguments: {e}.") from e
    positional: list[str] = []
    options: dict[str, str | bool] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            name = word[2:]
            if "=" in name:
                name, value = name.split("=", 1)
                options[name] = value
            elif i + 1 < len(words) and not words[i + 1].startswith("--"):
                if name in FLAG_OPTIONS:
                    options[name] = True
                else:
                    options[name] = words[i + 1]
                    i += 1
            else:
                options[name] = True
        else:
            positional.append(word)
        i += 1
    return positional, options


FLAG_OPTIONS = frozenset({"dry-run", "export", "exact"})


class WaldurCommandProcessor(CommandProcessor):
    """Turns a CommandError from any handler into a reply to the sender."""

    @staticmethod
    async def _run_handler(handler: Callable[[CommandEvent], Awaitable[Any]], evt: Any) -> Any:
        try:
            return await handler(evt)
        except CommandError as e:
            return await evt.reply(str(e))


class WaldurCommandEvent(CommandEvent):
    bridge: WaldurBridge
    sender: User
    portal: Portal | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.is_management = self.bridge.management.is_management_room(self.room_id) or (
            self.is_management and self.portal is None
        )

    async def send(self, reply: Reply) -> EventID:
        """Send a reply: an m.notice in reply to the command, with HTML, mentioning nobody."""
        content = TextMessageEventContent(
            msgtype=MessageType.NOTICE,
            body=reply.markdown,
            format=Format.HTML,
            formatted_body=reply.html,
            relates_to=RelatesTo(in_reply_to=InReplyTo(event_id=self.event_id)),
        )
        # Names from Waldur must never ping anyone (old clients match display names in bodies).
        content["m.mentions"] = {}
        return await self.bridge.matrix.send_bot_message(self.room_id, content)

    def reply(self, message: str, allow_html: bool = False, render_markdown: bool = True) -> Any:
        """Trusted Markdown written by the bridge (admin replies, framework errors)."""
        message = self._replace_command_prefix(message)
        html = markdown.render(message, allow_html=allow_html) if render_markdown else None
        return self.send(Reply(message, html or message))
