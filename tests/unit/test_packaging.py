"""The product wheel holds the bridge alone: no simulator, no development environment."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_holds_only_the_bridge(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("waldur_matrix_bridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_levels = {
        n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")
    }
    assert top_levels == {"waldur_bridge"}
    assert not [n for n in names if "simulator" in n or "devenv" in n]
    assert "waldur_bridge/example-config.yaml" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "waldur-bridge" in scripts and "simulator" not in scripts
