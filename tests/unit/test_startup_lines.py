"""Start-up mistakes that end before the homeserver is asked, run as an operator runs the bridge
(the CLI in a subprocess): one line naming the setting and the fix, the exit code of the
README's table, no traceback."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import waldur_bridge
from waldur_devenv.synapse import free_port
from waldur_devenv.testing import write_config

PACKAGED = Path(waldur_bridge.__file__).with_name("example-config.yaml")


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WALDUR_BRIDGE_")}
    result = subprocess.run(
        [sys.executable, "-m", "waldur_bridge", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**clean, **(env or {})},
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return result.returncode, output


def config(tmp_path: Path, **overrides: object) -> Path:
    """A valid config whose homeserver nobody answers: each test here ends before it is asked
    (or after the lines checked)."""
    return write_config(
        tmp_path / "config.yaml",
        homeserver_url=f"http://127.0.0.1:{free_port()}",
        domain="localhost",
        as_port=free_port(),
        waldur_url="http://127.0.0.1:8080",
        waldur_token="t" * 40,
        database="sqlite:bridge.db",
        as_token="a" * 32,
        hs_token="h" * 32,
        overrides=overrides,
    )


def one_line(output: str, text: str) -> str:
    lines = [line for line in output.splitlines() if text in line]
    assert len(lines) == 1, output
    return lines[0]


def test_metrics_port_out_of_range_is_one_line(tmp_path: Path) -> None:
    path = config(tmp_path, **{"metrics.enabled": True, "metrics.listen_port": 80000})
    code, output = run(tmp_path, "-c", str(path), "-n")
    assert code == 19, output
    line = one_line(output, "Cannot serve metrics on 127.0.0.1:80000")
    assert "metrics.listen_port" in line and "metrics.hostname" in line
    assert "not a port number" in line


def test_metrics_port_taken_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = config(tmp_path, **{"metrics.enabled": True, "metrics.listen_port": port})
        code, output = run(tmp_path, "-c", str(path), "-n")
    assert code == 19, output
    line = one_line(output, f"Cannot serve metrics on 127.0.0.1:{port}")
    assert "(metrics.hostname:metrics.listen_port)" in line and "in use" in line


def test_unsupported_database_scheme_names_the_supported_ones(tmp_path: Path) -> None:
    path = config(tmp_path, **{"appservice.database": "mysql://bridge:hunter2@db/bridge"})
    code, output = run(tmp_path, "-c", str(path), "-n")
    assert code == 25, output
    line = one_line(output, "appservice.database mysql://bridge:***@db/bridge")
    assert "mysql scheme is not supported" in line
    assert "postgres://" in line and "sqlite:" in line
    assert "hunter2" not in output


def test_empty_config_says_so_and_how_to_start(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("# nothing here yet\n")
    code, output = run(tmp_path, "-c", "config.yaml")
    assert code == 11, output
    line = one_line(output, "Config file 'config.yaml' is empty")
    assert f"cp {PACKAGED} config.yaml" in line


def test_missing_config_names_the_packaged_example_and_the_copy(tmp_path: Path) -> None:
    code, output = run(tmp_path, "-c", "config.yaml")
    assert code == 11, output
    line = one_line(output, "Config file 'config.yaml' not found")
    assert f"cp {PACKAGED} config.yaml" in line
    assert PACKAGED.is_file()


MINIMAL = """\
homeserver:
    address: http://127.0.0.1:{hs_port}
    domain: localhost
appservice:
    port: {as_port}
    as_token: {token}
    hs_token: {token}
    database: sqlite:bridge.db
waldur:
    url: http://127.0.0.1:8080
    token: {token}
bridge:
    permissions:
        "*": user
"""


def minimal_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL.format(hs_port=free_port(), as_port=free_port(), token="t" * 40))
    return path


def test_minimal_config_with_n_counts_the_defaults_and_lists_them_on_request(
    tmp_path: Path,
) -> None:
    path = minimal_config(tmp_path)
    listed = subprocess.run(
        [sys.executable, "-m", "waldur_bridge", "-c", str(path), "--show-defaults"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    count = len(lines) - 1
    assert lines[0] == f"{count} keys are not in {path} and use their defaults:"
    assert '  bridge.portals.create: "none"' in lines
    assert "  metrics.enabled: false" in lines
    assert "  appservice.port: " not in listed.stdout  # the file sets it

    # A start with -n (a read-only config) says how many and where to see them, in one short
    # line; it is stopped once that line was written (the homeserver is not there).
    proc = subprocess.Popen(
        [sys.executable, "-m", "waldur_bridge", "-c", str(path), "-n"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "the defaults (not in" in line or "Traceback" in line:
                break
    finally:
        proc.kill()
        proc.wait()
    assert line.rstrip().endswith(
        f"{count} keys use the defaults (not in the config file); `--show-defaults` lists them"
    ), line
    assert len(line) < 150, line


def test_generate_registration_warns_about_a_readable_config_and_says_what_next(
    tmp_path: Path,
) -> None:
    path = minimal_config(tmp_path)
    os.chmod(path, 0o644)
    code, output = run(tmp_path, "-g", "-c", str(path), "-r", "registration.yaml")
    assert code == 0, output
    warning = one_line(output, "readable by other users (mode 0644)")
    assert f"chmod 600 {path}" in warning
    after = one_line(output, "Next: install registration.yaml in the homeserver")
    assert "app_service_config_files" in after and "!admin appservices register" in after

    os.chmod(path, 0o600)
    code, output = run(tmp_path, "-g", "-c", str(path), "-r", "registration.yaml")
    assert code == 0 and "readable by other users" not in output, output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("where", ["file", "environment", "file path"])
def test_shipped_placeholder_stops_the_start_naming_key_and_source(
    tmp_path: Path, where: str
) -> None:
    env: dict[str, str] = {}
    if where == "file":
        path = config(tmp_path, **{"waldur.token": "set-from-the-secret"})
        source = f"the config file {path}"
    elif where == "environment":
        path = config(tmp_path)
        env["WALDUR_BRIDGE_WALDUR_TOKEN"] = "CHANGE-ME-waldur-api-token"
        source = "WALDUR_BRIDGE_WALDUR_TOKEN"
    else:
        path = config(tmp_path)
        secret = tmp_path / "waldur_token"
        secret.write_text("CHANGE-ME-waldur-api-token\n")
        env["WALDUR_BRIDGE_WALDUR_TOKEN_FILE"] = str(secret)
        source = f"WALDUR_BRIDGE_WALDUR_TOKEN_FILE={secret}"
    code, output = run(tmp_path, "-c", str(path), "-n", env=env)
    assert code == 11, output
    line = one_line(output, f"waldur.token: the value from {source} is a placeholder")
    assert "Secret" in line
