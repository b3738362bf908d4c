"""Config update and validation: nothing the user set is lost, every mistake is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mautrix.util.config import yaml

from waldur_bridge.config import FREE_FORM_MAPS, Config, ConfigError, _leaf_paths
from waldur_devenv.testing import BASE_CONFIG, write_config


def load(path: Path) -> Config:
    config = Config(str(path), str(path.with_name("registration.yaml")), BASE_CONFIG)
    config.load()
    config.update(save=False)
    return config


def changed_value(path: str, value: Any) -> Any:
    """A value of the same type that differs from the default."""
    if path in FREE_FORM_MAPS:
        return {"changed-key": "changed"} if path != "bridge.permissions" else {"*": "admin"}
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, float):
        return round(value / 2 + 0.01, 3)
    if isinstance(value, list):
        return [*value, "@extra:example.org"]
    if value is None:
        return "set-by-user"
    return f"{value}-changed"


def test_update_keeps_every_key(tmp_path: Path) -> None:
    base = Config(str(tmp_path / "x.yaml"), "", BASE_CONFIG).load_base()
    assert base is not None
    data = base._data
    paths = list(_leaf_paths(data))
    assert len(paths) > 80  # the walk sees the whole file
    expected: dict[str, Any] = {}
    for path in paths:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = expected[path] = changed_value(path, node[last])
    config_path = tmp_path / "config.yaml"
    with open(config_path, "w") as stream:
        yaml.dump(data, stream)

    config = load(config_path)
    for path, value in expected.items():
        if path == "waldur.webhook.secret":
            continue  # "generate" is replaced; any other value is kept (checked below)
        if path == "waldur.url":
            value = value.rstrip("/")
        actual = config[path]
        if isinstance(value, dict):
            actual = dict(actual)
        assert actual == value, f"{path} was reset by the update"
    assert config["waldur.webhook.secret"] == "generate-changed"


def test_generate_secret_is_replaced_once(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "config.yaml",
        homeserver_url="http://127.0.0.1:8008",
        domain="localhost",
        as_port=29334,
        waldur_url="http://127.0.0.1:8080/",
        waldur_token="t" * 40,
        database="sqlite:test.db",
    )
    first = Config(str(path), "", BASE_CONFIG)
    first.load()
    first.update(save=True)
    assert first.save_validated()
    secret = first["waldur.webhook.secret"]
    assert secret != "generate" and len(secret) >= 32
    assert first["waldur.url"] == "http://127.0.0.1:8080"
    again = load(path)
    assert again["waldur.webhook.secret"] == secret


def write_raw(tmp_path: Path, **changes: Any) -> Path:
    path = write_config(
        tmp_path / "config.yaml",
        homeserver_url="http://127.0.0.1:8008",
        domain="localhost",
        as_port=29334,
        waldur_url="http://127.0.0.1:8080",
        waldur_token="t" * 40,
        database="sqlite:test.db",
        as_token="a",
        hs_token="h",
        overrides=changes,
    )
    return path


def problems_of(path: Path) -> list[str]:
    config = load(path)
    try:
        config.validate()
    except ConfigError as e:
        return e.problems
    return []


def test_valid_config_has_no_problems(tmp_path: Path) -> None:
    assert problems_of(write_raw(tmp_path)) == []


@pytest.mark.parametrize("version", ["auto", "11", "12"])
def test_room_version_choices(tmp_path: Path, version: str) -> None:
    assert problems_of(write_raw(tmp_path, **{"bridge.portals.room_version": version})) == []


def test_placeholders_are_named(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path,
        **{
            "waldur.url": "https://waldur.example.org",
            "waldur.token": "your-waldur-api-token",
            "homeserver.domain": "example.com",
        },
    )
    problems = "\n".join(problems_of(path))
    assert "waldur.url: still has the example value" in problems
    assert "waldur.token: still has the example value" in problems
    assert "token_lifetime is null" in problems
    assert "homeserver.domain" in problems


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write_raw(tmp_path, **{"waldur.sweep_intervall": 60})
    problems = problems_of(path)
    assert problems == [
        "waldur.sweep_intervall: not a known setting. Did you mean waldur.sweep_interval?"
    ]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("waldur.sweep_interval", "often", "waldur.sweep_interval: must be a whole number"),
        ("waldur.events.enabled", "yes", "waldur.events.enabled: must be true or false"),
        ("bridge.portals.create", "some", 'bridge.portals.create: "some" is not one of'),
        ("bridge.membership.max_removal_share", 1.5, "must be between 0 and 1"),
        ("bridge.membership.power_levels", {"PROJECT.ADMIN": 500}, "from 0 to 100"),
        ("bridge.permissions", {"*": "superuser"}, "'superuser' is not one of user, admin"),
        ("waldur.url", "waldur.local", "is not an http(s) URL"),
        ("bridge.username_template", "waldur_", "must contain {userid}"),
        ("bridge.membership.never_kick", "@x:y", "must be a list"),
        ("bridge.encryption.allow", True, "bridge.encryption.appservice: must be true"),
        ("bridge.provisioning.homeserver_url", "matrix.local", "is not an http(s) URL"),
        ("bridge.provisioning.trusted_proxies", ["10.0.0.1", "lb"], "'lb' is not an IP address"),
        ("bridge.provisioning.cors_origins", ["https://w.org/app"], "is not an origin"),
        ("bridge.provisioning.max_devices", -1, "must be 0 (no limit) or more"),
        ("bridge.provisioning.device_max_idle_days", -2, "must be 0 (no limit) or more"),
        ("bridge.membership.settle_seconds", -1, "settle_seconds: must be 0 or more"),
        ("bridge.membership.settle_max_wait", 0.5, "settle_max_wait: must be at least"),
        ("bridge.membership.settle_seconds", "soon", "settle_seconds: must be"),
        ("bridge.portals.room_version", "13", 'bridge.portals.room_version: "13" is not one'),
        ("bridge.spaces.enabled", "no", "bridge.spaces.enabled: must be true or false"),
        ("bridge.portals.progress_interval", -1, "progress_interval: must be a number of seconds"),
    ],
)
def test_wrong_values_are_explained(tmp_path: Path, key: str, value: Any, expected: str) -> None:
    problems = "\n".join(problems_of(write_raw(tmp_path, **{key: value})))
    assert expected in problems


def test_type_errors_use_yaml_spellings(tmp_path: Path) -> None:
    problems = problems_of(
        write_raw(tmp_path, **{"waldur.events.enabled": None, "bridge.spaces.enabled": "off"})
    )
    line = next(p for p in problems if p.startswith("bridge.spaces.enabled"))
    assert line == 'bridge.spaces.enabled: must be true or false, got "off". The default is true.'
    problems = problems_of(write_raw(tmp_path, **{"bridge.portals.create": False}))
    assert "bridge.portals.create: must be a string, got false. The default is " in problems[0]
    assert not [p for p in problems if "False" in p or "True" in p or "None" in p]


PLACEHOLDER_FILES = ("deploy/kubernetes/configmap.yaml", "deploy/kubernetes/secret.yaml")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("waldur.token", "set-from-the-secret"),
        ("appservice.as_token", "set-from-the-secret"),
        ("waldur.webhook.secret", "CHANGE-ME-webhook-secret"),
        ("appservice.database", "postgres://waldur_bridge:CHANGE-ME@postgresql:5432/db"),
    ],
)
def test_shipped_placeholders_in_the_file_are_refused(
    tmp_path: Path, key: str, value: str
) -> None:
    path = write_raw(tmp_path, **{key: value})
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: the value from the config file {path} is a placeholder")


def test_shipped_placeholders_from_the_environment_or_a_file_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "hs_token"
    secret_file.write_text("CHANGE-ME-hs-token\n")
    monkeypatch.setenv("WALDUR_BRIDGE_WALDUR_TOKEN", "CHANGE-ME-waldur-api-token")
    monkeypatch.setenv("WALDUR_BRIDGE_APPSERVICE_HS_TOKEN_FILE", str(secret_file))
    monkeypatch.setenv(
        "WALDUR_BRIDGE_APPSERVICE_DATABASE", "postgres://u:CHANGE-ME@postgresql/waldur_bridge"
    )
    # The prefix the bridge gives mautrix, which then reads any WALDUR_BRIDGE_<KEY> variable.
    config = Config(str(write_raw(tmp_path)), "", BASE_CONFIG, env_prefix="WALDUR_BRIDGE")
    config.load()
    config.update(save=False)
    with pytest.raises(ConfigError) as e:
        config.validate()
    assert [p.split(" is a ")[0] for p in e.value.problems] == [
        "waldur.token: the value from WALDUR_BRIDGE_WALDUR_TOKEN",
        "appservice.hs_token: the value from "
        f"WALDUR_BRIDGE_APPSERVICE_HS_TOKEN_FILE={secret_file}",
        "appservice.database: the value from WALDUR_BRIDGE_APPSERVICE_DATABASE",
    ]


def test_every_placeholder_the_project_ships_is_known() -> None:
    """Each stand-in value in the deployment files is one the bridge refuses."""
    from waldur_bridge.secret_sources import placeholder_in

    root = Path(__file__).resolve().parents[2]
    for name in (*PLACEHOLDER_FILES, "deploy/registration-vars.yaml"):
        for line in (root / name).read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            if "set-from" in line or "CHANGE" in line.upper():
                value = line.split(":", 1)[1].strip()
                assert placeholder_in(value), (name, line)


def test_permissions_lookup_order(tmp_path: Path) -> None:
    config = load(
        write_raw(
            tmp_path,
            **{
                "bridge.permissions": {
                    "*": "user",
                    "example.org": "admin",
                    "@boss:localhost": "admin",
                }
            },
        )
    )
    assert config.get_permissions("@boss:localhost") == (True, True, "admin")
    assert config.get_permissions("@x:example.org") == (True, True, "admin")
    assert config.get_permissions("@x:localhost") == (True, False, "user")


def test_registration_adds_msc3202_with_appservice_encryption(tmp_path: Path) -> None:
    config = load(
        write_raw(
            tmp_path,
            **{"bridge.encryption.allow": True, "bridge.encryption.appservice": True},
        )
    )
    config.generate_registration()
    registration = config._registration
    assert registration is not None
    assert registration["org.matrix.msc3202"] is True
    assert registration["receive_ephemeral"] is True
    assert registration["sender_localpart"] == "waldurbot"
    assert registration["rate_limited"] is False
    users = [ns["regex"] for ns in registration["namespaces"]["users"]]
    assert users == [r"@waldur_.*:localhost", r"@waldurbot:localhost"]
    assert registration["namespaces"]["aliases"][0]["exclusive"] is True


def test_encryption_without_the_extra_is_one_problem_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import waldur_bridge.config as config_module

    settings = {"bridge.encryption.allow": True, "bridge.encryption.appservice": True}
    monkeypatch.setattr(config_module, "encryption_installed", lambda: False)
    problems = problems_of(write_raw(tmp_path, **settings))
    assert len(problems) == 1
    assert problems[0].startswith("bridge.encryption.allow: true")
    assert "pip install 'waldur-matrix-bridge[e2be]'" in problems[0]
    monkeypatch.setattr(config_module, "encryption_installed", lambda: True)
    assert problems_of(write_raw(tmp_path, **settings)) == []
