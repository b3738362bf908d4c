"""The registration: Config.generate_registration, registration.yaml.j2 and `waldur-bridge -g`.

Deployment tools render registration.yaml.j2 instead of running the bridge with -g; these tests
keep the two equal for the settings that change the registration.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest
from ruamel.yaml import YAML

from waldur_bridge.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO_ROOT / "waldur_bridge" / "example-config.yaml"
TEMPLATE = REPO_ROOT / "registration.yaml.j2"
BASE_PATH = "pkg://waldur_bridge/example-config.yaml"

_yaml = YAML(typ="rt")
_yaml.indent(mapping=4, sequence=4, offset=0)


def _safe_load(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(text)


def _set(data: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        data = data[key]
    data[last] = value


def write_config(path: Path, overrides: dict[str, Any]) -> Path:
    """The example config with the placeholders filled in and `overrides` (dotted keys) set."""
    data = _yaml.load(EXAMPLE_CONFIG.read_text())
    values = {
        "homeserver.address": "http://localhost:8008",
        "homeserver.domain": "test.local",
        "appservice.address": "http://localhost:29334",
        "waldur.url": "http://localhost:8080",
        "waldur.token": "test-token",
        **overrides,
    }
    for key, value in values.items():
        _set(data, key, value)
    buf = io.StringIO()
    _yaml.dump(data, buf)
    path.write_text(buf.getvalue())
    return path


def render_template(**variables: Any) -> str:
    # StrictUndefined: a variable the template needs but was not given fails the test.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE.read_text()).render(**variables)


def template_variables(config: Config, **extra: Any) -> dict[str, Any]:
    return {
        "id": config["appservice.id"],
        "as_token": config["appservice.as_token"],
        "hs_token": config["appservice.hs_token"],
        "url": config["appservice.address"],
        "domain": config["homeserver.domain"],
        "bot_username": config["appservice.bot_username"],
        **extra,
    }


def generate(tmp_path: Path, overrides: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    config_path = write_config(tmp_path / "config.yaml", overrides)
    config = Config(str(config_path), str(tmp_path / "registration.yaml"), BASE_PATH)
    config.load()
    config.update(save=False)
    config.generate_registration()
    assert config._registration is not None
    return config, config._registration


# (config overrides, template variables beyond the ones read back from the config)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "defaults": ({}, {}),
    "ephemeral": ({"appservice.ephemeral_events": True}, {"ephemeral_events": True}),
    "encryption-appservice": (
        {"bridge.encryption.allow": True, "bridge.encryption.appservice": True},
        {"encryption_appservice": True},
    ),
    "msc4190": ({"bridge.encryption.msc4190": True}, {"msc4190": True}),
    "all-flags": (
        {
            "appservice.ephemeral_events": True,
            "bridge.encryption.appservice": True,
            "bridge.encryption.msc4190": True,
        },
        {"ephemeral_events": True, "encryption_appservice": True, "msc4190": True},
    ),
    "dotted-domain": ({"homeserver.domain": "chat.uni-example.ac.uk"}, {}),
    "portless-name": ({"homeserver.domain": "localhost"}, {}),
    "domain-with-port": ({"homeserver.domain": "matrix.local:8448"}, {}),
    "ipv6-literal": ({"homeserver.domain": "[::1]:8448"}, {}),
    "custom-bot-and-id": (
        {
            "appservice.bot_username": "waldur.bot-2",
            "appservice.id": "waldur-staging",
            "appservice.address": "http://bridge.internal:29999",
        },
        {},
    ),
    "custom-prefixes": (
        {
            "bridge.username_template": "w=b/{userid}",
            "bridge.alias_template": "proj.{groupname}",
        },
        {"username_prefix": "w=b/", "alias_prefix": "proj."},
    ),
    "explicit-defaults-as-strings": (
        {"appservice.ephemeral_events": False},
        # Ansible extra-vars and env lookups hand booleans over as strings.
        {
            "username_prefix": "waldur_",
            "alias_prefix": "waldur_",
            "ephemeral_events": "false",
            "encryption_appservice": "False",
            "msc4190": "no",
        },
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_template_matches_generate_registration(tmp_path: Path, variant: str) -> None:
    overrides, extra = VARIANTS[variant]
    config, registration = generate(tmp_path, overrides)

    rendered = _safe_load(render_template(**template_variables(config, **extra)))

    assert rendered == registration


@pytest.mark.parametrize("trim_blocks", [False, True])
def test_template_output_does_not_depend_on_trim_blocks(trim_blocks: bool) -> None:
    # Ansible's template module renders with trim_blocks=True, plain Jinja2 with False.
    variables = {
        "id": "waldur",
        "as_token": "as",
        "hs_token": "hs",
        "url": "http://localhost:29334",
        "domain": "test.local",
        "bot_username": "waldurbot",
        "ephemeral_events": True,
        "encryption_appservice": True,
    }
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=trim_blocks)
    text = env.from_string(TEMPLATE.read_text()).render(**variables)
    assert text == render_template(**variables)
    assert _safe_load(text)["org.matrix.msc3202"] is True


def test_registration_shape(tmp_path: Path) -> None:
    config, registration = generate(tmp_path, {"homeserver.domain": "test.local"})
    users = registration["namespaces"]["users"]
    aliases = registration["namespaces"]["aliases"]

    assert registration["rate_limited"] is False
    assert registration["sender_localpart"] == "waldurbot"
    assert [u["regex"] for u in users] == [r"@waldur_.*:test\.local", r"@waldurbot:test\.local"]
    assert [a["regex"] for a in aliases] == [r"\#waldur_.*:test\.local"]
    assert all(ns["exclusive"] is True for ns in users + aliases)
    assert re.fullmatch(users[0]["regex"], "@waldur_alice:test.local")
    assert not re.fullmatch(users[0]["regex"], "@waldur_alice:testxlocal")
    assert re.fullmatch(aliases[0]["regex"], "#waldur_0123abcd:test.local")
    for key in ("receive_ephemeral", "org.matrix.msc3202", "io.element.msc4190"):
        assert key not in registration
    # The tokens are written back into the config for the bridge to use.
    assert registration["as_token"] == config["appservice.as_token"]
    assert registration["hs_token"] == config["appservice.hs_token"]


def test_template_fails_on_missing_required_variable() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render_template(id="waldur", as_token="a", url="u", domain="d", bot_username="b")


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALDUR_BRIDGE_")}
    # Works from a checkout without `pip install -e .` as well.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def test_cli_generates_registration(tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "config.yaml", {"homeserver.domain": "test.local"})
    registration_path = tmp_path / "registration.yaml"

    result = subprocess.run(
        [sys.executable, "-m", "waldur_bridge", "-g", "-c", str(config_path)]
        + ["-r", str(registration_path)],
        cwd=tmp_path,
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    registration = _safe_load(registration_path.read_text())
    assert registration["rate_limited"] is False
    assert registration["namespaces"]["users"] == [
        {"exclusive": True, "regex": r"@waldur_.*:test\.local"},
        {"exclusive": True, "regex": r"@waldurbot:test\.local"},
    ]
    assert registration["namespaces"]["aliases"] == [
        {"exclusive": True, "regex": r"\#waldur_.*:test\.local"}
    ]
    # The CLI saved the new tokens into the config; the template reproduces the whole file.
    saved = _safe_load(config_path.read_text())
    assert registration["as_token"] == saved["appservice"]["as_token"]
    assert registration["hs_token"] == saved["appservice"]["hs_token"]
    rendered = render_template(
        id="waldur",
        as_token=saved["appservice"]["as_token"],
        hs_token=saved["appservice"]["hs_token"],
        url="http://localhost:29334",
        domain="test.local",
        bot_username="waldurbot",
    )
    assert _safe_load(rendered) == registration
