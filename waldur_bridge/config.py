"""The bridge's configuration: update from the packaged defaults, validation, registration."""

from __future__ import annotations

import difflib
import importlib.util
import io
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from typing import Any

from mautrix.bridge.config import BaseBridgeConfig
from mautrix.types import UserID
from mautrix.util.config import ConfigUpdateHelper, ForbiddenDefault, RecursiveDict, yaml
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from . import secret_sources

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
    "bridge.portals.room_version": ("auto", "10", "11", "12"),
}

PERMISSION_LEVELS = ("user", "admin")

PLACEHOLDER_WALDUR_URL = "https://waldur.example.org"
PLACEHOLDER_WALDUR_TOKEN = "your-waldur-api-token"


# What mautrix's encryption needs: the e2be extra (python-olm has no build for Python 3.13).
ENCRYPTION_MODULES = ("olm", "Crypto", "unpaddedbase64", "base58")


def encryption_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ENCRYPTION_MODULES)


class EmptyConfigError(ValueError):
    """The config file holds no settings (empty, only comments, or not a map)."""


def yaml_spelling(value: Any) -> str:
    """A value as it is written in the YAML file (true, null, "text"), not as Python shows it."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


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


def _dump(data: Any) -> str:
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue()


def _write_atomic(path: str, text: str) -> bool:
    """Replace the file by a temporary one holding ``text``; False when it already had it."""
    try:
        with open(path, encoding="utf-8") as stream:
            if stream.read() == text:
                return False
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o600  # it holds tokens
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".waldur-bridge-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return True


def _last_index(node: CommentedMap | CommentedSeq) -> Any:
    return next(reversed(node)) if isinstance(node, CommentedMap) else len(node) - 1


def _restore_trailing_comments(pristine: Any, merged: Any) -> None:
    """Put back the packaged comments that the merge of the user's values dropped.

    ruamel keeps the comment lines that follow a map or list (which document the *next* key) on
    that collection's last entry. Copying the user's collection in (mautrix clears its comments
    so the user's own do not leak) loses them: in the untouched example, the docs of
    appservice.id, power_levels, default_power_level and history_export.
    """
    if not isinstance(pristine, CommentedMap | CommentedSeq) or not pristine:
        return
    if type(merged) is not type(pristine) or not merged:
        return
    last, new_last = _last_index(pristine), _last_index(merged)
    entry = pristine.ca.items.get(last)
    if entry is not None and new_last not in merged.ca.items:
        merged.ca.items[new_last] = entry
    if isinstance(pristine, CommentedMap):
        for key, value in pristine.items():
            if key in merged:
                _restore_trailing_comments(value, merged[key])


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
    # Keys the packaged defaults have and the loaded file did not (logged once it is saved).
    added_keys: list[str]
    # Secrets from WALDUR_BRIDGE_* variables (see secret_sources): in memory, never saved.
    secrets: dict[str, secret_sources.Secret]
    pending_save: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unknown_keys = []
        self.added_keys = []
        self.secrets = {}
        self._secret_problems: list[secret_sources.SecretProblem] = []
        self.pending_save = False

    # region secrets from the environment

    def __getitem__(self, item: str) -> Any:
        secret = self.secrets.get(item)
        return secret.value if secret is not None else super().__getitem__(item)

    def get(self, key: str, default_value: Any, allow_recursion: bool = True) -> Any:
        secret = self.secrets.get(key)
        if secret is not None:
            return secret.value
        return super().get(key, default_value, allow_recursion)

    # endregion
    # region update

    def load(self) -> None:
        super().load()
        if not isinstance(self._data, dict):
            raise EmptyConfigError(
                "is empty" if self._data is None else "does not hold a map of settings"
            )

    def update(self, save: bool = True) -> None:
        """Merge the file into the packaged defaults, in memory only.

        Nothing is written here: ``save_validated`` writes once validation has passed, so a start
        that fails validation leaves the file byte for byte as it was.
        """
        self.secrets, self._secret_problems = secret_sources.resolve(os.environ)
        base = self.load_base()
        if base is not None:
            self._unknown_keys = self._find_unknown_keys(base)
            present = set(_leaf_paths(self._data or {}))
            self.added_keys = [
                path
                for path in _leaf_paths(base._data)
                if path not in present and not any(p.startswith(f"{path}.") for p in present)
            ]
        # mautrix's __getitem__ answers from WALDUR_BRIDGE_* variables first; the merge must
        # read the file's own values, or a value from the environment would be written into it.
        env, self.env = self.env, {}
        secret_values, self.secrets = self.secrets, {}
        try:
            super().update(save=False)
        finally:
            self.env = env
            self.secrets = secret_values
        self._resolve_client_secrets()
        self.pending_save = save

    def _resolve_client_secrets(self) -> None:
        """Sign-in clients' secrets from the environment (their keys sit inside a list)."""
        from .web.signin.settings import secret_key

        clients = self.get("bridge.signin.clients", []) or []
        for client in clients if isinstance(clients, list) else []:
            client_id = client.get("client_id") if isinstance(client, dict) else None
            if not isinstance(client_id, str) or not client_id:
                continue
            secret, problem = secret_sources.resolve_key(os.environ, secret_key(client_id))
            if secret is not None:
                self.secrets[secret.key] = secret
            if problem is not None:
                self._secret_problems.append(problem)

    def save_validated(self) -> bool:
        """Write the merged config if it differs from the file; whether it was written."""
        if not self.pending_save:
            return False
        self.pending_save = False
        return self.save()

    def save(self) -> bool:  # type: ignore[override]
        """Write the config (and a generated registration) atomically; whether it changed.

        An unchanged config is not written at all; a changed one goes to a temporary file that
        replaces the old one, keeping its permissions.
        """
        written = _write_atomic(self.path, _dump(self._data))
        if self._registration and self.registration_path:
            _write_atomic(self.registration_path, _dump(self._registration))
        return written

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
        pristine = self.load_base()
        if pristine is not None:
            _restore_trailing_comments(pristine._data, base._data)

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
        problems: list[str] = [str(p) for p in self._secret_problems]
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
                    f"{path}: must be {_type_name(default)}, got {yaml_spelling(value)}. "
                    f"The default is {yaml_spelling(default)}."
                )
        for path, choices in CHOICES.items():
            value = self.get(path, None)
            if value is not None and str(value) not in map(str, choices):
                options = ", ".join(map(str, choices))
                problems.append(f"{path}: {yaml_spelling(value)} is not one of {options}.")
        problems.extend(self._placeholder_problems())
        problems.extend(self._validate_specifics())
        if problems:
            raise ConfigError(problems)

    def value_source(self, key: str) -> str:
        """Where the value in use for ``key`` comes from, for messages (never the value)."""
        secret = self.secrets.get(key)
        if secret is not None:
            return secret.source
        env_key = key.replace(".", "_").upper()
        if env_key in self.env:
            return f"{self.env_prefix}_{env_key}"
        return f"the config file {self.path}"

    def _placeholder_problems(self) -> list[str]:
        """Values the project's deployment files ship as stand-ins (set-from-the-secret,
        CHANGE-ME-...) would otherwise run as real tokens or passwords."""
        problems = []
        for key in secret_sources.PLACEHOLDER_CHECKED_KEYS:
            if not self._check_tokens and key in ("appservice.as_token", "appservice.hs_token"):
                continue  # -g replaces them
            if secret_sources.placeholder_in(self[key]) is None:
                continue
            source = self.value_source(key)
            name = secret_sources.env_name(key)
            where = (
                f"{name} (or {name}_FILE, a file with the value)"
                if key in secret_sources.SECRET_KEYS
                else name
            )
            # The marker itself is not shown: the log filter hides configured secret values.
            problems.append(
                f"{key}: the value from {source} is a placeholder from the project's example "
                f"files (deploy/), not a real value. Set the real value there or in {where}; "
                "in Kubernetes, fill in and apply the Secret (deploy/kubernetes/secret.yaml)."
            )
        return problems

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
        for key in (
            "waldur.timeout",
            "waldur.sweep_interval",
            "waldur.events.interval",
            "high_availability.lock_wait",
            "high_availability.check_interval",
            "high_availability.ping_grace",
        ):
            value = self.get(key, 1)
            if isinstance(value, (int, float)) and value <= 0:
                problems.append(f"{key}: must be a positive number of seconds, got {value!r}.")
        settle = self.get("bridge.membership.settle_seconds", 1.5)
        settle_max = self.get("bridge.membership.settle_max_wait", 5.0)
        if isinstance(settle, (int, float)) and settle < 0:
            problems.append(
                f"bridge.membership.settle_seconds: must be 0 or more seconds, got {settle!r}."
            )
        elif (
            isinstance(settle, (int, float))
            and isinstance(settle_max, (int, float))
            and settle_max < settle
        ):
            problems.append(
                "bridge.membership.settle_max_wait: must be at least settle_seconds "
                f"({settle!r}), got {settle_max!r}."
            )
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
        if self.get("bridge.encryption.allow", False) is True and not encryption_installed():
            problems.append(
                "bridge.encryption.allow: true, but encryption support is not installed. "
                "Install it with pip install 'waldur-matrix-bridge[e2be]' (python-olm builds "
                "on Python 3.11 and 3.12), or set bridge.encryption.allow to false."
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
        for host in self.get("bridge.avatars.allowed_hosts", []) or []:
            if (
                not isinstance(host, str)
                or not re.match(r"^[A-Za-z0-9.\-\[\]:]+$", host)
                or ("://" in host)
            ):
                problems.append(
                    f"bridge.avatars.allowed_hosts: {yaml_spelling(host)} is not a host name; "
                    'list hosts only, e.g. "media.example.org".'
                )
        problems.extend(self._validate_provisioning())
        signin, signin_problems = self.signin_settings()
        problems.extend(signin_problems)
        if signin.enabled and self.get("bridge.user_mapping.mode", "puppet") != "puppet":
            problems.append(
                "bridge.signin.enabled: Continue with Waldur signs people in to their puppets, "
                "and bridge.user_mapping.mode is not puppet (people use their own accounts): "
                "set bridge.signin.enabled to false."
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

    def _validate_provisioning(self) -> list[str]:
        from .web.proxy import parse_networks

        problems = []
        key = "bridge.provisioning.homeserver_url"
        url = self.get(key, None)
        if url is not None and not (isinstance(url, str) and re.match(r"^https?://[^/\s]+", url)):
            problems.append(
                f"{key}: {url!r} is not an http(s) URL (or null for homeserver.address)."
            )
        proxies = self.get("bridge.provisioning.trusted_proxies", []) or []
        if isinstance(proxies, list):
            try:
                parse_networks(proxies)
            except ValueError as e:
                problems.append(
                    f"bridge.provisioning.trusted_proxies: {e}; use 10.0.0.5 or 10.0.0.0/8."
                )
        origins = self.get("bridge.provisioning.cors_origins", []) or []
        if isinstance(origins, list):
            for origin in origins:
                if origin != "*" and not re.match(r"^https?://[^/\s]+/?$", str(origin)):
                    problems.append(
                        f"bridge.provisioning.cors_origins: {origin!r} is not an origin "
                        '(scheme and host, e.g. https://waldur.example.org, or "*").'
                    )
        for key in ("bridge.provisioning.max_devices", "bridge.provisioning.device_max_idle_days"):
            value = self.get(key, 0)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                problems.append(f"{key}: must be 0 (no limit) or more, got {value!r}.")
        return problems

    # endregion
    # region derived values

    def get_permissions(self, mxid: UserID) -> tuple[bool, bool, str]:
        """(is_whitelisted, is_admin, level) by exact Matrix ID, then server name, then "*"."""
        permissions = self["bridge.permissions"] or {}
        _, _, server = mxid.partition(":")
        level = permissions.get(mxid) or permissions.get(server) or permissions.get("*") or ""
        return level in PERMISSION_LEVELS, level == "admin", level

    def signin_settings(self) -> Any:
        """``bridge.signin`` read (a SigninSettings) and the problems with it."""
        from .web.signin.settings import read_settings

        def secret(key: str) -> str | None:
            found = self.secrets.get(key)
            return found.value if found is not None else None

        return read_settings(self.get, secret)

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
