"""Logging that operators can read and that leaks nothing.

- Every record is scrubbed of secrets when it is made (message, arguments, traceback): the
  configured tokens and web hook secret by value, and by shape anything that carries a token
  (``access_token=`` in a query, ``Authorization`` headers, Synapse/MAS access tokens, the path
  under the web hook prefix). A record factory rather than a handler filter, so handlers added
  later (a test's capture, a manhole) are covered too.
- aiohttp's access lines are scrubbed as well (their ``extra`` fields included); the
  homeserver's own requests (transactions, pings, user and alias queries) and health probes go
  to DEBUG: at INFO they were most of the log during a large sync.
- The colour formatter colours only terminals; ``JSONFormatter`` writes one JSON object per
  line for log collectors (``logging.handlers.console.formatter: json``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

REDACTED = "<redacted>"

# Values shorter than this are not secrets worth a blind text replacement (and would mangle
# ordinary words).
MIN_SECRET_LENGTH = 8

# Config keys whose values are secrets.
SECRET_KEYS = (
    "appservice.as_token",
    "appservice.hs_token",
    "waldur.token",
    "waldur.webhook.secret",
)

_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # A token in a query string: ?access_token=..., &token=...
    (
        re.compile(r"([?&;](?:access_token|token|secret|password|key)=)[^&;\s\"']+", re.I),
        rf"\1{REDACTED}",
    ),
    # Authorization headers, also when a header map is printed.
    (
        re.compile(
            r"(Authorization['\"]?\s*[:=]\s*['\"]?(?:(?:Bearer|Token|Basic)\s+)?)[^\s'\",}]+",
            re.I,
        ),
        rf"\1{REDACTED}",
    ),
    # JSON or repr of a login answer: "access_token": "..."
    (
        re.compile(
            r"(['\"](?:access_token|refresh_token|as_token|hs_token|token)['\"]\s*:\s*['\"])[^'\"]+",
            re.I,
        ),
        rf"\1{REDACTED}",
    ),
    # Synapse (syt_/syr_) and Matrix Authentication Service (mat_/mar_/mct_) tokens.
    (re.compile(r"\b(?:syt|syr|mat|mar|mct)_[A-Za-z0-9_\-]{8,}"), REDACTED),
)

# Requests the homeserver makes of the appservice, and health probes: DEBUG, not INFO.
_QUIET_PATHS = re.compile(
    r'"[A-Z]+ (?:/_matrix/app/|/transactions/|/users/|/rooms/|/_matrix/mau/(?:live|ready))'
)


class Redactor:
    """Removes secrets from text: known values, and anything shaped like a credential."""

    def __init__(self, secrets: Iterable[str] = (), webhook_prefix: str | None = None) -> None:
        self._secrets: list[str] = []
        self._webhook: re.Pattern[str] | None = None
        self.update(secrets, webhook_prefix)

    def update(self, secrets: Iterable[str], webhook_prefix: str | None = None) -> None:
        known = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH}
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted(known | set(self._secrets), key=len, reverse=True)
        if webhook_prefix:
            prefix = "/" + webhook_prefix.strip("/")
            # Whatever follows the prefix is (or guesses at) the secret.
            self._webhook = re.compile(re.escape(prefix) + r"/[^\s\"'?/]+")
            self._webhook_repl = f"{prefix}/{REDACTED}"

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if self._webhook is not None:
            text = self._webhook.sub(self._webhook_repl, text)
        for pattern, replacement in _SHAPES:
            text = pattern.sub(replacement, text)
        return text

    def scrub(self, record: logging.LogRecord) -> None:
        """Redact a record's message and traceback in place (formatting them now)."""
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what there is, unformatted
            message = f"{record.msg} {record.args!r}"
        clean = self(message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self(record.exc_text)
        if record.stack_info:
            record.stack_info = self(record.stack_info)


class AccessLogFilter(logging.Filter):
    """For ``aiohttp.access``: scrub the line and its extra fields; homeserver traffic at DEBUG."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in list(record.__dict__.items()):
            if key in ("first_request_line", "request_header") or key.startswith("request_"):
                if isinstance(value, str):
                    record.__dict__[key] = self.redactor(value)
                elif isinstance(value, dict):
                    record.__dict__[key] = {k: self.redactor(str(v)) for k, v in value.items()}
        self.redactor.scrub(record)
        if record.levelno == logging.INFO and _QUIET_PATHS.search(record.getMessage()):
            if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


# region installation

_redactor: Redactor | None = None


def config_secrets(config: Mapping[str, Any] | Any) -> list[str]:
    values = []
    for key in SECRET_KEYS:
        try:
            value = config[key]
        except (KeyError, TypeError):
            continue
        if isinstance(value, str):
            values.append(value)
    signin = getattr(config, "signin_settings", None)
    if callable(signin):
        # The sign-in clients' secrets sit inside a list, out of SECRET_KEYS' reach.
        values.extend(c.client_secret for c in signin()[0].clients.values())
    return values


def install_redaction(secrets: Iterable[str], webhook_prefix: str | None = None) -> Redactor:
    """Scrub every log record made from now on; calling it again adds secrets."""
    global _redactor
    if _redactor is not None:
        _redactor.update(secrets, webhook_prefix)
        return _redactor
    redactor = _redactor = Redactor(secrets, webhook_prefix)
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redactor.scrub(record)
        return record

    logging.setLogRecordFactory(make_record)
    access = logging.getLogger("aiohttp.access")
    if not any(isinstance(f, AccessLogFilter) for f in access.filters):
        access.addFilter(AccessLogFilter(redactor))
    return redactor


def _wants_colour(stream: Any) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _all_handlers() -> Iterable[logging.Handler]:
    seen: set[int] = set()
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if id(handler) not in seen:
                seen.add(id(handler))
                yield handler


def drop_colour_off_terminals() -> None:
    """Give colour formatters of handlers that do not write to a terminal a plain twin."""
    from mautrix.util.logging.color import ColorFormatter

    for handler in _all_handlers():
        formatter = handler.formatter
        if isinstance(formatter, ColorFormatter) and not _wants_colour(
            getattr(handler, "stream", None)
        ):
            handler.setFormatter(logging.Formatter(formatter._style._fmt, formatter.datefmt))


def configure(config: Any) -> None:
    """After mautrix applied ``logging``: redaction, quiet access lines, colour only on ttys."""
    install_redaction(config_secrets(config), config.get("waldur.webhook.path_prefix", None))
    drop_colour_off_terminals()


# endregion


__all__ = [
    "REDACTED",
    "AccessLogFilter",
    "JSONFormatter",
    "Redactor",
    "configure",
    "config_secrets",
    "drop_colour_off_terminals",
    "install_redaction",
]
