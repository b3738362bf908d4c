"""The demo stops cleanly on SIGINT, SIGTERM and SIGHUP even when its output has nowhere to go
(`make demo | tee log`, then Ctrl-C: tee is gone before the demo starts to stop)."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from waldur_devenv.synapse import SynapseNotInstalled, find_synapse_python, free_port

ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    assert proc.stdout is not None
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while marker not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise AssertionError(f"the demo did not print its guide:\n{seen[-3000:]!r}")
            if selector.select(left):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"the demo closed its output:\n{seen[-3000:]!r}")
                seen += chunk
    return seen


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_demo_stops_on_signal_after_its_output_went_away(tmp_path: Path, signum: int) -> None:
    try:
        synapse_python = find_synapse_python()
    except SynapseNotInstalled as e:
        pytest.skip(str(e))
    ports = {"waldur": free_port(), "synapse": free_port(), "bridge": free_port()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "waldur_devenv.demo",
            "--dir",
            str(tmp_path / "demo"),
            *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))),
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={
            **os.environ,
            "WALDUR_BRIDGE_SYNAPSE_PYTHON": synapse_python,
            "PYTHONPATH": str(ROOT),
        },
        # Its own session: the signal reaches the demo only, as from a terminal or `kill`.
        start_new_session=True,
    )
    try:
        guide = _read_until(proc, b"demo is running", 180)
        assert b"/_matrix/provision/v1/login" in guide
        assert _listening(ports["bridge"]) and _listening(ports["synapse"])
        # The reader goes away (tee killed by the same Ctrl-C), then the signal arrives.
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
        proc.send_signal(signum)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the demo ignored {signum!r} with its output gone") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 0
    # Nothing it started is left behind.
    for name in ("bridge", "synapse", "waldur"):
        assert not _listening(ports[name]), f"the {name} still listens after the demo stopped"
    log = (tmp_path / "demo" / "bridge.log").read_text()
    assert "Everything stopped" in log
