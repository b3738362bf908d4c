"""The bridge's configuration: update from the packaged defaults, validation, registration."""

from __future__ import annotations

import difflib
import re
import secrets
from collections.abc import Iterator
from typing import Any

from mautrix.bridge.config import BaseBridgeConfig
from mautrix.types import UserID
from mautrix.util.config import ConfigUpdateHelper, ForbiddenDefault, RecursiveDict
from ruamel.yaml.comments import CommentedMap

# Maps whose keys are the user's own (Matrix IDs, role names, logger names): copied whole,
# never checked key by key against the defaults.
FREE_FORM_MAPS = (
    "appservice.database_opts",
    "bridge.permissions",
    "bridge.membership.power_levels",
    "logging",
)

# Keys mautrix itself reads or migrates that the packaged defaults do not list.
EXTRA_KNOWN_KEYS = (
    "homeserver.asmux",
    "appservice.tls_cert",
    "appservice.tls_key",
    "bridge.relay",
    "bridge.encryption.key_sharing",
    "manhole",
)

CHOICES: dict[str, tuple[Any, ...]] = {
    "homeserver.software": ("standard", "asmux", "hungry"),
    "bridge.user_mapping.mode": ("puppet", "template"),
    "bridge.user_mapping.localpart_source": ("username", "uuid"),
    "bridge.portals.create": ("none", "all", "customers"),
    "bridge.portals.room_version": ("10", "11", "12"),
}

PERMISSION_LEVELS = ("user", "admin")

PLACEHOLDER_WALDUR_URL = "https://waldur.example.org"
PLACEHOLDER_WALDUR_TOKEN = "your-waldur-api-token"


class ConfigError(ValueError):
    """One or more configuration problems, each naming the key and the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _leaf_paths(data: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every leaf in a nested map; free-form maps count as one leaf."""
    if not isinstance(data, dict) or prefix in FREE_FORM_MAPS:
        if prefix:
            yield prefix
        return
    for key, value in data.items():
        yield from _leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return type(value).__name__


def _same_type(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    if isinstance(default, dict):
        return isinstance(value, dict)
    if isinstance(default, list):
        return isinstance(value, list)
    return isinstance(value, type(default))


class Config(BaseBridgeConfig):
    """Configuration of waldur-matrix-bridge.

    `do_update` copies every key the packaged defaults have, by walking the defaults rather than
    listing keys by hand: a forgotten `copy()` is how mautrix bridges silently reset settings.
    """

    _unknown_keys: list[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unknown_keys = []

    # region update

    def update(self, save: bool = True) -> None:
        base = self.load_base()
        if base is not None:
            self._unknown_keys = self._find_unknown_keys(base)
        super().update(save=save)

    def _find_unknown_keys(self, base: RecursiveDict[CommentedMap]) -> list[str]:
        known = set(_leaf_paths(base._data))
        known_prefixes = tuple(f"{k}." for k in (*FREE_FORM_MAPS, *EXTRA_KNOWN_KEYS))
        unknown = []
        for path in _leaf_paths(self._data or {}):
            if path in known or path in EXTRA_KNOWN_KEYS or path.startswith(known_prefixes):
                continue
            # A section the defaults have as a map but the user wrote as a scalar is a type
            # problem, reported by validate(); only report keys the defaults lack entirely.
            if any(k.startswith(f"{path}.") for k in known):
                continue
            unknown.append(path)
        return unknown

    def do_update(self, helper: ConfigUpdateHelper) -> None:
        copy, copy_dict, base = helper
        for path in _leaf_paths(base._data):
            if path in FREE_FORM_MAPS:
                copy_dict(path)
            else:
                copy(path)
        # The base class knows mautrix's own migrations (sqlite:/// URLs, asmux, key sharing).
        super().do_update(helper)
        copy("appservice.tls_cert")
        copy("appservice.tls_key")

        if base["waldur.webhook.secret"] == "generate":
            base["waldur.webhook.secret"] = secrets.token_urlsafe(32)
        base["waldur.url"] = str(base["waldur.url"]).rstrip("/")

    # endregion
    # region validation

    @property
    def forbidden_defaults(self) -> list[ForbiddenDefault]:
        return [
            *super().forbidden_defaults,
            ForbiddenDefault(
                "waldur.url",
                PLACEHOLDER_WALDUR_URL,
                "Set waldur.url to the base URL of your Waldur (for example https://waldur.my.org).",
            ),
            ForbiddenDefault(
                "waldur.token",
                PLACEHOLDER_WALDUR_TOKEN,
                "Set waldur.token to the API token of a staff (or support) Waldur user "
                "whose token_lifetime is null.",
            ),
        ]

    def validate(self) -> None:
        """Raise ConfigError listing every problem: placeholders, unknown keys, wrong types."""
        problems: list[str] = []
        for default in self.forbidden_defaults:
            if default.check(self):
                hint = default.error or "Change it from the example value."
                problems.append(f"{default.key}: still has the example value. {hint}")
        base = self.load_base()
        for path in self._unknown_keys:
            close = difflib.get_close_matches(path, list(_leaf_paths(base._data)), n=1)
            fix = f" Did you mean {close[0]}?" if close else " Remove it."
            problems.append(f"{path}: not a known setting.{fix}")
        for path in _leaf_paths(base._data):
            default = base[path]
            value = self.get(path, None)
            if default is None or value is None:
                continue
            if not _same_type(default, value):
                problems.append(
                    f"{path}: must be {_type_name(default)}, got {value!r}. "
                    f"The default is {default!r}."
                )
        for path, choices in CHOICES.items():
            value = self.get(path, None)
            if value is not None and str(value) not in map(str, choices):
                options = ", ".join(map(str, choices))
                problems.append(f"{path}: {value!r} is not one of {options}.")
        problems.extend(self._validate_specifics())
        if problems:
            raise ConfigError(problems)

    def _validate_specifics(self) -> list[str]:
        problems = []
        url = self.get("waldur.url", "")
        if isinstance(url, str) and not re.match(r"^https?://[^/\s]+", url):
            problems.append(f"waldur.url: {url!r} is not an http(s) URL.")
        share = self.get("bridge.membership.max_removal_share", 0.5)
        if isinstance(share, (int, float)) and not 0 <= share <= 1:
            problems.append(
                "bridge.membership.max_removal_share: must be between 0 and 1 "
                f"(a share of the room's managed members), got {share!r}."
            )
        for key in ("waldur.timeout", "waldur.sweep_interval", "waldur.events.interval"):
            value = self.get(key, 1)
            if isinstance(value, (int, float)) and value <= 0:
                problems.append(f"{key}: must be a positive number of seconds, got {value!r}.")
        progress = self.get("bridge.portals.progress_interval", 10)
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or progress < 0:
            problems.append(
                "bridge.portals.progress_interval: must be a number of seconds, 0 or more "
                f"(0: no progress lines), got {progress!r}."
            )
        if self.get("bridge.membership.concurrency", 1) < 1:
            problems.append("bridge.membership.concurrency: must be at least 1.")
        levels = self.get("bridge.membership.power_levels", {}) or {}
        for role, level in levels.items():
            if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 100:
                problems.append(
                    f"bridge.membership.power_levels.{role}: must be a whole number from 0 to "
                    f"100, got {level!r}."
                )
        for mxid, level in (self.get("bridge.permissions", {}) or {}).items():
            if level not in PERMISSION_LEVELS:
                problems.append(
                    f"bridge.permissions.{mxid}: {level!r} is not one of "
                    f"{', '.join(PERMISSION_LEVELS)}."
                )
        if self.get("bridge.encryption.allow", False) and not self.get(
            "bridge.encryption.appservice", False
        ):
            problems.append(
                "bridge.encryption.appservice: must be true when bridge.encryption.allow is. "
                "The bot is the appservice's sender, which homeservers do not let /sync, so "
                "room keys reach it only through appservice transactions (MSC2409/MSC3202: "
                "in Synapse, experimental_features msc2409_to_device_messages_enabled and "
                "msc3202_transaction_extensions). Regenerate the registration after changing it."
            )
        template = self.get("bridge.username_template", "")
        if isinstance(template, str) and "{userid}" not in template:
            problems.append("bridge.username_template: must contain {userid}.")
        alias = self.get("bridge.alias_template", "")
        if isinstance(alias, str) and "{groupname}" not in alias:
            problems.append("bridge.alias_template: must contain {groupname}.")
        if self.get("bridge.user_mapping.mode", "puppet") == "template":
            mapping = self.get("bridge.user_mapping.template", "")
            if not re.match(r"^@.*\{(username|uuid|email_local)\}.*:.+$", str(mapping)):
                problems.append(
                    "bridge.user_mapping.template: must look like @{username}:your.server "
                    "(placeholders: {username}, {uuid}, {email_local})."
                )
        return problems

    # endregion
    # region derived values

    def get_permissions(self, mxid: UserID) -> tuple[bool, bool, str]:
        """(is_whitelisted, is_admin, level) by exact Matrix ID, then server name, then "*"."""
        permissions = self["bridge.permissions"] or {}
        _, _, server = mxid.partition(":")
        level = permissions.get(mxid) or permissions.get(server) or permissions.get("*") or ""
        return level in PERMISSION_LEVELS, level == "admin", level

    @property
    def webhook_path(self) -> str:
        prefix = self["waldur.webhook.path_prefix"].rstrip("/")
        return f"{prefix}/{self['waldur.webhook.secret']}"

    # endregion
    # region registration

    def generate_registration(self) -> None:
        super().generate_registration()
        registration = self._registration
        assert registration is not None
        # The bot itself is the appservice's sender, instead of mautrix's random extra user:
        # one account fewer, and deployment templates can reproduce the file exactly.
        registration["sender_localpart"] = self["appservice.bot_username"]
        if self["bridge.encryption.appservice"]:
            # Synapse sends device lists and one-time-key counts only with this flag, and
            # to-device events (room keys) only to an appservice that receives ephemeral
            # events; mautrix 0.21.1's generator leaves both out.
            registration["org.matrix.msc3202"] = True
            registration["de.sorunome.msc2409.push_ephemeral"] = True
            registration["receive_ephemeral"] = True

    # endregion
