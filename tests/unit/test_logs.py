"""Log safety: secrets never reach a log line; access lines of the homeserver go to DEBUG."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest
from mautrix.util.logging.color import ColorFormatter

from waldur_bridge import logs
from waldur_bridge.logs import REDACTED, AccessLogFilter, JSONFormatter, Redactor

SECRETS = ["as-token-0123456789", "hs-token-0123456789", "waldur-token-abcdef0123", "hooksecret42"]


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(SECRETS, "/waldur/webhook")


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ('"POST /waldur/webhook/hooksecret42 HTTP/1.1" 202', "hooksecret42"),
        ('"POST /waldur/webhook/guessed-wrong HTTP/1.1" 404', "guessed-wrong"),
        ('"PUT /_matrix/app/v1/transactions/5?access_token=abc123 HTTP/1.1"', "abc123"),
        ("GET /x?foo=1&access_token=zzz999 HTTP/1.1", "zzz999"),
        ("headers {'Authorization': 'Token f00ba4'}", "f00ba4"),
        ("Authorization: Bearer syt_d2FsZHVy_abcdefghijklmnop_1a2b3c", "syt_d2FsZHVy"),
        ('{"user_id": "@a:b", "access_token": "opaque-value-1"}', "opaque-value-1"),
        ("token is mat_0123456789abcdef here", "mat_0123456789abcdef"),
        ("connect with waldur-token-abcdef0123 failed", "waldur-token-abcdef0123"),
    ],
)
def test_redactor_removes_secrets_by_value_and_by_shape(
    redactor: Redactor, text: str, gone: str
) -> None:
    clean = redactor(text)
    assert gone not in clean
    assert REDACTED in clean


def test_redactor_leaves_ordinary_text_alone(redactor: Redactor) -> None:
    text = 'Invited @waldur_alice:localhost to "Project X" (!room:localhost): PROJECT.ADMIN'
    assert redactor(text) == text


def test_scrub_covers_arguments_and_tracebacks(redactor: Redactor) -> None:
    try:
        raise RuntimeError("request with as-token-0123456789 failed")
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "token %s", ("hs-token-0123456789",), exc_info
    )
    redactor.scrub(record)
    assert "hs-token-0123456789" not in record.getMessage()
    assert record.exc_text and "as-token-0123456789" not in record.exc_text
    assert "RuntimeError" in record.exc_text


def _access_record(line: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("aiohttp.access", logging.INFO, __file__, 1, line, (), None)
    record.__dict__.update(extra)
    return record


def test_access_lines_of_the_homeserver_go_to_debug(redactor: Redactor) -> None:
    access = logging.getLogger("aiohttp.access")
    old = access.level
    try:
        access.setLevel(logging.INFO)
        f = AccessLogFilter(redactor)
        txn = _access_record('127.0.0.1 "PUT /_matrix/app/v1/transactions/7 HTTP/1.1" 200')
        assert f.filter(txn) is False  # INFO logger: dropped
        hook = _access_record(
            '127.0.0.1 "POST /waldur/webhook/hooksecret42 HTTP/1.1" 202',
            first_request_line="POST /waldur/webhook/hooksecret42 HTTP/1.1",
        )
        assert f.filter(hook) is True
        assert hook.levelno == logging.INFO
        assert "hooksecret42" not in hook.getMessage()
        assert "hooksecret42" not in hook.__dict__["first_request_line"]
        access.setLevel(logging.DEBUG)
        txn = _access_record('127.0.0.1 "PUT /_matrix/app/v1/transactions/8 HTTP/1.1" 200')
        assert f.filter(txn) is True
        assert txn.levelno == logging.DEBUG and txn.levelname == "DEBUG"
    finally:
        access.setLevel(old)


def test_json_formatter_writes_one_object_per_line() -> None:
    record = logging.LogRecord("waldur.sync", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    line = JSONFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "INFO"
    assert data["logger"] == "waldur.sync"
    assert data["message"] == "hello x"
    assert data["time"].endswith("+00:00")


def test_colour_only_on_terminals() -> None:
    stream = io.StringIO()  # not a terminal
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ColorFormatter("[%(levelname)s@%(name)s] %(message)s"))
    logger = logging.getLogger("waldur.test_colour")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logs.drop_colour_off_terminals()
        logger.warning("plain")
    finally:
        logger.removeHandler(handler)
    assert "\x1b[" not in stream.getvalue()
    assert stream.getvalue() == "[WARNING@waldur.test_colour] plain\n"


def test_example_config_offers_the_json_formatter() -> None:
    from pathlib import Path

    from mautrix.util.config import yaml

    example = Path(logs.__file__).parent / "example-config.yaml"
    formatter = yaml.load(example.read_text())["logging"]["formatters"]["json"]
    factory = logging.config.BaseConfigurator({}).resolve(formatter["()"])
    assert factory is JSONFormatter
