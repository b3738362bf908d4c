"""The container image without a Docker engine: docker-run.sh's three starts, and the Dockerfile.

docker-run.sh runs here with DATA_DIR pointing at a temporary directory and a `waldur-bridge`
shim first on PATH that runs this interpreter's `-m waldur_bridge`, or, when SHIM_RECORD is set,
only records its arguments, working directory and process ID.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO_ROOT / "docker-run.sh"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
EXAMPLE_CONFIG = REPO_ROOT / "waldur_bridge" / "example-config.yaml"

SHIM = """#!/bin/sh
if [ -n "${{SHIM_RECORD:-}}" ]; then
    {{ echo "pid=$$"; echo "cwd=$(pwd)"; for a in "$@"; do echo "arg=$a"; done; }} > "$SHIM_RECORD"
    exit 0
fi
exec {python} -m waldur_bridge "$@"
"""


def _load_yaml(path: Path):
    return YAML(typ="safe", pure=True).load(path.read_text())


@pytest.fixture
def shim_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "waldur-bridge"
    shim.write_text(SHIM.format(python=shlex.quote(sys.executable)))
    shim.chmod(0o755)
    # `python3` in docker-run.sh must be an interpreter that has the bridge's dependencies.
    python_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALDUR_BRIDGE_")}
    env.pop("SHIM_RECORD", None)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(python_dir), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_entrypoint(
    data_dir: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args],
        env={**env, "DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def fill_in_placeholders(config_path: Path) -> None:
    yaml = YAML(typ="rt")
    yaml.indent(mapping=4, sequence=4, offset=0)
    data = yaml.load(config_path.read_text())
    data["homeserver"]["address"] = "http://synapse:8008"
    data["homeserver"]["domain"] = "test.local"
    data["appservice"]["address"] = "http://waldur-bridge:29334"
    data["waldur"]["url"] = "https://waldur.test.local"
    data["waldur"]["token"] = "0123456789abcdef"
    buf = io.StringIO()
    yaml.dump(data, buf)
    config_path.write_text(buf.getvalue())


def test_entrypoint_is_executable() -> None:
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR


def test_three_starts(tmp_path: Path, shim_env: dict[str, str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config_path = data / "config.yaml"
    registration_path = data / "registration.yaml"

    # 1st start: the example config, with the appservice listening on all interfaces.
    first = run_entrypoint(data, shim_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert config_path.exists()
    assert not registration_path.exists()
    for key in (
        "homeserver.address",
        "appservice.address",
        "waldur.url",
        "waldur.token",
        "bridge.portals.create",
        "bridge.management_room",
    ):
        assert key in first.stdout
    config = _load_yaml(config_path)
    example = _load_yaml(EXAMPLE_CONFIG)
    assert config["appservice"]["hostname"] == "0.0.0.0"
    assert config["metrics"]["hostname"] == example["metrics"]["hostname"]
    config["appservice"]["hostname"] = example["appservice"]["hostname"]
    assert config == example

    fill_in_placeholders(config_path)
    edited = config_path.read_text()

    # 2nd start: the registration, tokens saved into the config.
    second = run_entrypoint(data, shim_env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "app_service_config_files" in second.stdout
    assert "warning" not in second.stderr  # appservice.address names the container
    registration = _load_yaml(registration_path)
    assert registration["rate_limited"] is False
    assert registration["url"] == "http://waldur-bridge:29334"
    assert registration["namespaces"]["users"][1]["regex"] == r"@waldurbot:test\.local"
    # The management room alias it suggests is one the homeserver lets the bridge create.
    (suggested,) = re.findall(r"#\S+:your\.server", first.stdout)
    alias_regex = registration["namespaces"]["aliases"][0]["regex"]
    assert re.fullmatch(alias_regex, suggested.replace("your.server", "test.local")), suggested
    config = _load_yaml(config_path)
    assert config["appservice"]["as_token"] == registration["as_token"]
    assert config["appservice"]["hostname"] == "0.0.0.0"
    assert config_path.read_text() != edited

    # 3rd start: exec waldur-bridge -c <config> in DATA_DIR, extra arguments passed on.
    record = tmp_path / "record.txt"
    proc = subprocess.Popen(
        [str(ENTRYPOINT), "--no-update"],
        env={**shim_env, "DATA_DIR": str(data), "SHIM_RECORD": str(record)},
        stdin=subprocess.DEVNULL,
    )
    assert proc.wait(timeout=60) == 0
    lines = record.read_text().splitlines()
    assert lines == [
        f"pid={proc.pid}",  # same process: docker-run.sh exec'ed the bridge
        f"cwd={data}",
        "arg=-c",
        f"arg={config_path}",
        "arg=--no-update",
    ]


@pytest.mark.parametrize(
    "address", ["http://localhost:29334", "http://127.0.0.1:29334", "http://[::1]:29334"]
)
def test_registration_for_localhost_warns(
    tmp_path: Path, shim_env: dict[str, str], address: str
) -> None:
    assert run_entrypoint(tmp_path, shim_env).returncode == 0
    fill_in_placeholders(tmp_path / "config.yaml")
    config = tmp_path / "config.yaml"
    config.write_text(config.read_text().replace("http://waldur-bridge:29334", address))
    second = run_entrypoint(tmp_path, shim_env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert (tmp_path / "registration.yaml").exists()
    assert f"warning: appservice.address is {address}" in second.stderr
    assert "delete" in second.stderr and "registration.yaml" in second.stderr


def test_second_start_fails_loudly_with_placeholders(
    tmp_path: Path, shim_env: dict[str, str]
) -> None:
    assert run_entrypoint(tmp_path, shim_env).returncode == 0
    second = run_entrypoint(tmp_path, shim_env)
    assert second.returncode != 0
    assert not (tmp_path / "registration.yaml").exists()


def test_missing_data_dir_is_an_error(tmp_path: Path, shim_env: dict[str, str]) -> None:
    result = run_entrypoint(tmp_path / "absent", shim_env)
    assert result.returncode == 1
    assert "not a directory writable" in result.stderr


# region Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends with a continuation"
    return instructions


def _all(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions() if kw == keyword]


def test_dockerfile_base_image_and_stages() -> None:
    froms = _all("FROM")
    assert len(froms) >= 2, "multi-stage build expected"
    # Every stage from one base image, pinned by digest (a tag alone moves).
    (argument,) = [a for a in _all("ARG") if a.startswith("PYTHON_IMAGE=")]
    image = argument.removeprefix("PYTHON_IMAGE=")
    assert re.fullmatch(r"python:3\.12-slim@sha256:[0-9a-f]{64}", image), image
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)
    assert froms[0].split()[-2:] == ["AS", "builder"]
    assert any(c.split()[:3] == ["--from=builder", "/opt/venv", "/opt/venv"] for c in _all("COPY"))


def test_dockerfile_installs_the_tested_versions() -> None:
    """The image installs with constraints.txt, which holds the versions of the tested
    environment: every runtime dependency installed here is pinned at the installed version."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "update_constraints", REPO_ROOT / "scripts" / "update-constraints.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    installs = [r for r in _all("RUN") if "pip install" in r]
    assert installs and all("-c constraints.txt" in r for r in installs), installs
    assert "pip install --upgrade" not in " ".join(installs)  # no moving pip either
    assert "!constraints.txt" in DOCKERIGNORE.read_text().splitlines()
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name] = version
    installed = module.runtime_closure(module.PACKAGE, module.EXTRAS)
    assert {"mautrix", "aiohttp", "yarl", "asyncpg"} <= set(installed)
    stale = {n: (pins.get(n), v) for n, v in installed.items() if pins.get(n) != v}
    assert not stale, f"run scripts/update-constraints.py: (pinned, installed) {stale}"
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "-c constraints.txt -e '.[dev]'" in makefile


def test_dockerfile_runs_as_non_root() -> None:
    users = _all("USER")
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert "--uid 1337" in " ".join(_all("RUN"))


def test_dockerfile_volume_port_healthcheck_entrypoint() -> None:
    assert any("/data" in v.replace('"', " ").split() for v in _all("VOLUME"))
    assert _all("WORKDIR")[-1] == "/data"
    assert "29334" in " ".join(_all("EXPOSE")).split()

    (healthcheck,) = _all("HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    # The configured appservice.port, not a fixed one (see test_healthcheck.py).
    assert command == ["python", "-m", "waldur_bridge.healthcheck"]

    (entrypoint,) = _all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["/usr/local/bin/docker-run.sh"]
    assert any(
        c.split() == ["docker-run.sh", "/usr/local/bin/docker-run.sh"] for c in _all("COPY")
    )


def test_dockerignore_keeps_what_the_build_needs() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list expected"
    for needed in ("pyproject.toml", "waldur_bridge/", "docker-run.sh"):
        assert f"!{needed}" in lines


# endregion
