"""Secrets from the environment or from files, instead of the config file.

Containers and Kubernetes hand secrets over as environment variables or as mounted files. For
each secret key the bridge looks, in this order, at

    WALDUR_BRIDGE_<KEY>_FILE   a path; the file's content (surrounding whitespace removed)
    WALDUR_BRIDGE_<KEY>        the value itself

where <KEY> is the dotted key in capitals with dots as underscores (``waldur.token`` ->
``WALDUR_BRIDGE_WALDUR_TOKEN``). Such a value is used in memory only and never written into the
config file (which keeps whatever it had).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "WALDUR_BRIDGE_"

SECRET_KEYS = (
    "waldur.token",
    "waldur.webhook.secret",
    "appservice.as_token",
    "appservice.hs_token",
)


# Stand-in values in the project's own files (deploy/kubernetes, deploy/registration-vars.yaml):
# one of them reaching the bridge means a Secret was not created or not filled in.
PLACEHOLDER_MARKERS = ("set-from-the-secret", "CHANGE-ME")
# Keys whose values such files fill with a placeholder (the database URL's password too).
PLACEHOLDER_CHECKED_KEYS = (*SECRET_KEYS, "appservice.database")


def placeholder_in(value: object) -> str | None:
    """The placeholder marker in a value, if it holds one."""
    if not isinstance(value, str):
        return None
    return next((m for m in PLACEHOLDER_MARKERS if m.lower() in value.lower()), None)


def env_name(key: str) -> str:
    # Anything but letters and digits becomes "_" (a sign-in client ID may hold "-").
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", key).upper()


@dataclass(frozen=True)
class Secret:
    key: str
    value: str
    source: str  # where it came from, for log lines: the variable's name (never the value)


@dataclass
class SecretProblem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def resolve(environ: Mapping[str, str]) -> tuple[dict[str, Secret], list[SecretProblem]]:
    """The secrets the environment provides, and what is wrong with the ones it names."""
    found: dict[str, Secret] = {}
    problems: list[SecretProblem] = []
    for key in SECRET_KEYS:
        secret, problem = resolve_key(environ, key)
        if secret is not None:
            found[key] = secret
        if problem is not None:
            problems.append(problem)
    return found, problems


def resolve_key(
    environ: Mapping[str, str], key: str
) -> tuple[Secret | None, SecretProblem | None]:
    """One secret by its dotted key (also keys inside lists, such as the sign-in clients')."""
    name = env_name(key)
    file_name = f"{name}_FILE"
    if environ.get(file_name):
        path = Path(environ[file_name])
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            return None, SecretProblem(key, f"{file_name}={path} cannot be read ({reason}).")
        if not value:
            return None, SecretProblem(key, f"{file_name}={path} is empty.")
        return Secret(key, value, f"{file_name}={path}"), None
    if name in environ:
        value = environ[name].strip()
        if not value:
            return None, SecretProblem(key, f"{name} is set but empty.")
        return Secret(key, value, name), None
    return None, None
