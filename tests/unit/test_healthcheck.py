"""The container health check reads appservice.port and .hostname from the config."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from waldur_bridge.healthcheck import live_url

ROOT = Path(__file__).resolve().parents[2]


class Live(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/_matrix/mau/live" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def live_port() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), Live)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "waldur_bridge.healthcheck", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def write(tmp_path: Path, hostname: str, port: int) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"appservice:\n    hostname: {hostname}\n    port: {port}\n")
    return path


def test_healthy_on_the_configured_port(tmp_path: Path, live_port: int) -> None:
    result = run(write(tmp_path, "0.0.0.0", live_port))
    assert result.returncode == 0, result.stderr


def test_unhealthy_names_the_url(tmp_path: Path) -> None:
    port = unused_port()
    result = run(write(tmp_path, "127.0.0.1", port))
    assert result.returncode == 1
    assert f"unhealthy: http://127.0.0.1:{port}/_matrix/mau/live" in result.stderr


def test_unreadable_config(tmp_path: Path) -> None:
    result = run(tmp_path / "absent.yaml")
    assert result.returncode == 1 and "cannot read appservice.port" in result.stderr


def test_url_from_config_and_environment() -> None:
    config = {"appservice": {"hostname": "::", "port": 29334}}
    assert live_url(config, {}) == "http://[::1]:29334/_matrix/mau/live"
    env = {"WALDUR_BRIDGE_APPSERVICE_PORT": "8009"}
    assert live_url(config, env) == "http://[::1]:8009/_matrix/mau/live"
