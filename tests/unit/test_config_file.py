"""The config file is never lost: written only after validation, atomically, with every
packaged comment; secrets from the environment or files stay out of it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from waldur_bridge.config import Config, ConfigError
from waldur_bridge.secret_sources import SECRET_KEYS, env_name
from waldur_devenv.testing import BASE_CONFIG, write_config

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = ROOT / "waldur_bridge" / "example-config.yaml"


def comment_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def valid_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        homeserver_url="http://127.0.0.1:8008",
        domain="localhost",
        as_port=29334,
        waldur_url="http://127.0.0.1:8080",
        waldur_token="t" * 40,
        database="sqlite:test.db",
        as_token="file-as-token",
        hs_token="file-hs-token",
    )


def merged(path: Path, **kwargs: str) -> Config:
    config = Config(str(path), str(path.with_name("registration.yaml")), BASE_CONFIG, **kwargs)
    config.load()
    config.update(save=True)
    return config


def test_top_level_example_is_the_packaged_one() -> None:
    assert (ROOT / "example-config.yaml").read_bytes() == PACKAGED.read_bytes()


def test_untouched_example_keeps_every_comment(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(PACKAGED.read_bytes())
    config = merged(path)
    assert config.added_keys == []
    assert config.save()  # the web hook secret "generate" became a random one
    assert comment_lines(path.read_text()) == comment_lines(PACKAGED.read_text())


def test_failed_validation_leaves_the_file_byte_for_byte(tmp_path: Path) -> None:
    path = valid_config(tmp_path)
    text = path.read_text()
    text = text.replace("    create: none\n", "    craete: all\n")
    text = text.replace("    sweep_interval: 3600\n", "    sweep_intervall: 60\n", 1)
    text = text.replace("    sweep_interval: 900\n", "    sweep_intervall: 60\n", 1)
    assert "craete: all" in text and "sweep_intervall: 60" in text
    path.write_text(text)
    before = path.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "waldur_bridge", "-c", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("WALDUR_BRIDGE_")},
    )
    assert result.returncode == 11, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "bridge.portals.craete: not a known setting. Did you mean bridge.portals.create?" in (
        output
    )
    assert "waldur.sweep_intervall: not a known setting" in output
    assert "Traceback" not in output
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temporary file


def test_save_is_atomic_keeps_permissions_and_skips_unchanged(tmp_path: Path) -> None:
    path = valid_config(tmp_path)
    os.chmod(path, 0o640)
    config = merged(path)
    config.validate()
    assert config.save_validated()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    inode = path.stat().st_ino
    again = merged(path)
    assert not again.save_validated()  # same content: the file is not touched
    assert path.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_added_keys_are_named(tmp_path: Path) -> None:
    path = valid_config(tmp_path)
    text = path.read_text().replace("        role_notices: true\n", "")
    text = text.replace("    page_size: 100\n", "")
    path.write_text(text)
    config = merged(path)
    assert config.added_keys == ["waldur.page_size", "bridge.commands.role_notices"]
    assert config.save_validated()
    assert merged(path).added_keys == []


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_from_the_environment_is_used_and_never_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    path = valid_config(tmp_path)
    merged(path).save_validated()  # the generated web hook secret is fixed from here on
    before = merged(path)[key]
    monkeypatch.setenv(env_name(key), "secret-from-env-0123456789")
    config = merged(path, env_prefix="WALDUR_BRIDGE")
    assert config[key] == config.get(key, None) == "secret-from-env-0123456789"
    config.validate()
    config.save_validated()
    assert "secret-from-env" not in path.read_text()
    monkeypatch.delenv(env_name(key))
    assert merged(path)[key] == before


def test_secret_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = valid_config(tmp_path)
    secret_file = tmp_path / "token"
    secret_file.write_text("token-from-file-0123456789\n")
    monkeypatch.setenv("WALDUR_BRIDGE_WALDUR_TOKEN_FILE", str(secret_file))
    # The file wins over a plain variable for the same key.
    monkeypatch.setenv("WALDUR_BRIDGE_WALDUR_TOKEN", "from-variable")
    config = merged(path)
    assert config["waldur.token"] == "token-from-file-0123456789"
    assert config.secrets["waldur.token"].source.startswith("WALDUR_BRIDGE_WALDUR_TOKEN_FILE=")
    config.save_validated()
    assert "token-from-file" not in path.read_text()


def test_unreadable_or_empty_secret_is_a_named_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = valid_config(tmp_path)
    monkeypatch.setenv("WALDUR_BRIDGE_WALDUR_TOKEN_FILE", str(tmp_path / "missing"))
    monkeypatch.setenv("WALDUR_BRIDGE_APPSERVICE_HS_TOKEN", "  ")
    config = merged(path)
    with pytest.raises(ConfigError) as e:
        config.validate()
    assert e.value.problems[:2] == [
        f"waldur.token: WALDUR_BRIDGE_WALDUR_TOKEN_FILE={tmp_path / 'missing'} cannot be read "
        "(No such file or directory).",
        "appservice.hs_token: WALDUR_BRIDGE_APPSERVICE_HS_TOKEN is set but empty.",
    ]


def test_other_environment_overrides_are_not_saved_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mautrix reads any WALDUR_BRIDGE_<KEY> in __getitem__; the merge must not copy it in.
    path = valid_config(tmp_path)
    monkeypatch.setenv("WALDUR_BRIDGE_HOMESERVER_DOMAIN", "from-env.example")
    config = merged(path, env_prefix="WALDUR_BRIDGE")
    assert config["homeserver.domain"] == "from-env.example"
    config.save_validated()
    assert "from-env.example" not in path.read_text()
