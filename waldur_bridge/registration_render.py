"""`waldur-bridge --render-registration VARS`: the registration from a deployment's variables.

Deployment tools keep the tokens in their own secrets and need the registration without a
config file or a `-g` run that would make new tokens. The variables are registration.yaml.j2's
(deploy/registration-vars.yaml); the result is what `-g` writes for the same settings, made by
the same code, so it needs nothing beyond the bridge itself (no Jinja2, no PyYAML).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from mautrix.util.config import yaml
from ruamel.yaml import YAML, YAMLError

from . import secret_sources
from .config import Config

REQUIRED = ("id", "as_token", "hs_token", "url", "domain", "bot_username")
# Variable -> config key, for those that are copied as they are (booleans converted).
SETTINGS = {
    "id": "appservice.id",
    "url": "appservice.address",
    "domain": "homeserver.domain",
    "bot_username": "appservice.bot_username",
    "ephemeral_events": "appservice.ephemeral_events",
    "encryption_appservice": "bridge.encryption.appservice",
    "msc4190": "bridge.encryption.msc4190",
}
# Variable -> (config key, what follows the prefix in the template).
PREFIXES = {
    "username_prefix": ("bridge.username_template", "{userid}"),
    "alias_prefix": ("bridge.alias_template", "{groupname}"),
}
BOOLEANS = ("ephemeral_events", "encryption_appservice", "msc4190")
# As the template reads them (Ansible extra-vars deliver strings).
TRUTHY = ("true", "yes", "on", "1")
BASE_CONFIG = "pkg://waldur_bridge/example-config.yaml"


class RenderError(ValueError):
    pass


def render(variables: dict[str, Any], source: str) -> dict[str, Any]:
    """The registration for these variables; RenderError names what is wrong."""
    missing = [name for name in REQUIRED if not variables.get(name)]
    if missing:
        raise RenderError(
            f"{source} has no {', '.join(missing)} (required: {', '.join(REQUIRED)})"
        )
    unknown = sorted(set(variables) - set(SETTINGS) - {"as_token", "hs_token"} - PREFIXES.keys())
    if unknown:
        raise RenderError(f"{source}: unknown variable {', '.join(unknown)}")
    for name in ("as_token", "hs_token"):
        if secret_sources.placeholder_in(str(variables[name])):
            raise RenderError(
                f"{source}: {name} is a placeholder from the project's example files; set it "
                f"to the token the bridge gets (WALDUR_BRIDGE_APPSERVICE_{name.upper()} in the "
                "Kubernetes Secret or the systemd environment file)"
            )
    config = Config("", "", BASE_CONFIG)
    base = config.load_base()
    assert base is not None
    config._data = base._data
    config._check_tokens = False
    for name, key in SETTINGS.items():
        if name not in variables:
            continue
        value = variables[name]
        if name in BOOLEANS:
            value = str(value).lower() in TRUTHY
        config[key] = value
    for name, (key, placeholder) in PREFIXES.items():
        if name in variables:
            config[key] = f"{variables[name]}{placeholder}"
    config.generate_registration()
    registration = dict(config._registration or {})
    registration["as_token"] = str(variables["as_token"])
    registration["hs_token"] = str(variables["hs_token"])
    return registration


def main(path: str) -> int:
    """Print the registration for the variables file at ``path``; the exit code."""
    try:
        variables = YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))
    except (OSError, YAMLError) as e:
        print(f"Cannot read the registration variables {path}: {e}", file=sys.stderr)
        return 11
    if not isinstance(variables, dict):
        print(f"{path} does not hold a map of variables", file=sys.stderr)
        return 11
    try:
        registration = render(variables, path)
    except RenderError as e:
        print(str(e), file=sys.stderr)
        return 11
    buffer = io.StringIO()
    yaml.dump(registration, buffer)
    sys.stdout.write(buffer.getvalue())
    return 0
