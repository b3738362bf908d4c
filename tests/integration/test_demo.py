"""`make demo --check`: the demo as a user runs it (real CLI, real Synapse, the simulator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from waldur_devenv.synapse import SynapseNotInstalled, find_synapse_python

ROOT = Path(__file__).resolve().parents[2]
SEEDED_PROJECTS = {"Telescope Pipeline", "Climate Models", "Genome Assembly", "Protein Folding"}


def test_demo_check_brings_up_every_portal_with_its_team(tmp_path: Path) -> None:
    try:
        synapse_python = find_synapse_python()
    except SynapseNotInstalled as e:
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "waldur_devenv.demo",
            "--check",
            "--dir",
            str(workdir),
            "--waldur-port",
            "0",
            "--synapse-port",
            "0",
            "--bridge-port",
            "0",
            "--timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={
            **os.environ,
            "WALDUR_BRIDGE_SYNAPSE_PYTHON": synapse_python,
            # The demo is a development tool: it runs from the repository, not the wheel.
            "PYTHONPATH": str(ROOT),
        },
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True

    projects = {p["name"]: p for p in summary["projects"]}
    assert set(projects) == SEEDED_PROJECTS
    for project in projects.values():
        assert project["room_id"], project
        assert project["alias"] == f"#waldur_{project['uuid']}:localhost"
        assert project["members"], project
        assert project["members"] == project["expected"], project
    # The team as seeded: the organization owner joins every project of her organization,
    # project admins and owners get power level 50, everyone else 0.
    assert projects["Telescope Pipeline"]["members"] == {
        "@waldur_alice:localhost": 50,
        "@waldur_bob:localhost": 50,
        "@waldur_carol:localhost": 0,
    }
    assert projects["Protein Folding"]["members"] == {
        "@waldur_dave:localhost": 50,
        "@waldur_frank:localhost": 0,
    }
    # Four portals, the spaces of the two organizations and the management room, to which
    # the bridge admin is invited.
    assert summary["bot_joined_rooms"] == 7
    assert summary["management_room"]["members"]["@admin:localhost"] == "invite"
    # A grant and a revoke through the simulator's REST API reach the room.
    live = summary["live_change"]
    assert live["webhook_registered"] and live["joined"] and live["left"], live
    # "Continue with Waldur": Bob signs in through Synapse with his Waldur password and is his
    # puppet (Synapse's confirmation page included: the demo whitelists no client).
    assert summary["signin"] == {
        "ok": True,
        "user_id": "@waldur_bob:localhost",
        "seconds": summary["signin"]["seconds"],
    }

    # Everything it started is stopped, with a clean bridge shutdown, and the files are where
    # the guide says.
    log = (workdir / "bridge.log").read_text()
    assert "Everything stopped" in log
    assert "Traceback" not in log
    for name in ("config.yaml", "registration.yaml", "waldur-bridge.db"):
        assert (workdir / name).exists(), name
