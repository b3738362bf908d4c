"""Layers import downward: the folder list is the architecture."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "waldur_bridge"


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules that ``path`` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _modules(*relative: str) -> list[Path]:
    out: list[Path] = []
    for rel in relative:
        target = PACKAGE / rel
        out.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    return out


@pytest.mark.parametrize("path", _modules("sync", "portal.py", "export.py", "messages.py"))
def test_lower_layers_do_not_import_commands(path: Path) -> None:
    assert not {n for n in _imports(path) if n.startswith("waldur_bridge.commands")}


@pytest.mark.parametrize("path", _modules("waldur", "messages.py"))
def test_waldur_client_and_messages_have_no_mautrix(path: Path) -> None:
    assert not {n for n in _imports(path) if n.split(".")[0] == "mautrix"}


@pytest.mark.parametrize("path", _modules("waldur"))
def test_waldur_client_imports_nothing_of_the_bridge_above_it(path: Path) -> None:
    bridge = {n for n in _imports(path) if n.startswith("waldur_bridge.")}
    assert all(n.startswith("waldur_bridge.waldur") for n in bridge), bridge


@pytest.mark.parametrize("path", _modules("."))
def test_product_never_imports_development_tools(path: Path) -> None:
    tools = {n for n in _imports(path) if n.split(".")[0] in {"waldur_simulator", "waldur_devenv"}}
    assert not tools
